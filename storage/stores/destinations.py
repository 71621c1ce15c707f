"""What the admin API reads about other servers: every destination this server knows (one
it backed off from, or one whose users share a room with it), its retry timings, and the
rooms it shares, a page per query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, true, union

from storage.dialect import server_of
from storage.engine import DatabaseEngine
from storage.schema import current_state, events, federation_destinations, federation_outbox

DESTINATION_ORDERINGS = ("destination", "retry_last_ts", "retry_interval", "failure_ts",
                         "last_successful_stream_ordering")


@dataclass(frozen=True, slots=True)
class Destination:
    destination: str
    retry_last_ts: int
    retry_interval: int
    failure_ts: int | None


class DestinationStore:
    def __init__(self, engine: DatabaseEngine, server_name: str) -> None:
        self._db = engine
        self._server_name = server_name

    def _member_servers(self) -> Any:
        cs = current_state
        return (select(server_of(self._db.is_sqlite, cs.c.state_key).label("destination"))
                .where(cs.c.type == "m.room.member", cs.c.membership == "join"))

    def _known(self) -> Any:
        fd = federation_destinations
        names = union(select(fd.c.destination), select(federation_outbox.c.destination),
                      self._member_servers()).subquery("known")
        return (select(names.c.destination,
                       func.coalesce(fd.c.retry_last_ts, 0).label("retry_last_ts"),
                       func.coalesce(fd.c.retry_interval_ms, 0).label("retry_interval"),
                       fd.c.failure_ts)
                .select_from(names.outerjoin(fd, fd.c.destination == names.c.destination))
                .where(names.c.destination != self._server_name)
                .subquery("destinations"))

    async def page(self, *, offset: int, limit: int, search: str | None, order_by: str,
                   backwards: bool) -> tuple[list[Destination], int]:
        known = self._known()
        c = known.c
        where: list[ColumnElement[bool]] = []
        if search:
            where.append(func.lower(c.destination).contains(search.lower(), autoescape=True))
        # (Synapse's last_successful_stream_ordering is not tracked here: by name.)
        column = c.destination if order_by == "last_successful_stream_ordering" \
            else getattr(c, order_by)
        order = column.desc() if backwards else column.asc()
        query = (select(c.destination, c.retry_last_ts, c.retry_interval, c.failure_ts,
                        func.count().over().label("total"))
                 .where(and_(true(), *where)).order_by(order, c.destination.asc())
                 .offset(offset).limit(limit))
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
            if rows:
                total = int(rows[0].total)
            else:
                total = int((await conn.execute(select(func.count()).select_from(known)
                                                .where(and_(true(), *where)))).scalar_one())
        return [Destination(r.destination, int(r.retry_last_ts), int(r.retry_interval),
                            r.failure_ts) for r in rows], total

    async def get(self, destination: str) -> Destination | None:
        """The destination, if this server knows it."""
        known = self._known()
        async with self._db.read() as conn:
            row = (await conn.execute(select(known).where(
                known.c.destination == destination))).first()
        if row is None:
            return None
        return Destination(row.destination, int(row.retry_last_ts), int(row.retry_interval),
                           row.failure_ts)

    async def rooms(self, destination: str, *, offset: int, limit: int, backwards: bool
                    ) -> tuple[list[tuple[str, int]], int]:
        """A page of the rooms where ``destination`` has joined users, each with the stream
        position of its newest event, and how many there are."""
        cs = current_state
        shared = (select(cs.c.room_id).where(
            cs.c.type == "m.room.member", cs.c.membership == "join",
            cs.c.state_key.endswith(":" + destination, autoescape=True))
            .distinct().subquery("shared"))
        newest = (select(func.max(events.c.stream_ordering))
                  .where(events.c.room_id == shared.c.room_id).scalar_subquery())
        order = shared.c.room_id.desc() if backwards else shared.c.room_id.asc()
        query = (select(shared.c.room_id, newest.label("stream_ordering"),
                        func.count().over().label("total"))
                 .order_by(order).offset(offset).limit(limit))
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
            if rows:
                total = int(rows[0].total)
            else:
                total = int((await conn.execute(select(func.count()).select_from(shared))
                             ).scalar_one())
        return [(r.room_id, int(r.stream_ordering or 0)) for r in rows], total
