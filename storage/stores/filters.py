"""Filters clients upload for /sync (POST /user/{userId}/filter)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.engine import DatabaseEngine
from storage.schema import user_filters


class FilterStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def add(self, user_id: str, filter_json: dict[str, Any], *,
                  keep: int | None = None, keep_bytes: int | None = None) -> int:
        """Store a filter; the same filter twice gets one ID.

        Args:
            keep: the user's filters beyond this many are deleted, the oldest first.
            keep_bytes: so are they when their stored JSON comes to more than this.
                The new filter is always kept.
        """
        text = json.dumps(filter_json, sort_keys=True, separators=(",", ":"))
        async with self._db.write() as conn:
            existing = (await conn.execute(select(user_filters.c.filter_id).where(and_(
                user_filters.c.user_id == user_id, user_filters.c.filter_json == text)))).scalar()
            if existing is not None:
                return int(existing)
            last = (await conn.execute(select(func.max(user_filters.c.filter_id))
                                       .where(user_filters.c.user_id == user_id))).scalar()
            filter_id = 0 if last is None else int(last) + 1
            await conn.execute(user_filters.insert().values(user_id=user_id,
                                                            filter_id=filter_id,
                                                            filter_json=text))
            if keep is not None or keep_bytes is not None:
                await self._forget_oldest(conn, user_id, keep, keep_bytes)
            return filter_id

    @staticmethod
    async def _forget_oldest(conn: AsyncConnection, user_id: str, keep: int | None,
                             keep_bytes: int | None) -> None:
        newest = (await conn.execute(
            select(user_filters.c.filter_id, func.length(user_filters.c.filter_json))
            .where(user_filters.c.user_id == user_id)
            .order_by(user_filters.c.filter_id.desc())
            .limit(None if keep is None else keep + 1))).all()
        total = 0
        for i, (old_id, size) in enumerate(newest):
            total += int(size)
            if i > 0 and ((keep is not None and i >= keep)
                          or (keep_bytes is not None and total > keep_bytes)):
                await conn.execute(user_filters.delete().where(and_(
                    user_filters.c.user_id == user_id, user_filters.c.filter_id <= old_id)))
                return

    async def get(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        async with self._db.read() as conn:
            text = (await conn.execute(select(user_filters.c.filter_json).where(and_(
                user_filters.c.user_id == user_id,
                user_filters.c.filter_id == filter_id)))).scalar()
        return json.loads(text) if text is not None else None
