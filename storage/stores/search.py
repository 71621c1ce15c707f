"""Full-text search over the event index (``storage.search_index``).

Candidates are found, filtered by room and key and ordered in the index alone; only the page
returned is joined to ``events``. "Newest first" walks the index backwards and stops at the
page. Ranking considers the newest ``MAX_CANDIDATES`` matches (every match of all but the
most common words), so a word in half a million messages costs a bounded amount; the count
stops there too. The count leaves out what the searcher cleared from their history in the
query itself, and hands back the rest grouped by the state before them, for history
visibility to judge a group at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, case, false, func, literal_column, or_, select, tuple_

from storage.engine import DatabaseEngine
from storage.schema import events, history_cleared
from storage.search_index import fts5, tsv
from storage.search_text import Query, fts5_query, tsquery

MAX_CANDIDATES = 10_000


@dataclass(frozen=True, slots=True)
class SearchHit:
    event_id: str
    room_id: str
    nid: int  # the event's numeric ID: grows with the stream ("recent" pages by it)
    rank: float


@dataclass(frozen=True, slots=True)
class MatchCount:
    """How many matches share the state before them and whether the searcher joined the room
    after them (what history visibility decides by)."""

    state_group: int | None
    joined_later: bool
    count: int


@dataclass(frozen=True, slots=True)
class SearchQuery:
    query: Query
    room_ids: Sequence[str]
    kinds: Sequence[str]  # body, name, topic (the spec's keys content.body, ...)
    senders: Sequence[str] | None = None
    not_senders: Sequence[str] = ()
    by_rank: bool = True


class SearchStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    def _matches(self, q: SearchQuery, before_nid: int | None, *columns: Any,
                 not_cleared_by: str | None = None) -> Select[Any]:
        """The matching index entries (newest first) in the rooms and keys asked for (and,
        with ``not_cleared_by``, not cleared from that user's history nor rejected)."""
        if self._db.is_sqlite:
            index, nid = fts5, fts5.c.rowid
            match = literal_column("event_search").op("MATCH")(fts5_query(q.query))
        else:
            index, nid = tsv, tsv.c.nid
            match = tsv.c.vector.op("@@")(func.to_tsquery("simple", tsquery(q.query)))
        query = select(*columns).select_from(index).where(
            match, index.c.room_id.in_(list(q.room_ids)), index.c.kind.in_(list(q.kinds)))
        if q.senders is not None or q.not_senders or not_cleared_by is not None:
            query = query.join(events, events.c.nid == nid)
            if not_cleared_by is not None:
                # The point each room is cleared up to, per room in the query itself.
                query = query.outerjoin(history_cleared, and_(
                    history_cleared.c.user_id == not_cleared_by,
                    history_cleared.c.room_id == events.c.room_id)).where(
                    events.c.rejected_reason.is_(None),
                    or_(history_cleared.c.room_id.is_(None),
                        tuple_(events.c.depth, events.c.stream_ordering)
                        > tuple_(history_cleared.c.depth, history_cleared.c.stream_ordering)))
            if q.senders is not None:
                query = query.where(events.c.sender.in_(list(q.senders)))
            if q.not_senders:
                query = query.where(events.c.sender.not_in(list(q.not_senders)))
        if before_nid is not None:
            query = query.where(nid < before_nid)
        return query.order_by(nid.desc())

    async def search(self, q: SearchQuery, *, offset: int = 0, before_nid: int | None = None,
                     limit: int) -> list[SearchHit]:
        """Matching events, best first (``by_rank``: ``offset`` pages) or newest first
        (``before_nid`` pages)."""
        if not q.room_ids or not q.kinds:
            return []
        if self._db.is_sqlite:
            # bm25 is lower for better matches; the spec's rank is higher for better.
            rank: Any = -func.bm25(literal_column("event_search"))
            found = self._matches(q, before_nid, fts5.c.rowid.label("nid"),
                                  (rank if q.by_rank else literal_column("0")).label("score"))
        else:
            found = self._matches(q, before_nid, tsv.c.nid, tsv.c.vector)
        sub = found.limit(MAX_CANDIDATES if q.by_rank else limit + offset).subquery()
        score: Any
        if self._db.is_sqlite:
            score = sub.c.score
        else:
            score = (func.ts_rank_cd(sub.c.vector, func.to_tsquery("simple", tsquery(q.query)))
                     if q.by_rank else literal_column("0"))
        page = (select(events.c.event_id, events.c.room_id, sub.c.nid, score.label("score"))
                .select_from(sub.join(events, events.c.nid == sub.c.nid)))
        if q.by_rank:
            page = page.order_by(literal_column("score").desc(), sub.c.nid.desc())
        else:
            page = page.order_by(sub.c.nid.desc())
        async with self._db.read() as conn:
            rows = await conn.execute(page.limit(limit).offset(offset))
            return [SearchHit(r.event_id, r.room_id, int(r.nid), float(r.score)) for r in rows]

    async def count_by_state(self, q: SearchQuery, user_id: str,
                             last_joins: Mapping[str, int]) -> list[MatchCount]:
        """The newest ``MAX_CANDIDATES`` matches ``user_id`` has not cleared from their
        history, counted by the state before them and by whether the user joined the room
        after them (``last_joins``: room -> stream ordering of the user's last join), for
        ``VisibilityService.count_visible``. One query."""
        if not q.room_ids or not q.kinds:
            return []
        later: Any = false()
        if last_joins:
            later = case(dict(last_joins), value=events.c.room_id,
                         else_=None) > events.c.stream_ordering
        sub = self._matches(q, None, events.c.state_group_before.label("state_group"),
                            later.label("later"), not_cleared_by=user_id
                            ).limit(MAX_CANDIDATES).subquery()
        counted = (select(sub.c.state_group, sub.c.later, func.count().label("n"))
                   .group_by(sub.c.state_group, sub.c.later))
        async with self._db.read() as conn:
            rows = await conn.execute(counted)
            return [MatchCount(r.state_group, bool(r.later), int(r.n)) for r in rows]
