"""URL previews kept for every process (Synapse's ``local_media_repository_url_cache``): the
JSON answered for a URL until it expires; expired rows are pruned."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import delete, select

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.schema import url_previews

_u = url_previews.c


class UrlPreviewStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def get(self, url: str, now: int) -> dict[str, Any] | None:
        """The preview of ``url`` that has not expired at ``now``, if any."""
        async with self._db.read() as conn:
            og = (await conn.execute(select(_u.og).where(
                _u.url == url, _u.expires_ts > now))).scalar_one_or_none()
        if og is None:
            return None
        value = json.loads(og)
        return value if isinstance(value, dict) else None

    async def put(self, url: str, og: dict[str, Any], now: int, expires_ts: int) -> None:
        """Keep the preview of ``url`` until ``expires_ts`` (replacing an older one)."""
        values = {"url": url, "og": json.dumps(og, ensure_ascii=False),
                  "created_ts": now, "expires_ts": expires_ts}
        stmt = insert(self._db.is_sqlite, url_previews).values(**values)
        async with self._db.write() as conn:
            await conn.execute(stmt.on_conflict_do_update(
                index_elements=[_u.url],
                set_={"og": stmt.excluded.og, "created_ts": stmt.excluded.created_ts,
                      "expires_ts": stmt.excluded.expires_ts}))

    async def prune(self, now: int) -> int:
        """Forget the previews expired at ``now``; how many."""
        async with self._db.write() as conn:
            result = await conn.execute(delete(url_previews).where(_u.expires_ts <= now))
        return int(result.rowcount or 0)
