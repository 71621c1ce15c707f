"""Per-user account data, global and per room (tags are the room's ``m.tag`` entry)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.ids import StreamStore
from storage.schema import account_data

GLOBAL = ""
# Counted for every entry on top of its stored size (what a row and its place in a sync
# response cost besides the content), so many empty entries add up too.
ENTRY_OVERHEAD = 64


class AccountDataStore(StreamStore):
    def __init__(self, engine: DatabaseEngine) -> None:
        super().__init__(engine, account_data.c.stream_id)

    async def put(self, user_id: str, room_id: str, type_: str, content: dict[str, Any], *,
                  max_total: int | None = None, exempt: Sequence[str] = ()) -> int | None:
        """Set one entry; returns its position in the account data stream.

        Args:
            max_total: what the user's entries may come to together (their stored JSON, room
                ID and type, and ``ENTRY_OVERHEAD`` each), the types in ``exempt`` aside.
                If this one would take them over it, and it is larger than the entry it
                replaces, nothing is written and the answer is None.
        """
        text = json.dumps(content)
        async with self._ordered, self._db.write() as conn:
            if max_total is not None and type_ not in exempt and \
                    not await self._fits(conn, user_id, room_id, type_, text, max_total,
                                         exempt):
                return None
            stream_id = self._stream.next()
            await conn.execute(
                insert(self._db.is_sqlite, account_data)
                .values(user_id=user_id, room_id=room_id, type=type_,
                        content=text, stream_id=stream_id)
                .on_conflict_do_update(index_elements=["user_id", "room_id", "type"],
                                       set_={"content": text, "stream_id": stream_id}))
        self._committed(stream_id)
        return stream_id

    @staticmethod
    async def _fits(conn: AsyncConnection, user_id: str, room_id: str, type_: str, text: str,
                    max_total: int, exempt: Sequence[str]) -> bool:
        size = func.length(account_data.c.content) + func.length(account_data.c.room_id) + \
            func.length(account_data.c.type) + ENTRY_OVERHEAD
        mine = and_(account_data.c.user_id == user_id, account_data.c.type.not_in(exempt)) \
            if exempt else account_data.c.user_id == user_id
        total = int((await conn.execute(select(func.coalesce(func.sum(size), 0))
                                        .where(mine))).scalar() or 0)
        old = int((await conn.execute(select(size).where(and_(
            account_data.c.user_id == user_id, account_data.c.room_id == room_id,
            account_data.c.type == type_)))).scalar() or 0)
        new = len(text) + len(room_id) + len(type_) + ENTRY_OVERHEAD
        return new <= old or total - old + new <= max_total

    async def get(self, user_id: str, room_id: str, type_: str) -> dict[str, Any] | None:
        async with self._db.read() as conn:
            value = (await conn.execute(select(account_data.c.content).where(and_(
                account_data.c.user_id == user_id, account_data.c.room_id == room_id,
                account_data.c.type == type_)))).scalar()
        return json.loads(value) if value is not None else None

    async def of_type(self, type_: str) -> list[tuple[str, dict[str, Any]]]:
        """``(user_id, content)`` of every user's global account data of this type."""
        async with self._db.read() as conn:
            rows = await conn.execute(select(account_data.c.user_id, account_data.c.content)
                                      .where(and_(account_data.c.room_id == GLOBAL,
                                                  account_data.c.type == type_)))
            return [(r.user_id, json.loads(r.content)) for r in rows]

    async def since(self, user_id: str, stream_id: int) -> list[tuple[str, str, dict[str, Any]]]:
        """``(room_id, type, content)`` changed after ``stream_id``."""
        async with self._db.read() as conn:
            rows = await conn.execute(select(account_data).where(and_(
                account_data.c.user_id == user_id, account_data.c.stream_id > stream_id)))
            return [(r.room_id, r.type, json.loads(r.content)) for r in rows]
