"""Event relations: what relates to an event (``/relations``), a room's threads
(``/threads``), and the summaries bundled with events (``unsigned["m.relations"]``).

Only relations in the parent's own room count: every read joins the parent event and asks
for its room. Summaries are cached per parent; the write path tells the store which parents
gained relations and when redactions may have removed some (``changed``), and a read that
overlapped such news does not fill the cache with what it saw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cachetools import LRUCache
from sqlalchemy import Select, and_, case, func, literal, or_, select, tuple_

from storage.engine import DatabaseEngine
from storage.relations_index import THREAD
from storage.schema import event_relations, events

REPLACE = "m.replace"
REFERENCE = "m.reference"
# As Synapse: direct relations are level 0, and the walk goes on while the level is <= 3.
RECURSION_DEPTH = 3
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ThreadSummary:
    count: int
    latest_event_id: str
    senders: frozenset[str]


@dataclass(frozen=True, slots=True)
class RelationSummary:
    """What relates to one event, the same for every reader."""

    thread: ThreadSummary | None
    # Valid replacements (same sender, type and room as the parent), oldest first by
    # (origin_server_ts, event ID): the last is the one that applies.
    edits: tuple[str, ...]
    references: tuple[str, ...]  # oldest first


_EMPTY = RelationSummary(None, (), ())


@dataclass(frozen=True, slots=True)
class Child:
    event_id: str
    depth: int
    stream_ordering: int


@dataclass(frozen=True, slots=True)
class ThreadRoot:
    event_id: str
    latest_stream: int  # the stream position of its latest reply


class RelationStore:
    CACHE_SIZE = 20_000

    def __init__(self, engine: DatabaseEngine, cache_size: int = CACHE_SIZE) -> None:
        self._db = engine
        self._cache: LRUCache[str, RelationSummary] = LRUCache(cache_size)
        self._changes = 0
        # Told (fresh, parents, redacted) of every change written here (other processes'
        # caches).
        self._listeners: list[Callable[[list[str], list[str], bool], None]] = []

    def add_listener(self, listener: Callable[[list[str], list[str], bool], None]) -> None:
        self._listeners.append(listener)

    def changed(self, fresh: Sequence[str], parent_ids: Sequence[str], redacted: bool) -> None:
        """A write: ``fresh`` events nothing relates to yet (known at once, so that sync
        fanning a new event out asks nothing), new relations of ``parent_ids``; ``redacted``:
        redactions were applied (which may have removed any relation: the whole cache
        goes)."""
        for listener in self._listeners:
            listener(list(fresh), list(parent_ids), redacted)
        if redacted:
            self._changes += 1
            self._cache.clear()
        for event_id in fresh:
            self._cache[event_id] = _EMPTY
        if parent_ids:
            self._changes += 1
            for parent_id in parent_ids:
                self._cache.pop(parent_id, None)

    def clear(self) -> None:
        """Events were deleted (a purge)."""
        self.changed((), (), True)

    async def summaries(self, parent_ids: Iterable[str]) -> dict[str, RelationSummary]:
        """What relates to each of the events (in its room), in a few queries for all of
        those not cached; events nothing relates to are left out."""
        wanted = set(parent_ids)
        out = {p: s for p in wanted if (s := self._cache.get(p)) is not None}
        missing = [p for p in wanted if p not in out]
        if missing:
            changes = self._changes
            loaded = await self._load(missing)
            if changes == self._changes:
                for parent_id in missing:
                    self._cache[parent_id] = loaded.get(parent_id, _EMPTY)
            out.update(loaded)
        return {p: s for p, s in out.items() if s is not _EMPTY}

    async def _load(self, parent_ids: list[str]) -> dict[str, RelationSummary]:
        rel = event_relations
        parent = events.alias("parent")
        in_room = and_(parent.c.event_id == rel.c.relates_to_id,
                       parent.c.room_id == rel.c.room_id)
        threads: dict[str, tuple[int, str]] = {}
        senders: dict[str, set[str]] = {}
        edits: dict[str, list[tuple[int, str]]] = {}
        references: dict[str, list[tuple[int, int, str]]] = {}
        async with self._db.read() as conn:
            for start in range(0, len(parent_ids), _CHUNK):
                # Most events have no relations: one cheap statement finds that out.
                chunk = list((await conn.execute(
                    select(rel.c.relates_to_id).distinct()
                    .where(rel.c.relates_to_id.in_(parent_ids[start:start + _CHUNK]))
                )).scalars())
                if not chunk:
                    continue
                ranked = (select(
                    rel.c.relates_to_id, rel.c.event_id,
                    func.count().over(partition_by=rel.c.relates_to_id).label("n"),
                    func.row_number().over(
                        partition_by=rel.c.relates_to_id,
                        order_by=(rel.c.depth.desc(), rel.c.stream_ordering.desc()))
                    .label("rank"))
                    .join(parent, in_room)
                    .where(rel.c.relates_to_id.in_(chunk), rel.c.rel_type == THREAD)
                    .subquery())
                for t in await conn.execute(select(ranked.c.relates_to_id, ranked.c.event_id,
                                                   ranked.c.n).where(ranked.c.rank == 1)):
                    threads[t.relates_to_id] = (int(t.n), t.event_id)
                if threads:
                    for s in await conn.execute(
                            select(rel.c.relates_to_id, rel.c.sender).distinct()
                            .join(parent, in_room)
                            .where(rel.c.relates_to_id.in_(chunk), rel.c.rel_type == THREAD)):
                        senders.setdefault(s.relates_to_id, set()).add(s.sender)
                for r in await conn.execute(
                        select(rel.c.relates_to_id, rel.c.event_id, rel.c.rel_type,
                               rel.c.origin_server_ts, rel.c.depth, rel.c.stream_ordering)
                        .join(parent, and_(in_room, or_(
                            rel.c.rel_type == REFERENCE,
                            and_(parent.c.sender == rel.c.sender,
                                 parent.c.type == rel.c.type))))
                        .where(rel.c.relates_to_id.in_(chunk),
                               rel.c.rel_type.in_([REPLACE, REFERENCE]))):
                    if r.rel_type == REPLACE:
                        edits.setdefault(r.relates_to_id, []).append(
                            (int(r.origin_server_ts), r.event_id))
                    else:
                        references.setdefault(r.relates_to_id, []).append(
                            (int(r.depth), int(r.stream_ordering), r.event_id))
        out: dict[str, RelationSummary] = {}
        for parent_id in set(threads) | set(edits) | set(references):
            thread = threads.get(parent_id)
            out[parent_id] = RelationSummary(
                ThreadSummary(thread[0], thread[1], frozenset(senders.get(parent_id, ())))
                if thread is not None else None,
                tuple(e for _, e in sorted(edits.get(parent_id, []))),
                tuple(e for _, _, e in sorted(references.get(parent_id, []))))
        return out

    # -- pages --------------------------------------------------------------------------------

    async def children(self, room_id: str, parent_id: str, *, rel_type: str | None,
                       event_type: str | None, recurse: bool,
                       before: tuple[int, int] | None, after: tuple[int, int] | None,
                       backwards: bool, limit: int) -> list[Child]:
        """Events of the room relating to ``parent_id`` (directly, or also through other
        relations with ``recurse``), in topological order ``(depth, stream_ordering)``
        between the exclusive bounds, newest first when ``backwards``."""
        rel = event_relations
        if recurse:
            inner = rel.alias("inner")
            walk = (select(rel.c.event_id, rel.c.rel_type, rel.c.type, rel.c.depth,
                           rel.c.stream_ordering, literal(0).label("level"))
                    .where(rel.c.relates_to_id == parent_id, rel.c.room_id == room_id)
                    .cte("related", recursive=True))
            walk = walk.union(
                select(inner.c.event_id, inner.c.rel_type, inner.c.type, inner.c.depth,
                       inner.c.stream_ordering, (walk.c.level + 1).label("level"))
                .join(walk, inner.c.relates_to_id == walk.c.event_id)
                .where(inner.c.room_id == room_id, walk.c.level <= RECURSION_DEPTH))
            source = walk
            query: Select[tuple[str, int, int]] = select(
                source.c.event_id, source.c.depth, source.c.stream_ordering).distinct()
        else:
            source = rel  # type: ignore[assignment]
            query = select(rel.c.event_id, rel.c.depth, rel.c.stream_ordering).where(
                rel.c.relates_to_id == parent_id, rel.c.room_id == room_id)
        if rel_type is not None:
            query = query.where(source.c.rel_type == rel_type)
        if event_type is not None:
            query = query.where(source.c.type == event_type)
        order = tuple_(source.c.depth, source.c.stream_ordering)
        if before is not None:
            query = query.where(order < tuple_(*before))
        if after is not None:
            query = query.where(order > tuple_(*after))
        if backwards:
            query = query.order_by(source.c.depth.desc(), source.c.stream_ordering.desc())
        else:
            query = query.order_by(source.c.depth.asc(), source.c.stream_ordering.asc())
        async with self._db.read() as conn:
            rows = await conn.execute(query.limit(limit))
            return [Child(r.event_id, int(r.depth), int(r.stream_ordering)) for r in rows]

    async def thread_roots(self, room_id: str, *, participant: str | None,
                           before: int | None, limit: int) -> list[ThreadRoot]:
        """The room's thread roots (stored in the room), latest reply first, those whose
        latest reply is before stream position ``before``; with ``participant``, only the
        threads they started or replied in."""
        rel = event_relations
        parent = events.alias("parent")
        latest = func.max(rel.c.stream_ordering)
        query = (select(rel.c.relates_to_id, latest.label("latest"))
                 .join(parent, and_(parent.c.event_id == rel.c.relates_to_id,
                                    parent.c.room_id == rel.c.room_id))
                 .where(rel.c.room_id == room_id, rel.c.rel_type == THREAD)
                 .group_by(rel.c.relates_to_id, parent.c.sender))
        if participant is not None:
            query = query.having(or_(
                parent.c.sender == participant,
                func.max(case((rel.c.sender == participant, 1), else_=0)) == 1))
        if before is not None:
            query = query.having(latest < before)
        async with self._db.read() as conn:
            rows = await conn.execute(query.order_by(latest.desc()).limit(limit))
            return [ThreadRoot(r.relates_to_id, int(r.latest)) for r in rows]
