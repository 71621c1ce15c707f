"""Typing notifications, read receipts, read markers and unread counts over real HTTP, on
SQLite and PostgreSQL: what reaches /sync as ephemeral ``m.typing`` / ``m.receipt`` events,
room account data ``m.fully_read`` and ``unread_notifications``, and the errors of
PUT /typing, POST /receipt and POST /read_markers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from homeserver.appkeys import SERVICES
from tests.client_api.test_sync import joined, limit_filter, no_rooms, sync, timeline_ids
from tests.client_api.test_sync_fanout import services  # noqa: F401  (SQLite + PostgreSQL)
from tests.conftest import bearer
from tests.helpers.room_api import (
    V3,
    User,
    api,
    assert_error,
    create_room,
    join,
    new_user,
    send_text,
    txn,
)


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Presence off: typing and receipts mark their sender active, and presence updates would
    end long polls of their own."""
    return {"presence": {"enabled": False}}


# -- helpers ----------------------------------------------------------------------------------

async def shared_room(client: TestClient, owner: User, *members: User) -> str:
    room_id = await create_room(client, owner, preset="public_chat")
    for member in members:
        await join(client, member, room_id)
    return room_id


async def set_typing(client: TestClient, user: User, room_id: str, body: Any, *,
                     user_id: str | None = None) -> tuple[int, Any]:
    return await api(client, "PUT", f"/rooms/{room_id}/typing/{user_id or user.user_id}",
                     user, body)


async def typing_on(client: TestClient, user: User, room_id: str,
                    timeout_ms: int | None = 30_000) -> None:
    body: dict[str, Any] = {"typing": True}
    if timeout_ms is not None:
        body["timeout"] = timeout_ms
    status, data = await set_typing(client, user, room_id, body)
    assert (status, data) == (200, {})


async def typing_off(client: TestClient, user: User, room_id: str) -> None:
    status, data = await set_typing(client, user, room_id, {"typing": False})
    assert (status, data) == (200, {})


async def post_receipt(client: TestClient, user: User, room_id: str, receipt_type: str,
                       event_id: str, body: Any = None) -> tuple[int, Any]:
    return await api(client, "POST", f"/rooms/{room_id}/receipt/{receipt_type}/{event_id}",
                     user, {} if body is None else body)


async def read(client: TestClient, user: User, room_id: str, event_id: str,
               receipt_type: str = "m.read", **body: Any) -> None:
    status, data = await post_receipt(client, user, room_id, receipt_type, event_id, body)
    assert (status, data) == (200, {})


async def read_markers(client: TestClient, user: User, room_id: str, body: Any
                       ) -> tuple[int, Any]:
    return await api(client, "POST", f"/rooms/{room_id}/read_markers", user, body)


async def send(client: TestClient, user: User, room_id: str, content: dict[str, Any],
               event_type: str = "m.room.message") -> str:
    status, data = await api(client, "PUT", f"/rooms/{room_id}/send/{event_type}/{txn()}",
                             user, content)
    assert status == 200, data
    return str(data["event_id"])


def ephemeral(body: dict[str, Any], room_id: str, event_type: str) -> list[dict[str, Any]]:
    """The contents of the room's ephemeral events of a type (none if the room is absent)."""
    room = body["rooms"]["join"].get(room_id)
    if room is None:
        return []
    return [e["content"] for e in room["ephemeral"]["events"] if e["type"] == event_type]


def typing_users(body: dict[str, Any], room_id: str) -> list[str] | None:
    """Who the response says is typing in the room; None if it says nothing about typing."""
    found = ephemeral(body, room_id, "m.typing")
    assert len(found) <= 1, found
    return found[0]["user_ids"] if found else None


def receipts(body: dict[str, Any], room_id: str) -> dict[str, Any]:
    """The room's ``m.receipt`` content in the response (merged if there are several)."""
    merged: dict[str, Any] = {}
    for content in ephemeral(body, room_id, "m.receipt"):
        for event_id, by_type in content.items():
            for receipt_type, by_user in by_type.items():
                merged.setdefault(event_id, {}).setdefault(receipt_type, {}).update(by_user)
    return merged


def receipts_of(body: dict[str, Any], room_id: str, user: User) -> dict[tuple[str, str], Any]:
    """(event ID, receipt type) -> the user's receipt in the response's ``m.receipt``."""
    return {(event_id, receipt_type): by_user[user.user_id]
            for event_id, by_type in receipts(body, room_id).items()
            for receipt_type, by_user in by_type.items() if user.user_id in by_user}


def unread(body: dict[str, Any], room_id: str) -> tuple[int, int]:
    counts = joined(body, room_id)["unread_notifications"]
    return counts["notification_count"], counts["highlight_count"]


async def fresh_counts(client: TestClient, user: User, room_id: str) -> tuple[int, int]:
    """The room's unread counts in an initial sync (counted from the push rule evaluation's
    results, ``push_actions``); two syncs agree."""
    first = unread(await sync(client, user), room_id)
    counted = unread(await sync(client, user), room_id)
    assert first == counted
    return counted


def ephemeral_only(body: dict[str, Any], room_id: str) -> None:
    """The room is in the response for its ephemeral events alone."""
    room = joined(body, room_id)
    assert room["timeline"]["events"] == []
    assert room["ephemeral"]["events"]


async def poll(client: TestClient, user: User, since: str, timeout_ms: int = 10_000,
               **kwargs: Any) -> asyncio.Task[tuple[float, dict[str, Any]]]:
    """A long poll in the background, already waiting when this returns."""
    async def run() -> tuple[float, dict[str, Any]]:
        start = time.monotonic()
        body = await sync(client, user, since=since, timeout_ms=timeout_ms, **kwargs)
        return time.monotonic() - start, body

    task = asyncio.create_task(run())
    await asyncio.sleep(0.15)
    assert not task.done(), "the long poll returned before anything happened"
    return task


