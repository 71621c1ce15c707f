"""Room creation edge cases at the persister level."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.clock import SystemClock
from core.events.room_versions import V10, V12
from homeserver.services.container import build_services
from homeserver.services.rooms import CreateRoomRequest
from tests.conftest import make_config


class FrozenClock(SystemClock):
    """Wall-clock time that never moves: every event gets the same timestamp."""

    def time_ms(self) -> int:
        return 1_800_000_000_000


async def test_identical_v12_rooms_created_in_the_same_millisecond_get_distinct_ids(
        tmp_path: Path) -> None:
    services = build_services(make_config(tmp_path), clock=FrozenClock())
    await services.start()
    try:
        await services.accounts.register("alice", "password123")
        created = await asyncio.gather(*(services.roomserver.create_room(
            V12, "@alice:test.local", {}) for _ in range(5)))
        assert len({e.room_id for e in created}) == 5
        later = await services.roomserver.create_room(V12, "@alice:test.local", {})
        assert later.room_id not in {e.room_id for e in created}
        # Each is a working room.
        for event in [*created, later]:
            room_id, _ = await services.rooms.create_room(CreateRoomRequest(
                creator="@alice:test.local", room_version="12"))
            assert room_id.startswith("!")
            assert await services.roomserver.room_version(event.room_id) == V12
    finally:
        await services.stop()


async def test_v10_rooms_get_random_ids(tmp_path: Path) -> None:
    services = build_services(make_config(tmp_path), clock=FrozenClock())
    await services.start()
    try:
        await services.accounts.register("alice", "password123")
        ids = [(await services.rooms.create_room(CreateRoomRequest(
            creator="@alice:test.local", room_version="10")))[0] for _ in range(3)]
        assert len(set(ids)) == 3
        assert all(i.endswith(":test.local") for i in ids)
        assert await services.roomserver.room_version(ids[0]) == V10
    finally:
        await services.stop()
