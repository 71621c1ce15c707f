"""/sync for many clients following busy rooms, over real HTTP: long polls answered as events
commit (and paced only while the server is behind),
the in-memory recent events, lazy-loaded members sent once per device, the event cache and
redactions, the per-user membership cache, account data that the "nothing changed" shortcut
must not hide, and integers orjson cannot encode."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from homeserver.services.container import Services, build_services
from homeserver.services.recent_events import RecentRoomEvents
from homeserver.services.sync import SyncService
from storage import Database
from tests.client_api.test_account import login
from tests.client_api.test_room_history import redact
from tests.client_api.test_sync import (
    invite,
    joined,
    leave,
    limit_filter,
    no_rooms,
    put_account_data,
    sync,
    sync_raw,
    timeline_bodies,
    timeline_ids,
)
from tests.conftest import PostgresSchema, make_config, postgres_url, test_hasher
from tests.helpers.room_api import (
    User,
    api,
    create_room,
    join,
    messages,
    new_user,
    send_text,
    txn,
)

BIG = 2**70


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Presence off: its updates would end long polls of their own and make the batching
    and timing here depend on who was active when (presence has tests of its own)."""
    return {"presence": {"enabled": False}}


@pytest.fixture(params=["sqlite", "postgres"])
async def services(request: pytest.FixtureRequest, tmp_path: Path,
                   config_overrides: dict[str, Any]) -> AsyncIterator[Services]:
    """The server of these tests (and so the ``client``), once on SQLite and once on a
    throwaway PostgreSQL schema; passwords hashed at the tests' cost (``test_hasher``)."""
    if request.param == "sqlite":
        built = build_services(make_config(tmp_path, **config_overrides), hasher=test_hasher())
        schema = None
    else:
        url = postgres_url()
        assert url is not None
        schema = PostgresSchema(url)
        await schema.create()
        config = make_config(tmp_path, **{**config_overrides, "database": {"url": url}})
        built = build_services(config, db=Database(url, postgres_search_path=schema.name),
                               hasher=test_hasher())
    try:
        await built.start()
        try:
            yield built
        finally:
            await built.stop()
    finally:
        if schema is not None:
            await schema.drop()


LAZY: dict[str, Any] = {"room": {"timeline": {"limit": 10},
                                 "state": {"lazy_load_members": True}}}


def members_in_state(room: dict[str, Any]) -> dict[str, str]:
    """state_key -> event ID of the member events in a room's state section."""
    return {e["state_key"]: e["event_id"] for e in room["state"]["events"]
            if e["type"] == "m.room.member"}


async def second_device(client: TestClient, user: User) -> User:
    status, body = await login(client, user=user.user_id)
    assert status == 200, body
    return User(user.user_id, body["access_token"], body["device_id"])


async def get_event(client: TestClient, user: User, room_id: str, event_id: str
                    ) -> dict[str, Any]:
    status, body = await api(client, "GET", f"/rooms/{room_id}/event/{event_id}", user)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


# -- a busy room, long polls answered at once --------------------------------------------------

