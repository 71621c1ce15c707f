"""Presence (https://spec.matrix.org/v1.19/client-server-api/#presence) over real HTTP:
PUT/GET /presence/{userId}/status, the ``presence`` section of /sync and who sees it (only
users sharing a joined room), ``set_presence``, the idle and offline timers, long polls woken
by presence, ``presence.enabled: false``, and presence kept across a restart.

Every test runs on SQLite and on a throwaway PostgreSQL schema. Timers are configured short
(hundreds of milliseconds) where a test waits for them; elsewhere they are long enough never
to fire during a test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from homeserver.app import build_app
from tests.client_api.test_sse import open_stream
from tests.client_api.test_sync import leave, sync
from tests.conftest import bearer
from tests.helpers.harness import Harness, harness_services
from tests.helpers.room_api import (
    V3,
    User,
    api,
    assert_error,
    create_room,
    join,
    new_user,
    send_text,
)
from tests.helpers.spec import assert_matches_spec

LONG_MS = 60_000  # never fires during a test
QUIET = {"presence": {"idle_timeout_ms": LONG_MS, "offline_timeout_ms": LONG_MS}}
SHORT_OFFLINE_MS = 500
SHORT_OFFLINE = {"presence": {"idle_timeout_ms": LONG_MS,
                              "offline_timeout_ms": SHORT_OFFLINE_MS}}
SHORT_IDLE_MS = 500
SHORT_IDLE = {"presence": {"idle_timeout_ms": SHORT_IDLE_MS, "offline_timeout_ms": LONG_MS}}
DISABLED = {"presence": {"enabled": False}}
# Slack allowed beyond a configured timeout before the change must have been seen.
MARGIN_S = 2.0


# -- the server: SQLite or PostgreSQL, restartable ---------------------------------------------

@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return QUIET


services = harness_services


@pytest.fixture
async def room(client: TestClient, alice: User, bob: User) -> str:
    """A room alice and bob are joined to (carol is not)."""
    room_id = await create_room(client, alice, preset="public_chat", name="Shared")
    await join(client, bob, room_id)
    return room_id


# -- helpers ----------------------------------------------------------------------------------

async def put_presence(client: TestClient, user: User, body: Any,
                       target: str | None = None) -> tuple[int, Any]:
    return await api(client, "PUT", f"/presence/{target or user.user_id}/status", user, body)


async def get_presence(client: TestClient, user: User, target: str | User
                       ) -> tuple[int, Any]:
    target_id = target.user_id if isinstance(target, User) else target
    return await api(client, "GET", f"/presence/{target_id}/status", user)


async def presence_seen_by(client: TestClient, user: User, target: User) -> dict[str, Any]:
    status, body = await get_presence(client, user, target)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def set_own(client: TestClient, user: User, presence: str, **extra: Any) -> None:
    status, body = await put_presence(client, user, {"presence": presence, **extra})
    assert status == 200, body
    assert body == {}


async def sync_with(client: TestClient, user: User, *, set_presence: str,
                    since: str | None = None) -> tuple[int, Any]:
    """One /sync with ``set_presence``; a 200 body is checked against the spec."""
    query = {"set_presence": set_presence}
    if since is not None:
        query["since"] = since
    resp = await client.get(V3 + "/sync", params=query, headers=bearer(user.token))
    body = await resp.json()
    if resp.status == 200:
        assert_matches_spec("client-server", "GET", "/sync", 200, body)
    return resp.status, body


def presence_of(body: dict[str, Any], user_id: str) -> dict[str, Any] | None:
    """The content of the last m.presence event about ``user_id`` in a sync response."""
    found = [e for e in body["presence"]["events"] if e["sender"] == user_id]
    for event in found:
        assert event["type"] == "m.presence"
        assert set(event) == {"type", "sender", "content"}
    return found[-1]["content"] if found else None


def senders(body: dict[str, Any]) -> set[str]:
    return {e["sender"] for e in body["presence"]["events"]}


async def wait_for_presence(client: TestClient, user: User, since: str, target: User,
                            wanted: Callable[[dict[str, Any]], bool], within_s: float
                            ) -> tuple[dict[str, Any], str]:
    """Long-poll as ``user`` from ``since`` until a response carries ``target``'s presence
    matching ``wanted``; fails after ``within_s``. Returns that content and the next token."""
    deadline = time.monotonic() + within_s
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{user.user_id} did not see the wanted presence of " \
                              f"{target.user_id} within {within_s}s"
        body = await sync(client, user, since=since, timeout_ms=max(1, int(remaining * 1000)))
        since = body["next_batch"]
        content = presence_of(body, target.user_id)
        if content is not None and wanted(content):
            return content, since


def state_is(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda content: content["presence"] == state


def assert_online_content(content: dict[str, Any], status_msg: str | None = None) -> None:
    assert content["presence"] == "online"
    assert content["currently_active"] is True
    assert isinstance(content["last_active_ago"], int)
    assert 0 <= content["last_active_ago"] < 10_000
    if status_msg is None:
        assert "status_msg" not in content
    else:
        assert content["status_msg"] == status_msg


# -- PUT and GET ------------------------------------------------------------------------------

async def test_put_own_presence_reaches_room_members(client: TestClient, alice: User,
                                                     bob: User, room: str) -> None:
    since = (await sync(client, bob))["next_batch"]

    await set_own(client, alice, "online", status_msg="Lunch")
    body = await sync(client, bob, since=since, timeout_ms=5000)
    content = presence_of(body, alice.user_id)
    assert content is not None, body["presence"]
    assert_online_content(content, "Lunch")
    assert_online_content(await presence_seen_by(client, bob, alice), "Lunch")
    assert_online_content(await presence_seen_by(client, alice, alice), "Lunch")

    # A new status message (and state) travels too; currently_active is for online users.
    await set_own(client, alice, "unavailable", status_msg="Back soon")
    content, since = await wait_for_presence(client, bob, body["next_batch"], alice,
                                             state_is("unavailable"), 5)
    assert content["status_msg"] == "Back soon"
    assert content.get("currently_active") is not True
    assert isinstance(content["last_active_ago"], int)
    got = await presence_seen_by(client, bob, alice)
    assert (got["presence"], got["status_msg"]) == ("unavailable", "Back soon")

    # A PUT without status_msg keeps the message; an explicit null clears it.
    await set_own(client, alice, "online")
    content, since = await wait_for_presence(client, bob, since, alice, state_is("online"), 5)
    assert content["status_msg"] == "Back soon"
    await set_own(client, alice, "online", status_msg=None)
    content, since = await wait_for_presence(client, bob, since, alice,
                                             lambda c: "status_msg" not in c, 5)
    assert_online_content(content)
    assert "status_msg" not in await presence_seen_by(client, bob, alice)

    # Refused: another user's presence, unknown states, missing or mistyped fields, bad IDs.
    status, body = await put_presence(client, alice, {"presence": "online"},
                                      target=bob.user_id)
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await put_presence(client, alice, {"presence": "busy"})
    assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await put_presence(client, alice, {"status_msg": "no state"})
    assert_error(status, body, 400, "M_MISSING_PARAM")
    status, body = await put_presence(client, alice, {"presence": "online", "status_msg": 5})
    assert_error(status, body, 400, "M_BAD_JSON")
    status, body = await put_presence(client, alice, {"presence": 1})
    assert_error(status, body, 400, "M_BAD_JSON")
    status, body = await put_presence(client, alice, ["online"])
    assert_error(status, body, 400, "M_BAD_JSON")
    status, body = await put_presence(client, alice, {"presence": "online"}, target="alice")
    assert_error(status, body, 400, "M_INVALID_PARAM")
    resp = await client.put(f"{V3}/presence/{alice.user_id}/status",
                            json={"presence": "online"})
    assert resp.status == 401
    # None of that changed anything.
    got = await presence_seen_by(client, bob, alice)
    assert (got["presence"], "status_msg" in got) == ("online", False)
    quiet = await sync(client, bob, since=since)
    assert alice.user_id not in senders(quiet)


async def test_presence_only_for_users_sharing_a_room(client: TestClient, alice: User,
                                                      bob: User, carol: User,
                                                      room: str) -> None:
    await set_own(client, bob, "unavailable", status_msg="afk")
    await set_own(client, carol, "online")
    await set_own(client, alice, "online", status_msg="visible to bob only")

    # An initial sync lists the user and every co-member who has a state, nobody else.
    body = await sync(client, alice)
    assert senders(body) == {alice.user_id, bob.user_id}
    assert_online_content(presence_of(body, alice.user_id) or {}, "visible to bob only")
    bob_content = presence_of(body, bob.user_id)
    assert bob_content is not None
    assert (bob_content["presence"], bob_content["status_msg"]) == ("unavailable", "afk")
    status, filtered = await api(client, "GET", "/sync", alice,
                                 query={"filter": '{"presence": {"not_types": ["*"]}}'})
    assert status == 200, filtered
    assert filtered["presence"]["events"] == []

    # carol shares no room with alice: GET is refused, her syncs never carry alice.
    status, body = await get_presence(client, carol, alice)
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await get_presence(client, carol, "@nobody:test.local")
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await get_presence(client, carol, "not-a-user-id")
    assert_error(status, body, 400, "M_INVALID_PARAM")
    initial = await sync(client, carol)
    assert senders(initial) == {carol.user_id}
    await set_own(client, alice, "unavailable", status_msg="still hidden")
    quiet = await sync(client, carol, since=initial["next_batch"])
    assert alice.user_id not in senders(quiet)

    # Once carol joins a room of alice's, her next sync carries alice's current presence
    # (though alice did not change) and she may GET it.
    await join(client, carol, room)
    joined = await sync(client, carol, since=quiet["next_batch"])
    content = presence_of(joined, alice.user_id)
    assert content is not None
    assert (content["presence"], content["status_msg"]) == ("unavailable", "still hidden")
    assert (await presence_seen_by(client, carol, alice))["status_msg"] == "still hidden"

    # Leaving again hides alice's changes from carol.
    await leave(client, carol, room)
    since = (await sync(client, carol, since=joined["next_batch"]))["next_batch"]
    await set_own(client, alice, "online", status_msg="gone from carol")
    later = await sync(client, carol, since=since)
    assert alice.user_id not in senders(later)
    status, body = await get_presence(client, carol, alice)
    assert_error(status, body, 403, "M_FORBIDDEN")


# -- set_presence -----------------------------------------------------------------------------

async def test_syncing_sets_presence(client: TestClient, alice: User, bob: User,
                                     room: str) -> None:
    since = (await sync(client, bob))["next_batch"]
    await sync(client, alice)  # set_presence defaults to online
    assert_online_content(await presence_seen_by(client, bob, alice))
    content, since = await wait_for_presence(client, bob, since, alice, state_is("online"), 5)
    assert_online_content(content)

    # set_presence=offline leaves the state alone, for someone unknown as for alice.
    dave = await new_user(client, "dave")
    await join(client, dave, room)
    status, body = await sync_with(client, dave, set_presence="offline")
    assert status == 200, body
    assert dave.user_id not in senders(body)
    assert await presence_seen_by(client, bob, dave) == {"presence": "offline"}
    status, body = await sync_with(client, alice, set_presence="offline")
    assert status == 200, body
    assert (await presence_seen_by(client, bob, alice))["presence"] == "online"

    # set_presence=unavailable marks the user unavailable.
    status, body = await sync_with(client, dave, set_presence="unavailable")
    assert status == 200, body
    assert (await presence_seen_by(client, bob, dave))["presence"] == "unavailable"
    content, _ = await wait_for_presence(client, bob, since, dave, state_is("unavailable"), 5)
    assert content.get("currently_active") is not True

    status, body = await sync_with(client, alice, set_presence="away")
    assert_error(status, body, 400, "M_INVALID_PARAM")


# -- long polls -------------------------------------------------------------------------------

async def test_long_poll_woken_by_presence_of_a_room_member(client: TestClient, alice: User,
                                                            bob: User, carol: User,
                                                            room: str) -> None:
    bob_since = (await sync(client, bob))["next_batch"]
    carol_since = (await sync(client, carol))["next_batch"]

    async def timed(user: User, since: str, timeout_ms: int) -> tuple[dict[str, Any], float]:
        start = time.monotonic()
        body = await sync(client, user, since=since, timeout_ms=timeout_ms)
        return body, time.monotonic() - start

    bob_poll = asyncio.create_task(timed(bob, bob_since, 20_000))
    carol_poll = asyncio.create_task(timed(carol, carol_since, 700))
    await asyncio.sleep(0.2)
    await set_own(client, alice, "unavailable", status_msg="in a meeting")

    body, elapsed = await bob_poll
    assert elapsed < 5
    content = presence_of(body, alice.user_id)
    assert content is not None
    assert (content["presence"], content["status_msg"]) == ("unavailable", "in a meeting")
    # carol shares no room with alice: her long poll ran to its timeout, empty.
    body, elapsed = await carol_poll
    assert elapsed >= 0.6
    assert body["presence"]["events"] == []


# -- timers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("config_overrides", [SHORT_OFFLINE])
async def test_offline_after_the_last_connection_ends(client: TestClient, alice: User,
                                                      bob: User, carol: User,
                                                      room: str) -> None:
    """Three users at once (bob watches each with his own long polls): alice long-polls
    for a while then stops, carol holds an event stream then closes it, dave never syncs
    (sets his presence, later sends). Connected, they stay online beyond the timeout; the
    timeout after the connection ends (or after the PUT or send, without one), offline."""
    await join(client, carol, room)
    dave = await new_user(client, "dave")
    await join(client, dave, room)
    start = (await sync(client, bob))["next_batch"]
    held_s = SHORT_OFFLINE_MS * 1.5 / 1000
    within_s = SHORT_OFFLINE_MS / 1000 + MARGIN_S

    async def went_offline(user: User, since: str, ended: float) -> str:
        content, since = await wait_for_presence(client, bob, since, user,
                                                 state_is("offline"), within_s)
        assert time.monotonic() - ended >= SHORT_OFFLINE_MS / 1000 - 0.2
        assert content.get("currently_active") is not True
        assert isinstance(content["last_active_ago"], int)
        assert (await presence_seen_by(client, bob, user))["presence"] == "offline"
        return since

    async def alice_long_polls() -> None:
        token = (await sync(client, alice))["next_batch"]
        until = time.monotonic() + held_s
        while time.monotonic() < until:  # like a client: one long poll after the other
            token = (await sync(client, alice, since=token, timeout_ms=200))["next_batch"]
        ended = time.monotonic()  # (measured before anything else can delay it)
        assert (await presence_seen_by(client, bob, alice))["presence"] == "online"
        since = await went_offline(alice, start, ended)
        # Syncing again brings her back.
        await sync(client, alice)
        content, _ = await wait_for_presence(client, bob, since, alice, state_is("online"), 5)
        assert_online_content(content)

    async def carol_streams() -> None:
        async with open_stream(client, carol) as stream:
            first = await stream.next_sync()
            assert presence_of(first, carol.user_id) is not None
            await asyncio.sleep(held_s)
            assert (await presence_seen_by(client, bob, carol))["presence"] == "online"
        closed = time.monotonic()
        # The server notices the stream is gone at its next write: this message is one.
        await send_text(client, bob, room, "anyone there?")
        await went_offline(carol, start, closed)

    async def dave_never_syncs() -> None:
        await set_own(client, dave, "online", status_msg="no client")
        since = await went_offline(dave, start, time.monotonic())
        sent = time.monotonic()  # before: the timer starts while the send is handled
        await send_text(client, dave, room, "sent by a script")
        content, since = await wait_for_presence(client, bob, since, dave,
                                                 state_is("online"), 5)
        assert_online_content(content, "no client")
        await went_offline(dave, since, sent)

    await asyncio.gather(alice_long_polls(), carol_streams(), dave_never_syncs())


@pytest.mark.parametrize("config_overrides", [SHORT_IDLE])
async def test_idle_then_active_again(client: TestClient, alice: User, bob: User,
                                      room: str) -> None:
    since = (await sync(client, bob))["next_batch"]
    start = time.monotonic()  # before: the timer starts while the PUT is handled
    await set_own(client, alice, "online", status_msg="working")
    content, since = await wait_for_presence(client, bob, since, alice,
                                             state_is("unavailable"),
                                             SHORT_IDLE_MS / 1000 + MARGIN_S)
    assert time.monotonic() - start >= SHORT_IDLE_MS / 1000 - 0.2
    assert content["status_msg"] == "working"
    assert content["last_active_ago"] >= SHORT_IDLE_MS - 200
    assert (await presence_seen_by(client, bob, alice))["presence"] == "unavailable"

    # Sending a message makes her active and online again.
    await send_text(client, alice, room, "back")
    content, since = await wait_for_presence(client, bob, since, alice, state_is("online"), 5)
    assert_online_content(content, "working")
    assert content["last_active_ago"] < SHORT_IDLE_MS


# -- disabled ---------------------------------------------------------------------------------

@pytest.mark.parametrize("config_overrides", [DISABLED])
async def test_disabled(client: TestClient, alice: User, bob: User, room: str) -> None:
    await set_own(client, alice, "online", status_msg="nobody hears this")
    status, body = await put_presence(client, alice, {"presence": "busy"})
    assert_error(status, body, 400, "M_INVALID_PARAM")
    assert await presence_seen_by(client, bob, alice) == {"presence": "offline"}
    assert await presence_seen_by(client, alice, alice) == {"presence": "offline"}

    first = await sync(client, bob)
    assert first["presence"]["events"] == []
    await sync(client, alice)
    status, body = await sync_with(client, alice, set_presence="unavailable")
    assert status == 200, body
    assert body["presence"]["events"] == []
    await send_text(client, alice, room, "hello")
    later = await sync(client, bob, since=first["next_batch"], timeout_ms=1000)
    assert later["presence"]["events"] == []
    assert (await sync(client, bob))["presence"]["events"] == []


# -- restart ----------------------------------------------------------------------------------

async def test_kept_across_restart_then_offline(harness: Harness, client: TestClient,
                                                alice: User, bob: User, carol: User,
                                                room: str,
                                                aiohttp_client: Callable[..., Any]) -> None:
    await join(client, carol, room)
    await set_own(client, alice, "online", status_msg="at lunch")
    await set_own(client, bob, "unavailable", status_msg="away")
    await set_own(client, carol, "offline", status_msg="on holiday")
    before = await sync(client, bob)
    assert senders(before) == {alice.user_id, bob.user_id, carol.user_id}

    # The next life goes offline soon; nobody reconnects. (Its timers start while the
    # services start: 3 s leaves a slow machine time to read the states before they fire.)
    offline_ms = 3000
    harness.overrides = {"presence": {"idle_timeout_ms": LONG_MS,
                                      "offline_timeout_ms": offline_ms}}
    started = time.monotonic()
    services = await harness.restart()
    client = await aiohttp_client(build_app(services))

    got = await presence_seen_by(client, carol, alice)
    assert (got["presence"], got["status_msg"]) == ("online", "at lunch")
    got = await presence_seen_by(client, alice, bob)
    assert (got["presence"], got["status_msg"]) == ("unavailable", "away")
    got = await presence_seen_by(client, alice, carol)
    assert (got["presence"], got["status_msg"]) == ("offline", "on holiday")

    # A token from before the restart still works, and brings both online users' offline.
    since = before["next_batch"]
    for user, msg in ((alice, "at lunch"), (bob, "away")):
        content, _ = await wait_for_presence(client, carol, since, user, state_is("offline"),
                                             offline_ms / 1000 + MARGIN_S)
        assert content["status_msg"] == msg
    assert time.monotonic() - started >= offline_ms / 1000

    # Once more: the offline states are what the next life starts from.
    services = await harness.restart()
    client = await aiohttp_client(build_app(services))
    initial = await sync(client, carol)
    for user, msg in ((alice, "at lunch"), (bob, "away")):
        content = presence_of(initial, user.user_id)
        assert content is not None
        assert (content["presence"], content["status_msg"]) == ("offline", msg)
