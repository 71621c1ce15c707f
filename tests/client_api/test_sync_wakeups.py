"""Presence written behind survives a cancelled write: stopping the server cancels the
write in flight and then flushes what is dirty, which must still hold the cancelled write's
changes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import pytest

from homeserver.config import PresenceConfig
from homeserver.services.presence import PresenceService


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Presence off: typing and receipts mark their sender active, and presence updates would
    end long polls of their own."""
    return {"presence": {"enabled": False}}


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