async def test_busy_room_reaches_a_long_poller_whole_and_in_order(
        client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    sync_filter = limit_filter(100)
    since = (await sync(client, bob, sync_filter=sync_filter))["next_batch"]
    done = asyncio.Event()
    count = 30

    async def send_all() -> list[str]:
        sent = [await send_text(client, alice, room_id, f"burst {i}") for i in range(count)]
        done.set()
        return sent

    async def follow(since: str) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            finished = done.is_set()
            # Once the sender is done, a short poll shows nothing more is coming.
            body = await sync(client, bob, since=since, timeout_ms=300 if finished else 5_000,
                              sync_filter=sync_filter)
            since = body["next_batch"]
            if body["rooms"]["join"]:
                room = joined(body, room_id)
                assert room["timeline"]["limited"] is False
                seen += timeline_ids(room)
            elif finished:
                return seen
        raise AssertionError("the long poller never caught up")

    poller = asyncio.create_task(follow(since))
    await asyncio.sleep(0.05)
    sent = await send_all()
    seen = await poller

    # Every message exactly once, in the room's order.
    assert seen == sent
    status, chunk = await messages(client, bob, room_id, dir="f", limit=1000)
    assert status == 200
    assert [e["event_id"] for e in chunk["chunk"] if e["event_id"] in set(sent)] == seen


async def test_many_devices_following_a_busy_room(client: TestClient, alice: User,
                                                  bob: User, carol: User) -> None:
    """Several connections of several users: each gets every event once, in order."""
    room_id = await create_room(client, alice, preset="public_chat")
    for user in (bob, carol):
        await join(client, user, room_id)
    followers = [bob, carol, await second_device(client, bob)]
    sync_filter = limit_filter(100)
    starts = [(await sync(client, u, sync_filter=sync_filter))["next_batch"]
              for u in followers]
    done = asyncio.Event()

    async def follow(user: User, since: str) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            finished = done.is_set()
            body = await sync(client, user, since=since,
                              timeout_ms=300 if finished else 5_000, sync_filter=sync_filter)
            since = body["next_batch"]
            if room_id in body["rooms"]["join"]:
                assert body["rooms"]["join"][room_id]["timeline"]["limited"] is False
                seen += timeline_ids(body["rooms"]["join"][room_id])
            elif finished:
                return seen
        raise AssertionError(f"{user.device_id} never caught up")

    loops = [asyncio.create_task(follow(u, s)) for u, s in zip(followers, starts, strict=True)]
    await asyncio.sleep(0.05)
    # Two senders at once.
    sent = await asyncio.gather(
        *(send_text(client, alice, room_id, f"a{i}") for i in range(12)),
        *(send_text(client, carol, room_id, f"c{i}") for i in range(12)))
    done.set()
    results = await asyncio.gather(*loops)
    status, chunk = await messages(client, alice, room_id, dir="f", limit=1000)
    assert status == 200
    order = [e["event_id"] for e in chunk["chunk"] if e["event_id"] in set(sent)]
    assert sorted(order) == sorted(sent)
    for seen in results:
        assert seen == order


@pytest.fixture
def slow_pacing(services: Services, monkeypatch: pytest.MonkeyPatch) -> float:
    """A pacing interval long enough to tell a held response from one that was not."""
    interval = 0.6
    monkeypatch.setattr(services.sync, "MIN_INTERVAL_S", interval)
    return interval


async def test_a_waiting_device_is_answered_at_once_while_the_server_keeps_up(
        client: TestClient, alice: User, bob: User, slow_pacing: float) -> None:
    """Back-to-back messages each reach a waiting long poll as they commit: nothing holds a
    response back while the server keeps up (the one-sender delivery latency)."""
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    since = (await sync(client, bob))["next_batch"]
    for i in range(3):
        poll = asyncio.create_task(sync(client, bob, since=since, timeout_ms=10_000))
        await asyncio.sleep(0.05)
        assert not poll.done()
        event_id = await send_text(client, alice, room_id, f"message {i}")
        sent_at = time.monotonic()
        body = await asyncio.wait_for(poll, 5)
        assert time.monotonic() - sent_at < slow_pacing / 2
        assert timeline_ids(joined(body, room_id)) == [event_id]
        since = body["next_batch"]


async def test_a_busy_device_is_held_while_the_server_is_behind(
        client: TestClient, services: Services, alice: User, bob: User, slow_pacing: float,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """When waiters run late after their wake-up (the server is behind), a device's next
    response waits until the interval after its previous one, so a busy room reaches it in
    batches; a device that was quiet is not held."""
    monkeypatch.setattr(services.sync, "BUSY_LAG_S", -1.0)  # every wake-up runs "late"
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    phone = await second_device(client, bob)
    since = (await sync(client, bob))["next_batch"]
    phone_since = (await sync(client, phone))["next_batch"]

    # A non-empty incremental response...
    first = await send_text(client, alice, room_id, "one")
    started = time.monotonic()
    body = await sync(client, bob, since=since, timeout_ms=10_000)
    assert time.monotonic() - started < slow_pacing / 2
    assert timeline_ids(joined(body, room_id)) == [first]
    # ...holds the device's next one when it was waiting for it.
    poll = asyncio.create_task(sync(client, bob, since=body["next_batch"], timeout_ms=10_000))
    await asyncio.sleep(0.05)
    second = await send_text(client, alice, room_id, "two")
    body = await asyncio.wait_for(poll, 5)
    assert time.monotonic() - started >= slow_pacing * 0.9
    assert timeline_ids(joined(body, room_id)) == [second]
    since = body["next_batch"]
    # What came before the device asked again waits for the interval too.
    answered = time.monotonic()
    extra = await send_text(client, alice, room_id, "two and a half")
    body = await sync(client, bob, since=since, timeout_ms=10_000)
    assert time.monotonic() - answered >= slow_pacing * 0.9
    assert timeline_ids(joined(body, room_id)) == [extra]
    since = body["next_batch"]

    # Pacing is per device: bob's phone was quiet, and is answered at once.
    poll = asyncio.create_task(sync(client, phone, since=phone_since, timeout_ms=10_000))
    body = await asyncio.wait_for(poll, slow_pacing / 2)
    assert timeline_ids(joined(body, room_id)) == [first, second, extra]
    phone_since = body["next_batch"]

    # Devices idle for longer than the interval are not held: their long polls end as soon
    # as the event commits.
    await asyncio.sleep(slow_pacing + 0.1)
    polls = [asyncio.create_task(sync(client, bob, since=since, timeout_ms=10_000)),
             asyncio.create_task(sync(client, phone, since=phone_since, timeout_ms=10_000))]
    await asyncio.sleep(0.1)
    assert not any(p.done() for p in polls)
    third = await send_text(client, alice, room_id, "three")
    sent_at = time.monotonic()
    for body in await asyncio.wait_for(asyncio.gather(*polls), 5):
        assert timeline_ids(joined(body, room_id)) == [third]
    assert time.monotonic() - sent_at < 0.5


async def test_a_quiet_device_is_answered_promptly(client: TestClient, alice: User,
                                                   bob: User) -> None:
    """With the default interval: after a short idle spell the long poll is not held."""
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    since = (await sync(client, bob))["next_batch"]
    await send_text(client, alice, room_id, "warm up")
    body = await sync(client, bob, since=since, timeout_ms=5_000)
    await asyncio.sleep(max(0.15, SyncService.MIN_INTERVAL_S * 2))

    poll = asyncio.create_task(sync(client, bob, since=body["next_batch"], timeout_ms=10_000))
    await asyncio.sleep(0.1)
    assert not poll.done()
    event_id = await send_text(client, alice, room_id, "hello")
    sent_at = time.monotonic()
    body = await asyncio.wait_for(poll, 5)
    assert time.monotonic() - sent_at < 0.5
    assert timeline_ids(joined(body, room_id)) == [event_id]


async def test_timeout_zero_is_never_held(client: TestClient, alice: User, bob: User,
                                          slow_pacing: float) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    since = (await sync(client, bob))["next_batch"]
    await send_text(client, alice, room_id, "one")
    body = await sync(client, bob, since=since, timeout_ms=5_000)
    second = await send_text(client, alice, room_id, "two")
    started = time.monotonic()
    body = await sync(client, bob, since=body["next_batch"], timeout_ms=0)
    assert time.monotonic() - started < 0.5
    assert timeline_ids(joined(body, room_id)) == [second]


# -- recent events in memory vs the database --------------------------------------------------

@pytest.mark.parametrize("limit", [3, 10])
async def test_timeline_from_memory_matches_the_database(
        client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch, alice: User,
        bob: User, limit: int) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    quiet = await create_room(client, bob)
    sync_filter = limit_filter(limit)
    since = (await sync(client, bob, sync_filter=sync_filter))["next_batch"]

    # Which incremental reads go to the database.
    store = services.db.sync
    original = store.latest_event_ids
    from_db: list[list[str]] = []

    async def latest_event_ids(room_ids: Any, *, after: int, up_to: int, limit: int) -> Any:
        if after:
            from_db.append(list(room_ids))
        return await original(room_ids, after=after, up_to=up_to, limit=limit)

    monkeypatch.setattr(store, "latest_event_ids", latest_event_ids)

    sent = [await send_text(client, alice, room_id, f"m{i}") for i in range(6)]
    from_memory = await sync(client, bob, since=since, sync_filter=sync_filter)
    assert from_db == []

    # Memory that reaches back to now only: the same since token is answered from the
    # database, and the answer is the same.
    notifier = services.notifier
    notifier.recent = RecentRoomEvents(notifier.position)
    from_database = await sync(client, bob, since=since, sync_filter=sync_filter)
    assert from_db == [[room_id]]
    for body in (from_memory, from_database):
        room = joined(body, room_id)
        assert timeline_ids(room) == sent[-limit:]
        assert room["timeline"]["limited"] is (limit < len(sent))
        assert quiet not in body["rooms"]["join"]
    assert _without_ages(from_memory["rooms"]) == _without_ages(from_database["rooms"])

    # A room whose deque overflowed: memory answers recent tokens, the database old ones.
    from_db.clear()
    notifier.recent = RecentRoomEvents(notifier.position, per_room=2)
    more = [await send_text(client, alice, room_id, f"n{i}") for i in range(2)]
    middle = (await sync(client, bob, since=since, sync_filter=sync_filter))["next_batch"]
    from_db.clear()
    more += [await send_text(client, alice, room_id, f"n{i}") for i in range(2, 4)]
    recent = joined(await sync(client, bob, since=middle, sync_filter=sync_filter), room_id)
    assert timeline_ids(recent) == more[2:][-limit:]
    assert from_db == []
    old = joined(await sync(client, bob, since=since, sync_filter=sync_filter), room_id)
    assert timeline_ids(old) == (sent + more)[-limit:]
    assert from_db == [[room_id]]


def _without_ages(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ages(v) for k, v in value.items() if k != "age"}
    if isinstance(value, list):
        return [_without_ages(v) for v in value]
    return value


# -- lazy-loaded members ----------------------------------------------------------------------

async def lazy_room(client: TestClient, alice: User, bob: User) -> str:
    """A room where bob is a member alice's first lazy sync does not need: five heroes come
    before him, and alice speaks last."""
    room_id = await create_room(client, alice, preset="public_chat")
    for i in range(5):
        await join(client, await new_user(client, f"hero{i}"), room_id)
    await join(client, bob, room_id)
    for i in range(10):
        await send_text(client, alice, room_id, f"alice {i}")
    return room_id


async def test_lazy_loading_sends_a_member_once_per_device(client: TestClient, alice: User,
                                                           bob: User) -> None:
    room_id = await lazy_room(client, alice, bob)
    initial = await sync(client, alice, sync_filter=LAZY)
    room = joined(initial, room_id)
    assert bob.user_id not in members_in_state(room)
    assert alice.user_id in members_in_state(room)
    t0 = initial["next_batch"]
    phone = await second_device(client, alice)
    p0 = (await sync(client, phone, sync_filter=LAZY))["next_batch"]

    # Bob speaks: his member event comes along, once.
    b1 = await send_text(client, bob, room_id, "b1")
    first = await sync(client, alice, since=t0, sync_filter=LAZY)
    room = joined(first, room_id)
    assert timeline_ids(room) == [b1]
    bob_member = members_in_state(room).get(bob.user_id)
    assert bob_member is not None
    assert set(members_in_state(room)) == {bob.user_id}
    t1 = first["next_batch"]

    # He speaks again: the client, syncing from the response that carried it, has it.
    b2 = await send_text(client, bob, room_id, "b2")
    second = await sync(client, alice, since=t1, sync_filter=LAZY)
    room = joined(second, room_id)
    assert timeline_ids(room) == [b2]
    assert members_in_state(room) == {}
    t2 = second["next_batch"]

    # A retry from the old token (the response carrying it may have been lost): again.
    retry = await sync(client, alice, since=t0, sync_filter=LAZY)
    room = joined(retry, room_id)
    assert timeline_ids(room) == [b1, b2]
    assert members_in_state(room) == {bob.user_id: bob_member}
    # A retry from t1 is a retry of a response that did not carry it.
    assert members_in_state(joined(
        await sync(client, alice, since=t1, sync_filter=LAZY), room_id)) == {}
    # ...and the retry from t0 did not make the member "new" again for later tokens.
    b3 = await send_text(client, bob, room_id, "b3")
    room = joined(await sync(client, alice, since=t2, sync_filter=LAZY), room_id)
    assert timeline_ids(room) == [b3]
    assert members_in_state(room) == {}

    # include_redundant_members: always.
    redundant = {"room": {"timeline": {"limit": 10}, "state": {
        "lazy_load_members": True, "include_redundant_members": True}}}
    room = joined(await sync(client, alice, since=t2, sync_filter=redundant), room_id)
    assert timeline_ids(room) == [b3]
    assert members_in_state(room) == {bob.user_id: bob_member}

    # Alice's phone never got it: what her laptop was sent does not count for the phone.
    body = await sync(client, phone, since=p0, sync_filter=LAZY)
    room = joined(body, room_id)
    assert timeline_ids(room) == [b1, b2, b3]
    assert members_in_state(room) == {bob.user_id: bob_member}
    b4 = await send_text(client, bob, room_id, "b4")
    room = joined(await sync(client, phone, since=body["next_batch"], sync_filter=LAZY),
                  room_id)
    assert timeline_ids(room) == [b4]
    assert members_in_state(room) == {}


async def test_lazy_loading_starts_over_on_initial_and_full_state(
        client: TestClient, alice: User, bob: User) -> None:
    room_id = await lazy_room(client, alice, bob)
    t0 = (await sync(client, alice, sync_filter=LAZY))["next_batch"]
    await send_text(client, bob, room_id, "b1")
    t1 = (await sync(client, alice, since=t0, sync_filter=LAZY))["next_batch"]

    # A full-state sync is a fresh start: its state has the lazy set of an initial sync
    # (the user and the heroes; bob is neither, and did not speak since t1)...
    full = await sync(client, alice, since=t1, sync_filter=LAZY, full_state=True)
    assert bob.user_id not in members_in_state(joined(full, room_id))
    # ...and forgets what was sent: bob speaking now brings his member event again.
    b2 = await send_text(client, bob, room_id, "b2")
    room = joined(await sync(client, alice, since=full["next_batch"], sync_filter=LAZY),
                  room_id)
    assert timeline_ids(room) == [b2]
    assert bob.user_id in members_in_state(room)

    # An initial sync starts over too.
    initial = await sync(client, alice, sync_filter={
        "room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": True}}})
    t3 = initial["next_batch"]
    # Bob was the last sender: his member event is in the initial sync.
    assert bob.user_id in members_in_state(joined(initial, room_id))
    await send_text(client, alice, room_id, "alice again")
    b3 = await send_text(client, bob, room_id, "b3")
    room = joined(await sync(client, alice, since=t3, sync_filter=LAZY), room_id)
    assert timeline_ids(room)[-1] == b3
    assert bob.user_id not in members_in_state(room)


