"""The auth chain cover index (storage/auth_chain_index.py) and the auth difference read from it
(storage/stores/auth_chains.py), on SQLite and PostgreSQL.

The reference is :func:`core.state_res.auth_chain_difference`, the walk of ``auth_events``: on
random auth DAGs (forks, merges, outliers stored in odd orders over several writes, auth events
stored late or never, events still queued) the index must give the same difference for random
state sets, room versions 10 and 12. Then the migration that builds the index for a database
written before it, and a room of 10,000 members whose fork differs in a few events.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from core.events.model import Event
from core.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from core.state_res import StateKey, auth_chain_difference
from storage import Database, migrations, schema
from storage.stores.events import PersistItem
from tests.conftest import open_database

V10 = KNOWN_ROOM_VERSIONS["10"]
V12 = KNOWN_ROOM_VERSIONS["12"]
CREATE: StateKey = ("m.room.create", "")
POWER: StateKey = ("m.room.power_levels", "")
JOIN_RULES: StateKey = ("m.room.join_rules", "")
TOPIC: StateKey = ("m.room.topic", "")


# -- random rooms -------------------------------------------------------------------------------


@dataclass
class Room:
    """Events of one room (fake PDUs: only what the index and the walk read)."""

    version: RoomVersion
    name: str
    events: dict[str, Event] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # creation order (auth events first)
    by_key: dict[StateKey, list[str]] = field(default_factory=dict)

    @property
    def room_id(self) -> str:
        if self.version.room_id_is_create_event_hash:
            return "!" + self.by_key[CREATE][0][1:]
        return f"!{self.name}:test.local"

    def add(self, key: StateKey, auth: Sequence[str], sender: str = "@a:test.local") -> str:
        event_id = f"${self.name}-{len(self.order)}-{key[0][7:]}-{key[1][1:3]}"
        pdu: dict[str, Any] = {
            "type": key[0], "state_key": key[1], "sender": sender, "content": {},
            "auth_events": list(auth), "prev_events": [], "depth": len(self.order) + 1,
            "origin_server_ts": len(self.order),
        }
        if not (key == CREATE and self.version.room_id_is_create_event_hash):
            pdu["room_id"] = self.room_id if key != CREATE else f"!{self.name}:test.local"
        self.events[event_id] = Event(event_id, self.version, pdu)
        self.order.append(event_id)
        self.by_key.setdefault(key, []).append(event_id)
        return event_id

    def item(self, event_id: str, nid: int) -> PersistItem:
        ev = self.events[event_id]
        return PersistItem(
            event_id=event_id, room_id=self.room_id, pdu_json=json.dumps(dict(ev.pdu)),
            nid=nid, stream_ordering=None, depth=ev.depth, type=ev.type,
            state_key=ev.state_key, sender=ev.sender, origin_server_ts=ev.origin_server_ts,
            received_ts=1, prev_event_ids=[], auth_event_ids=ev.auth_event_ids,
            state_group_before=None, state_group_after=None, outlier=True, moves_head=False)


def random_room(rng: random.Random, version: RoomVersion, name: str, size: int) -> Room:
    """Create, power levels, join rules, members (joins, changes, kicks by others), topics:
    each event cites as auth events the latest event of its own key or an older one (a
    fork), the power levels and join rules of some moment, the sender's member event, and
    (before v12) the create event; sometimes a random other state event (a merge)."""
    room = Room(version, name)
    create = room.add(CREATE, [])
    users = [f"@u{i}:test.local" for i in range(rng.randint(2, 6))]
    create_not_cited = version.room_id_is_create_event_hash  # v12

    def base() -> list[str]:
        return [] if create_not_cited else [create]

    room.add(("m.room.member", users[0]), base())
    for _ in range(size):
        kind = rng.random()
        if kind < 0.15:
            key = POWER
        elif kind < 0.22:
            key = JOIN_RULES
        elif kind < 0.35:
            key = TOPIC
        else:
            key = ("m.room.member", rng.choice(users))
        auth = base()
        own = room.by_key.get(key)
        if own:
            auth.append(own[-1] if rng.random() < 0.7 else rng.choice(own))
        for other in (POWER, JOIN_RULES):
            if other != key and room.by_key.get(other) and rng.random() < 0.8:
                chain = room.by_key[other]
                auth.append(chain[-1] if rng.random() < 0.6 else rng.choice(chain))
        sender = ("m.room.member", rng.choice(users))
        if sender != key and room.by_key.get(sender):
            auth.append(rng.choice(room.by_key[sender]))
        if rng.random() < 0.1:
            auth.append(rng.choice(room.order))
        room.add(key, list(dict.fromkeys(auth)))
    return room


def random_state(rng: random.Random, room: Room, extra: Collection[str] = ()) -> dict[
        StateKey, str]:
    """A state set: an event of each key (some keys left out, the create event too at
    times), and sometimes one of ``extra`` (events not indexed) in place."""
    state = {}
    for key, ids in room.by_key.items():
        if rng.random() < (0.97 if key == CREATE else 0.9):
            state[key] = ids[-1] if rng.random() < 0.5 else rng.choice(ids)
    for event_id in extra:
        if rng.random() < 0.3:
            ev = room.events[event_id]
            assert ev.state_tuple is not None
            state[ev.state_tuple] = event_id
    return state


class Fetcher:
    """The roomserver's view: events stored or queued, minus the ``unknown`` ones."""

    def __init__(self, events: Mapping[str, Event], unknown: Collection[str]) -> None:
        self.events = events
        self.unknown = set(unknown)

    async def __call__(self, event_ids: Collection[str]) -> dict[str, Event]:
        return {e: self.events[e] for e in event_ids
                if e in self.events and e not in self.unknown}


