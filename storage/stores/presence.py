"""Presence rows: the last known state of each user who ever had one (kept across
restarts)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.ids import StreamStore
from storage.schema import presence


@dataclass(frozen=True, slots=True)
class PresenceRow:
    user_id: str
    state: str
    status_msg: str | None
    last_active_ts: int
    stream_id: int


class PresenceStore(StreamStore):
    def __init__(self, engine: DatabaseEngine) -> None:
        super().__init__(engine, presence.c.stream_id)
        upsert = insert(engine.is_sqlite, presence)
        self._upsert = upsert.on_conflict_do_update(index_elements=["user_id"], set_={
            c: upsert.excluded[c] for c in ("state", "status_msg", "last_active_ts",
                                            "stream_id")})  # built once

    async def all(self) -> list[PresenceRow]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(presence))
            return [PresenceRow(r.user_id, r.state, r.status_msg, r.last_active_ts,
                                r.stream_id) for r in rows]

    async def put_many(self, rows: list[PresenceRow]) -> None:
        """Write the latest state of some users (positions already allocated, in order)."""
        if not rows:
            return
        values = [dict(user_id=r.user_id, state=r.state, status_msg=r.status_msg,
                       last_active_ts=r.last_active_ts, stream_id=r.stream_id) for r in rows]
        async with self._ordered:
            await self._db.run_write(lambda conn: conn.execute(self._upsert, values))
