"""The server-sent-events sync stream (DESIGN.md "Extension: server-sent-events sync"):
``GET /_matrix/client/unstable/org.ktchat.sse/sync`` answers ``text/event-stream`` with one
``sync`` message per batch; resumable with ``Last-Event-ID`` or ``since``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from aiohttp_sse import sse_response

from client_api import sync as sync_routes
from tests.client_api.test_rooms import (
    User,
    api,
    assert_error,
    create_room,
    join,
    new_user,
    send_text,
)
from tests.client_api.test_sync import (
    all_room_ids,
    invite,
    joined,
    put_account_data,
    sync,
    timeline_ids,
)
from tests.conftest import bearer
from tests.helpers.spec import assert_matches_spec

SSE = "/_matrix/client/unstable/org.ktchat.sse/sync"


@dataclass
class Message:
    id: str | None = None
    event: str | None = None
    data_lines: list[str] = field(default_factory=list)

    @property
    def body(self) -> dict[str, Any]:
        assert len(self.data_lines) == 1, "the sync body must be one data line"
        return json.loads(self.data_lines[0])  # type: ignore[no-any-return]


class EventStream:
    """Reads an event stream line by line (https://html.spec.whatwg.org/#event-stream-interpretation)."""

    def __init__(self, resp: ClientResponse) -> None:
        self.resp = resp
        self.comments: list[str] = []

    async def next(self, wait_s: float = 5) -> Message:
        """The next dispatched message; skips comments."""
        return await asyncio.wait_for(self._next(), wait_s)

    async def _next(self) -> Message:
        message = Message()
        seen_field = False
        while True:
            raw = await self.resp.content.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode("utf-8").rstrip("\r\n")
            if line == "":
                if seen_field:
                    return message
                continue
            if line.startswith(":"):
                self.comments.append(line)
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            seen_field = True
            if name == "id":
                message.id = value
            elif name == "event":
                message.event = value
            elif name == "data":
                message.data_lines.append(value)

    async def next_sync(self, wait_s: float = 5) -> dict[str, Any]:
        """The next message, checked to be a ``sync`` message whose ID is its next_batch and
        whose body is a valid /sync response."""
        message = await self.next(wait_s)
        assert message.event == "sync"
        body = message.body
        assert message.id == body["next_batch"]
        assert_matches_spec("client-server", "GET", "/sync", 200, body)
        return body

    async def nothing_for(self, seconds: float) -> None:
        try:
            message = await self.next(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected message {message}")


@asynccontextmanager
async def open_stream(client: TestClient, user: User | None, *, token_in_query: bool = False,
                      headers: dict[str, str] | None = None, **query: str
                      ) -> AsyncIterator[EventStream]:
    params = dict(query)
    all_headers = dict(headers or {})
    if user is not None:
        if token_in_query:
            params["access_token"] = user.token
        else:
            all_headers.update(bearer(user.token))
    resp = await client.get(SSE, params=params, headers=all_headers)
    try:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        yield EventStream(resp)
    finally:
        resp.close()


def message_ids(body: dict[str, Any], room_id: str) -> list[str]:
    room = body["rooms"]["join"].get(room_id)
    if room is None:
        return []
    return [e["event_id"] for e in room["timeline"]["events"] if e["type"] == "m.room.message"]


async def test_advertised_in_versions(client: TestClient) -> None:
    resp = await client.get("/_matrix/client/versions")
    assert resp.status == 200
    body = await resp.json()
    assert body["unstable_features"]["org.ktchat.sse"] is True


async def test_first_message_at_once_then_live(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    room_id = await create_room(client, alice, name="Live")
    first_id = await send_text(client, alice, room_id, "before the stream")

    start = time.monotonic()
    async with open_stream(client, alice) as stream:
        first = await stream.next_sync(wait_s=3)
        assert time.monotonic() - start < 3
        # The first message is an initial sync.
        room = joined(first, room_id)
        assert first_id in timeline_ids(room)
        assert any(e["type"] == "m.room.name" for e in
                   room["state"]["events"] + room["timeline"]["events"])

        # Later ones come as things happen, each holding just what is new.
        second_id = await send_text(client, alice, room_id, "live")
        second = await stream.next_sync()
        assert list(second["rooms"]["join"]) == [room_id]
        assert timeline_ids(joined(second, room_id)) == [second_id]
        assert joined(second, room_id)["state"]["events"] == []
        # The same delta /sync gives for that since.
        via_sync = await sync(client, alice, since=first["next_batch"])
        assert timeline_ids(joined(via_sync, room_id)) == [second_id]
        assert via_sync["next_batch"] == second["next_batch"]

        await put_account_data(client, alice, "org.example.x", {"x": 1})
        third = await stream.next_sync()
        assert third["account_data"]["events"] == [{"type": "org.example.x",
                                                    "content": {"x": 1}}]
        assert all_room_ids(third) == set()


async def test_invites_and_other_users_rooms(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    secret = await create_room(client, alice, preset="private_chat")
    async with open_stream(client, bob) as stream:
        first = await stream.next_sync()
        assert all_room_ids(first) == set()
        await send_text(client, alice, secret, "not for bob")
        await stream.nothing_for(0.3)

        room_id = await create_room(client, alice, name="For bob")
        await invite(client, alice, room_id, bob)
        body = await stream.next_sync()
        assert list(body["rooms"]["invite"]) == [room_id]
        await join(client, bob, room_id)
        body = await stream.next_sync()
        assert list(body["rooms"]["join"]) == [room_id]
        said = await send_text(client, alice, room_id, "hi bob")
        body = await stream.next_sync()
        assert message_ids(body, room_id) == [said]
        assert secret not in all_room_ids(body)


async def _collect(stream: EventStream, room_id: str, count: int,
                   into: list[str]) -> str:
    """Read messages until ``count`` more message events of the room arrived; the last ID."""
    target = len(into) + count
    last = ""
    while len(into) < target:
        body = await stream.next_sync()
        into += message_ids(body, room_id)
        last = body["next_batch"]
    assert len(into) == target
    return last


async def _reconnect_misses_nothing(client: TestClient, how: str) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    received: list[str] = []
    sent: list[str] = []

    async with open_stream(client, bob) as stream:
        last_id = (await stream.next_sync())["next_batch"]
        for i in range(3):
            sent.append(await send_text(client, alice, room_id, f"live {i}"))
        last_id = await _collect(stream, room_id, 3, received)

    # Disconnected: these must come on reconnection, once.
    for i in range(4):
        sent.append(await send_text(client, alice, room_id, f"missed {i}"))

    resume = {"headers": {"Last-Event-ID": last_id}} if how == "header" \
        else {"since": last_id}
    async with open_stream(client, bob, **resume) as stream:
        first = await stream.next_sync(wait_s=3)
        assert message_ids(first, room_id) == sent[3:]
        assert joined(first, room_id)["timeline"]["limited"] is False
        received += message_ids(first, room_id)
        sent.append(await send_text(client, alice, room_id, "after reconnecting"))
        await _collect(stream, room_id, 1, received)
        await stream.nothing_for(0.2)
    assert received == sent


async def test_reconnect_with_last_event_id(client: TestClient) -> None:
    await _reconnect_misses_nothing(client, "header")


async def test_reconnect_with_since(client: TestClient) -> None:
    await _reconnect_misses_nothing(client, "since")


async def test_reconnect_when_nothing_happened_waits(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    room_id = await create_room(client, alice)
    async with open_stream(client, alice) as stream:
        last_id = (await stream.next_sync())["next_batch"]
    async with open_stream(client, alice, headers={"Last-Event-ID": last_id}) as stream:
        # The first message still comes at once, empty.
        first = await stream.next_sync(wait_s=3)
        assert all_room_ids(first) == set()
        await stream.nothing_for(0.3)
        said = await send_text(client, alice, room_id, "now")
        assert message_ids(await stream.next_sync(), room_id) == [said]


async def test_many_messages_while_streaming_each_once(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    received: list[str] = []
    sync_filter = json.dumps({"room": {"timeline": {"limit": 100}}})
    async with open_stream(client, bob, filter=sync_filter) as stream:
        await stream.next_sync()

        async def send_many(user: User, n: int) -> list[str]:
            return [await send_text(client, user, room_id, f"{user.user_id} {i}")
                    for i in range(n)]

        reader = asyncio.create_task(_collect(stream, room_id, 40, received))
        sent = await asyncio.gather(send_many(alice, 20), send_many(bob, 20))
        await asyncio.wait_for(reader, 15)
    assert len(received) == len(set(received)) == 40
    assert set(received) == set(sent[0]) | set(sent[1])
    status, page = await api(client, "GET", f"/rooms/{room_id}/messages", bob,
                             query={"dir": "f", "limit": "1000"})
    assert status == 200
    assert received == [e["event_id"] for e in page["chunk"] if e["event_id"] in received]


async def test_filter_applies(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    room_id = await create_room(client, alice)
    sent = [await send_text(client, alice, room_id, f"m{i}") for i in range(4)]
    sync_filter = json.dumps({"room": {"timeline": {"limit": 2}}})
    async with open_stream(client, alice, filter=sync_filter) as stream:
        room = joined(await stream.next_sync(), room_id)
        assert timeline_ids(room) == sent[-2:]
        assert room["timeline"]["limited"] is True


async def test_access_token_in_query(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    room_id = await create_room(client, alice)
    async with open_stream(client, alice, token_in_query=True) as stream:
        assert room_id in (await stream.next_sync())["rooms"]["join"]
        said = await send_text(client, alice, room_id, "query auth")
        assert message_ids(await stream.next_sync(), room_id) == [said]


async def test_keep_alive_comments(client: TestClient, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
    # The contract: a comment at least every 30 s. The server leaves pings to aiohttp-sse.
    default = inspect.signature(sse_response).parameters["ping_interval"].default
    assert 0 < default <= 30
    monkeypatch.setattr(sync_routes, "sse_response",
                        functools.partial(sse_response, ping_interval=0.1))
    alice = await new_user(client, "alice")
    room_id = await create_room(client, alice)
    async with open_stream(client, alice) as stream:
        await stream.next_sync()
        await stream.nothing_for(0.35)
        assert stream.comments and set(stream.comments) == {": ping"}
        said = await send_text(client, alice, room_id, "still here")
        assert message_ids(await stream.next_sync(), room_id) == [said]


async def test_errors_before_streaming(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    resp = await client.get(SSE)
    assert_error(resp.status, await resp.json(), 401, "M_MISSING_TOKEN")
    resp = await client.get(SSE, params={"access_token": "nope"})
    assert_error(resp.status, await resp.json(), 401, "M_UNKNOWN_TOKEN")
    resp = await client.get(SSE, headers=bearer("nope"))
    assert_error(resp.status, await resp.json(), 401, "M_UNKNOWN_TOKEN")
    resp = await client.get(SSE, params={"since": "garbage"}, headers=bearer(alice.token))
    assert_error(resp.status, await resp.json(), 400, "M_INVALID_PARAM")
    resp = await client.get(SSE, headers={**bearer(alice.token), "Last-Event-ID": "garbage"})
    assert_error(resp.status, await resp.json(), 400, "M_INVALID_PARAM")
    resp = await client.get(SSE, params={"filter": "{oops"}, headers=bearer(alice.token))
    assert_error(resp.status, await resp.json(), 400, "M_NOT_JSON")
    resp = await client.get(SSE, params={"filter": "31337"}, headers=bearer(alice.token))
    assert_error(resp.status, await resp.json(), 404, "M_NOT_FOUND")


# -- bursts: a live stream never folds events into a limited batch ------------------------------

async def _stream_burst(client: TestClient, limit: int, per_sender: int) -> None:
    """Three users each send ``per_sender`` messages at once while bob follows the room with
    timeline limit ``limit``: every event reaches him once, in the room's order, in messages
    of at most ``limit`` events, none of them limited."""
    alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
    carol, dan = await new_user(client, "carol"), await new_user(client, "dan")
    room_id = await create_room(client, alice, preset="public_chat")
    for user in (bob, carol, dan):
        await join(client, user, room_id)
    sync_filter = json.dumps({"room": {"timeline": {"limit": limit}}})
    received: list[str] = []
    async with open_stream(client, bob, filter=sync_filter) as stream:
        await stream.next_sync()

        async def send_many(user: User) -> list[str]:
            return list(await asyncio.gather(*(send_text(client, user, room_id, f"{i}")
                                               for i in range(per_sender))))

        sent = await asyncio.gather(*(send_many(u) for u in (alice, carol, dan)))
        total = sum(len(s) for s in sent)
        while len(received) < total:
            body = await stream.next_sync()
            room = body["rooms"]["join"].get(room_id)
            if room is None:
                continue
            assert room["timeline"]["limited"] is False
            assert len(room["timeline"]["events"]) <= limit
            received += message_ids(body, room_id)
        await no_more_events(stream, room_id, 0.2)
    assert sorted(received) == sorted(e for s in sent for e in s)
    status, page = await api(client, "GET", f"/rooms/{room_id}/messages", bob,
                             query={"dir": "f", "limit": "1000"})
    assert status == 200
    assert received == [e["event_id"] for e in page["chunk"] if e["event_id"] in received]


async def no_more_events(stream: EventStream, room_id: str, seconds: float) -> None:
    """Nothing more of the room for ``seconds`` (presence of the senders may still come)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            body = await stream.next_sync(left)
        except TimeoutError:
            return
        assert room_id not in body["rooms"]["join"], body


async def test_a_burst_larger_than_the_limit_arrives_whole(client: TestClient) -> None:
    await _stream_burst(client, limit=10, per_sender=10)


async def test_a_burst_many_times_the_limit_arrives_whole(client: TestClient) -> None:
    await _stream_burst(client, limit=3, per_sender=12)


async def test_a_burst_over_several_rooms_arrives_whole(client: TestClient) -> None:
    """The batch ends where the busiest room reaches the limit; quieter rooms' events up to
    there come along, the rest in the next messages."""
    alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
    rooms = [await create_room(client, alice, preset="public_chat") for _ in range(3)]
    for room_id in rooms:
        await join(client, bob, room_id)
    sync_filter = json.dumps({"room": {"timeline": {"limit": 4}}})
    received: dict[str, list[str]] = {r: [] for r in rooms}
    async with open_stream(client, bob, filter=sync_filter) as stream:
        await stream.next_sync()
        sent: dict[str, list[str]] = {r: [] for r in rooms}
        for i in range(15):  # interleaved: room 0 busiest
            for room_id in rooms[:1 + i % 3]:
                sent[room_id].append(await send_text(client, alice, room_id, f"{i}"))
        while sum(map(len, received.values())) < sum(map(len, sent.values())):
            body = await stream.next_sync()
            for room_id in rooms:
                room = body["rooms"]["join"].get(room_id)
                if room is not None:
                    assert room["timeline"]["limited"] is False
                    received[room_id] += message_ids(body, room_id)
    assert received == sent


async def test_only_the_first_message_after_reconnecting_may_be_limited(
        client: TestClient) -> None:
    alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    sync_filter = json.dumps({"room": {"timeline": {"limit": 3}}})
    async with open_stream(client, bob, filter=sync_filter) as stream:
        last_id = (await stream.next_sync())["next_batch"]
    missed = [await send_text(client, alice, room_id, f"missed {i}") for i in range(6)]
    async with open_stream(client, bob, filter=sync_filter,
                           headers={"Last-Event-ID": last_id}) as stream:
        room = joined(await stream.next_sync(), room_id)
        assert room["timeline"]["limited"] is True
        assert message_ids({"rooms": {"join": {room_id: room}}}, room_id) == missed[-3:]
        live = list(await asyncio.gather(*(send_text(client, alice, room_id, f"live {i}")
                                           for i in range(7))))
        received: list[str] = []
        await _collect_unlimited(stream, room_id, len(live), received)
    assert sorted(received) == sorted(live)


async def _collect_unlimited(stream: EventStream, room_id: str, count: int,
                             into: list[str]) -> None:
    while count > 0:
        body = await stream.next_sync()
        room = body["rooms"]["join"].get(room_id)
        if room is None:
            continue
        assert room["timeline"]["limited"] is False
        got = message_ids(body, room_id)
        into += got
        count -= len(got)


# -- CORS: a web page on another origin reads the stream ----------------------------------------

async def test_the_stream_carries_cors_headers(client: TestClient) -> None:
    """A browser's EventSource (no custom headers: the token is in the query) may read the
    stream from another origin only if the response says so before the first byte."""
    alice = await new_user(client, "alice")
    room_id = await create_room(client, alice)
    resp = await client.get(SSE, params={"access_token": alice.token},
                            headers={"Origin": "https://chat.example.org",
                                     "Accept": "text/event-stream"})
    try:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        stream = EventStream(resp)
        assert room_id in (await stream.next_sync())["rooms"]["join"]
    finally:
        resp.close()
    # Errors before the stream starts carry them too.
    resp = await client.get(SSE, params={"access_token": "nope"},
                            headers={"Origin": "https://chat.example.org"})
    assert resp.status == 401
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