class Writer:
    """Writes rooms' events as outliers through ``persist_batch`` (nids allocated here)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.nid = 0

    async def write(self, room: Room, event_ids: Sequence[str]) -> None:
        items = []
        for event_id in event_ids:
            self.nid += 1
            items.append(room.item(event_id, self.nid))
        if items:
            await self.db.events.persist_batch(items)


async def store_in_odd_order(rng: random.Random, writer: Writer, room: Room
                             ) -> tuple[set[str], set[str]]:
    """Store the room over several writes, each shuffled; some events are written a write or
    two late (their citers wait), some never (unknown here), the last few stay queued.
    Returns (never stored, queued)."""
    ids = list(room.order)
    never = set(rng.sample(ids[2:], k=min(2, len(ids) - 2))) if rng.random() < 0.3 else set()
    queued = set(ids[-rng.randint(1, 4):]) if rng.random() < 0.5 else set()
    to_store = [e for e in ids if e not in never and e not in queued]
    late: list[str] = []
    position = 0
    while position < len(to_store) or late:
        size = rng.randint(1, 12)
        batch = late + to_store[position:position + size]
        position += size
        late = []
        rng.shuffle(batch)
        if position < len(to_store) and len(batch) > 2 and rng.random() < 0.3:
            late = [batch.pop()]
        await writer.write(room, batch)
    return never, queued


# -- the property ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [V10, V12], ids=["v10", "v12"])
async def test_index_difference_equals_the_walk_on_random_dags(
        database: Database, version: RoomVersion) -> None:
    rng = random.Random(f"auth-chains-{version.identifier}")
    writer = Writer(database)
    checked = answered_without_walk = 0
    for round_ in range(12):
        room = random_room(rng, version, f"r{round_}", size=rng.randint(5, 60))
        never, queued = await store_in_odd_order(rng, writer, room)
        fetch = Fetcher(room.events, never)
        walked_in_room = database.auth_chains.stats.walked
        for _ in range(25):
            sets = [random_state(rng, room, [*queued, *never])
                    for _ in range(rng.choice((2, 2, 3)))]
            if rng.random() < 0.3:  # forks that differ in a few keys
                keys = rng.sample(sorted(sets[0]), k=min(3, len(sets[0])))
                sets[1] = {**sets[0], **{k: rng.choice(room.by_key[k]) for k in keys}}
            want = await auth_chain_difference(sets, fetch)
            walked_before = database.auth_chains.stats.walked
            got = await database.auth_chains.difference(sets, fetch)
            assert got == want, (round_, sets)
            if database.auth_chains.stats.walked == walked_before:
                answered_without_walk += 1
            without_fetch = await database.auth_chains.difference(sets)
            assert without_fetch is None or without_fetch == want
            checked += 1
        if not never and not queued:  # everything stored: the index alone answers
            assert database.auth_chains.stats.walked == walked_in_room
    stats = database.auth_chains.stats
    assert stats.reasons.get("indexed meanwhile", 0) == 0
    print(f"{checked} differences: {answered_without_walk} from the index alone, "
          f"{checked - answered_without_walk} walking {stats.walked_events} events in all")


async def test_waiting_events_are_indexed_when_their_auth_events_come(
        database: Database) -> None:
    room = Room(V10, "w")
    create = room.add(CREATE, [])
    alice = room.add(("m.room.member", "@a:test.local"), [create])
    power = room.add(POWER, [create, alice])
    topic = room.add(TOPIC, [create, alice, power])
    writer = Writer(database)
    # The topic first: it waits for the power levels, which waits for Alice's join.
    await writer.write(room, [create, topic])
    await writer.write(room, [power])
    async with database.engine.read() as conn:
        waiting = set((await conn.execute(select(schema.auth_chain_pending.c.event_id)))
                      .scalars())
        assert waiting == {topic, power}
    await writer.write(room, [alice])
    async with database.engine.read() as conn:
        assert (await conn.execute(select(func.count())
                                   .select_from(schema.auth_chain_pending))).scalar() == 0
        assert (await conn.execute(select(func.count())
                                   .select_from(schema.auth_chain_missing))).scalar() == 0
        indexed = set((await conn.execute(select(schema.auth_chain_positions.c.event_id)))
                      .scalars())
    assert indexed == {create, alice, power, topic}
    fetch = Fetcher(room.events, ())
    sets = [{CREATE: create, TOPIC: topic}, {CREATE: create}]
    assert await database.auth_chains.difference(sets) == \
        await auth_chain_difference(sets, fetch) == {topic, power, alice}


async def test_a_chain_follows_its_state_key_and_links_stay_few(database: Database) -> None:
    room = Room(V10, "c")
    create = room.add(CREATE, [])
    alice = room.add(("m.room.member", "@a:test.local"), [create])
    power = room.add(POWER, [create, alice])
    rules = room.add(JOIN_RULES, [create, alice, power])
    joins = [room.add(("m.room.member", f"@u{i}:test.local"), [create, power, rules])
             for i in range(20)]
    leaves = [room.add(("m.room.member", f"@u{i}:test.local"), [create, power, joins[i]])
              for i in range(5)]
    await Writer(database).write(room, room.order)
    async with database.engine.read() as conn:
        positions = {r.event_id: (r.chain_id, r.seq) for r in await conn.execute(
            select(schema.auth_chain_positions))}
        links = (await conn.execute(select(func.count())
                                    .select_from(schema.auth_chain_links))).scalar()
    for i, leave in enumerate(leaves):
        assert positions[leave] == (positions[joins[i]][0], 2)
    # A join cites create, power levels and join rules; the join rules reach the other two.
    assert links is not None and links <= 3 + len(joins)


# -- queued events --------------------------------------------------------------------------------


async def test_queued_events_are_walked_down_to_the_index(database: Database) -> None:
    room = Room(V12, "q")
    create = room.add(CREATE, [])
    alice = room.add(("m.room.member", "@a:test.local"), [])
    power = room.add(POWER, [alice])
    members = [room.add(("m.room.member", f"@u{i}:test.local"), [power]) for i in range(30)]
    await Writer(database).write(room, room.order)
    # Both sides of a fork, and an event both sides hold, still in the writer's queue.
    shared = room.add(POWER, [power, alice])
    left = room.add(TOPIC, [shared, alice])
    right = room.add(POWER, [shared, alice])
    base = {CREATE: create, ("m.room.member", "@a:test.local"): alice,
            **{("m.room.member", f"@u{i}:test.local"): m for i, m in enumerate(members)}}
    sets = [{**base, POWER: shared, TOPIC: left}, {**base, POWER: right}]
    fetch = Fetcher(room.events, ())
    want = await auth_chain_difference(sets, fetch)
    assert want == {left, right}
    stats = database.auth_chains.stats
    assert await database.auth_chains.difference(sets) is None
    assert stats.reasons == {"not indexed, nothing to walk it with": 1}
    before = stats.walked_events
    assert await database.auth_chains.difference(sets, fetch) == want
    # Only the three queued events were walked, not the room.
    assert stats.walked_events - before == 3


# -- the migration --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_migration_builds_the_index_of_a_database_written_before_it(
        kind: str, tmp_path: Any) -> None:
    rng = random.Random("migration")
    rooms = [random_room(rng, version, f"m{i}", size=40)
             for i, version in enumerate([V10, V12, V10])]
    async with open_database(kind, tmp_path) as db:
        writer = Writer(db)
        for room in rooms:
            order = list(room.order)
            rng.shuffle(order)  # outliers in any order, in one write each room
            await writer.write(room, order[:len(order) // 2])
            await writer.write(room, order[len(order) // 2:])
        # The previous schema: version 4, without the index's tables.
        async with db.engine.write() as conn:
            for table in (schema.auth_chain_missing, schema.auth_chain_pending,
                          schema.auth_chain_links, schema.auth_chain_positions):
                await conn.run_sync(lambda c, t=table: t.drop(c))
            await conn.execute(update(schema.schema_version).values(version=4))
        # Start-up on the old database runs the migration.
        assert await db.engine.migrate() == 4
        assert migrations.LATEST >= 5  # the index came with version 5
        async with db.engine.read() as conn:
            indexed = (await conn.execute(select(func.count()).select_from(
                schema.auth_chain_positions))).scalar()
            waiting = (await conn.execute(select(func.count()).select_from(
                schema.auth_chain_pending))).scalar()
        assert indexed == sum(len(r.order) for r in rooms) and waiting == 0
        for room in rooms:
            fetch = Fetcher(room.events, ())
            for _ in range(20):
                sets = [random_state(rng, room) for _ in range(2)]
                got = await db.auth_chains.difference(sets)
                assert got == await auth_chain_difference(sets, fetch)


# -- scale ----------------------------------------------------------------------------------------


async def test_a_fork_in_a_room_of_10000_members_is_answered_in_a_few_queries(
        database: Database) -> None:
    room = Room(V10, "big")
    create = room.add(CREATE, [])
    alice = room.add(("m.room.member", "@alice:test.local"), [create])
    power = room.add(POWER, [create, alice])
    rules = room.add(JOIN_RULES, [create, alice, power])
    state: dict[StateKey, str] = {CREATE: create, ("m.room.member", "@alice:test.local"): alice,
                                  POWER: power, JOIN_RULES: rules}
    for i in range(10_000):
        user = f"@u{i}:test.local"
        state[("m.room.member", user)] = room.add(("m.room.member", user),
                                                  [create, power, rules])
    writer = Writer(database)
    for start in range(0, len(room.order), 500):
        await writer.write(room, room.order[start:start + 500])
    sides = []
    for side in range(2):
        branch = dict(state)
        for step in range(3):
            pl = room.add(POWER, [create, alice, branch[POWER]])
            branch[POWER] = pl
            kicked = ("m.room.member", f"@u{side * 10 + step}:test.local")
            branch[kicked] = room.add(kicked, [create, pl, alice, branch[kicked]])
            branch[TOPIC] = room.add(TOPIC, [create, pl, alice])
        sides.append(branch)
    await writer.write(room, room.order[-18:])
    fetch = Fetcher(room.events, ())
    started = time.perf_counter()
    want = await auth_chain_difference(sides, fetch)
    walk_ms = (time.perf_counter() - started) * 1000

    statements: list[str] = []

    def count(*args: Any) -> None:
        if not args[2].startswith("BEGIN"):
            statements.append(args[2])

    engine = database.engine._read_engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        await database.auth_chains.difference(sides)  # cold: looks the 10,000 members up
        cold = len(statements)
        statements.clear()
        started = time.perf_counter()
        got = await database.auth_chains.difference(sides)
        index_ms = (time.perf_counter() - started) * 1000
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert got == want and len(want) == 14  # per side: 3 power levels, 3 kicks, a topic
    assert database.auth_chains.stats.walked == 0
    # Warm: positions of the 18 differing events are cached too; what they reach, what
    # reaches the candidates, what the common events among those reach.
    assert len(statements) <= 3, statements
    assert cold <= len(statements) + 1 + 10_004 // 2000 + 1
    print(f"10,000 members, fork of 9+9 events: walk {walk_ms:.1f} ms, index {index_ms:.1f} ms"
          f" ({len(statements)} queries; {cold} cold)")


async def test_nothing_is_indexed_for_messages(database: Database) -> None:
    room = Room(V10, "msg")
    create = room.add(CREATE, [])
    await Writer(database).write(room, [create])
    item = room.item(create, 99)
    item.event_id, item.type, item.state_key = "$message", "m.room.message", None
    await database.events.persist_batch([item])
    async with database.engine.read() as conn:
        ids = set((await conn.execute(select(schema.auth_chain_positions.c.event_id)))
                  .scalars())
    assert ids == {create}


async def test_a_room_deleted_and_stored_again_keeps_its_index(database: Database) -> None:
    rng = random.Random("again")
    room = random_room(rng, V10, "again", size=30)
    writer = Writer(database)
    await writer.write(room, room.order)
    await database.purge.delete_room(room.room_id)
    # The index's rows are facts about the events, kept: storing them again reuses them.
    await writer.write(room, room.order[::-1])
    fetch = Fetcher(room.events, ())
    for _ in range(20):
        sets = [random_state(rng, room) for _ in range(2)]
        assert await database.auth_chains.difference(sets) == \
            await auth_chain_difference(sets, fetch)


async def test_an_event_committed_during_the_walk_is_not_counted_twice(
        database: Database) -> None:
    room = Room(V10, "race")
    create = room.add(CREATE, [])
    alice = room.add(("m.room.member", "@a:test.local"), [create])
    power = room.add(POWER, [create, alice])
    writer = Writer(database)
    await writer.write(room, room.order)
    topic = room.add(TOPIC, [create, alice, power])
    newer = room.add(POWER, [create, alice, power])
    sets = [{CREATE: create, POWER: power, TOPIC: topic}, {CREATE: create, POWER: newer}]
    reference = Fetcher(room.events, ())
    want = await auth_chain_difference(sets, reference)

    committed = []

    async def committing_fetch(event_ids: Collection[str]) -> dict[str, Event]:
        # The writer commits the queued events while the difference walks them.
        if not committed:
            committed.append(True)
            await writer.write(room, [topic, newer])
        return await reference(event_ids)

    # Found committed when checked at the end: computed once more, from the index.
    assert await database.auth_chains.difference(sets, committing_fetch) == want
    stats = database.auth_chains.stats
    assert (stats.retries, stats.walked, stats.fallbacks) == (1, 0, 0)
