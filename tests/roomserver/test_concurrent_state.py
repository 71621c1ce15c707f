"""Concurrent state events from other servers (branches of a fork), through the roomserver's
receive path, on SQLite and PostgreSQL: the room's state is the state resolution (v2.1, room
version 12) of its branches whatever order they arrive in, so every server agrees. Between
equals the later by ``(origin_server_ts, event_id)`` holds and the other stays in the timeline;
a power event (a demotion) is resolved first, and what it no longer allows drops out of the
state even where it arrived first. An event built on the current value replaces it as ever."""

from __future__ import annotations

import pytest

from homeserver.services.container import Services
from roomserver.api import NewEvent
from tests.roomserver.test_roomserver import ALICE, make_room, register

BOB = "@bob:remote.example"
CAROL = "@carol:other.example"


async def _room(hs: Services) -> str:
    if await hs.db.users.get_user(ALICE) is None:
        await register(hs, "alice")
    room_id = await make_room(hs, ALICE)
    for user in (BOB, CAROL):
        event = await hs.roomserver.build(room_id, NewEvent(
            "m.room.member", user, {"membership": "join"}, state_key=user))
        assert await hs.roomserver.receive(event) == "accepted"
    levels = dict(await hs.roomserver.state_content(room_id, ("m.room.power_levels", "")) or {})
    levels["users"] = {**levels.get("users", {}), BOB: 50, CAROL: 50}
    await hs.roomserver.send(room_id, NewEvent("m.room.power_levels", ALICE, levels,
                                              state_key=""))
    return room_id


@pytest.mark.parametrize("order", ["bob_first", "carol_first"])
async def test_concurrent_names_settle_on_the_later(hs: Services, order: str) -> None:
    room_id = await _room(hs)
    # Both built on the same state (neither knows the other): two branches.
    bobs = await hs.roomserver.build(room_id, NewEvent("m.room.name", BOB, {"name": "bob's"},
                                                      state_key=""))
    carols = await hs.roomserver.build(room_id, NewEvent(
        "m.room.name", CAROL, {"name": "carol's"}, state_key=""))
    later = max((bobs, carols), key=lambda e: (e.origin_server_ts, e.event_id))
    for event in ((bobs, carols) if order == "bob_first" else (carols, bobs)):
        assert await hs.roomserver.receive(event) == "accepted"

    state = await hs.roomserver.current_state(room_id)
    assert state is not None and state[("m.room.name", "")] == later.event_id
    timeline = {e.event_id for e in await hs.db.events.paginate(room_id, backwards=True,
                                                                 limit=50)}
    assert {bobs.event_id, carols.event_id} <= timeline

    # Built on the winner (both branches merged): replaces it, whatever its timestamp.
    merged = await hs.roomserver.build(room_id, NewEvent(
        "m.room.name", BOB, {"name": "merged"}, state_key=""))
    assert await hs.roomserver.receive(merged) == "accepted"
    state = await hs.roomserver.current_state(room_id)
    assert state is not None and state[("m.room.name", "")] == merged.event_id


@pytest.mark.parametrize("order", ["change_first", "demotion_first"])
async def test_a_demotion_beats_the_demoted_users_concurrent_change(hs: Services,
                                                                    order: str) -> None:
    room_id = await _room(hs)
    before = await hs.roomserver.state_content(room_id, ("m.room.name", ""))
    levels = dict(await hs.roomserver.state_content(room_id, ("m.room.power_levels", ""))
                  or {})
    levels["users"] = {**levels["users"], BOB: 0}
    # Both built on the same state: Alice demotes Bob while Bob renames the room.
    demotion = await hs.roomserver.build(room_id, NewEvent("m.room.power_levels", ALICE,
                                                           levels, state_key=""))
    rename = await hs.roomserver.build(room_id, NewEvent("m.room.name", BOB,
                                                         {"name": "bob's"}, state_key=""))
    if order == "change_first":
        assert await hs.roomserver.receive(rename) == "accepted"
        assert await hs.roomserver.receive(demotion) == "accepted"
    else:
        assert await hs.roomserver.receive(demotion) == "accepted"
        # Against the current state Bob may no longer rename: soft-failed.
        assert await hs.roomserver.receive(rename) == "soft_failed"

    state = await hs.roomserver.current_state(room_id)
    assert state is not None
    assert state[("m.room.power_levels", "")] == demotion.event_id
    assert state.get(("m.room.name", "")) != rename.event_id
    assert await hs.roomserver.state_content(room_id, ("m.room.name", "")) == before
    stored = await hs.db.state.current_state(room_id)
    assert {(e.type, e.state_key): e.event_id for e in stored} == state


async def test_a_wide_fork_is_merged_by_a_dummy_event_then_by_the_next_message(
        hs: Services) -> None:
    room_id = await _room(hs)
    # Twelve messages from another server, each built on the same head: twelve branches.
    branches = [await hs.roomserver.build(room_id, NewEvent(
        "m.room.message", BOB, {"msgtype": "m.text", "body": f"branch {n}"}))
        for n in range(12)]
    for event in branches:
        assert await hs.roomserver.receive(event) == "accepted"
    head = await hs.roomserver.room_head(room_id)
    assert head is not None and set(head.extremities) == {e.event_id for e in branches}

    assert await hs.roomserver.merge_wide_rooms() == 1
    head = await hs.roomserver.room_head(room_id)
    assert head is not None and len(head.extremities) == 12 - 10 + 1
    dummy = (await hs.roomserver.get_events([head.extremities[-1]]))[head.extremities[-1]]
    assert dummy.type == "org.matrix.dummy_event" and dummy.sender == ALICE
    assert await hs.roomserver.merge_wide_rooms() == 0  # few enough now

    message = await hs.roomserver.send(room_id, NewEvent(
        "m.room.message", ALICE, {"msgtype": "m.text", "body": "merged"}))
    assert set(message.prev_event_ids) == set(head.extremities)
    head = await hs.roomserver.room_head(room_id)
    assert head is not None and list(head.extremities) == [message.event_id]
