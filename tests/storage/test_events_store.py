"""EventStore (persist_batch and the reads) and StateStore, on SQLite and PostgreSQL.

The items are built by hand the way the event persister builds them: fake PDUs (only the
fields the store reads), nids, stream orderings and state groups allocated here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from storage import Database
from storage.schema import (
    current_state,
    event_edges,
    events,
    redactions,
    rooms,
    state_groups,
    state_keys,
)
from storage.state_layers import Layer, diff, full_state, pack_pairs, plan_group, unpack_pairs
from storage.stores.events import NewStateGroup, PersistItem
from storage.stores.state import CurrentStateEntry, StateStore

ALICE = "@alice:test.local"
BOB = "@bob:test.local"
CAROL = "@carol:test.local"
ROOM = "!room:test.local"
OTHER_ROOM = "!other:test.local"


class Ids:
    """The allocators the persister owns: nids, stream orderings, groups, state key nids."""

    def __init__(self) -> None:
        self.nid = 0
        self.stream = 0
        self.group = 0
        self.key = 0
        self.keys: dict[tuple[str, str], int] = {}


@dataclass
class FakeRoom:
    room_id: str
    ids: Ids
    state: dict[tuple[str, str], str] = field(default_factory=dict)
    state_nids: dict[int, int] = field(default_factory=dict)
    chain: list[Layer] = field(default_factory=list)
    group: int | None = None
    extremities: list[str] = field(default_factory=list)
    depth: int = 0
    counter: int = 0
    created: bool = False

    def event(self, type_: str, sender: str, content: dict[str, Any] | None = None, *,
              state_key: str | None = None, redacts: str | None = None,
              device_id: str | None = None, txn_id: str | None = None,
              prev: list[str] | None = None, depth: int | None = None,
              event_id: str | None = None) -> PersistItem:
        """The next event of the room; moves the fake room past it (like ``_prepare``)."""
        self.counter += 1
        event_id = event_id or f"${self.room_id[1:].split(':')[0]}-{self.counter}"
        prev_events = list(self.extremities) if prev is None else prev
        depth = depth if depth is not None else self.depth + 1
        auth = [e for k, e in self.state.items()
                if k[0] in ("m.room.create", "m.room.power_levels")
                or k == ("m.room.member", sender)]
        pdu: dict[str, Any] = {
            "type": type_, "sender": sender, "room_id": self.room_id,
            "content": content or {}, "prev_events": prev_events, "auth_events": auth,
            "depth": depth, "origin_server_ts": 1000 + self.counter,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if redacts is not None:
            pdu["redacts"] = redacts
        self.ids.nid += 1
        self.ids.stream += 1
        nid = self.ids.nid
        item = PersistItem(
            event_id=event_id, room_id=self.room_id, pdu_json=json.dumps(pdu), nid=nid,
            stream_ordering=self.ids.stream, depth=depth, type=type_, state_key=state_key,
            sender=sender, origin_server_ts=pdu["origin_server_ts"],
            received_ts=2000 + self.counter, prev_event_ids=prev_events, auth_event_ids=auth,
            state_group_before=self.group, state_group_after=self.group,
            device_id=device_id, txn_id=txn_id, redacts=redacts,
            extremities_after=[e for e in self.extremities if e not in prev_events] + [event_id])
        if not self.created:
            item.new_room = ("10", sender, 1000)
            self.created = True
        if state_key is not None:
            key = (type_, state_key)
            key_nid = self.ids.keys.get(key)
            if key_nid is None:
                self.ids.key += 1
                key_nid = self.ids.keys[key] = self.ids.key
                item.new_state_keys.append((key_nid, type_, state_key))
            new_nids = {**self.state_nids, key_nid: nid}
            added, removed = diff(self.state_nids, new_nids)
            plan = plan_group(self.chain, added, removed)
            self.ids.group += 1
            layer = Layer(self.ids.group, plan.parent_id, plan.added, plan.removed)
            item.new_state_groups.append(NewStateGroup(
                layer.group_id, self.room_id, plan.parent_id, pack_pairs(plan.added),
                pack_pairs(plan.removed)))
            item.state_group_after = layer.group_id
            membership = (content or {}).get("membership") if type_ == "m.room.member" \
                else None
            item.current_state_delta.append((type_, state_key, event_id, membership))
            kept = next((i for i, lay in enumerate(self.chain)
                         if lay.group_id == plan.parent_id), -1)
            self.chain = [*self.chain[:kept + 1], layer]
            self.group = layer.group_id
            self.state_nids = new_nids
            self.state[key] = event_id
        self.extremities = [e for e in self.extremities if e not in prev_events] + [event_id]
        self.depth = max(self.depth, depth)
        return item

    def create(self, creator: str = ALICE) -> list[PersistItem]:
        """The usual first events: create, the creator's join, power levels, join rules."""
        return [
            self.event("m.room.create", creator, {"room_version": "10", "creator": creator},
                       state_key=""),
            self.event("m.room.member", creator, {"membership": "join"}, state_key=creator),
            self.event("m.room.power_levels", creator, {"users": {creator: 100}},
                       state_key=""),
            self.event("m.room.join_rules", creator, {"join_rule": "public"}, state_key=""),
        ]


