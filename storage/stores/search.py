"""Full-text search over the event index (``storage.search_index``): the index holds only
the searchable text; everything a search filters on comes from ``events``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, literal_column, select

from storage.engine import DatabaseEngine
from storage.schema import events
from storage.search_index import fts5, tsv
from storage.search_text import KEY_TYPES, Query, fts5_query, tsquery


@dataclass(frozen=True, slots=True)
class SearchHit:
    event_id: str
    room_id: str
    stream_ordering: int
    rank: float


@dataclass(frozen=True, slots=True)
class SearchQuery:
    query: Query
    room_ids: Sequence[str]
    keys: Sequence[str]  # content.body, content.name, content.topic
    senders: Sequence[str] | None = None
    not_senders: Sequence[str] = ()
    by_rank: bool = True


class SearchStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    def _select(self, q: SearchQuery, *columns: Any) -> tuple[Select[Any], Any]:
        """The matching events (selecting ``columns``) and the rank expression."""
        if self._db.is_sqlite:
            match = literal_column("event_search").op("MATCH")(fts5_query(q.query))
            # bm25 is lower for better matches; the spec's rank is higher for better.
            rank: Any = -func.bm25(literal_column("event_search"))
            query = select(*columns).select_from(fts5.join(events, events.c.nid == fts5.c.rowid))
        else:
            ts_query = func.to_tsquery("simple", tsquery(q.query))
            match = tsv.c.vector.op("@@")(ts_query)
            rank = func.ts_rank_cd(tsv.c.vector, ts_query)
            query = select(*columns).select_from(tsv.join(events, events.c.nid == tsv.c.nid))
        query = query.where(match, events.c.room_id.in_(list(q.room_ids)),
                            events.c.type.in_([KEY_TYPES[k] for k in q.keys if k in KEY_TYPES]),
                            events.c.rejected_reason.is_(None))
        if q.senders is not None:
            query = query.where(events.c.sender.in_(list(q.senders)))
        if q.not_senders:
            query = query.where(events.c.sender.not_in(list(q.not_senders)))
        return query, rank

    async def search(self, q: SearchQuery, *, offset: int = 0, before_stream: int | None = None,
                     limit: int) -> list[SearchHit]:
        """Matching events, best first (``by_rank``) or newest first; ``offset`` pages by
        rank, ``before_stream`` by recency."""
        if not q.room_ids or not q.keys:
            return []
        query, rank = self._select(q)
        query = query.add_columns(events.c.event_id, events.c.room_id,
                                  events.c.stream_ordering, rank.label("score"))
        if before_stream is not None:
            query = query.where(events.c.stream_ordering < before_stream)
        if q.by_rank:
            query = query.order_by(literal_column("score").desc(),
                                   events.c.stream_ordering.desc())
        else:
            query = query.order_by(events.c.stream_ordering.desc())
        async with self._db.read() as conn:
            rows = await conn.execute(query.limit(limit).offset(offset))
            return [SearchHit(r.event_id, r.room_id, int(r.stream_ordering), float(r.score))
                    for r in rows]

    async def count(self, q: SearchQuery) -> int:
        """How many events match (before history visibility: an estimate for clients)."""
        if not q.room_ids or not q.keys:
            return 0
        query, _rank = self._select(q, func.count())
        async with self._db.read() as conn:
            return int((await conn.execute(query)).scalar() or 0)
