"""Per-user account data, global and per room (tags are the room's ``m.tag`` entry)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, select

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.ids import StreamStore
from storage.schema import account_data

GLOBAL = ""


class AccountDataStore(StreamStore):
    def __init__(self, engine: DatabaseEngine) -> None:
        super().__init__(engine, account_data.c.stream_id)

    async def put(self, user_id: str, room_id: str, type_: str, content: dict[str, Any]) -> int:
        """Set one entry; returns its position in the account data stream."""
        async with self._ordered, self._db.write() as conn:
            stream_id = self._stream.next()
            await conn.execute(
                insert(self._db.is_sqlite, account_data)
                .values(user_id=user_id, room_id=room_id, type=type_,
                        content=json.dumps(content), stream_id=stream_id)
                .on_conflict_do_update(index_elements=["user_id", "room_id", "type"],
                                       set_={"content": json.dumps(content),
                                             "stream_id": stream_id}))
        self._committed(stream_id)
        return stream_id

    async def get(self, user_id: str, room_id: str, type_: str) -> dict[str, Any] | None:
        async with self._db.read() as conn:
            value = (await conn.execute(select(account_data.c.content).where(and_(
                account_data.c.user_id == user_id, account_data.c.room_id == room_id,
                account_data.c.type == type_)))).scalar()
        return json.loads(value) if value is not None else None

    async def since(self, user_id: str, stream_id: int) -> list[tuple[str, str, dict[str, Any]]]:
        """``(room_id, type, content)`` changed after ``stream_id``."""
        async with self._db.read() as conn:
            rows = await conn.execute(select(account_data).where(and_(
                account_data.c.user_id == user_id, account_data.c.stream_id > stream_id)))
            return [(r.room_id, r.type, json.loads(r.content)) for r in rows]
