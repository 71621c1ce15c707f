"""The roomserver's reads of the graph as stored, what federation answers other servers from
(``RoomReader.stored_pdus``, ``state_before``, ``members_before``, ``backfill_points``,
``joined_rooms``): they agree with the stores they read, per event, whatever state group
each event has; unknown events are left out."""

from __future__ import annotations

from homeserver.services.container import Services
from roomserver.api import NewEvent
from tests.roomserver.test_roomserver import ALICE, make_room, register

HISTORY_VISIBILITY = ("m.room.history_visibility", "")


async def test_stored_reads_agree_with_the_stores(hs: Services) -> None:
    users = [f"@s{n}:test.local" for n in range(4)]
    await register(hs, "alice", *(u[1:].split(":")[0] for u in users))
    room_id = await make_room(hs, ALICE)
    for n, user in enumerate(users):
        await hs.membership.join(user, room_id)
        await hs.roomserver.send(room_id, NewEvent("m.room.message", user,
                                                  {"msgtype": "m.text", "body": f"hi {n}"}))
        if n % 2:
            await hs.membership.leave(user, room_id)
    redacted = (await hs.roomserver.send(room_id, NewEvent(
        "m.room.message", ALICE, {"msgtype": "m.text", "body": "oops"}))).event_id
    await hs.roomserver.send(room_id, NewEvent("m.room.redaction", ALICE, {},
                                               redacts=redacted))

    timeline = await hs.db.events.paginate(room_id, backwards=False, limit=1000)
    ids = [e.event_id for e in timeline]
    stored = await hs.db.events.get_events(ids)
    pdus = await hs.roomserver.stored_pdus([*ids, "$unknown"])
    assert set(pdus) == set(ids)
    for event_id, pdu in pdus.items():
        e = stored[event_id]
        assert (pdu.room_id, pdu.room_version, pdu.pdu, pdu.depth, pdu.stream_ordering,
                pdu.redacted, pdu.rejected, pdu.outlier) == \
            (e.room_id, e.room_version, e.pdu, e.depth, e.stream_ordering,
             e.redacted_by is not None, e.rejected_reason is not None, e.outlier)
    assert pdus[redacted].redacted

    full = await hs.roomserver.state_before([*ids, "$unknown"])
    only = await hs.roomserver.state_before(ids, only=[HISTORY_VISIBILITY])
    members = await hs.roomserver.members_before(ids, "test.local")
    elsewhere = await hs.roomserver.members_before(ids, "elsewhere.example")
    with_state = {e.event_id for e in timeline if e.state_group_before is not None}
    assert set(full) == set(only) == set(members) == set(elsewhere) == with_state
    assert len({e.state_group_before for e in timeline}) > 3
    for e in timeline:
        if e.state_group_before is None:
            continue
        state = await hs.db.state.state_at_group(e.state_group_before)
        assert list(full[e.event_id].items()) == list(state.items())
        assert only[e.event_id] == {k: v for k, v in state.items() if k == HISTORY_VISIBILITY}
        assert members[e.event_id] == {k: v for (t, k), v in state.items()
                                       if t == "m.room.member"}
        assert elsewhere[e.event_id] == {}

    assert await hs.roomserver.backfill_points(room_id) \
        == await hs.db.events.backward_extremities(room_id)
    assert await hs.roomserver.joined_rooms(ALICE) == [room_id]
    assert await hs.roomserver.joined_rooms(users[1]) == []
    assert await hs.roomserver.joined_rooms(users[0]) == [room_id]
