"""Users' reports of events and rooms, kept for server admins."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, func, select, true

from storage.engine import DatabaseEngine
from storage.schema import reports


@dataclass(frozen=True, slots=True)
class Report:
    id: int
    room_id: str
    event_id: str | None
    user_id: str
    event_sender: str | None
    reason: str | None
    score: int | None
    received_ts: int


class ReportStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def add(self, *, room_id: str, event_id: str | None, user_id: str,
                  event_sender: str | None, reason: str | None, score: int | None,
                  received_ts: int) -> int:
        """Store a report; returns its ID."""
        async with self._db.write() as conn:
            result = await conn.execute(reports.insert().values(
                room_id=room_id, event_id=event_id, user_id=user_id,
                event_sender=event_sender, reason=reason, score=score,
                received_ts=received_ts).returning(reports.c.id))
            return int(result.scalar_one())

    async def get(self, report_id: int, *, events: bool = True) -> Report | None:
        """An event report (``events``) or a room report, by ID."""
        kind = reports.c.event_id.is_not(None) if events else reports.c.event_id.is_(None)
        async with self._db.read() as conn:
            row = (await conn.execute(select(reports).where(
                and_(reports.c.id == report_id, kind)))).first()
        return Report(**row._mapping) if row is not None else None

    async def delete(self, report_id: int, *, events: bool = True) -> bool:
        kind = reports.c.event_id.is_not(None) if events else reports.c.event_id.is_(None)
        async with self._db.write() as conn:
            result = await conn.execute(reports.delete().where(
                and_(reports.c.id == report_id, kind)))
            return bool(result.rowcount)

    async def page(self, *, events: bool, offset: int, limit: int, newest_first: bool,
                   room_id: str | None = None, user_id: str | None = None,
                   event_sender: str | None = None) -> tuple[list[Report], int]:
        """A page of event reports (``events``) or room reports, and how many match in all.

        ``room_id``, ``user_id`` (the reporter) and ``event_sender`` match reports whose
        value contains them (as Synapse's admin API filters)."""
        where: list[ColumnElement[bool]] = [
            reports.c.event_id.is_not(None) if events else reports.c.event_id.is_(None)]
        for column, value in ((reports.c.room_id, room_id), (reports.c.user_id, user_id),
                              (reports.c.event_sender, event_sender)):
            if value is not None:
                where.append(column.contains(value, autoescape=True))
        condition = and_(true(), *where)
        order = reports.c.id.desc() if newest_first else reports.c.id.asc()
        async with self._db.read() as conn:
            total = int((await conn.execute(
                select(func.count()).select_from(reports).where(condition))).scalar_one())
            rows = (await conn.execute(select(reports).where(condition).order_by(order)
                                       .offset(offset).limit(limit))).all()
        return [Report(**row._mapping) for row in rows], total