@pytest.fixture
def ids() -> Ids:
    return Ids()


async def rows(db: Database, query: Any) -> list[Any]:
    async with db.engine.read() as conn:
        return list((await conn.execute(query)).all())


async def count(db: Database, table: Any) -> int:
    async with db.engine.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


ALL_TABLES = (events, event_edges, current_state, state_groups, state_keys, rooms, redactions)


# -- persist_batch --------------------------------------------------------------------------


async def test_persist_batch_writes_every_table(database: Database, ids: Ids) -> None:
    room = FakeRoom(ROOM, ids)
    items = room.create()
    items.append(room.event("m.room.message", ALICE, {"body": "hi"}, device_id="DEV",
                            txn_id="t1"))
    await database.events.persist_batch(items)

    (room_row,) = await rows(database, select(rooms))
    assert (room_row.room_id, room_row.room_version, room_row.creator, room_row.created_ts,
            bool(room_row.is_public)) == (ROOM, "10", ALICE, 1000, False)
    assert room_row.current_state_group == room.group == items[3].state_group_after

    stored = {r.event_id: r for r in await rows(database, select(events))}
    assert set(stored) == {i.event_id for i in items}
    for item in items:
        row = stored[item.event_id]
        assert (row.nid, row.room_id, row.stream_ordering, row.depth, row.type, row.state_key,
                row.sender, row.origin_server_ts, row.received_ts) == (
            item.nid, ROOM, item.stream_ordering, item.depth, item.type, item.state_key,
            item.sender, item.origin_server_ts, item.received_ts)
        assert json.loads(row.json) == json.loads(item.pdu_json)
        assert not row.outlier and row.rejected_reason is None
        assert (row.state_group_before, row.state_group_after) == (
            item.state_group_before, item.state_group_after)
    assert (stored[items[4].event_id].device_id, stored[items[4].event_id].txn_id) == \
        ("DEV", "t1")
    assert stored[items[0].event_id].device_id is None

    edges = {(r.event_id, r.prev_event_id) for r in await rows(database, select(event_edges))}
    assert edges == {(i.event_id, p) for i in items for p in i.prev_event_ids}
    assert len(edges) == 4  # each event after the create points at the one before
    # Auth events live in each event's JSON (no separate table).
    assert items[0].event_id in json.loads(stored[items[4].event_id].json)["auth_events"]

    cs = {(r.type, r.state_key): (r.event_id, r.membership)
          for r in await rows(database, select(current_state))}
    assert cs == {
        ("m.room.create", ""): (items[0].event_id, None),
        ("m.room.member", ALICE): (items[1].event_id, "join"),
        ("m.room.power_levels", ""): (items[2].event_id, None),
        ("m.room.join_rules", ""): (items[3].event_id, None),
    }
    # Only the newest event is a forward extremity (kept on the room's row).
    head = await database.events.room_head(ROOM)
    assert head is not None and head.extremities == [items[4].event_id]
    assert head.depth == items[4].depth
    assert await database.events.room_extremities(ROOM) == [items[4].event_id]

    keys = {(r.type, r.state_key): r.nid for r in await rows(database, select(state_keys))}
    assert keys == ids.keys
    groups = await rows(database, select(state_groups).order_by(state_groups.c.id))
    assert [g.id for g in groups] == [i.state_group_after for i in items[:4]]
    assert all(g.room_id == ROOM for g in groups)
    assert groups[0].parent_id is None and unpack_pairs(groups[0].removed) == set()
    # The stored layers rebuild the room's state in nids.
    by_id = {g.id: Layer(g.id, g.parent_id, frozenset(unpack_pairs(g.added)),
                         frozenset(unpack_pairs(g.removed))) for g in groups}
    chain, gid = [], room.group
    while gid is not None:
        chain.append(by_id[gid])
        gid = by_id[gid].parent_id
    assert full_state(chain[::-1]) == room.state_nids
    assert await database.state.count_state_groups(ROOM) == 4
    assert await database.state.count_state_groups(OTHER_ROOM) == 0