async def quiet(client: TestClient, user: User, since: str, timeout_ms: int = 300,
                **kwargs: Any) -> dict[str, Any]:
    """An incremental sync that must find nothing (it waits ``timeout_ms`` to be sure)."""
    body = await sync(client, user, since=since, timeout_ms=timeout_ms, **kwargs)
    assert no_rooms(body), body["rooms"]
    return body


# -- typing -----------------------------------------------------------------------------------

async def test_typing_wakes_a_long_poll_then_stops(client: TestClient, alice: User,
                                                   bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    since = (await sync(client, bob))["next_batch"]
    assert typing_users(await sync(client, bob), room_id) is None

    task = await poll(client, bob, since)
    await typing_on(client, alice, room_id)
    elapsed, body = await asyncio.wait_for(task, 5)
    assert elapsed < 5
    assert typing_users(body, room_id) == [alice.user_id]
    ephemeral_only(body, room_id)
    # The typing user sees it too (Synapse sends everyone the room's typing list).
    assert typing_users(await sync(client, alice), room_id) == [alice.user_id]

    task = await poll(client, bob, body["next_batch"])
    await typing_off(client, alice, room_id)
    _, body = await asyncio.wait_for(task, 5)
    assert typing_users(body, room_id) == []
    ephemeral_only(body, room_id)
    await quiet(client, bob, body["next_batch"])
    # A fresh sync says nothing of a room where nobody types.
    assert typing_users(await sync(client, bob), room_id) is None


async def test_leaving_ends_typing(client: TestClient, alice: User, bob: User) -> None:
    """As Synapse: whoever leaves (or is kicked) stops typing at once, not at the timeout."""
    room_id = await shared_room(client, alice, bob)
    await typing_on(client, alice, room_id)
    body = await sync(client, bob)
    assert typing_users(body, room_id) == [alice.user_id]
    status, data = await api(client, "POST", f"/rooms/{room_id}/leave", alice, {})
    assert status == 200, data
    body = await sync(client, bob, since=body["next_batch"])
    assert typing_users(body, room_id) == []


async def test_a_message_ends_its_senders_typing(client: TestClient, alice: User,
                                                 bob: User, carol: User) -> None:
    """The message and the end of its sender's typing arrive in one response; the client's
    own ``typing: false`` after it changes nothing and wakes nobody. A reaction does not end
    typing, and someone else's message does not end Alice's."""
    room_id = await shared_room(client, alice, bob, carol)
    await typing_on(client, alice, room_id)
    await typing_on(client, carol, room_id)
    body = await sync(client, bob)
    assert typing_users(body, room_id) == sorted([alice.user_id, carol.user_id])

    task = await poll(client, bob, body["next_batch"])
    event_id = await send_text(client, alice, room_id, "done typing")
    _, body = await asyncio.wait_for(task, 5)
    assert timeline_ids(joined(body, room_id)) == [event_id]
    assert typing_users(body, room_id) == [carol.user_id]

    await typing_off(client, alice, room_id)
    body = await quiet(client, bob, body["next_batch"])

    status, data = await api(client, "PUT", f"/rooms/{room_id}/send/m.reaction/{txn()}",
                             carol, {"m.relates_to": {"rel_type": "m.annotation",
                                                      "event_id": event_id, "key": "+1"}})
    assert status == 200, data
    body = await sync(client, bob, since=body["next_batch"])
    assert typing_users(body, room_id) is None  # unchanged: not in the response
    assert typing_users(await sync(client, bob), room_id) == [carol.user_id]


async def test_typing_times_out_on_its_own(client: TestClient, alice: User, bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    since = (await sync(client, bob))["next_batch"]
    task = await poll(client, bob, since)
    started = time.monotonic()
    await typing_on(client, alice, room_id, timeout_ms=500)
    _, body = await asyncio.wait_for(task, 5)
    assert typing_users(body, room_id) == [alice.user_id]

    # Nobody says anything: the timeout ends it, and that wakes the long poll.
    _, body = await asyncio.wait_for(await poll(client, bob, body["next_batch"], 5_000), 5)
    assert typing_users(body, room_id) == []
    assert 0.4 <= time.monotonic() - started < 4
    await quiet(client, bob, body["next_batch"])


async def test_typing_renewal_is_not_a_change(client: TestClient, alice: User,
                                              bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    since = (await sync(client, bob))["next_batch"]
    await typing_on(client, alice, room_id)
    body = await sync(client, bob, since=since)
    assert typing_users(body, room_id) == [alice.user_id]

    # Typing again while typing (what clients do every few seconds) changes nothing, nor does
    # stopping when not typing.
    await typing_on(client, alice, room_id, timeout_ms=60_000)
    await typing_off(client, bob, room_id)
    body = await quiet(client, bob, body["next_batch"])

    # A second typist is a change, with both listed.
    await typing_on(client, bob, room_id, timeout_ms=None)
    body = await sync(client, bob, since=body["next_batch"])
    assert typing_users(body, room_id) == sorted([alice.user_id, bob.user_id])
    # Timeouts past the cap are accepted (and capped).
    await typing_on(client, alice, room_id, timeout_ms=10**9)
    await quiet(client, bob, body["next_batch"])


async def test_typing_in_initial_sync_and_ephemeral_filter(client: TestClient, alice: User,
                                                           bob: User, carol: User) -> None:
    room_id = await shared_room(client, alice, bob)
    await typing_on(client, alice, room_id)
    # A fresh sync shows who is typing now.
    assert typing_users(await sync(client, bob), room_id) == [alice.user_id]
    # So does the incremental sync that brings a room new to the client.
    since = (await sync(client, carol))["next_batch"]
    await join(client, carol, room_id)
    body = await sync(client, carol, since=since)
    assert typing_users(body, room_id) == [alice.user_id]

    # A filter without m.typing leaves it out, and a long poll it filters out keeps waiting.
    no_typing = {"room": {"ephemeral": {"not_types": ["m.typing"]}}}
    assert typing_users(await sync(client, bob, sync_filter=no_typing), room_id) is None
    since = body["next_batch"]
    task = await poll(client, carol, since, 600, sync_filter=no_typing)
    await typing_off(client, alice, room_id)
    elapsed, body = await asyncio.wait_for(task, 5)
    assert no_rooms(body) and elapsed >= 0.5
    assert typing_users(await sync(client, carol, since=since), room_id) == []


async def test_typing_errors(client: TestClient, alice: User, bob: User, carol: User) -> None:
    room_id = await shared_room(client, alice, bob)
    since = (await sync(client, bob))["next_batch"]

    # Not in the room (never joined, or left), or no such room.
    status, body = await set_typing(client, carol, room_id, {"typing": True})
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await api(client, "POST", f"/rooms/{room_id}/leave", bob, {})
    assert status == 200, body
    status, body = await set_typing(client, bob, room_id, {"typing": True})
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await set_typing(client, alice, "!nowhere:test.local", {"typing": True})
    assert_error(status, body, 403, "M_FORBIDDEN")
    # Someone else's typing.
    status, body = await set_typing(client, alice, room_id, {"typing": True},
                                    user_id=carol.user_id)
    assert_error(status, body, 403, "M_FORBIDDEN")

    # Malformed bodies.
    status, body = await set_typing(client, alice, room_id, {"timeout": 1000})
    assert_error(status, body, 400, "M_MISSING_PARAM")
    for bad in ({"typing": "true"}, {"typing": 1}, {"typing": None},
                {"typing": True, "timeout": "30000"}, {"typing": True, "timeout": 1.5},
                {"typing": True, "timeout": -1}, {"typing": True, "timeout": True}):
        status, body = await set_typing(client, alice, room_id, bad)
        assert_error(status, body, 400, "M_BAD_JSON")
    status, body = await set_typing(client, alice, room_id, ["typing"])
    assert_error(status, body, 400, "M_BAD_JSON")
    resp = await client.put(f"{V3}/rooms/{room_id}/typing/{alice.user_id}", data=b"{typing",
                            headers=bearer(alice.token))
    assert_error(resp.status, await resp.json(), 400, "M_NOT_JSON")
    resp = await client.put(f"{V3}/rooms/{room_id}/typing/{alice.user_id}",
                            json={"typing": True})
    assert_error(resp.status, await resp.json(), 401, "M_MISSING_TOKEN")

    # None of that made anyone type.
    body = await sync(client, alice, since=since)
    assert typing_users(body, room_id) is None


# -- receipts ---------------------------------------------------------------------------------

async def test_read_receipt_reaches_the_room(client: TestClient, alice: User,
                                             bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    sent = [await send_text(client, alice, room_id, f"m{i}") for i in range(3)]
    since = (await sync(client, alice))["next_batch"]
    bob_since = (await sync(client, bob))["next_batch"]

    task = await poll(client, alice, since)
    before = int(time.time() * 1000)
    await read(client, bob, room_id, sent[-1])
    elapsed, body = await asyncio.wait_for(task, 5)
    assert elapsed < 5
    ephemeral_only(body, room_id)
    assert list(receipts(body, room_id)) == [sent[-1]]
    receipt = receipts_of(body, room_id, bob)[(sent[-1], "m.read")]
    assert isinstance(receipt["ts"], int) and before - 5_000 <= receipt["ts"] \
        <= int(time.time() * 1000) + 5_000
    assert "thread_id" not in receipt
    # Bob's own sync carries it too; then both are quiet.
    body_bob = await sync(client, bob, since=bob_since)
    assert receipts_of(body_bob, room_id, bob) == {(sent[-1], "m.read"): receipt}
    await quiet(client, alice, body["next_batch"])
    await quiet(client, bob, body_bob["next_batch"])

    # Alice reads too: one event, two readers.
    await read(client, alice, room_id, sent[-1])
    body = await sync(client, bob, since=body_bob["next_batch"])
    assert set(receipts(body, room_id)[sent[-1]]["m.read"]) == {alice.user_id}
    everyone = receipts(await sync(client, bob), room_id)
    assert set(everyone[sent[-1]]["m.read"]) == {alice.user_id, bob.user_id}


async def test_initial_sync_has_existing_receipts(client: TestClient, alice: User,
                                                  bob: User, carol: User) -> None:
    room_id = await shared_room(client, alice, bob)
    first = await send_text(client, alice, room_id, "one")
    second = await send_text(client, bob, room_id, "two")
    await read(client, bob, room_id, first)
    await read(client, alice, room_id, second)
    body = await sync(client, alice)
    assert receipts_of(body, room_id, bob).keys() == {(first, "m.read")}
    assert receipts_of(body, room_id, alice).keys() == {(second, "m.read")}
    # A member who joins later gets them with the room.
    since = (await sync(client, carol))["next_batch"]
    await join(client, carol, room_id)
    body = await sync(client, carol, since=since)
    assert receipts_of(body, room_id, bob).keys() == {(first, "m.read")}
    assert receipts_of(body, room_id, alice).keys() == {(second, "m.read")}


async def test_private_receipt_reaches_only_its_owner(client: TestClient, alice: User,
                                                      bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    sent = [await send_text(client, alice, room_id, f"m{i}") for i in range(2)]
    alice_since = (await sync(client, alice))["next_batch"]
    bob_since = (await sync(client, bob))["next_batch"]

    await read(client, bob, room_id, sent[0], "m.read.private")
    body = await sync(client, bob, since=bob_since)
    assert receipts_of(body, room_id, bob).keys() == {(sent[0], "m.read.private")}
    await quiet(client, alice, alice_since)
    assert receipts(await sync(client, alice), room_id) == {}
    assert receipts_of(await sync(client, bob), room_id, bob).keys() == \
        {(sent[0], "m.read.private")}

    # A public receipt after it: alice sees that one only, bob both.
    await read(client, bob, room_id, sent[1])
    body = await sync(client, alice, since=alice_since)
    assert receipts_of(body, room_id, bob).keys() == {(sent[1], "m.read")}
    assert receipts_of(await sync(client, alice), room_id, bob).keys() == {(sent[1], "m.read")}
    assert receipts_of(await sync(client, bob), room_id, bob).keys() == \
        {(sent[0], "m.read.private"), (sent[1], "m.read")}


async def test_threaded_receipts(client: TestClient, alice: User, bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    root = await send_text(client, alice, room_id, "root")
    reply = await send(client, alice, room_id, {
        "msgtype": "m.text", "body": "in thread",
        "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    since = (await sync(client, alice))["next_batch"]

    await read(client, bob, room_id, root, thread_id="main")
    await read(client, bob, room_id, reply, thread_id=root)
    body = await sync(client, alice, since=since)
    assert receipts_of(body, room_id, bob) == {
        (root, "m.read"): {"ts": receipts_of(body, room_id, bob)[(root, "m.read")]["ts"],
                           "thread_id": "main"},
        (reply, "m.read"): {"ts": receipts_of(body, room_id, bob)[(reply, "m.read")]["ts"],
                            "thread_id": root}}
    # Each thread has its own receipt: an unthreaded one on the root is new, not older.
    await read(client, bob, room_id, root)
    body = await sync(client, alice, since=body["next_batch"])
    assert receipts_of(body, room_id, bob) == {
        (root, "m.read"): {"ts": receipts_of(body, room_id, bob)[(root, "m.read")]["ts"]}}

    for bad in ({"thread_id": "not-a-thread"}, {"thread_id": ""}):
        status, data = await post_receipt(client, bob, room_id, "m.read", reply, bad)
        assert status == 400 and data["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON"), data
    status, data = await post_receipt(client, bob, room_id, "m.read", reply, {"thread_id": 7})
    assert_error(status, data, 400, "M_BAD_JSON")
    status, data = await post_receipt(client, bob, room_id, "m.fully_read", reply,
                                      {"thread_id": "main"})
    assert_error(status, data, 400, "M_INVALID_PARAM")


async def test_receipt_errors(client: TestClient, alice: User, bob: User,
                              carol: User) -> None:
    room_id = await shared_room(client, alice, bob)
    other_room = await shared_room(client, alice)
    event_id = await send_text(client, alice, room_id, "hello")
    elsewhere = await send_text(client, alice, other_room, "elsewhere")
    since = (await sync(client, alice))["next_batch"]

    for receipt_type in ("m.unread", "m.read.public", "m.fully_read.private", "x"):
        status, body = await post_receipt(client, bob, room_id, receipt_type, event_id)
        assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await post_receipt(client, bob, room_id, "m.read", elsewhere)
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await post_receipt(client, bob, room_id, "m.read", "$unknown:test.local")
    assert_error(status, body, 404, "M_NOT_FOUND")
    for receipt_type in ("m.read", "m.read.private", "m.fully_read"):
        status, body = await post_receipt(client, carol, room_id, receipt_type, event_id)
        assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await read_markers(client, carol, room_id, {"m.read": event_id})
    assert_error(status, body, 403, "M_FORBIDDEN")
    resp = await client.post(f"{V3}/rooms/{room_id}/receipt/m.read/{event_id}", data=b"{",
                             headers=bearer(bob.token))
    assert_error(resp.status, await resp.json(), 400, "M_NOT_JSON")
    # The body is required (the spec; Synapse too since 1.6x): none at all is not JSON.
    resp = await client.post(f"{V3}/rooms/{room_id}/receipt/m.read/{event_id}",
                             headers=bearer(bob.token))
    assert_error(resp.status, await resp.json(), 400, "M_NOT_JSON")
    resp = await client.post(f"{V3}/rooms/{room_id}/receipt/m.read/{event_id}", json={},
                             headers=bearer(bob.token))
    assert (resp.status, await resp.json()) == (200, {})

    # Only that last one reached alice.
    body = await sync(client, alice, since=since)
    assert receipts(body, room_id) == {
        event_id: {"m.read": {bob.user_id: receipts_of(body, room_id, bob)[
            (event_id, "m.read")]}}}
    assert other_room not in body["rooms"]["join"]


async def test_receipts_never_move_back(client: TestClient, alice: User, bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    sent = [await send_text(client, alice, room_id, f"m{i}") for i in range(3)]
    since = (await sync(client, alice))["next_batch"]
    for receipt_type in ("m.read", "m.read.private"):
        await read(client, bob, room_id, sent[2], receipt_type)
    body = await sync(client, alice, since=since)
    assert receipts_of(body, room_id, bob).keys() == {(sent[2], "m.read")}
    bob_body = await sync(client, bob)
    assert receipts_of(bob_body, room_id, bob).keys() == {
        (sent[2], "m.read"), (sent[2], "m.read.private")}

    # Older receipts (and the same one again) are accepted and ignored.
    for event_id in (sent[0], sent[2]):
        for receipt_type in ("m.read", "m.read.private"):
            await read(client, bob, room_id, event_id, receipt_type)
    status, data = await read_markers(client, bob, room_id, {"m.read": sent[1]})
    assert (status, data) == (200, {})
    await quiet(client, alice, body["next_batch"])
    await quiet(client, bob, bob_body["next_batch"])
    assert receipts_of(await sync(client, bob), room_id, bob).keys() == {
        (sent[2], "m.read"), (sent[2], "m.read.private")}
    assert await fresh_counts(client, bob, room_id) == (0, 0)


# -- m.fully_read -----------------------------------------------------------------------------

def fully_read_in(body: dict[str, Any], room_id: str) -> list[dict[str, Any]]:
    room = body["rooms"]["join"].get(room_id)
    return [e["content"] for e in (room["account_data"]["events"] if room else [])
            if e["type"] == "m.fully_read"]


async def get_fully_read(client: TestClient, user: User, room_id: str) -> tuple[int, Any]:
    return await api(client, "GET", f"/user/{user.user_id}/rooms/{room_id}/account_data/"
                     "m.fully_read", user)


async def test_fully_read_marker(client: TestClient, alice: User, bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    sent = [await send_text(client, alice, room_id, f"m{i}") for i in range(3)]
    status, body = await get_fully_read(client, bob, room_id)
    assert_error(status, body, 404, "M_NOT_FOUND")
    alice_since = (await sync(client, alice))["next_batch"]
    since = (await sync(client, bob))["next_batch"]

    # Through the receipt endpoint: room account data, not a receipt.
    task = await poll(client, bob, since)
    await read(client, bob, room_id, sent[0], "m.fully_read")
    _, body = await asyncio.wait_for(task, 5)
    assert fully_read_in(body, room_id) == [{"event_id": sent[0]}]
    assert receipts(body, room_id) == {}
    assert await get_fully_read(client, bob, room_id) == (200, {"event_id": sent[0]})

    # Through read_markers, with m.read alongside.
    status, data = await read_markers(client, bob, room_id,
                                      {"m.fully_read": sent[1], "m.read": sent[2]})
    assert (status, data) == (200, {})
    body = await sync(client, bob, since=body["next_batch"])
    assert fully_read_in(body, room_id) == [{"event_id": sent[1]}]
    assert receipts_of(body, room_id, bob).keys() == {(sent[2], "m.read")}
    assert await get_fully_read(client, bob, room_id) == (200, {"event_id": sent[1]})
    assert fully_read_in(await sync(client, bob), room_id) == [{"event_id": sent[1]}]

    # Alice sees bob's m.read, never his marker.
    body = await sync(client, alice, since=alice_since)
    assert receipts_of(body, room_id, bob).keys() == {(sent[2], "m.read")}
    assert fully_read_in(body, room_id) == []
    status, data = await get_fully_read(client, alice, room_id)
    assert_error(status, data, 404, "M_NOT_FOUND")
    status, data = await api(client, "GET", f"/user/{bob.user_id}/rooms/{room_id}/account_data/"
                             "m.fully_read", alice)
    assert_error(status, data, 403, "M_FORBIDDEN")

    # Clients cannot set it as plain account data.
    status, data = await api(client, "PUT", f"/user/{bob.user_id}/rooms/{room_id}/account_data/"
                             "m.fully_read", bob, {"event_id": sent[2]})
    assert_error(status, data, 405, "M_BAD_JSON")
    assert await get_fully_read(client, bob, room_id) == (200, {"event_id": sent[1]})

    # Unlike receipts, the marker may move back (as in Synapse: a user may undo marking
    # messages read).
    body = await sync(client, bob)
    assert await read_markers(client, bob, room_id, {"m.fully_read": sent[0]}) == (200, {})
    assert await get_fully_read(client, bob, room_id) == (200, {"event_id": sent[0]})
    body = await sync(client, bob, since=body["next_batch"])
    assert fully_read_in(body, room_id) == [{"event_id": sent[0]}]


async def test_read_markers_errors(client: TestClient, alice: User, bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    event_id = await send_text(client, alice, room_id, "hello")
    elsewhere = await send_text(client, alice, await shared_room(client, alice), "other")
    for bad in ({"m.fully_read": 5}, {"m.read": ["$x"]}, {"m.read.private": {}}):
        status, body = await read_markers(client, bob, room_id, bad)
        assert status == 400 and body["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON"), body
    status, body = await read_markers(client, bob, room_id, {"m.read": elsewhere})
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await read_markers(client, bob, room_id, {"m.fully_read": "$nope:x"})
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await read_markers(client, bob, room_id, [event_id])
    assert_error(status, body, 400, "M_BAD_JSON")
    # A bad one fails the request before anything is set.
    status, body = await read_markers(client, bob, room_id,
                                      {"m.fully_read": event_id, "m.read": 1})
    assert status == 400, body
    status, body = await get_fully_read(client, bob, room_id)
    assert_error(status, body, 404, "M_NOT_FOUND")
    # Nothing at all to set is fine.
    assert await read_markers(client, bob, room_id, {}) == (200, {})


# -- unread counts ----------------------------------------------------------------------------

async def test_unread_counts_follow_read_receipts(client: TestClient, alice: User,
                                                  bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    since = (await sync(client, bob))["next_batch"]
    sent = [await send_text(client, alice, room_id, f"m{i}") for i in range(3)]

    body = await sync(client, bob, since=since)
    assert timeline_ids(joined(body, room_id)) == sent
    assert unread(body, room_id) == (3, 0)
    assert await fresh_counts(client, bob, room_id) == (3, 0)
    # The sender has nothing unread.
    assert await fresh_counts(client, alice, room_id) == (0, 0)

    # Reading the second leaves one; the receipt brings the room into the next sync.
    await read(client, bob, room_id, sent[1])
    body = await sync(client, bob, since=body["next_batch"])
    ephemeral_only(body, room_id)
    assert unread(body, room_id) == (1, 0)
    assert await fresh_counts(client, bob, room_id) == (1, 0)

    # New messages add up (the incremental path), and a fresh sync agrees.
    more = [await send_text(client, alice, room_id, f"n{i}") for i in range(2)]
    body = await sync(client, bob, since=body["next_batch"])
    assert unread(body, room_id) == (3, 0)
    assert await fresh_counts(client, bob, room_id) == (3, 0)

    await read(client, bob, room_id, more[-1])
    body = await sync(client, bob, since=body["next_batch"])
    assert unread(body, room_id) == (0, 0)
    assert await fresh_counts(client, bob, room_id) == (0, 0)
    body = await sync(client, bob, since=body["next_batch"], timeout_ms=0)
    assert room_id not in body["rooms"]["join"]


async def test_unread_counts_through_limited_and_many_syncs(client: TestClient, alice: User,
                                                           bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    two = limit_filter(2)
    body = await sync(client, bob, sync_filter=two)
    assert unread(body, room_id) == (0, 0)
    expected = 0
    # One message per sync (the cached counts grow), then a burst over the timeline limit
    # (a gap: recounted), then one more.
    for burst in (1, 1, 1, 5, 1):
        for i in range(burst):
            await send_text(client, alice, room_id, f"{expected}-{i}")
        expected += burst
        body = await sync(client, bob, since=body["next_batch"], sync_filter=two)
        assert joined(body, room_id)["timeline"]["limited"] is (burst > 2)
        assert unread(body, room_id) == (expected, 0)
    assert unread(await sync(client, bob, sync_filter=two), room_id) == (expected, 0)
    assert await fresh_counts(client, bob, room_id) == (expected, 0)


async def test_what_counts_as_unread(client: TestClient, alice: User, bob: User) -> None:
    room_id = await shared_room(client, alice)
    # Before bob joined: not his to read.
    await send_text(client, alice, room_id, "before bob")
    await join(client, bob, room_id)
    since = (await sync(client, bob))["next_batch"]
    assert await fresh_counts(client, bob, room_id) == (0, 0)

    original = await send_text(client, alice, room_id, "typo")
    counted = [original]
    # An edit does not count.
    await send(client, alice, room_id, {
        "msgtype": "m.text", "body": "* fixed", "m.new_content": {"msgtype": "m.text",
                                                                 "body": "fixed"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": original}})
    # Nor do bob's own messages, reactions, or state.
    await send_text(client, bob, room_id, "mine")
    await send(client, alice, room_id, {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": original, "key": "👍"}}, "m.reaction")
    status, data = await api(client, "PUT", f"/rooms/{room_id}/state/m.room.topic", alice,
                             {"topic": "a topic"})
    assert status == 200, data
    # The spec's default push rules: stickers and polls (no rule) and notices
    # (.m.rule.suppress_notices) do not notify either.
    await send(client, alice, room_id, {
        "body": "sticker", "url": "mxc://test.local/abc", "info": {}}, "m.sticker")
    await send(client, alice, room_id, {
        "m.poll": {"question": {"m.text": [{"body": "?"}]}, "answers": []}}, "m.poll.start")
    await send(client, alice, room_id, {"msgtype": "m.notice", "body": "n"})
    # Encrypted messages do, as do replies and thread messages.
    counted.append(await send(client, alice, room_id, {
        "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AAAA", "sender_key": "k",
        "device_id": "D", "session_id": "s"}, "m.room.encrypted"))
    counted.append(await send(client, alice, room_id, {
        "msgtype": "m.text", "body": "in thread",
        "m.relates_to": {"rel_type": "m.thread", "event_id": original}}))

    body = await sync(client, bob, since=since)
    assert unread(body, room_id) == (len(counted), 0)
    assert await fresh_counts(client, bob, room_id) == (len(counted), 0)
    # Reading one's own message reads everything before it.
    mine = await send_text(client, bob, room_id, "mine again")
    await read(client, bob, room_id, mine)
    body = await sync(client, bob, since=body["next_batch"])
    assert unread(body, room_id) == (0, 0)


async def test_highlight_counts(client: TestClient, alice: User) -> None:
    # Bob goes by a display name of his own when he joins.
    bob = await new_user(client, "bob")
    status, data = await api(client, "PUT", f"/profile/{bob.user_id}/displayname", bob,
                             {"displayname": "Robert Tables"})
    assert status == 200, data
    room_id = await shared_room(client, alice, bob)
    body = await sync(client, bob)
    since = body["next_batch"]

    messages: list[tuple[dict[str, Any], bool]] = [
        ({"msgtype": "m.text", "body": "hello everyone"}, False),
        ({"msgtype": "m.text", "body": "hi", "m.mentions": {"user_ids": [bob.user_id]}}, True),
        ({"msgtype": "m.text", "body": "ask robert tables"}, True),  # display name
        ({"msgtype": "m.text", "body": "bob, look"}, True),  # localpart
        ({"msgtype": "m.text", "body": "@room heads up"}, True),
        ({"msgtype": "m.text", "body": "all", "m.mentions": {"room": True}}, True),
        # With m.mentions, what the body says does not matter.
        ({"msgtype": "m.text", "body": "Robert Tables", "m.mentions": {}}, False),
        ({"msgtype": "m.text", "body": "bob", "m.mentions": {"user_ids": [alice.user_id]}},
         False),
        ({"msgtype": "m.text", "body": "robertables bobby"}, False),  # not whole words
    ]
    for i, (content, _) in enumerate(messages):
        await send(client, alice, room_id, content)
        if i == 3:
            # Counted part by part (the cached path) and whole (the query) alike.
            part = await sync(client, bob, since=since)
            assert unread(part, room_id) == (4, 3)
    expected = (len(messages), sum(1 for _, hl in messages if hl))
    body = await sync(client, bob, since=part["next_batch"])
    assert unread(body, room_id) == expected
    assert unread(await sync(client, bob, since=since), room_id) == expected
    assert await fresh_counts(client, bob, room_id) == expected

    # An edit that mentions him in its own m.mentions counts as a mention (the spec's rule order:
    # .m.rule.is_user_mention before .m.rule.suppress_edits; clients list only new mentions
    # there); his own mention of himself does not count.
    last = await send(client, alice, room_id, {"msgtype": "m.text", "body": "x"})
    await send(client, alice, room_id, {
        "msgtype": "m.text", "body": "* bob", "m.mentions": {"user_ids": [bob.user_id]},
        "m.new_content": {"msgtype": "m.text", "body": "bob"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": last}})
    mine = await send(client, bob, room_id, {"msgtype": "m.text", "body": "Robert Tables here",
                                             "m.mentions": {"user_ids": [bob.user_id]}})
    expected = (expected[0] + 2, expected[1] + 1)
    body = await sync(client, bob, since=body["next_batch"])
    assert unread(body, room_id) == expected
    assert await fresh_counts(client, bob, room_id) == expected

    # Reading clears highlights too.
    await read(client, bob, room_id, mine)
    assert unread(await sync(client, bob, since=body["next_batch"]), room_id) == (0, 0)
    assert await fresh_counts(client, bob, room_id) == (0, 0)


@pytest.mark.parametrize("name, text", [
    ('Bo "B" Smith', 'hi bo "b" smith'),  # escaped in the event's JSON
    ("C:\\temp", "ask c:\\TEMP"),
    ("Zoë", "ZOË, look"),  # SQLite's lower() leaves Ë as it is
    ("Иван", "иван?"),
    ("50%_off", "50%_OFF!"),  # LIKE's wildcards, literally
])
async def test_highlight_by_display_names_json_escapes(client: TestClient, alice: User,
                                                       name: str, text: str) -> None:
    bob = await new_user(client, "bob")
    status, data = await api(client, "PUT", f"/profile/{bob.user_id}/displayname", bob,
                             {"displayname": name})
    assert status == 200, data
    room_id = await shared_room(client, alice, bob)
    since = (await sync(client, bob))["next_batch"]
    await send(client, alice, room_id, {"msgtype": "m.text", "body": text})
    await send(client, alice, room_id, {"msgtype": "m.text", "body": name[:-1] + "x"})
    assert unread(await sync(client, bob, since=since), room_id) == (2, 1)
    assert await fresh_counts(client, bob, room_id) == (2, 1)


async def test_unread_counts_survive_a_display_name_change(client: TestClient, alice: User,
                                                           bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    await send_text(client, alice, room_id, "one")
    await send_text(client, alice, room_id, "two")
    body = await sync(client, bob)
    assert unread(body, room_id) == (2, 0)
    # A new name is a new join event in the room; it reads nothing.
    status, data = await api(client, "PUT", f"/profile/{bob.user_id}/displayname", bob,
                             {"displayname": "Bobby"})
    assert status == 200, data
    await send_text(client, alice, room_id, "three")
    body = await sync(client, bob, since=body["next_batch"])
    assert unread(body, room_id) == (3, 0)
    assert await fresh_counts(client, bob, room_id) == (3, 0)
    # Nor does a second one, or a new avatar.
    for field, value in (("displayname", "Robert"), ("avatar_url", "mxc://test.local/a")):
        status, data = await api(client, "PUT", f"/profile/{bob.user_id}/{field}", bob,
                                 {field: value})
        assert status == 200, data
    last = await send_text(client, alice, room_id, "four")
    assert unread(await sync(client, bob, since=body["next_batch"]), room_id) == (4, 0)
    assert await fresh_counts(client, bob, room_id) == (4, 0)

    # Leaving and joining again is a new join: what came while he was away does not count.
    await read(client, bob, room_id, last)
    status, data = await api(client, "POST", f"/rooms/{room_id}/leave", bob, {})
    assert status == 200, data
    await send_text(client, alice, room_id, "while away")
    await join(client, bob, room_id)
    await send_text(client, alice, room_id, "welcome back")
    assert await fresh_counts(client, bob, room_id) == (1, 0)


async def test_read_markers_m_read_lowers_unread(client: TestClient, alice: User,
                                                 bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    sent = [await send_text(client, alice, room_id, f"m{i}") for i in range(4)]
    alice_since = (await sync(client, alice))["next_batch"]
    body = await sync(client, bob)
    assert unread(body, room_id) == (4, 0)

    status, data = await read_markers(client, bob, room_id, {"m.read": sent[1]})
    assert (status, data) == (200, {})
    body = await sync(client, bob, since=body["next_batch"])
    assert unread(body, room_id) == (2, 0)
    assert receipts_of(body, room_id, bob).keys() == {(sent[1], "m.read")}
    alice_body = await sync(client, alice, since=alice_since)
    assert receipts_of(alice_body, room_id, bob).keys() == {(sent[1], "m.read")}

    # A private read marker lowers it as well, and alice does not hear of it.
    status, data = await read_markers(client, bob, room_id, {"m.read.private": sent[2]})
    assert (status, data) == (200, {})
    body = await sync(client, bob, since=body["next_batch"])
    assert unread(body, room_id) == (1, 0)
    assert receipts_of(body, room_id, bob).keys() == {(sent[2], "m.read.private")}
    await quiet(client, alice, alice_body["next_batch"])
    assert await fresh_counts(client, bob, room_id) == (1, 0)

    # All three at once.
    status, data = await read_markers(client, bob, room_id, {
        "m.fully_read": sent[3], "m.read": sent[3], "m.read.private": sent[3]})
    assert (status, data) == (200, {})
    body = await sync(client, bob, since=body["next_batch"])
    assert unread(body, room_id) == (0, 0)
    assert fully_read_in(body, room_id) == [{"event_id": sent[3]}]
    assert receipts_of(body, room_id, bob).keys() == {(sent[3], "m.read"),
                                                      (sent[3], "m.read.private")}



# -- counts and receipts kept in memory agree with the database --------------------------------

async def test_unread_counts_moved_on_in_memory_match_a_recount(
        client: TestClient, alice: User, bob: User) -> None:
    """Bob's counts follow messages, mentions, edits and his own reads (receipts that move
    his start to older, newer and the newest event) incrementally; at every step they equal a
    recount by query."""
    room_id = await shared_room(client, alice, bob)
    since = (await sync(client, bob))["next_batch"]
    sent: list[str] = []
    steps: list[tuple[str, Any]] = [
        ("send", "hello"), ("send", "bob: are you there?"), ("send", "@room lunch"),
        ("read", 0), ("send", "more"), ("edit", 1), ("read", -1), ("send", "again"),
        ("send", "and again"), ("read", 1), ("send", "last one"), ("read", -1),
    ]
    for kind, arg in steps:
        if kind == "send":
            sent.append(await send_text(client, alice, room_id, arg))
        elif kind == "edit":
            sent.append(await send(client, alice, room_id, {
                "msgtype": "m.text", "body": "* edited", "m.new_content": {
                    "msgtype": "m.text", "body": "edited"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": sent[arg]}}))
        else:
            await read(client, bob, room_id, sent[arg])
        body = await sync(client, bob, since=since)
        since = body["next_batch"]
        if room_id in body["rooms"]["join"]:
            assert unread(body, room_id) == await fresh_counts(client, bob, room_id), (kind,
                                                                                       arg)


async def test_receipts_read_from_memory_match_the_database(
        client: TestClient, alice: User, bob: User, carol: User) -> None:
    room_id = await shared_room(client, alice, bob, carol)
    other = await shared_room(client, alice, bob)
    receipts_service = client.app[SERVICES].receipts
    start = receipts_service.position
    events = [await send_text(client, alice, room_id, f"{i}") for i in range(3)]
    elsewhere = await send_text(client, alice, other, "elsewhere")
    await read(client, bob, room_id, events[0])
    await read(client, carol, room_id, events[1])
    await read(client, bob, room_id, events[2])  # replaces bob's first
    await post_receipt(client, carol, room_id, "m.read.private", events[2])
    await read(client, bob, other, elsewhere)
    middle = receipts_service.position - 2
    for user, rooms in ((alice, [room_id, other]), (carol, [room_id]), (bob, [other])):
        for after, up_to in ((start, receipts_service.position), (middle,
                                                                  receipts_service.position),
                             (start, middle)):
            from_memory = await receipts_service.ephemeral(user.user_id, rooms, after, up_to)
            floor, receipts_service._recent.floor = receipts_service._recent.floor, 2**62
            try:
                from_db = await receipts_service.ephemeral(user.user_id, rooms, after, up_to)
            finally:
                receipts_service._recent.floor = floor
            assert from_memory == from_db, (user.user_id, after, up_to)


# -- a busy device gets typing and receipts in batches -----------------------------------------

@pytest.fixture
def slow_ephemeral(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> float:
    """An interval long enough to tell a held response from one that was not."""
    interval = 0.8
    monkeypatch.setattr(client.app[SERVICES].sync, "EPHEMERAL_INTERVAL_S", interval)
    return interval


async def test_a_busy_device_gets_typing_and_receipts_in_batches(
        client: TestClient, alice: User, bob: User, carol: User, slow_ephemeral: float
        ) -> None:
    room_id = await shared_room(client, alice, bob, carol)
    since = (await sync(client, bob))["next_batch"]
    # A quiet device hears of typing at once...
    task = await poll(client, bob, since)
    await typing_on(client, alice, room_id)
    took, body = await task
    assert took < slow_ephemeral / 2
    assert typing_users(body, room_id) == [alice.user_id]
    # ...but right after a response, receipts and typing that follow gather until the
    # interval is over, and come in one response.
    event_id = await send_text(client, carol, room_id, "news")
    body = await sync(client, bob, since=body["next_batch"])
    started = time.monotonic()
    task = await poll(client, bob, body["next_batch"])
    await read(client, alice, room_id, event_id)
    await typing_off(client, alice, room_id)
    await read(client, carol, room_id, event_id)
    _, body = await task
    assert time.monotonic() - started >= slow_ephemeral * 0.8
    assert typing_users(body, room_id) == []
    assert set(receipts(body, room_id)[event_id]["m.read"]) == {alice.user_id, carol.user_id}
    # An event ends the wait at once, and brings what gathered.
    task = await poll(client, bob, body["next_batch"])
    await typing_on(client, carol, room_id)
    said = await send_text(client, alice, room_id, "now")
    sent_at = time.monotonic()
    took, body = await task
    assert time.monotonic() - sent_at < slow_ephemeral / 2
    assert timeline_ids(joined(body, room_id)) == [said]