async def test_lazy_loading_sends_a_changed_member_event(client: TestClient, alice: User,
                                                         bob: User) -> None:
    """A sender whose member event changed since the device got one: the device has not got
    the new one (its timeline filter left the rename out), so it comes with his message."""
    messages_only = {"room": {"timeline": {"limit": 10, "types": ["m.room.message"]},
                              "state": {"lazy_load_members": True}}}
    room_id = await lazy_room(client, alice, bob)
    t0 = (await sync(client, alice, sync_filter=messages_only))["next_batch"]
    await send_text(client, bob, room_id, "b1")
    first = await sync(client, alice, since=t0, sync_filter=messages_only)
    old_member = members_in_state(joined(first, room_id))[bob.user_id]

    status, data = await api(client, "PUT", f"/rooms/{room_id}/state/m.room.member/"
                             f"{bob.user_id}", bob, {"membership": "join",
                                                     "displayname": "Robert"})
    assert status == 200, data
    renamed = data["event_id"]
    assert renamed != old_member
    # The rename is filtered out of alice's timeline.
    body = await sync(client, alice, since=first["next_batch"], sync_filter=messages_only)
    assert body["rooms"]["join"].get(room_id, {"timeline": {"events": []}})[
        "timeline"]["events"] == []

    b2 = await send_text(client, bob, room_id, "b2")
    room = joined(await sync(client, alice, since=body["next_batch"],
                             sync_filter=messages_only), room_id)
    assert timeline_ids(room) == [b2]
    assert members_in_state(room) == {bob.user_id: renamed}
    assert [e["content"].get("displayname") for e in room["state"]["events"]
            if e["type"] == "m.room.member"] == ["Robert"]


