"""Read receipts: one per (room, type, user, thread), each change a position in the receipt
stream that /sync reads after."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, bindparam, select

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.ids import StreamStore
from storage.schema import receipts

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class NewReceipt:
    """A receipt to store (``thread_id`` "" when unthreaded)."""

    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str
    event_id: str
    event_stream_ordering: int
    ts: int

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.room_id, self.receipt_type, self.user_id, self.thread_id)


@dataclass(frozen=True, slots=True)
class Receipt:
    room_id: str
    receipt_type: str
    user_id: str
    thread_id: str  # "" when unthreaded
    event_id: str
    event_stream_ordering: int
    ts: int
    stream_id: int


class ReceiptStore(StreamStore):
    def __init__(self, engine: DatabaseEngine) -> None:
        super().__init__(engine, receipts.c.stream_id)
        # Built once: the statements of the write path (building them per write cost more
        # than running them: the upsert's EXCLUDED alias made new columns every time).
        self._current = select(
            receipts.c.room_id, receipts.c.receipt_type, receipts.c.user_id,
            receipts.c.thread_id, receipts.c.event_stream_ordering).where(and_(
                receipts.c.room_id.in_(bindparam("rooms", expanding=True)),
                receipts.c.user_id.in_(bindparam("users", expanding=True))))
        upsert = insert(engine.is_sqlite, receipts)
        self._upsert = upsert.on_conflict_do_update(
            index_elements=["room_id", "receipt_type", "user_id", "thread_id"],
            set_={c: upsert.excluded[c] for c in ("event_id", "event_stream_ordering", "ts",
                                                  "stream_id")})

    async def put(self, room_id: str, receipt_type: str, user_id: str, thread_id: str,
                  event_id: str, event_stream_ordering: int, ts: int) -> int | None:
        """One receipt (``put_many``); its stream position, or None if ignored."""
        (stored,) = await self.put_many([NewReceipt(room_id, receipt_type, user_id, thread_id,
                                                    event_id, event_stream_ordering, ts)])
        return stored.stream_id if stored is not None else None

    async def put_many(self, new: Sequence[NewReceipt]) -> list[Receipt | None]:
        """Store receipts in one transaction, each unless the user's receipt of that kind is
        already at or past its event (receipts never go back); returns, in order, each one as
        stored (with its stream position), or None if ignored."""
        if not new:
            return []
        async with self._ordered:
            stored = await self._db.run_write(lambda conn: self._put_many(conn, new))
        positions = [r.stream_id for r in stored if r is not None]
        if positions:
            self._committed(max(positions))
        return stored

    def _put_many(self, conn: Connection, new: Sequence[NewReceipt]) -> list[Receipt | None]:
        current: dict[tuple[str, str, str, str], int] = {}
        rooms = sorted({r.room_id for r in new})
        users = sorted({r.user_id for r in new})
        wanted = {r.key for r in new}
        for i in range(0, len(rooms), _CHUNK):
            rows = conn.execute(self._current, {"rooms": rooms[i:i + _CHUNK],
                                                "users": users})
            for row in rows:
                key = (row.room_id, row.receipt_type, row.user_id, row.thread_id)
                if key in wanted:
                    current[key] = row.event_stream_ordering
        out: list[Receipt | None] = []
        rows_by_key: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        for r in new:
            if current.get(r.key, -1) >= r.event_stream_ordering:
                out.append(None)
                continue
            current[r.key] = r.event_stream_ordering
            stored = Receipt(r.room_id, r.receipt_type, r.user_id, r.thread_id, r.event_id,
                             r.event_stream_ordering, r.ts, self._stream.next())
            rows_by_key[r.key] = dict(
                room_id=r.room_id, receipt_type=r.receipt_type, user_id=r.user_id,
                thread_id=r.thread_id, event_id=r.event_id,
                event_stream_ordering=r.event_stream_ordering, ts=r.ts,
                stream_id=stored.stream_id)
            out.append(stored)
        if rows_by_key:
            conn.execute(self._upsert, list(rows_by_key.values()))
        return out

    async def for_rooms(self, room_ids: Sequence[str], *, after: int = 0,
                        up_to: int | None = None) -> list[Receipt]:
        """Receipts of the rooms with ``after < stream_id <= up_to``."""
        out: list[Receipt] = []
        for i in range(0, len(room_ids), _CHUNK):
            query = select(receipts).where(and_(
                receipts.c.room_id.in_(list(room_ids[i:i + _CHUNK])),
                receipts.c.stream_id > after))
            if up_to is not None:
                query = query.where(receipts.c.stream_id <= up_to)
            async with self._db.read() as conn:
                rows = await conn.execute(query.order_by(receipts.c.stream_id))
                out.extend(Receipt(r.room_id, r.receipt_type, r.user_id, r.thread_id,
                                   r.event_id, r.event_stream_ordering, r.ts, r.stream_id)
                           for r in rows)
        return out

    async def read_up_to(self, user_id: str, room_ids: Sequence[str] | None = None
                         ) -> dict[str, int]:
        """Room -> stream ordering of the latest event the user has read there (public or
        private receipt, any thread counted as the room's; unthreaded clients are the rule),
        in every room they have read in or only in ``room_ids``."""
        query = select(receipts.c.room_id, receipts.c.event_stream_ordering).where(and_(
            receipts.c.user_id == user_id,
            receipts.c.receipt_type.in_(("m.read", "m.read.private")),
            receipts.c.thread_id.in_(("", "main"))))
        if room_ids is not None:
            query = query.where(receipts.c.room_id.in_(list(room_ids)))
        out: dict[str, int] = {}
        async with self._db.read() as conn:
            for room_id, position in await conn.execute(query):
                out[room_id] = max(out.get(room_id, 0), int(position))
        return out
