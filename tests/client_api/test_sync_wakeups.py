"""What a sync costs when little of what happens is for it: a long poll or SSE turn behind only
by other rooms' events, or by typing and receipts while its device just had a response, builds
nothing and is not answered early; typing and receipts wake a room's syncs at most once per
interval; a burst of receipts shares commits; a receipt that changes nothing is not written;
presence written behind survives a cancelled write (what stopping the server does)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from homeserver.appkeys import SERVICES
from homeserver.config import PresenceConfig
from homeserver.services.presence import PresenceService
from homeserver.services.receipts import ReceiptService
from homeserver.services.sync import SyncService
from homeserver.services.typing import RoomWakes
from tests.client_api.test_receipts_typing import (
    poll,
    read,
    receipts,
    shared_room,
    typing_off,
    typing_on,
    typing_users,
)
from tests.client_api.test_sync import joined, sync, timeline_ids
from tests.helpers.room_api import User, new_user, send_text


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Presence off: typing and receipts mark their sender active, and presence updates would
    end long polls of their own."""
    return {"presence": {"enabled": False}}


def count_builds(sync_service: SyncService, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The users whose sync responses are built from now on, one entry per build."""
    built: list[str] = []
    original = sync_service._build

    async def counted(user_id: str, *args: Any) -> Any:
        built.append(user_id)
        return await original(user_id, *args)

    monkeypatch.setattr(sync_service, "_build", counted)
    return built


# -- nothing to build ---------------------------------------------------------------------------

async def test_a_sync_behind_only_by_other_rooms_builds_nothing_and_waits(
        client: TestClient, alice: User, bob: User, carol: User,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Bob's token is behind only by what happened in carol's room (an event, typing, a
    receipt): his long poll builds no response for it, waits, and gets alice's message the
    moment it commits."""
    ours = await shared_room(client, alice, bob)
    theirs = await shared_room(client, carol)
    since = (await sync(client, bob))["next_batch"]
    elsewhere = await send_text(client, carol, theirs, "not for bob")
    await typing_on(client, carol, theirs)
    await read(client, carol, theirs, elsewhere)
    built = count_builds(client.app[SERVICES].sync, monkeypatch)

    task = await poll(client, bob, since)
    assert built == []
    said = await send_text(client, alice, ours, "for bob")
    sent_at = time.monotonic()
    _, body = await asyncio.wait_for(task, 5)
    assert time.monotonic() - sent_at < 0.5
    assert timeline_ids(joined(body, ours)) == [said]
    assert theirs not in body["rooms"]["join"]
    assert built == [bob.user_id]


async def test_a_timed_out_poll_behind_only_by_other_rooms_answers_up_to_now(
        client: TestClient, alice: User, bob: User, carol: User,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing for bob until the timeout: an empty response whose token covers carol's room's
    news (so his next poll does not look at them again), without a build."""
    await shared_room(client, alice, bob)
    theirs = await shared_room(client, carol)
    since = (await sync(client, bob))["next_batch"]
    await send_text(client, carol, theirs, "not for bob")
    await typing_on(client, carol, theirs)
    built = count_builds(client.app[SERVICES].sync, monkeypatch)
    body = await sync(client, bob, since=since, timeout_ms=200)
    assert built == []
    assert body["rooms"]["join"] == {}
    assert body["next_batch"] == client.app[SERVICES].sync.current_token().encode()


# -- typing and receipts right after a response ---------------------------------------------------

@pytest.fixture
def slow_ephemeral(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> float:
    interval = 0.8
    monkeypatch.setattr(client.app[SERVICES].sync, "EPHEMERAL_INTERVAL_S", interval)
    return interval


async def test_typing_already_there_waits_for_the_interval_after_a_response(
        client: TestClient, alice: User, bob: User, carol: User, slow_ephemeral: float
        ) -> None:
    """Typing that came between bob's last response and his next request (the round trip of
    a long poll, an SSE stream's write) is held like typing that comes while he waits, so a
    busy room's typing and receipts reach him in batches whichever way they arrive; an event
    is never held."""
    room_id = await shared_room(client, alice, bob, carol)
    since = (await sync(client, bob))["next_batch"]
    await send_text(client, carol, room_id, "news")
    body = await sync(client, bob, since=since, timeout_ms=5_000)  # a response: the interval
    answered = time.monotonic()
    await typing_on(client, alice, room_id)
    body = await sync(client, bob, since=body["next_batch"], timeout_ms=5_000)
    assert time.monotonic() - answered >= slow_ephemeral * 0.8
    assert typing_users(body, room_id) == [alice.user_id]
    # An event that is already there is answered at once, typing or not.
    answered = time.monotonic()
    await typing_off(client, alice, room_id)
    said = await send_text(client, carol, room_id, "more news")
    body = await sync(client, bob, since=body["next_batch"], timeout_ms=5_000)
    assert time.monotonic() - answered < slow_ephemeral / 2
    assert timeline_ids(joined(body, room_id)) == [said]


async def test_a_quiet_device_gets_typing_already_there_at_once(
        client: TestClient, alice: User, bob: User, slow_ephemeral: float) -> None:
    room_id = await shared_room(client, alice, bob)
    since = (await sync(client, bob))["next_batch"]
    await typing_on(client, alice, room_id)
    started = time.monotonic()
    body = await sync(client, bob, since=since, timeout_ms=5_000)
    assert time.monotonic() - started < slow_ephemeral / 2
    assert typing_users(body, room_id) == [alice.user_id]


# -- a room's typing and receipts wake its syncs once per interval --------------------------------

class _Notifier:
    def __init__(self) -> None:
        self.woken: list[tuple[float, list[str]]] = []

    def wake(self, room_ids: Iterable[str] = (), user_ids: Iterable[str] = (),
             presence_of_rooms: Iterable[str] = ()) -> None:
        self.woken.append((time.monotonic(), list(room_ids)))


async def test_room_wakes_come_at_once_after_a_quiet_interval_then_together() -> None:
    notifier = _Notifier()
    wakes = RoomWakes(notifier)  # type: ignore[arg-type]
    wakes.INTERVAL_S = 0.2
    started = time.monotonic()
    wakes.wake(["!a"])
    assert [rooms for _, rooms in notifier.woken] == [["!a"]]  # at once
    wakes.wake(["!a"])
    wakes.wake(["!a", "!b"])  # another room is not held by the first
    wakes.wake(["!a"])
    assert [rooms for _, rooms in notifier.woken] == [["!a"], ["!b"]]
    await asyncio.sleep(0.3)
    # The three changes of !a within the interval wake its syncs once, when it is over.
    assert [rooms for _, rooms in notifier.woken] == [["!a"], ["!b"], ["!a"]]
    assert notifier.woken[2][0] - started >= 0.19
    await asyncio.sleep(0.25)
    wakes.wake(["!b"])  # quiet for longer than the interval: at once again
    assert [rooms for _, rooms in notifier.woken][-1] == ["!b"]
    wakes.wake(["!b"])
    wakes.cancel()  # shutting down: what was due goes now
    assert [rooms for _, rooms in notifier.woken][-1] == ["!b"]
    assert len(notifier.woken) == 5


async def test_receipts_that_follow_one_within_the_interval_come_together(
        client: TestClient, alice: User, bob: User, carol: User, dave: User,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A quiet room's first receipt reaches a waiting sync at once; the ones that follow it
    within the interval reach it in one response, not one each."""
    monkeypatch.setattr(RoomWakes, "INTERVAL_S", 1.0)
    room_id = await shared_room(client, alice, bob, carol, dave)
    event_id = await send_text(client, alice, room_id, "read me")
    since = (await sync(client, dave))["next_batch"]
    await asyncio.sleep(1.1)  # the room's last wake (the event's own) is an interval ago
    task = await poll(client, dave, since)
    await read(client, carol, room_id, event_id)
    took, body = await task
    assert took < 0.6
    assert set(receipts(body, room_id)[event_id]["m.read"]) == {carol.user_id}
    task = await poll(client, dave, body["next_batch"])
    await read(client, alice, room_id, event_id)
    await read(client, bob, room_id, event_id)
    _, body = await task
    assert set(receipts(body, room_id)[event_id]["m.read"]) == {alice.user_id, bob.user_id}


@pytest.fixture
async def dave(client: TestClient) -> User:
    return await new_user(client, "dave")


# -- receipts share commits; a receipt that changes nothing is not written -------------------------

def count_writes(receipt_service: ReceiptService, monkeypatch: pytest.MonkeyPatch
                 ) -> list[int]:
    """The number of receipts of each write from now on."""
    writes: list[int] = []
    store = receipt_service._store
    original = store.put_many

    async def counted(new: Any) -> Any:
        writes.append(len(new))
        return await original(new)

    monkeypatch.setattr(store, "put_many", counted)
    return writes


async def test_a_burst_of_receipts_shares_commits(
        client: TestClient, alice: User, bob: User, carol: User, dave: User,
        monkeypatch: pytest.MonkeyPatch) -> None:
    service = client.app[SERVICES].receipts
    monkeypatch.setattr(service, "COMMIT_INTERVAL_S", 0.3)
    room_id = await shared_room(client, alice, bob, carol, dave)
    first = await send_text(client, alice, room_id, "one")
    second = await send_text(client, alice, room_id, "two")
    writes = count_writes(service, monkeypatch)
    started = time.monotonic()
    await read(client, bob, room_id, first)  # after a quiet spell: written at once
    assert writes == [1]
    # The burst that follows waits for the interval, and shares commits.
    await asyncio.gather(*(read(client, u, room_id, second) for u in (alice, bob, carol, dave)))
    assert time.monotonic() - started >= 0.25
    assert sum(writes) == 5 and max(writes[1:]) >= 2, writes
    body = await sync(client, carol)
    assert set(receipts(body, room_id)[second]["m.read"]) == {
        alice.user_id, bob.user_id, carol.user_id, dave.user_id}


async def test_a_receipt_that_changes_nothing_is_not_written(
        client: TestClient, alice: User, bob: User, monkeypatch: pytest.MonkeyPatch) -> None:
    service = client.app[SERVICES].receipts
    room_id = await shared_room(client, alice, bob)
    older = await send_text(client, alice, room_id, "older")
    newer = await send_text(client, alice, room_id, "newer")
    await read(client, bob, room_id, newer)
    writes = count_writes(service, monkeypatch)
    since = (await sync(client, alice))["next_batch"]
    await read(client, bob, room_id, newer)  # again
    await read(client, bob, room_id, older)  # receipts never go back
    assert writes == []
    body = await sync(client, alice, since=since, timeout_ms=200)
    assert room_id not in body["rooms"]["join"]
    await read(client, bob, room_id, newer, receipt_type="m.read.private")  # another kind
    assert writes == [1]


# -- presence written behind -----------------------------------------------------------------------

class _SlowPresenceStore:
    position = 0

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.written: list[Any] = []

    async def put_many(self, rows: list[Any]) -> None:
        self.started.set()
        await asyncio.sleep(10)
        self.written.extend(rows)


class _Members:
    async def joined_rooms(self, user_id: str) -> frozenset[str]:
        return frozenset()


async def test_presence_whose_write_is_cancelled_is_written_by_the_next_flush() -> None:
    """Stopping the service cancels a write in flight, then flushes what is dirty: the
    cancelled write's changes must still be among it (they were lost before)."""
    store = _SlowPresenceStore()
    service = PresenceService(store, _Notifier(), _Members(), _Clock(),  # type: ignore[arg-type]
                              PresenceConfig(enabled=True))
    await service.set_state("@alice:test.local", "unavailable")
    flush = asyncio.create_task(service._flush())
    await asyncio.wait_for(store.started.wait(), 5)
    flush.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flush
    assert set(service._dirty) == {"@alice:test.local"}
    assert service._dirty["@alice:test.local"].state == "unavailable"
    for timers in (service._idle_timers, service._offline_timers):
        for handle in timers.values():
            handle.cancel()


class _Clock:
    def time_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic(self) -> float:
        return time.monotonic()
