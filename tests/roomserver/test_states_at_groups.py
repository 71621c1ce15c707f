"""``StateStore.states_at_groups``: some keys of many state groups at once (what history
visibility reads for a search's count) agree with ``state_at_group`` for each group, whatever
the layers look like (keys set, changed, removed from a state by a leave; roots rewritten as
a room grows), on SQLite and PostgreSQL, from a cold store."""

from __future__ import annotations

from homeserver.services.container import Services
from roomserver.api import NewEvent
from storage.stores.state import StateStore
from tests.roomserver.test_roomserver import ALICE, make_room, register


async def test_many_groups_agree_with_one_at_a_time(hs: Services) -> None:
    users = [f"@u{n}:test.local" for n in range(12)]
    await register(hs, "alice", *(u[1:].split(":")[0] for u in users))
    room_id = await make_room(hs, ALICE)
    for n, user in enumerate(users):
        await hs.membership.join(user, room_id)
        await hs.roomserver.send(room_id, NewEvent("m.room.message", user,
                                                  {"msgtype": "m.text", "body": f"hi {n}"}))
        if n % 3 == 0:
            await hs.roomserver.send(room_id, NewEvent(
                "m.room.history_visibility", ALICE,
                {"history_visibility": ("joined", "shared", "invited")[n // 3 % 3]},
                state_key=""))
        if n % 4 == 1:
            await hs.membership.leave(user, room_id)
        await hs.roomserver.send(room_id, NewEvent("m.room.topic", ALICE, {"topic": f"t{n}"},
                                                  state_key=""))

    timeline = await hs.db.events.paginate(room_id, backwards=False, limit=1000)
    groups = {e.state_group_before for e in timeline} | {e.state_group_after for e in timeline}
    keys = [("m.room.history_visibility", ""), ("m.room.topic", ""), ("m.room.name", ""),
            ("m.room.member", users[1]), ("m.room.member", users[4]),
            ("m.room.member", "@never:test.local")]
    cold = StateStore(hs.db.engine)
    together = await cold.states_at_groups([*groups, None], only=keys)
    assert set(together) == {g for g in groups if g is not None}
    for group in groups:
        if group is not None:
            assert together[group] == await hs.db.state.state_at_group(group, only=keys)
    # Some member keys are absent in earlier groups, present and then changed in later ones.
    assert any(("m.room.member", users[4]) not in s for s in together.values())
    assert len({s.get(("m.room.member", users[1])) for s in together.values()}) == 3
    assert await cold.states_at_groups([], only=keys) == {}