async def test_persist_batches_one_after_another(database: Database, ids: Ids) -> None:
    room = FakeRoom(ROOM, ids)
    await database.events.persist_batch(room.create())
    first_group = room.group
    msgs = [room.event("m.room.message", ALICE, {"body": str(n)}) for n in range(3)]
    await database.events.persist_batch(msgs[:1])
    await database.events.persist_batch(msgs[1:])
    # Messages don't move the state group.
    assert await database.events.room_info(ROOM) == ("10", first_group)
    assert all(m.state_group_before == m.state_group_after == first_group for m in msgs)
    assert await database.events.room_extremities(ROOM) == [msgs[-1].event_id]
    assert await database.events.max_depth([m.event_id for m in msgs]) == msgs[-1].depth == 7
    assert await database.events.max_depth(["$nope"]) == 0
    nids = await database.events.nids_for_events([m.event_id for m in msgs] + ["$nope"])
    assert nids == {m.event_id: m.nid for m in msgs}


async def test_forked_extremities_merge(database: Database, ids: Ids) -> None:
    room = FakeRoom(ROOM, ids)
    await database.events.persist_batch(room.create())
    base = room.extremities[-1]
    a = room.event("m.room.message", ALICE, {"body": "a"}, prev=[base])
    b = room.event("m.room.message", ALICE, {"body": "b"}, prev=[base], depth=a.depth)
    await database.events.persist_batch([a, b])
    assert sorted(await database.events.room_extremities(ROOM)) == sorted([a.event_id,
                                                                          b.event_id])
    merge = room.event("m.room.message", ALICE, {"body": "merge"})
    assert sorted(merge.prev_event_ids) == sorted([a.event_id, b.event_id])
    await database.events.persist_batch([merge])
    assert await database.events.room_extremities(ROOM) == [merge.event_id]


async def test_later_items_of_a_batch_win_current_state(database: Database, ids: Ids) -> None:
    room = FakeRoom(ROOM, ids)
    items = room.create()
    items.append(room.event("m.room.member", BOB, {"membership": "join"}, state_key=BOB))
    items.append(room.event("m.room.name", ALICE, {"name": "one"}, state_key=""))
    items.append(room.event("m.room.member", BOB, {"membership": "leave"}, state_key=BOB))
    items.append(room.event("m.room.name", ALICE, {"name": "two"}, state_key=""))
    await database.events.persist_batch(items)
    cs = {(e.type, e.state_key): e for e in await database.state.current_state(ROOM)}
    assert cs[("m.room.member", BOB)] == CurrentStateEntry("m.room.member", BOB,
                                                           items[6].event_id, "leave")
    assert cs[("m.room.name", "")].event_id == items[7].event_id
    assert await database.events.room_info(ROOM) == ("10", items[7].state_group_after)
    assert await database.state.count_state_groups(ROOM) == 8


# -- reads ----------------------------------------------------------------------------------


async def test_get_events_and_get_event(database: Database, ids: Ids) -> None:
    room = FakeRoom(ROOM, ids)
    items = room.create()
    msg = room.event("m.room.message", ALICE, {"body": "hello"}, device_id="D1", txn_id="x")
    await database.events.persist_batch([*items, msg])
    got = await database.events.get_events([msg.event_id, items[0].event_id, "$missing",
                                            msg.event_id])
    assert set(got) == {msg.event_id, items[0].event_id}
    stored = got[msg.event_id]
    assert stored.event_id == msg.event_id
    assert stored.room_id == ROOM
    assert stored.room_version == "10"
    assert stored.pdu == json.loads(msg.pdu_json)
    assert stored.pdu["content"] == {"body": "hello"}
    assert (stored.stream_ordering, stored.depth) == (msg.stream_ordering, msg.depth)
    assert (stored.state_group_before, stored.state_group_after) == (room.group, room.group)
    assert (stored.device_id, stored.txn_id) == ("D1", "x")
    assert stored.redacted_by is None and stored.rejected_reason is None
    assert stored.outlier is False
    assert await database.events.get_event(msg.event_id) == stored
    assert await database.events.get_event("$missing") is None
    assert await database.events.get_events([]) == {}


