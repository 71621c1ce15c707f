"""Database engines and transactions.

SQLite (the default) gets WAL, foreign keys and a busy timeout on every connection, and a single
writer: all writes share one connection behind an ``asyncio.Lock`` and start with
``BEGIN IMMEDIATE``, so writers never deadlock on lock upgrades and readers never block them.
PostgreSQL uses one asyncpg pool for both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from storage import migrations


def _sqlite_engine(url: str, *, begin: str, pool_size: int, synchronous: str, read_only: bool
                   ) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=60)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us emit BEGIN ourselves (pysqlite's implicit transactions are broken).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=10000")
        # Turning a new file to WAL needs an exclusive lock, and SQLite answers "database is
        # locked" at once (no busy wait) while another process opens the same new file.
        for attempt in range(200):
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                break
            except Exception as e:
                if "locked" not in str(e) or attempt == 199:
                    raise
                time.sleep(0.01)
        for pragma in (
            "PRAGMA foreign_keys=ON",
            f"PRAGMA synchronous={synchronous}",
            f"PRAGMA query_only={'ON' if read_only else 'OFF'}",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)

    return engine


class DatabaseEngine:
    """Owns the engines; hands out read connections and write transactions."""

    def __init__(self, url: str, *, pool_size: int = 10, sqlite_synchronous: str = "FULL",
                 postgres_search_path: str | None = None) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._write_lock: asyncio.Lock | None = None
        if self.is_sqlite:
            path = url.split(":///", 1)[1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._write_engine = _sqlite_engine(
                url, begin="BEGIN IMMEDIATE", pool_size=1, synchronous=sqlite_synchronous,
                read_only=False)
            self._read_engine = _sqlite_engine(
                url, begin="BEGIN", pool_size=pool_size, synchronous=sqlite_synchronous,
                read_only=True)
            self._write_lock = asyncio.Lock()
        else:
            connect_args: dict[str, Any] = {}
            if postgres_search_path:
                connect_args["server_settings"] = {"search_path": postgres_search_path}
            self._write_engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False,
                connect_args=connect_args)
            self._read_engine = self._write_engine

    async def migrate(self) -> int:
        async with self.write() as conn:
            return await conn.run_sync(migrations.migrate)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed when the block ends, rolled back on error."""
        if self._write_lock is None:
            async with self._write_engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self._write_engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot (one transaction)."""
        async with self._read_engine.begin() as conn:
            yield conn

    async def close(self) -> None:
        await self._write_engine.dispose()
        if self._read_engine is not self._write_engine:
            await self._read_engine.dispose()