# -- the event cache and redactions -----------------------------------------------------------

def assert_redacted(event: dict[str, Any], redaction_id: str, reason: str) -> None:
    assert event["content"] == {}
    because = event["unsigned"]["redacted_because"]
    assert because["event_id"] == redaction_id
    assert because["type"] == "m.room.redaction"
    assert because["content"].get("reason") == reason


async def test_redaction_evicts_the_cached_event(client: TestClient, alice: User,
                                                 bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    since = (await sync(client, bob))["next_batch"]
    event_id = await send_text(client, alice, room_id, "regrettable")
    # Read it every way first: the event cache has it.
    for reader in (alice, bob):
        assert (await get_event(client, reader, room_id, event_id))["content"]["body"] == \
            "regrettable"
    body = await sync(client, bob, since=since)
    assert timeline_bodies(joined(body, room_id)) == ["regrettable"]
    status, page = await messages(client, bob, room_id, limit=1)
    assert status == 200
    assert page["chunk"][0]["content"]["body"] == "regrettable"

    status, data = await redact(client, alice, room_id, event_id, reason="oops")
    assert status == 200, data
    redaction_id = data["event_id"]

    for reader in (alice, bob):
        assert_redacted(await get_event(client, reader, room_id, event_id), redaction_id,
                        "oops")
    # /messages
    status, page = await messages(client, bob, room_id, limit=2)
    assert status == 200
    by_id = {e["event_id"]: e for e in page["chunk"]}
    assert_redacted(by_id[event_id], redaction_id, "oops")
    assert by_id[redaction_id]["redacts"] == event_id or \
        by_id[redaction_id]["content"].get("redacts") == event_id
    # /sync: the redaction in the incremental timeline, the redacted event in an initial one.
    incremental = joined(await sync(client, bob, since=body["next_batch"]), room_id)
    assert timeline_ids(incremental) == [redaction_id]
    initial = joined(await sync(client, bob), room_id)
    events = {e["event_id"]: e for e in initial["timeline"]["events"]}
    assert_redacted(events[event_id], redaction_id, "oops")
    # From the start of the room's sync history too (a since token before the event).
    replay = {e["event_id"]: e for e in joined(await sync(client, bob, since=since),
                                               room_id)["timeline"]["events"]}
    assert_redacted(replay[event_id], redaction_id, "oops")


async def test_read_overlapping_a_redaction_does_not_refill_the_cache(
        client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch,
        alice: User) -> None:
    """A read that loaded the event before the redaction committed, and finished after, must
    not put its stale copy in the cache."""
    room_id = await create_room(client, alice)
    event_id = await send_text(client, alice, room_id, "secret")
    store = services.db.events
    store.forget_cached([event_id])  # as if it had aged out of the cache

    loaded = asyncio.Event()
    release = asyncio.Event()
    engine = store._db
    armed = [True]

    class HeldConnection:
        def __init__(self, conn: Any) -> None:
            self._conn = conn

        async def execute(self, *args: Any, **kwargs: Any) -> Any:
            result = await self._conn.execute(*args, **kwargs)
            loaded.set()
            await release.wait()
            return result

    class HoldingEngine:
        def __getattr__(self, name: str) -> Any:
            return getattr(engine, name)

        @asynccontextmanager
        async def read(self) -> AsyncIterator[Any]:
            async with engine.read() as conn:
                if armed[0]:
                    armed[0] = False
                    yield HeldConnection(conn)
                else:
                    yield conn

    monkeypatch.setattr(store, "_db", HoldingEngine())
    stale_read = asyncio.create_task(store.get_events([event_id]))
    await asyncio.wait_for(loaded.wait(), 5)
    status, data = await redact(client, alice, room_id, event_id, reason="gone")
    assert status == 200, data
    release.set()
    stale = await stale_read
    assert stale[event_id].redacted_by is None  # what it read, before the redaction

    assert_redacted(await get_event(client, alice, room_id, event_id), data["event_id"],
                    "gone")
    initial = joined(await sync(client, alice), room_id)
    events = {e["event_id"]: e for e in initial["timeline"]["events"]}
    assert_redacted(events[event_id], data["event_id"], "gone")


# -- integers beyond 64 bits ------------------------------------------------------------------

def _walk_ints(value: Any) -> Iterator[int]:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk_ints(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk_ints(v)


async def test_account_data_with_huge_integers(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    since = (await sync(client, alice))["next_batch"]
    content = {"big": BIG, "negative": -BIG, "nested": {"list": [1, BIG + 1]},
               "edge": 2**64}
    path = f"/user/{alice.user_id}/account_data/org.example.big"
    room_path = f"/user/{alice.user_id}/rooms/{room_id}/account_data/org.example.big"
    status, data = await api(client, "PUT", path, alice, content)
    assert status < 500, data
    if status != 200:
        # Refusing it is allowed, as a Matrix error; then nothing is stored.
        assert status == 400 and data["errcode"] in ("M_BAD_JSON", "M_NOT_JSON"), data
        status, data = await api(client, "GET", path, alice)
        assert status == 404, data
        return
    await put_account_data(client, alice, "org.example.big", content, room_id=room_id)

    for where in (path, room_path):
        status, data = await api(client, "GET", where, alice)
        assert status == 200, data
        assert data == content

    entry = {"type": "org.example.big", "content": content}
    status, body = await sync_raw(client, alice, since=since)
    assert status == 200, body
    assert entry in body["account_data"]["events"]
    assert entry in joined(body, room_id)["account_data"]["events"]
    status, body = await sync_raw(client, alice)
    assert status == 200, body
    assert entry in body["account_data"]["events"]
    assert entry in joined(body, room_id)["account_data"]["events"]
    assert {BIG, -BIG, BIG + 1, 2**64} <= set(_walk_ints(body))
    # Later responses are unaffected.
    status, body = await sync_raw(client, alice, since=body["next_batch"])
    assert status == 200 and no_rooms(body), body


async def test_huge_integer_in_an_event_does_not_break_sync(client: TestClient, alice: User,
                                                            bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    since = (await sync(client, bob))["next_batch"]
    sent_status, data = await api(client, "PUT",
                                  f"/rooms/{room_id}/send/org.example.big/{txn()}", alice,
                                  {"n": BIG})
    assert sent_status < 500, data
    status, body = await sync_raw(client, bob, since=since)
    assert status == 200, body
    if sent_status == 200:
        events = {e["event_id"]: e for e in joined(body, room_id)["timeline"]["events"]}
        assert events[data["event_id"]]["content"] == {"n": BIG}
        status, event = await api(client, "GET", f"/rooms/{room_id}/event/{data['event_id']}",
                                  bob)
        assert status == 200 and event["content"] == {"n": BIG}, event
    else:
        assert sent_status == 400 and data["errcode"] in ("M_BAD_JSON", "M_NOT_JSON"), data
        assert no_rooms(body)


# -- the membership cache ---------------------------------------------------------------------

async def test_next_sync_sees_every_membership_change(client: TestClient, alice: User,
                                                      bob: User) -> None:
    room_id = await create_room(client, alice)
    body = await sync(client, bob)
    assert room_id not in body["rooms"]["invite"]

    async def next_sync() -> dict[str, Any]:
        nonlocal body
        body = await sync(client, bob, since=body["next_batch"])
        return body

    await invite(client, alice, room_id, bob)
    assert list((await next_sync())["rooms"]["invite"]) == [room_id]
    assert list((await sync(client, bob))["rooms"]["invite"]) == [room_id]

    await join(client, bob, room_id)
    latest = await next_sync()
    assert list(latest["rooms"]["join"]) == [room_id]
    assert latest["rooms"]["invite"] == {}
    assert list((await sync(client, bob))["rooms"]["join"]) == [room_id]

    await leave(client, bob, room_id)
    latest = await next_sync()
    assert list(latest["rooms"]["leave"]) == [room_id]
    assert latest["rooms"]["join"] == {}
    assert room_id not in (await sync(client, bob))["rooms"]["join"]

    # Invited and joined again, then kicked.
    await invite(client, alice, room_id, bob)
    assert list((await next_sync())["rooms"]["invite"]) == [room_id]
    await join(client, bob, room_id)
    assert list((await next_sync())["rooms"]["join"]) == [room_id]
    status, data = await api(client, "POST", f"/rooms/{room_id}/kick", alice,
                             {"user_id": bob.user_id, "reason": "bye"})
    assert status == 200, data
    latest = await next_sync()
    assert list(latest["rooms"]["leave"]) == [room_id]
    assert latest["rooms"]["join"] == {}
    kick = [e for e in latest["rooms"]["leave"][room_id]["timeline"]["events"]
            if e["type"] == "m.room.member" and e["state_key"] == bob.user_id]
    assert kick and kick[-1]["content"]["membership"] == "leave"
    assert kick[-1]["sender"] == alice.user_id
    assert room_id not in (await sync(client, bob))["rooms"]["join"]
    # Sending is refused as the cache-free check agrees.
    status, data = await api(client, "PUT", f"/rooms/{room_id}/send/m.room.message/x1",
                             bob, {"msgtype": "m.text", "body": "let me in"})
    assert status == 403, data
    # And nothing more is reported after that.
    assert no_rooms(await next_sync())


async def test_membership_committed_during_a_sync_is_not_lost(
        client: TestClient, services: Services, monkeypatch: pytest.MonkeyPatch,
        alice: User, bob: User) -> None:
    """A member event that commits while a sync reads the user's memberships: that read is
    stale, and must not be served from the cache afterwards."""
    room_id = await create_room(client, alice)
    body = await sync(client, bob)
    # A member event about bob (his own room) makes his cached memberships stale, so the
    # next sync reads them.
    own = await create_room(client, bob)
    store = services.db.sync
    original = store.memberships
    raced: list[bool] = []

    async def memberships_then_invite(user_id: str) -> Any:
        found = await original(user_id)
        if user_id == bob.user_id and not raced:
            raced.append(True)
            await invite(client, alice, room_id, bob)
        return found

    monkeypatch.setattr(store, "memberships", memberships_then_invite)
    body = await sync(client, bob, since=body["next_batch"])
    assert raced
    assert own in body["rooms"]["join"]
    if room_id not in body["rooms"]["invite"]:
        body = await sync(client, bob, since=body["next_batch"])
        assert list(body["rooms"]["invite"]) == [room_id]
    assert list((await sync(client, bob))["rooms"]["invite"]) == [room_id]


async def test_membership_cache_is_per_user(client: TestClient, alice: User, bob: User,
                                            carol: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    bob_since = (await sync(client, bob))["next_batch"]
    carol_since = (await sync(client, carol))["next_batch"]
    await join(client, bob, room_id)
    # Carol's memberships did not change; bob's did.
    carol_body = await sync(client, carol, since=carol_since)
    assert no_rooms(carol_body)
    bob_body = await sync(client, bob, since=bob_since)
    assert list(bob_body["rooms"]["join"]) == [room_id]
    await join(client, carol, room_id)
    carol_body = await sync(client, carol, since=carol_body["next_batch"])
    assert list(carol_body["rooms"]["join"]) == [room_id]
    # Bob sees carol's join in his room's timeline, and stays joined.
    bob_body = await sync(client, bob, since=bob_body["next_batch"])
    room = joined(bob_body, room_id)
    assert [e["state_key"] for e in room["timeline"]["events"]
            if e["type"] == "m.room.member"] == [carol.user_id]


# -- account data and the "nothing changed" shortcut ------------------------------------------

async def test_account_data_change_reaches_the_next_sync(client: TestClient, alice: User,
                                                         bob: User) -> None:
    room_id = await create_room(client, alice)
    body = await sync(client, alice)
    # A few syncs where nothing changed (the shortcut answers them).
    for _ in range(2):
        body = await sync(client, alice, since=body["next_batch"])
        assert body["account_data"]["events"] == []
        assert no_rooms(body)

    await put_account_data(client, alice, "org.example.a", {"v": 1})
    body = await sync(client, alice, since=body["next_batch"])
    assert body["account_data"]["events"] == [{"type": "org.example.a", "content": {"v": 1}}]
    body = await sync(client, alice, since=body["next_batch"])
    assert body["account_data"]["events"] == []

    # Room account data.
    await put_account_data(client, alice, "org.example.r", {"v": 2}, room_id=room_id)
    body = await sync(client, alice, since=body["next_batch"])
    assert body["account_data"]["events"] == []
    assert joined(body, room_id)["account_data"]["events"] == [
        {"type": "org.example.r", "content": {"v": 2}}]
    assert joined(body, room_id)["timeline"]["events"] == []
    body = await sync(client, alice, since=body["next_batch"])
    assert no_rooms(body)

    # Someone else's account data moves the stream, but is not alice's.
    await put_account_data(client, bob, "org.example.a", {"v": "bob's"})
    quiet = await sync(client, alice, since=body["next_batch"])
    assert quiet["account_data"]["events"] == []
    # And alice's next change after bob's is still seen.
    await put_account_data(client, alice, "org.example.a", {"v": 3})
    body = await sync(client, alice, since=quiet["next_batch"])
    assert body["account_data"]["events"] == [{"type": "org.example.a", "content": {"v": 3}}]
    # A retry from the same token gets it again.
    body = await sync(client, alice, since=quiet["next_batch"])
    assert body["account_data"]["events"] == [{"type": "org.example.a", "content": {"v": 3}}]

    # Tags are room account data too.
    status, data = await api(client, "PUT",
                             f"/user/{alice.user_id}/rooms/{room_id}/tags/u.work", alice,
                             {"order": 0.5})
    assert status == 200, data
    body = await sync(client, alice, since=body["next_batch"])
    assert joined(body, room_id)["account_data"]["events"] == [
        {"type": "m.tag", "content": {"tags": {"u.work": {"order": 0.5}}}}]


async def test_account_data_wakes_a_long_poll_on_every_device(client: TestClient,
                                                              alice: User) -> None:
    laptop = await second_device(client, alice)
    starts = [(await sync(client, u))["next_batch"] for u in (alice, laptop)]
    polls = [asyncio.create_task(sync(client, u, since=s, timeout_ms=10_000))
             for u, s in zip((alice, laptop), starts, strict=True)]
    await asyncio.sleep(0.1)
    assert not any(p.done() for p in polls)
    await put_account_data(client, alice, "org.example.wake", {"up": True})
    for body in await asyncio.wait_for(asyncio.gather(*polls), 5):
        assert body["account_data"]["events"] == [
            {"type": "org.example.wake", "content": {"up": True}}]