async def test_get_events_in_chunks(database: Database, ids: Ids) -> None:
    room = FakeRoom(ROOM, ids)
    items = room.create() + [room.event("m.room.message", ALICE, {"n": n}) for n in range(700)]
    await database.events.persist_batch(items)
    got = await database.events.get_events(i.event_id for i in items)
    assert len(got) == len(items)
    assert all(got[i.event_id].stream_ordering == i.stream_ordering for i in items)


async def test_redacted_by_after_a_redaction(database: Database, ids: Ids) -> None:
    room = FakeRoom(ROOM, ids)
    items = room.create()
    msg = room.event("m.room.message", ALICE, {"body": "oops"})
    other = room.event("m.room.message", ALICE, {"body": "fine"})
    await database.events.persist_batch([*items, msg, other])
    assert (await database.events.get_event(msg.event_id)).redacted_by is None
    redaction = room.event("m.room.redaction", ALICE, {"reason": "typo"}, redacts=msg.event_id)
    await database.events.persist_batch([redaction])
    assert (await database.events.get_event(msg.event_id)).redacted_by == redaction.event_id
    assert (await database.events.get_event(other.event_id)).redacted_by is None
    assert (await database.events.get_event(redaction.event_id)).redacted_by is None
    (row,) = await rows(database, select(redactions))
    assert (row.event_id, row.redacts, row.received_ts, bool(row.censored)) == (
        redaction.event_id, msg.event_id, redaction.received_ts, False)
    # Redacted events still page (their content is pruned elsewhere).
    page = await database.events.paginate(ROOM, backwards=True, limit=3)
    assert [e.event_id for e in page] == [redaction.event_id, other.event_id, msg.event_id]
    assert page[2].redacted_by == redaction.event_id


async def test_redaction_in_the_same_batch_as_its_target(database: Database,
                                                         ids: Ids) -> None:
    room = FakeRoom(ROOM, ids)
    items = room.create()
    msg = room.event("m.room.message", ALICE, {"body": "oops"})
    redaction = room.event("m.room.redaction", ALICE, {}, redacts=msg.event_id)
    await database.events.persist_batch([*items, msg, redaction])
    assert (await database.events.get_event(msg.event_id)).redacted_by == redaction.event_id


async def test_a_second_redaction_of_one_event_is_stored_too(database: Database,
                                                             ids: Ids) -> None:
    room = FakeRoom(ROOM, ids)
    items = room.create()
    msg = room.event("m.room.message", ALICE, {"body": "x"})
    await database.events.persist_batch([*items, msg])
    r1 = room.event("m.room.redaction", ALICE, {}, redacts=msg.event_id)
    r2 = room.event("m.room.redaction", ALICE, {}, redacts=msg.event_id)
    await database.events.persist_batch([r1])
    await database.events.persist_batch([r2])
    assert len(await rows(database, select(redactions))) == 2
    assert (await database.events.get_event(msg.event_id)).redacted_by in (r1.event_id,
                                                                           r2.event_id)
    # The join does not duplicate the event.
    page = await database.events.paginate(ROOM, backwards=True, limit=10)
    assert [e.event_id for e in page].count(msg.event_id) == 1


