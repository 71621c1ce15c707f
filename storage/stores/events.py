"""Events: the one batched write of new events, and the reads of stored ones.

``persist_batch`` is the only code that writes ``events``, ``event_edges``, ``state_groups``,
``current_state`` and the rooms' heads; the event persister calls it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache
from sqlalchemy import Connection, and_, bindparam, delete, func, select, tuple_, update

from storage import auth_chain_index, relations_index, search_index
from storage.dialect import greatest, insert
from storage.engine import DatabaseEngine
from storage.schema import (
    current_state,
    event_edges,
    events,
    federation_outbox,
    history_dropped,
    invite_state,
    redactions,
    rooms,
    state_groups,
    state_keys,
)
from storage.search_text import INDEXED


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: str
    room_id: str
    room_version: str
    pdu: dict[str, Any]
    stream_ordering: int | None
    depth: int
    state_group_before: int | None
    state_group_after: int | None
    device_id: str | None
    txn_id: str | None
    redacted_by: str | None
    rejected_reason: str | None
    outlier: bool
    replaces_state: str | None = None


@dataclass(frozen=True, slots=True)
class RoomHead:
    room_version: str
    current_state_group: int | None
    extremities: list[str]
    depth: int


@dataclass(slots=True)
class NewStateGroup:
    group_id: int
    room_id: str
    parent_id: int | None
    added: bytes
    removed: bytes


@dataclass(slots=True)
class PersistItem:
    """Everything one new event changes, computed before the write."""

    event_id: str
    room_id: str
    pdu_json: str
    nid: int
    stream_ordering: int | None  # None for an outlier
    depth: int
    type: str
    state_key: str | None
    sender: str
    origin_server_ts: int
    received_ts: int
    prev_event_ids: list[str]
    auth_event_ids: list[str]
    state_group_before: int | None
    state_group_after: int | None
    device_id: str | None = None
    txn_id: str | None = None
    redacts: str | None = None
    # A received redaction of an event not here yet: what applying it will require (see the
    # ``redactions.requires_server`` column).
    redaction_requires: str | None = None
    replaces_state: str | None = None
    new_room: tuple[str, str, int] | None = None  # (room_version, creator, created_ts)
    # State groups written before the event (parents first): the state before it, after it
    # and the room's current state after it, where each is new.
    new_state_groups: list[NewStateGroup] = field(default_factory=list)
    new_state_keys: list[tuple[int, str, str]] = field(default_factory=list)
    # (type, state_key, event_id, membership) of the current state this event changes.
    current_state_delta: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    # Keys the room's current state loses (state resolution left none of their events).
    current_state_removed: list[tuple[str, str]] = field(default_factory=list)
    # The room's current state group once this event is in, when it is not the event's own
    # state after (branches of a fork resolved).
    head_state_group: int | None = None
    # The room's forward extremities once this event is in.
    extremities_after: list[str] = field(default_factory=list)
    # The event as a dict (what pdu_json encodes) and its room version, when the writer has
    # them at hand: the read cache takes the event from here.
    pdu: dict[str, Any] | None = None
    room_version: str | None = None
    # Federation: an event stored without a place in the timeline or the room's state (auth
    # chains, state fetched on a join, soft-failed events); it does not move the room's head.
    outlier: bool = False
    # Whether the room's head (extremities, state group, depth) moves to this event.
    moves_head: bool = True
    # Servers this event is to be sent to (rows of the durable outbound queue).
    destinations: list[str] = field(default_factory=list)
    # Built and signed here (not received): no redaction of it can have come before it.
    built_here: bool = False
    # Stripped state that came with an invite to a room this server is not in (JSON).
    invite_state_json: str | None = None
    # Backfill: the event is stored already as an outlier and takes its place in the
    # timeline now (its row is updated, not inserted).
    was_outlier: bool = False


_EVENT_COLUMNS = (events.c.event_id, events.c.room_id, events.c.json, events.c.stream_ordering,
                  events.c.depth, events.c.state_group_before, events.c.state_group_after,
                  events.c.device_id, events.c.txn_id, events.c.rejected_reason,
                  events.c.outlier, events.c.replaces_state, rooms.c.room_version,
                  # One redaction per event (the first) even when it was redacted twice.
                  select(redactions.c.event_id)
                  .where(redactions.c.redacts == events.c.event_id,
                         redactions.c.requires_server.is_(None))
                  .order_by(redactions.c.received_ts, redactions.c.event_id).limit(1)
                  .scalar_subquery().label("redacted_by"))


def _stored(row: Any) -> StoredEvent:
    return StoredEvent(row.event_id, row.room_id, row.room_version, json.loads(row.json),
                       row.stream_ordering, row.depth, row.state_group_before,
                       row.state_group_after, row.device_id, row.txn_id, row.redacted_by,
                       row.rejected_reason, bool(row.outlier), row.replaces_state)


def _event_select() -> Any:
    return (select(*_EVENT_COLUMNS)
            .join(rooms, rooms.c.room_id == events.c.room_id))


@functools.cache
def _write_statements(is_sqlite: bool) -> dict[str, Any]:
    """The write path's statements, built once per dialect: SQLAlchemy then finds their
    compiled form without working out a cache key per batch."""
    upsert_state = insert(is_sqlite, current_state)
    return {
        "rooms": rooms.insert(),
        "state_keys": insert(is_sqlite, state_keys).on_conflict_do_nothing(
            index_elements=["nid"]),
        "state_groups": state_groups.insert(),
        "events": events.insert(),
        "edges": event_edges.insert(),
        "current_state": upsert_state.on_conflict_do_update(
            index_elements=["room_id", "type", "state_key"],
            set_={"event_id": upsert_state.excluded.event_id,
                  "membership": upsert_state.excluded.membership}),
        "outbox": federation_outbox.insert(),
        "redactions": insert(is_sqlite, redactions).on_conflict_do_nothing(),
        "heads": update(rooms).where(rooms.c.room_id == bindparam("r")).values(
            forward_extremities=bindparam("x"), current_state_group=bindparam("g"),
            depth=greatest(is_sqlite, rooms.c.depth, bindparam("d"))),
    }


# Built once (building it per batch cost more than running it).
_WAITING_REDACTIONS = select(
    redactions.c.event_id, redactions.c.redacts, redactions.c.requires_server,
    events.c.room_id).join(events, events.c.event_id == redactions.c.event_id).where(
        redactions.c.redacts.in_(bindparam("ids", expanding=True)))


def _apply_waiting_redactions(conn: Connection, items: Sequence[PersistItem]) -> list[str]:
    """Settle the redactions that arrived before the events of this batch (one query per
    batch, which finds nothing but for events a server sent after their redaction): each
    applies if the redaction is of the same room and its sender may redact the event (see
    ``redactions.requires_server``), else it is dropped. Returns the events now redacted."""
    by_id = {i.event_id: i for i in items}
    waiting: list[Any] = []
    ids = list(by_id)
    for start in range(0, len(ids), 500):
        waiting.extend(conn.execute(_WAITING_REDACTIONS, {"ids": ids[start:start + 500]}).all())
    if not waiting:
        return []
    applies, dropped, redacted = [], [], []
    for row in waiting:
        target = by_id[row.redacts]
        if row.requires_server is None:
            redacted.append(row.redacts)  # (a repeat of an event redacted already)
        elif row.room_id == target.room_id and row.requires_server in (
                "*", target.sender.split(":", 1)[1]):
            applies.append(row.event_id)
            redacted.append(row.redacts)
        else:
            dropped.append(row.event_id)
    if applies:
        conn.execute(update(redactions).where(redactions.c.event_id.in_(applies))
                     .values(requires_server=None))
    if dropped:
        conn.execute(delete(redactions).where(redactions.c.event_id.in_(dropped)))
    return redacted


class EventStore:
    """Stored events, with a bounded cache of recently read and written ones.

    Sync fans one new event out to every member's connections, so the events just written
    are what everyone reads next: the write path puts them in the cache as it commits them.
    A cached event changes only when it is redacted; redactions evict it, and a read that
    overlapped an eviction does not refill the cache with what it saw.
    """

    CACHE_SIZE = 20_000

    def __init__(self, engine: DatabaseEngine, cache_size: int = CACHE_SIZE, *,
                 relations_changed: Callable[[list[str], list[str], bool], None] | None = None
                 ) -> None:
        self._db = engine
        # Told after each write of the new events nothing relates to yet, those that gained
        # relations (the parents' IDs), and whether redactions were applied (which may have
        # removed some): the relations' read cache.
        self._relations_changed = relations_changed
        self._cache: LRUCache[str, StoredEvent] = LRUCache(cache_size)
        self._evictions = 0

    def _remember(self, loaded: Iterable[StoredEvent]) -> None:
        for event in loaded:
            self._cache[event.event_id] = event

    def forget_cached(self, event_ids: Iterable[str]) -> None:
        """Drop events whose stored form changed (redacted, purged)."""
        self._evictions += 1
        for event_id in event_ids:
            self._cache.pop(event_id, None)

    # -- the write path ---------------------------------------------------------------------

    async def persist_batch(self, items: Sequence[PersistItem]) -> list[str]:
        """Write a batch of new events and everything they change, in one transaction; the
        items that carry their event as a dict go straight into the read cache. Returns the
        events that are redacted now (by a redaction in the batch, or new events redacted by
        one received before them)."""
        indexed = search_index.index_rows((i.nid, i.pdu if i.pdu is not None
                                           else json.loads(i.pdu_json)) for i in items
                                          if i.type in INDEXED and not i.outlier)
        related = [r for r in (
            relations_index.row(i.event_id, i.pdu if i.pdu is not None
                                else json.loads(i.pdu_json), depth=i.depth,
                                stream_ordering=i.stream_ordering)
            for i in items if not i.outlier and i.stream_ordering is not None
            and relations_index.may_relate(i.pdu_json)) if r is not None]
        already, unrelated = await self._db.run_write(
            lambda conn: self._persist(conn, items, indexed, related))
        redacted = [i.redacts for i in items if i.redacts is not None
                    and i.redaction_requires is None] + already
        if redacted:
            self.forget_cached(redacted)
        if self._relations_changed is not None:
            # Nothing can relate to an event built here before it is written (its ID is
            # its hash), except later in this batch; of the received ones the write looked.
            self._relations_changed([i.event_id for i in items if i.built_here] + unrelated,
                                    [r["relates_to_id"] for r in related], bool(redacted))
        self._remember(StoredEvent(
            i.event_id, i.room_id, i.room_version, i.pdu, i.stream_ordering, i.depth,
            i.state_group_before, i.state_group_after, i.device_id, i.txn_id, None, None,
            i.outlier, i.replaces_state)
            for i in items if i.pdu is not None and i.room_version is not None
            and i.event_id not in redacted)
        return redacted

    def _persist(self, conn: Connection, items: Sequence[PersistItem],
                 indexed: Sequence[dict[str, Any]], related: list[dict[str, Any]]
                 ) -> tuple[list[str], list[str]]:
        """The write itself; returns the new events that redactions received before them
        redact (so they are not cached unredacted), and the received events nothing relates
        to (so readers need not ask)."""
        is_sqlite = self._db.is_sqlite
        statements = _write_statements(is_sqlite)
        new_rooms = [dict(room_id=i.room_id, room_version=i.new_room[0], creator=i.new_room[1],
                          created_ts=i.new_room[2], is_public=False)
                     for i in items if i.new_room is not None]
        if new_rooms:
            conn.execute(statements["rooms"], new_rooms)
        # A key may come with several items (until one write of it commits): once per batch,
        # and a repeat of a stored row (same nid) is skipped.
        keys = list({n: dict(nid=n, type=t, state_key=k)
                     for i in items for n, t, k in i.new_state_keys}.values())
        if keys:
            conn.execute(statements["state_keys"], keys)
        groups = [dict(id=g.group_id, room_id=g.room_id, parent_id=g.parent_id, added=g.added,
                       removed=g.removed)
                  for i in items for g in i.new_state_groups]
        if groups:
            conn.execute(statements["state_groups"], groups)
        new = [i for i in items if not i.was_outlier]
        if new:
            conn.execute(statements["events"], [dict(
                nid=i.nid, event_id=i.event_id, room_id=i.room_id,
                stream_ordering=i.stream_ordering, depth=i.depth, type=i.type,
                state_key=i.state_key, sender=i.sender, origin_server_ts=i.origin_server_ts,
                received_ts=i.received_ts, json=i.pdu_json, outlier=i.outlier,
                rejected_reason=None, state_group_before=i.state_group_before,
                state_group_after=i.state_group_after, device_id=i.device_id,
                txn_id=i.txn_id, replaces_state=i.replaces_state)
                for i in new])
        placed = [dict(e=i.event_id, s=i.stream_ordering, b=i.state_group_before,
                       a=i.state_group_after) for i in items if i.was_outlier]
        if placed:
            conn.execute(update(events).where(events.c.event_id == bindparam("e")).values(
                stream_ordering=bindparam("s"), outlier=False,
                state_group_before=bindparam("b"), state_group_after=bindparam("a")), placed)
        auth_chain_index.add(conn, new)
        edges = [dict(event_id=i.event_id, prev_event_id=p) for i in new
                 for p in i.prev_event_ids]
        if edges:
            conn.execute(statements["edges"], edges)
        redacted = [dict(event_id=i.event_id, redacts=i.redacts, received_ts=i.received_ts,
                         censored=False, requires_server=i.redaction_requires)
                    for i in items if i.redacts is not None]
        if redacted:
            conn.execute(statements["redactions"], redacted)
        received = [i for i in items if not i.built_here]
        already = _apply_waiting_redactions(conn, received) if received else []
        # Searchable text, except what is already redacted: by a redaction that came over
        # federation before its event (``already``), or by one in this batch.
        if already:
            gone = {i.nid for i in received if i.event_id in set(already)}
            indexed = [row for row in indexed if row["nid"] not in gone]
        search_index.add(conn, indexed)
        applied = [str(r["redacts"]) for r in redacted if r["requires_server"] is None]
        if applied:
            search_index.remove_events(conn, applied)
        # Relations, except those already redacted (as the search index).
        if already:
            related[:] = [r for r in related if r["event_id"] not in set(already)]
        relations_index.add(conn, related)
        if applied:
            relations_index.remove_events(conn, applied)
        timeline = [i.event_id for i in received if not i.outlier]
        targets = relations_index.related_among(conn, timeline) if timeline else set()
        unrelated = [e for e in timeline if e not in targets]

        # Current state changes (later items win); each room's head is written once.
        changed: dict[tuple[str, str, str], dict[str, Any] | None] = {}
        for item in items:
            for type_, state_key in item.current_state_removed:
                changed[(item.room_id, type_, state_key)] = None
            for type_, state_key, event_id, membership in item.current_state_delta:
                changed[(item.room_id, type_, state_key)] = dict(
                    room_id=item.room_id, type=type_, state_key=state_key, event_id=event_id,
                    membership=membership)
        removed = [dict(r=r, t=t, k=k) for (r, t, k), row in changed.items() if row is None]
        if removed:
            conn.execute(delete(current_state).where(
                current_state.c.room_id == bindparam("r"), current_state.c.type == bindparam("t"),
                current_state.c.state_key == bindparam("k")), removed)
        rows = [row for row in changed.values() if row is not None]
        if rows:
            conn.execute(statements["current_state"], rows)
        outbox = [dict(destination=d, event_id=i.event_id, created_ts=i.received_ts)
                  for i in items for d in i.destinations]
        if outbox:
            conn.execute(statements["outbox"], outbox)
        invites = [dict(event_id=i.event_id, stripped_json=i.invite_state_json)
                   for i in items if i.invite_state_json is not None]
        if invites:
            conn.execute(insert(is_sqlite, invite_state).on_conflict_do_nothing(), invites)
        heads: dict[str, dict[str, Any]] = {}
        for item in items:
            if not item.moves_head:
                continue
            head = heads.setdefault(item.room_id, {"r": item.room_id, "d": 0})
            head["x"] = json.dumps(item.extremities_after)
            head["d"] = max(head["d"], item.depth)
            head["g"] = item.head_state_group if item.head_state_group is not None \
                else item.state_group_after
        if heads:
            conn.execute(statements["heads"], list(heads.values()))
        return already, unrelated

    # -- reads ------------------------------------------------------------------------------

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
        """The stored events among ``event_ids`` (unknown IDs are left out)."""
        out: dict[str, StoredEvent] = {}
        wanted: list[str] = []
        cache = self._cache
        for event_id in set(event_ids):
            hit = cache.get(event_id)
            if hit is None:
                wanted.append(event_id)
            else:
                out[event_id] = hit
        if not wanted:
            return out
        evictions = self._evictions
        loaded: list[StoredEvent] = []
        async with self._db.read() as conn:
            for i in range(0, len(wanted), 500):
                rows = await conn.execute(
                    _event_select().where(events.c.event_id.in_(wanted[i:i + 500])))
                loaded.extend(_stored(r) for r in rows)
        out.update((e.event_id, e) for e in loaded)
        if evictions == self._evictions:
            self._remember(e for e in loaded if e.stream_ordering is not None)
        return out

    async def redactions_due(self, received_before: int, limit: int = 200
                             ) -> list[tuple[str, str, str]]:
        """``(event ID, JSON, room version)`` of stored events redacted by a redaction
        received before ``received_before`` whose content is not erased yet."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(events.c.event_id, events.c.json, rooms.c.room_version).distinct()
                .select_from(redactions.join(events, events.c.event_id == redactions.c.redacts)
                             .join(rooms, rooms.c.room_id == events.c.room_id))
                .where(and_(redactions.c.censored.is_(False),
                            redactions.c.requires_server.is_(None),
                            redactions.c.received_ts < received_before))
                .limit(limit))
            return [(r.event_id, r.json, r.room_version) for r in rows]

    async def erase_redacted(self, pruned: dict[str, str]) -> None:
        """Replace redacted events' stored JSON with their pruned form (event ID -> JSON)
        and mark their redactions done."""
        if not pruned:
            return

        def erase(conn: Connection) -> None:
            conn.execute(update(events).where(events.c.event_id == bindparam("e"))
                         .values(json=bindparam("j")),
                         [{"e": e, "j": j} for e, j in pruned.items()])
            conn.execute(update(redactions).where(redactions.c.redacts.in_(list(pruned)))
                         .values(censored=True))

        await self._db.run_write(erase)
        self.forget_cached(pruned)

    async def undropped_history(self, room_id: str, up_to: tuple[int, int], limit: int = 500
                                ) -> tuple[list[tuple[str, str]], tuple[int, int] | None]:
        """The room's next non-state events after its dropped point and at or before
        ``up_to`` (depth, stream), oldest first, as ``(event ID, JSON)``; and the position of
        the last of them (None when there are none)."""
        async with self._db.read() as conn:
            row = (await conn.execute(select(history_dropped.c.depth,
                                             history_dropped.c.stream_ordering)
                                      .where(history_dropped.c.room_id == room_id))).first()
            after = (int(row.depth), int(row.stream_ordering)) if row is not None else None
            order = tuple_(events.c.depth, events.c.stream_ordering)
            query = select(events.c.event_id, events.c.json, events.c.depth,
                           events.c.stream_ordering).where(
                events.c.room_id == room_id, events.c.state_key.is_(None),
                events.c.stream_ordering.is_not(None), order <= tuple_(*up_to))
            if after is not None:
                query = query.where(order > tuple_(*after))
            rows = (await conn.execute(query.order_by(events.c.depth, events.c.stream_ordering)
                                       .limit(limit))).all()
        last = (int(rows[-1].depth), int(rows[-1].stream_ordering)) if rows else None
        return [(r.event_id, r.json) for r in rows], last

    async def drop_content(self, room_id: str, pruned: dict[str, str],
                           point: tuple[int, int]) -> None:
        """Replace events' stored JSON with their pruned form (event ID -> JSON), take them
        out of the search index, and move the room's dropped point to ``point``."""

        def drop(conn: Connection) -> None:
            if pruned:
                conn.execute(update(events).where(events.c.event_id == bindparam("e"))
                             .values(json=bindparam("j")),
                             [{"e": e, "j": j} for e, j in pruned.items()])
                search_index.remove_events(conn, list(pruned))
            values = {"depth": point[0], "stream_ordering": point[1]}
            conn.execute(insert(self._db.is_sqlite, history_dropped)
                         .values(room_id=room_id, **values)
                         .on_conflict_do_update(index_elements=["room_id"], set_=values))

        await self._db.run_write(drop)
        self.forget_cached(pruned)

    async def get_event(self, event_id: str) -> StoredEvent | None:
        return (await self.get_events([event_id])).get(event_id)

    async def event_for_txn(self, room_id: str, sender: str, device_id: str, txn_id: str
                            ) -> str | None:
        async with self._db.read() as conn:
            return (await conn.execute(select(events.c.event_id).where(and_(
                events.c.room_id == room_id, events.c.sender == sender,
                events.c.device_id == device_id,
                events.c.txn_id == txn_id)))).scalar()

    async def recent_txns(self, room_id: str, sender: str, device_id: str, limit: int
                          ) -> dict[str, str]:
        """The device's most recent transaction IDs in the room -> event IDs."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(events.c.txn_id, events.c.event_id).where(and_(
                    events.c.room_id == room_id, events.c.sender == sender,
                    events.c.device_id == device_id, events.c.txn_id.is_not(None)))
                .order_by(events.c.stream_ordering.desc()).limit(limit))
            return {r.txn_id: r.event_id for r in rows}

    async def paginate(self, room_id: str, *, before: tuple[int, int] | None = None,
                       after: tuple[int, int] | None = None, backwards: bool,
                       limit: int) -> list[StoredEvent]:
        """Events of a room in topological order ``(depth, stream_ordering)``.

        Args:
            before/after: exclusive bounds as ``(depth, stream_ordering)``.
            backwards: newest first when true.
        """

        order = tuple_(events.c.depth, events.c.stream_ordering)
        query = _event_select().where(and_(events.c.room_id == room_id,
                                           events.c.stream_ordering.is_not(None),
                                           events.c.rejected_reason.is_(None)))
        if before is not None:
            query = query.where(order < tuple_(*before))
        if after is not None:
            query = query.where(order > tuple_(*after))
        if backwards:
            query = query.order_by(events.c.depth.desc(), events.c.stream_ordering.desc())
        else:
            query = query.order_by(events.c.depth.asc(), events.c.stream_ordering.asc())
        async with self._db.read() as conn:
            rows = await conn.execute(query.limit(limit))
            return [_stored(r) for r in rows]

    async def by_timestamp(self, room_id: str, ts: int, *, forwards: bool,
                           after: tuple[int, int] | None = None, limit: int = 20
                           ) -> list[StoredEvent]:
        """The room's timeline events (neither outliers nor rejected) closest to ``ts``:
        at or after it, oldest first (``forwards``), or at or before it, newest first, in
        ``(origin_server_ts, stream_ordering)`` order, beyond ``after`` (such a pair) when
        given."""
        key = tuple_(events.c.origin_server_ts, events.c.stream_ordering)
        query = _event_select().where(and_(events.c.room_id == room_id,
                                           events.c.stream_ordering.is_not(None),
                                           events.c.rejected_reason.is_(None)))
        if forwards:
            query = query.where(events.c.origin_server_ts >= ts).order_by(
                events.c.origin_server_ts.asc(), events.c.stream_ordering.asc())
            if after is not None:
                query = query.where(key > tuple_(*after))
        else:
            query = query.where(events.c.origin_server_ts <= ts).order_by(
                events.c.origin_server_ts.desc(), events.c.stream_ordering.desc())
            if after is not None:
                query = query.where(key < tuple_(*after))
        async with self._db.read() as conn:
            rows = await conn.execute(query.limit(limit))
            return [_stored(r) for r in rows]

    async def position_at_stream(self, room_id: str, stream: int) -> tuple[int, int] | None:
        """The topologically last ``(depth, stream_ordering)`` of the room's timeline events
        at or before stream position ``stream`` (None if it had none yet)."""
        async with self._db.read() as conn:
            row = (await conn.execute(
                select(events.c.depth, events.c.stream_ordering)
                .where(events.c.room_id == room_id, events.c.stream_ordering.is_not(None),
                       events.c.stream_ordering <= stream)
                .order_by(events.c.depth.desc(), events.c.stream_ordering.desc())
                .limit(1))).first()
        return (int(row.depth), int(row.stream_ordering)) if row is not None else None

    async def backward_extremities(self, room_id: str, oldest: int = 20
                                   ) -> tuple[list[str], int | None]:
        """Where the room's history here begins, for backfill: the prev events of its
        ``oldest`` earliest timeline events that are not in its timeline (unknown, or
        outliers such as the state fetched on joining), and the state group before the
        earliest."""
        first = (select(events.c.event_id, events.c.state_group_before)
                 .where(events.c.room_id == room_id, events.c.stream_ordering.is_not(None))
                 .order_by(events.c.depth, events.c.stream_ordering).limit(oldest)
                 .subquery())
        known = events.alias("known")
        async with self._db.read() as conn:
            earliest = (await conn.execute(
                select(events.c.state_group_before)
                .where(events.c.room_id == room_id, events.c.stream_ordering.is_not(None))
                .order_by(events.c.depth, events.c.stream_ordering).limit(1))).first()
            if earliest is None:
                return [], None
            prevs = await conn.execute(
                select(event_edges.c.prev_event_id).distinct()
                .join(first, first.c.event_id == event_edges.c.event_id)
                .outerjoin(known, and_(known.c.event_id == event_edges.c.prev_event_id,
                                       known.c.stream_ordering.is_not(None)))
                .where(known.c.event_id.is_(None)))
            return sorted(r.prev_event_id for r in prevs), earliest.state_group_before

    async def join_positions(self, room_id: str, user_id: str) -> list[int]:
        """Stream orderings of the user's join events in the room."""
        async with self._db.read() as conn:
            rows = await conn.execute(select(events.c.stream_ordering, events.c.json).where(and_(
                events.c.room_id == room_id, events.c.type == "m.room.member",
                events.c.state_key == user_id, events.c.stream_ordering.is_not(None))))
            return [r.stream_ordering for r in rows
                    if json.loads(r.json).get("content", {}).get("membership") == "join"]

    async def last_join_positions(self, user_id: str, room_ids: Sequence[str]
                                  ) -> dict[str, int]:
        """Room -> the stream ordering of the user's last join event there (rooms they never
        joined are left out), for many rooms in one query per 500."""
        out: dict[str, int] = {}
        async with self._db.read() as conn:
            for i in range(0, len(room_ids), 500):
                rows = await conn.execute(select(
                    events.c.room_id, events.c.stream_ordering, events.c.json).where(and_(
                        events.c.room_id.in_(list(room_ids[i:i + 500])),
                        events.c.type == "m.room.member", events.c.state_key == user_id,
                        events.c.stream_ordering.is_not(None))))
                for r in rows:
                    if json.loads(r.json).get("content", {}).get("membership") == "join" \
                            and r.stream_ordering > out.get(r.room_id, r.stream_ordering - 1):
                        out[r.room_id] = r.stream_ordering
        return out

    async def room_extremities(self, room_id: str) -> list[str]:
        head = await self.room_head(room_id)
        return head.extremities if head is not None else []

    async def room_head(self, room_id: str) -> RoomHead | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(rooms).where(rooms.c.room_id == room_id))).first()
        if row is None:
            return None
        return RoomHead(row.room_version, row.current_state_group,
                        json.loads(row.forward_extremities), int(row.depth))

    async def room_info(self, room_id: str) -> tuple[str, int | None] | None:
        """``(room_version, current_state_group)`` of a room this server knows."""
        async with self._db.read() as conn:
            row = (await conn.execute(select(rooms.c.room_version, rooms.c.current_state_group)
                                      .where(rooms.c.room_id == room_id))).first()
        return (row.room_version, row.current_state_group) if row is not None else None

    async def max_depth(self, event_ids: Sequence[str]) -> int:

        async with self._db.read() as conn:
            return int((await conn.execute(select(func.max(events.c.depth))
                                           .where(events.c.event_id.in_(list(event_ids)))))
                       .scalar() or 0)

    async def nids_for_events(self, event_ids: Iterable[str]) -> dict[str, int]:
        wanted = list(set(event_ids))
        out: dict[str, int] = {}
        async with self._db.read() as conn:
            for i in range(0, len(wanted), 500):
                rows = await conn.execute(select(events.c.event_id, events.c.nid)
                                          .where(events.c.event_id.in_(wanted[i:i + 500])))
                out.update({r.event_id: r.nid for r in rows})
        return out
