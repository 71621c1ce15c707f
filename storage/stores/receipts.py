"""Read receipts: one per (room, type, user, thread), each change a position in the receipt
stream that /sync reads after."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, select

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.ids import StreamStore
from storage.schema import receipts

_CHUNK = 500


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

    async def put(self, room_id: str, receipt_type: str, user_id: str, thread_id: str,
                  event_id: str, event_stream_ordering: int, ts: int) -> int | None:
        """Store a receipt unless the user's receipt of that kind is already at or past that
        event (receipts never go back); returns its stream position, or None if ignored."""
        async with self._ordered, self._db.write() as conn:
            current = (await conn.execute(select(receipts.c.event_stream_ordering).where(and_(
                receipts.c.room_id == room_id, receipts.c.receipt_type == receipt_type,
                receipts.c.user_id == user_id, receipts.c.thread_id == thread_id)))).scalar()
            if current is not None and current >= event_stream_ordering:
                return None
            stream_id = self._stream.next()
            values = dict(event_id=event_id, event_stream_ordering=event_stream_ordering,
                          ts=ts, stream_id=stream_id)
            await conn.execute(
                insert(self._db.is_sqlite, receipts)
                .values(room_id=room_id, receipt_type=receipt_type, user_id=user_id,
                        thread_id=thread_id, **values)
                .on_conflict_do_update(
                    index_elements=["room_id", "receipt_type", "user_id", "thread_id"],
                    set_=values))
        self._committed(stream_id)
        return stream_id

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