async def test_paginate_orders_by_depth_then_stream(database: Database, ids: Ids) -> None:
    room = FakeRoom(ROOM, ids)
    items = room.create()  # depths 1..4, streams 1..4
    base = room.extremities[-1]
    # A fork at depth 5: two events with the same depth, and an event of depth 6 written
    # before a depth-5 one (stream order differs from topological order).
    a = room.event("m.room.message", ALICE, {"body": "a"}, prev=[base])          # d5 s5
    c = room.event("m.room.message", ALICE, {"body": "c"}, prev=[a.event_id])    # d6 s6
    b = room.event("m.room.message", BOB, {"body": "b"}, prev=[base], depth=5)   # d5 s7
    d = room.event("m.room.message", ALICE, {"body": "d"})                       # d7 s8
    await database.events.persist_batch([*items, a, c, b, d])
    other = FakeRoom(OTHER_ROOM, ids)
    await database.events.persist_batch(other.create())

    expected = [*[i.event_id for i in items], a.event_id, b.event_id, c.event_id, d.event_id]
    positions = {i.event_id: (i.depth, i.stream_ordering) for i in [*items, a, b, c, d]}
    assert sorted(positions, key=positions.__getitem__) == expected

    forwards = await database.events.paginate(ROOM, backwards=False, limit=100)
    assert [e.event_id for e in forwards] == expected
    backwards = await database.events.paginate(ROOM, backwards=True, limit=100)
    assert [e.event_id for e in backwards] == expected[::-1]
    assert [e.event_id for e in await database.events.paginate(ROOM, backwards=True,
                                                               limit=2)] == \
        [d.event_id, c.event_id]
    assert [e.event_id for e in await database.events.paginate(ROOM, backwards=False,
                                                               limit=2)] == expected[:2]

    # Bounds are exclusive positions (depth, stream_ordering).
    at_b = positions[b.event_id]
    assert [e.event_id for e in await database.events.paginate(
        ROOM, before=at_b, backwards=True, limit=100)] == expected[:expected.index(
            b.event_id)][::-1]
    assert [e.event_id for e in await database.events.paginate(
        ROOM, after=at_b, backwards=False, limit=100)] == [c.event_id, d.event_id]
    # Between a (5, 5) and d (7, 8), both ways.
    between = await database.events.paginate(ROOM, after=positions[a.event_id],
                                             before=positions[d.event_id], backwards=False,
                                             limit=100)
    assert [e.event_id for e in between] == [b.event_id, c.event_id]
    between = await database.events.paginate(ROOM, after=positions[a.event_id],
                                             before=positions[d.event_id], backwards=True,
                                             limit=100)
    assert [e.event_id for e in between] == [c.event_id, b.event_id]
    # A bound between two stored positions (same depth, a stream in between).
    assert [e.event_id for e in await database.events.paginate(
        ROOM, after=(5, 6), backwards=False, limit=1)] == [b.event_id]
    assert [e.event_id for e in await database.events.paginate(
        ROOM, before=(5, 6), backwards=True, limit=1)] == [a.event_id]
    # Paging through one event at a time yields the same order with no repeats.
    seen, cursor = [], None
    while True:
        page = await database.events.paginate(ROOM, before=cursor, backwards=True, limit=3)
        if not page:
            break
        seen += [e.event_id for e in page]
        cursor = (page[-1].depth, page[-1].stream_ordering)
    assert seen == expected[::-1]
    assert await database.events.paginate("!unknown:test.local", backwards=True,
                                          limit=10) == []


async def test_event_for_txn_is_scoped_by_room_sender_and_device(database: Database,
                                                                 ids: Ids) -> None:
    room, other = FakeRoom(ROOM, ids), FakeRoom(OTHER_ROOM, ids)
    items = room.create() + other.create()
    items.append(room.event("m.room.member", BOB, {"membership": "join"}, state_key=BOB))
    mine = room.event("m.room.message", ALICE, {"body": "1"}, device_id="DEV", txn_id="t")
    bobs = room.event("m.room.message", BOB, {"body": "2"}, device_id="DEV", txn_id="t")
    other_device = room.event("m.room.message", ALICE, {"body": "3"}, device_id="DEV2",
                              txn_id="t")
    other_room = other.event("m.room.message", ALICE, {"body": "4"}, device_id="DEV",
                             txn_id="t")
    await database.events.persist_batch([*items, mine, bobs, other_device, other_room])
    ev = database.events
    assert await ev.event_for_txn(ROOM, ALICE, "DEV", "t") == mine.event_id
    assert await ev.event_for_txn(ROOM, BOB, "DEV", "t") == bobs.event_id
    assert await ev.event_for_txn(ROOM, ALICE, "DEV2", "t") == other_device.event_id
    assert await ev.event_for_txn(OTHER_ROOM, ALICE, "DEV", "t") == other_room.event_id
    assert await ev.event_for_txn(ROOM, ALICE, "DEV", "u") is None
    assert await ev.event_for_txn(ROOM, CAROL, "DEV", "t") is None
    assert await ev.event_for_txn(ROOM, ALICE, "DEV3", "t") is None


async def test_a_repeated_txn_id_is_refused_by_the_index(database: Database,
                                                         ids: Ids) -> None:
    room = FakeRoom(ROOM, ids)
    first = room.event("m.room.message", ALICE, {"body": "1"}, device_id="DEV", txn_id="t")
    await database.events.persist_batch([first])
    again = room.event("m.room.message", ALICE, {"body": "2"}, device_id="DEV", txn_id="t")
    with pytest.raises(IntegrityError):
        await database.events.persist_batch([again])
    assert await database.events.event_for_txn(ROOM, ALICE, "DEV", "t") == first.event_id
    assert await database.events.get_event(again.event_id) is None


