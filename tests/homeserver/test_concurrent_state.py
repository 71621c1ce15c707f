"""Concurrent state events from other servers (two branches of a fork setting one key): the
later by ``(origin_server_ts, event_id)`` holds whatever order they arrive in, so every server
agrees; the other stays in the timeline without changing the state. An event built on the
current value replaces it as ever. On SQLite and PostgreSQL, through the persister's receive
path."""

from __future__ import annotations

import pytest

from homeserver.services.container import Services
from homeserver.services.event_persister import NewEvent
from tests.homeserver.test_event_persister import ALICE, make_room, register

BOB = "@bob:remote.example"
CAROL = "@carol:other.example"


async def _room(hs: Services) -> str:
    if await hs.db.users.get_user(ALICE) is None:
        await register(hs, "alice")
    room_id = await make_room(hs, ALICE)
    for user in (BOB, CAROL):
        event = await hs.persister.build(room_id, NewEvent(
            "m.room.member", user, {"membership": "join"}, state_key=user))
        assert await hs.persister.receive(event) == "accepted"
    levels = dict(await hs.persister.state_content(room_id, ("m.room.power_levels", "")) or {})
    levels["users"] = {**levels.get("users", {}), BOB: 50, CAROL: 50}
    await hs.persister.send(room_id, NewEvent("m.room.power_levels", ALICE, levels,
                                              state_key=""))
    return room_id


@pytest.mark.parametrize("order", ["bob_first", "carol_first"])
async def test_concurrent_names_settle_on_the_later(hs: Services, order: str) -> None:
    room_id = await _room(hs)
    # Both built on the same state (neither knows the other): two branches.
    bobs = await hs.persister.build(room_id, NewEvent("m.room.name", BOB, {"name": "bob's"},
                                                      state_key=""))
    carols = await hs.persister.build(room_id, NewEvent(
        "m.room.name", CAROL, {"name": "carol's"}, state_key=""))
    later = max((bobs, carols), key=lambda e: (e.origin_server_ts, e.event_id))
    for event in ((bobs, carols) if order == "bob_first" else (carols, bobs)):
        assert await hs.persister.receive(event) == "accepted"

    state = await hs.persister.current_state(room_id)
    assert state is not None and state[("m.room.name", "")] == later.event_id
    timeline = {e.event_id for e in await hs.db.events.paginate(room_id, backwards=True,
                                                                 limit=50)}
    assert {bobs.event_id, carols.event_id} <= timeline

    # Built on the winner (both branches merged): replaces it, whatever its timestamp.
    merged = await hs.persister.build(room_id, NewEvent(
        "m.room.name", BOB, {"name": "merged"}, state_key=""))
    assert await hs.persister.receive(merged) == "accepted"
    state = await hs.persister.current_state(room_id)
    assert state is not None and state[("m.room.name", "")] == merged.event_id
