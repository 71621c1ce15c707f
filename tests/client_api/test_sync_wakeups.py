"""What a sync costs when little of what happens is for it: a long poll or SSE turn behind only
by other rooms' events, or by typing and receipts while its device just had a response, builds
nothing and is not answered early; presence written behind survives a cancelled write (what
stopping the server does)."""

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
from homeserver.services.sync import SyncService
from tests.client_api.test_receipts_typing import (
    poll,
    read,
    shared_room,
    typing_off,
    typing_on,
    typing_users,
)
from tests.client_api.test_sync import joined, sync, timeline_ids
from tests.helpers.room_api import User, send_text


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


# -- presence written behind -------------------------------------------------------------------

class _Notifier:
    def __init__(self) -> None:
        self.woken: list[tuple[float, list[str]]] = []

    def wake(self, room_ids: Iterable[str] = (), user_ids: Iterable[str] = (),
             presence_of_rooms: Iterable[str] = ()) -> None:
        self.woken.append((time.monotonic(), list(room_ids)))


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