async def test_join_positions(database: Database, ids: Ids) -> None:
    room, other = FakeRoom(ROOM, ids), FakeRoom(OTHER_ROOM, ids)
    items = room.create() + other.create()
    j1 = room.event("m.room.member", BOB, {"membership": "join"}, state_key=BOB)
    leave = room.event("m.room.member", BOB, {"membership": "leave"}, state_key=BOB)
    invite = room.event("m.room.member", ALICE, {"membership": "invite"}, state_key=CAROL)
    name_change = room.event("m.room.member", ALICE, {"membership": "join",
                                                      "displayname": "A"}, state_key=ALICE)
    j2 = room.event("m.room.member", BOB, {"membership": "join"}, state_key=BOB)
    elsewhere = other.event("m.room.member", BOB, {"membership": "join"}, state_key=BOB)
    # A message whose sender is BOB and has no state key is not a join.
    msg = room.event("m.room.message", BOB, {"membership": "join"})
    await database.events.persist_batch([*items, j1, leave, invite, name_change, j2,
                                         elsewhere, msg])
    assert sorted(await database.events.join_positions(ROOM, BOB)) == [j1.stream_ordering,
                                                                       j2.stream_ordering]
    assert sorted(await database.events.join_positions(ROOM, ALICE)) == [
        items[1].stream_ordering, name_change.stream_ordering]
    assert await database.events.join_positions(ROOM, CAROL) == []
    assert await database.events.join_positions(OTHER_ROOM, BOB) == [elsewhere.stream_ordering]


async def test_room_info(database: Database, ids: Ids) -> None:
    assert await database.events.room_info(ROOM) is None
    room = FakeRoom(ROOM, ids)
    create = room.event("m.room.create", ALICE, {"room_version": "10"}, state_key="")
    await database.events.persist_batch([create])
    assert await database.events.room_info(ROOM) == ("10", create.state_group_after)
    name = room.event("m.room.name", ALICE, {"name": "n"}, state_key="")
    await database.events.persist_batch([name])
    assert await database.events.room_info(ROOM) == ("10", name.state_group_after)
    msg = room.event("m.room.message", ALICE, {})
    await database.events.persist_batch([msg])
    assert await database.events.room_info(ROOM) == ("10", name.state_group_after)


# -- state ----------------------------------------------------------------------------------


async def _room_with_history(database: Database, ids: Ids
                             ) -> tuple[FakeRoom, list[tuple[int, dict[tuple[str, str], str]]]]:
    """A room with many state changes, persisted in a few batches; returns the state after
    each state event."""
    room = FakeRoom(ROOM, ids)
    history: list[tuple[int, dict[tuple[str, str], str]]] = []
    batch: list[PersistItem] = []

    def add(item: PersistItem) -> None:
        batch.append(item)
        if item.new_state_groups:
            history.append((item.state_group_after, dict(room.state)))

    add(room.event("m.room.create", ALICE, {"room_version": "10"}, state_key=""))
    add(room.event("m.room.member", ALICE, {"membership": "join"}, state_key=ALICE))
    add(room.event("m.room.power_levels", ALICE, {"users": {ALICE: 100}}, state_key=""))
    users = [f"@u{n}:test.local" for n in range(30)]
    for n, user in enumerate(users):
        add(room.event("m.room.member", user, {"membership": "join"}, state_key=user))
        if n % 7 == 0:
            add(room.event("m.room.name", ALICE, {"name": f"name {n}"}, state_key=""))
        if n % 10 == 9:
            await database.events.persist_batch(batch)
            batch.clear()
    for user in users[::3]:
        add(room.event("m.room.member", user, {"membership": "leave"}, state_key=user))
        add(room.event("m.room.message", user, {"body": "bye"}))
    await database.events.persist_batch(batch)
    return room, history


async def test_state_at_group_for_every_group(database: Database, ids: Ids) -> None:
    room, history = await _room_with_history(database, ids)
    assert await database.state.count_state_groups(ROOM) == len(history)
    for store in (database.state, StateStore(database.engine)):  # warm and cold caches
        for group, expected in history:
            assert await store.state_at_group(group) == expected
    assert await database.state.state_at_group(None) == {}
    # Cold store, newest group first (the chain is loaded from the database in one go).
    cold = StateStore(database.engine)
    assert await cold.state_at_group(room.group) == room.state
    assert len(await cold.chain(room.group)) <= 4


