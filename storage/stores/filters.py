"""Filters clients upload for /sync (POST /user/{userId}/filter)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, func, select

from storage.engine import DatabaseEngine
from storage.schema import user_filters


class FilterStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def add(self, user_id: str, filter_json: dict[str, Any]) -> int:
        """Store a filter; the same filter twice gets one ID."""
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
            return filter_id

    async def get(self, user_id: str, filter_id: int) -> dict[str, Any] | None:
        async with self._db.read() as conn:
            text = (await conn.execute(select(user_filters.c.filter_json).where(and_(
                user_filters.c.user_id == user_id,
                user_filters.c.filter_id == filter_id)))).scalar()
        return json.loads(text) if text is not None else None
