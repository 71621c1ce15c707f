"""Room summaries for /sync: counts and heroes in two queries, on both databases."""

from __future__ import annotations

from pathlib import Path

from homeserver.services.container import build_services
from homeserver.services.rooms import CreateRoomRequest
from storage import Database
from tests.conftest import make_config

SERVER = "test.local"


async def test_counts_and_heroes_of_many_members(database: Database, tmp_path: Path) -> None:
    services = build_services(make_config(tmp_path), db=database)
    await services.roomserver.start()
    try:
        users = [f"u{i:02d}" for i in range(12)]
        for name in ["alice", *users]:
            await services.accounts.register(name, "password123")
        alice = f"@alice:{SERVER}"
        room_id, _ = await services.rooms.create_room(CreateRoomRequest(
            creator=alice, preset="public_chat"))
        for name in users[:9]:
            await services.membership.join(f"@{name}:{SERVER}", room_id)
        for name in users[9:]:
            await services.membership.invite(alice, room_id, f"@{name}:{SERVER}")
        await services.membership.leave(f"@{users[0]}:{SERVER}", room_id)

        summary = (await database.sync.room_summaries([room_id], alice, heroes=5))[room_id]
        assert (summary.joined, summary.invited) == (9, 3)  # alice + 8 still joined
        # Joined members in the order they joined (u00 left), never alice herself.
        assert summary.heroes == [f"@{n}:{SERVER}" for n in users[1:6]]

        lonely, _ = await services.rooms.create_room(CreateRoomRequest(
            creator=alice, invite=[f"@{users[11]}:{SERVER}"]))
        await services.membership.leave(f"@{users[11]}:{SERVER}", lonely)
        alone = (await database.sync.room_summaries([lonely], alice, heroes=5))[lonely]
        assert (alone.joined, alone.invited) == (1, 0)
        assert alone.heroes == [f"@{users[11]}:{SERVER}"]  # those who left, when nobody else
    finally:
        await services.roomserver.stop()