async def test_state_at_group_only_filter(database: Database, ids: Ids) -> None:
    room, history = await _room_with_history(database, ids)
    for store in (database.state, StateStore(database.engine)):
        only = [("m.room.name", ""), ("m.room.member", "@u3:test.local"),
                ("m.room.member", "@nobody:test.local"), ("m.room.topic", "")]
        got = await store.state_at_group(room.group, only=only)
        assert got == {k: room.state[k] for k in only if k in room.state}
        assert set(got) == {("m.room.name", ""), ("m.room.member", "@u3:test.local")}
        assert await store.state_at_group(room.group, only=[]) == {}
        # An early group: the name was set, u3 had not joined yet.
        early_group, early_state = history[5]
        got = await store.state_at_group(early_group, only=only)
        assert got == {k: early_state[k] for k in only if k in early_state}
        assert ("m.room.member", "@u3:test.local") not in got


async def test_state_groups_are_compact(database: Database, ids: Ids) -> None:
    _room, history = await _room_with_history(database, ids)
    groups = await rows(database, select(state_groups))
    stored = sum(len(g.added) + len(g.removed) for g in groups) // 16
    full_copies = sum(len(state) for _, state in history)
    assert stored < full_copies / 2, (stored, full_copies)
    for group, _ in history:
        assert len(await StateStore(database.engine).chain(group)) <= 4


async def test_current_state_rooms_for_user_membership(database: Database, ids: Ids) -> None:
    room, other = FakeRoom(ROOM, ids), FakeRoom(OTHER_ROOM, ids)
    items = room.create() + other.create(BOB)
    bob_join = room.event("m.room.member", BOB, {"membership": "join"}, state_key=BOB)
    carol_invite = room.event("m.room.member", ALICE, {"membership": "invite"},
                              state_key=CAROL)
    alice_invite = other.event("m.room.member", BOB, {"membership": "invite"},
                               state_key=ALICE)
    name = room.event("m.room.name", ALICE, {"name": "Room"}, state_key="")
    await database.events.persist_batch([*items, bob_join, carol_invite, alice_invite, name])

    state = {(e.type, e.state_key): e for e in await database.state.current_state(ROOM)}
    assert set(state) == {("m.room.create", ""), ("m.room.member", ALICE),
                          ("m.room.power_levels", ""), ("m.room.join_rules", ""),
                          ("m.room.member", BOB), ("m.room.member", CAROL),
                          ("m.room.name", "")}
    assert state[("m.room.member", CAROL)] == CurrentStateEntry(
        "m.room.member", CAROL, carol_invite.event_id, "invite")
    assert state[("m.room.name", "")].membership is None
    only = await database.state.current_state(ROOM, types=["m.room.member"])
    assert {e.state_key for e in only} == {ALICE, BOB, CAROL}
    assert await database.state.current_state(ROOM, types=[]) == []
    assert await database.state.current_state("!none:test.local") == []
    # The current_state table agrees with the state of the room's current group.
    assert {k: e.event_id for k, e in state.items()} == \
        await database.state.state_at_group((await database.events.room_info(ROOM))[1])

    assert sorted(await database.state.rooms_for_user(BOB)) == sorted([ROOM, OTHER_ROOM])
    assert await database.state.rooms_for_user(ALICE) == [ROOM]
    assert await database.state.rooms_for_user(ALICE, ["invite"]) == [OTHER_ROOM]
    assert sorted(await database.state.rooms_for_user(ALICE, ["join", "invite"])) == \
        sorted([ROOM, OTHER_ROOM])
    assert await database.state.rooms_for_user(CAROL) == []
    assert await database.state.rooms_for_user(CAROL, ["invite"]) == [ROOM]

    assert await database.state.membership(ROOM, BOB) == ("join", bob_join.event_id)
    assert await database.state.membership(ROOM, CAROL) == ("invite", carol_invite.event_id)
    assert await database.state.membership(OTHER_ROOM, CAROL) is None

    leave = room.event("m.room.member", BOB, {"membership": "leave"}, state_key=BOB)
    await database.events.persist_batch([leave])
    assert await database.state.membership(ROOM, BOB) == ("leave", leave.event_id)
    assert await database.state.rooms_for_user(BOB) == [OTHER_ROOM]
    assert await database.state.rooms_for_user(BOB, ["leave"]) == [ROOM]


async def test_key_nids_and_keys_for_nids(database: Database, ids: Ids) -> None:
    room = FakeRoom(ROOM, ids)
    await database.events.persist_batch(room.create())
    cold = StateStore(database.engine)
    got = await cold.key_nids([("m.room.create", ""), ("m.room.member", ALICE),
                               ("m.room.topic", "")])
    assert got == {("m.room.create", ""): ids.keys[("m.room.create", "")],
                   ("m.room.member", ALICE): ids.keys[("m.room.member", ALICE)]}
    assert await StateStore(database.engine).keys_for_nids(
        [*ids.keys.values(), 999]) == {n: k for k, n in ids.keys.items()}


# -- failures -------------------------------------------------------------------------------


async def _snapshot_tables(db: Database) -> dict[str, list[Any]]:
    out = {}
    for table in ALL_TABLES:
        out[table.name] = sorted(tuple(r) for r in await rows(db, select(table)))
    return out


async def test_failing_batch_rolls_back_entirely(database: Database, ids: Ids) -> None:
    room = FakeRoom(ROOM, ids)
    first = room.create()
    await database.events.persist_batch(first)
    before = await _snapshot_tables(database)

    # A batch that creates a room, state keys, groups, current state and extremities ...
    other = FakeRoom(OTHER_ROOM, ids)
    batch = other.create(BOB)
    batch.append(room.event("m.room.member", CAROL, {"membership": "join"}, state_key=CAROL))
    batch.append(room.event("m.room.message", CAROL, {"body": "hi"}, device_id="D",
                            txn_id="1"))
    batch.append(room.event("m.room.redaction", ALICE, {}, redacts=first[3].event_id))
    # ... and at its end an event whose ID is already stored.
    dup = room.event("m.room.message", ALICE, {"body": "dup"}, event_id=first[0].event_id)
    batch.append(dup)
    with pytest.raises(IntegrityError):
        await database.events.persist_batch(batch)

    assert await _snapshot_tables(database) == before
    assert await database.events.room_info(OTHER_ROOM) is None
    assert await database.events.get_events(i.event_id for i in batch[:-1]) == {}
    assert await database.events.room_extremities(ROOM) == [first[-1].event_id]
    assert await database.events.event_for_txn(ROOM, CAROL, "D", "1") is None
    assert await database.state.membership(ROOM, CAROL) is None
    assert await database.state.rooms_for_user(BOB) == []
    assert (await database.events.get_event(first[3].event_id)).redacted_by is None

    # The database is usable afterwards: the same events without the duplicate go in.
    await database.events.persist_batch(batch[:-1])
    assert await database.events.room_info(OTHER_ROOM) is not None
    assert await database.state.membership(ROOM, CAROL) is not None


@pytest.mark.parametrize("conflict", ["state_group", "state_key", "stream_ordering", "room"])
async def test_failing_batch_rolls_back_on_any_conflict(database: Database, ids: Ids,
                                                        conflict: str) -> None:
    room = FakeRoom(ROOM, ids)
    await database.events.persist_batch(room.create())
    before = await _snapshot_tables(database)
    other = FakeRoom(OTHER_ROOM, ids)
    batch = other.create(BOB)
    bad = room.event("m.room.topic", ALICE, {"topic": "t"}, state_key="")
    if conflict == "state_group":
        bad.new_state_groups[0].group_id = 1
        bad.state_group_after = 1
    elif conflict == "state_key":
        # The same (type, state_key) under another nid.
        bad.new_state_keys.append((999, "m.room.create", ""))
    elif conflict == "stream_ordering":
        bad.stream_ordering = 1
    else:
        bad.new_room = ("10", ALICE, 5)
    batch.append(bad)
    with pytest.raises(IntegrityError):
        await database.events.persist_batch(batch)
    assert await _snapshot_tables(database) == before


async def test_state_key_rows_repeated_with_their_nid_are_written_once(database: Database,
                                                                      ids: Ids) -> None:
    """Until a key's row is committed, every event using it carries it: a batch may repeat it
    and a later batch may bring it again."""
    room, other = FakeRoom(ROOM, ids), FakeRoom(OTHER_ROOM, ids)
    batch = room.create() + other.create()
    topic = room.event("m.room.topic", ALICE, {"topic": "a"}, state_key="")
    other_topic = other.event("m.room.topic", ALICE, {"topic": "b"}, state_key="")
    other_topic.new_state_keys = list(topic.new_state_keys)
    await database.events.persist_batch([*batch, topic, other_topic])
    again = room.event("m.room.topic", ALICE, {"topic": "c"}, state_key="")
    again.new_state_keys = list(topic.new_state_keys)
    await database.events.persist_batch([again])
    topic_rows = await rows(database, select(state_keys).where(
        state_keys.c.type == "m.room.topic"))
    assert [(r.nid, r.state_key) for r in topic_rows] == [(ids.keys[("m.room.topic", "")], "")]
    assert (await StateStore(database.engine).state_at_group(other.group))[
        ("m.room.topic", "")] == other_topic.event_id
