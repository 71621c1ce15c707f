"""Database engines and transactions.

SQLite (the default) gets WAL, foreign keys and a busy timeout on every connection, and a single
writer: all writes share one connection behind an ``asyncio.Lock`` and start with
``BEGIN IMMEDIATE``, so writers never deadlock on lock upgrades and readers never block them.
PostgreSQL uses one asyncpg pool for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from storage import migrations

T = TypeVar("T")


def _sqlite_engine(url: str, *, begin: str, pool_size: int, synchronous: str, read_only: bool
                   ) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=60)
    _configure_sqlite(engine.sync_engine, begin=begin, synchronous=synchronous,
                      read_only=read_only)
    return engine


def _configure_sqlite(engine: Engine, *, begin: str, synchronous: str, read_only: bool
                      ) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us emit BEGIN ourselves (pysqlite's implicit transactions are broken).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=10000")
        # A new file frees pages to the file system on `reclaim_space` (before any table
        # exists this is set for good; on an existing file it changes nothing).
        cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
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

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)


class DatabaseEngine:
    """Owns the engines; hands out read connections and write transactions."""

    def __init__(self, url: str, *, pool_size: int = 10, sqlite_synchronous: str = "FULL",
                 postgres_search_path: str | None = None) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._write_lock: asyncio.Lock | None = None
        self._closed = False
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
            # The hot write path (events) runs whole batches on this connection in one
            # thread: one hand-off per batch instead of one per statement.
            self._sync_writer = create_engine(
                "sqlite:///" + path, pool_size=1, max_overflow=0,
                connect_args={"check_same_thread": False})
            _configure_sqlite(self._sync_writer, begin="BEGIN IMMEDIATE",
                              synchronous=sqlite_synchronous, read_only=False)
            self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        else:
            connect_args: dict[str, Any] = {}
            if postgres_search_path:
                connect_args["server_settings"] = {"search_path": postgres_search_path}
            self._write_engine = create_async_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False,
                connect_args=connect_args)
            self._read_engine = self._write_engine

    def pool_stats(self) -> list[tuple[str, int, int]]:
        """``(pool, size, connections checked out now)`` for each connection pool: read
        from the pools' counters, no query (metrics, at scrape time)."""
        pools = [("write", self._write_engine)]
        if self._read_engine is not self._write_engine:
            pools.append(("read", self._read_engine))
        out = []
        for name, engine in pools:
            pool = engine.sync_engine.pool
            size = getattr(pool, "size", None)
            checked_out = getattr(pool, "checkedout", None)
            out.append((name, int(size()) if callable(size) else 0,
                        int(checked_out()) if callable(checked_out) else 0))
        return out

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

    async def run_write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` with a synchronous connection inside one write transaction.

        On SQLite the whole function runs in the writer thread, so a batch of statements
        costs one thread hand-off; on PostgreSQL it runs on the async connection.
        """
        if self._write_lock is None:
            async with self._write_engine.begin() as conn:
                return await conn.run_sync(fn)
        async with self._write_lock:
            job = asyncio.get_running_loop().run_in_executor(self._writer_thread,
                                                             self._run_sync, fn)
            try:
                return await asyncio.shield(job)
            except asyncio.CancelledError:
                # The thread goes on writing: the lock is held until it is done, or the next
                # writer (the async connection) would find the database locked.
                with contextlib.suppress(Exception):
                    await job
                raise

    def _run_sync(self, fn: Callable[[Connection], T]) -> T:
        with self._sync_writer.begin() as conn:
            return fn(conn)

    async def reclaim_space(self, tables: list[str]) -> None:
        """Give the space of deleted rows back: SQLite returns free pages to the file system
        (files created with incremental auto-vacuum) and truncates the WAL; PostgreSQL
        vacuums the tables, so their space is reused (and trailing pages returned)."""
        if self._write_lock is None:
            async with self._write_engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                for name in tables:
                    await conn.exec_driver_sql(f'VACUUM (ANALYZE) "{name}"')
            return

        def vacuum() -> None:
            with self._sync_writer.connect() as conn:
                raw = conn.connection.driver_connection
                assert raw is not None
                # executescript steps the pragma to the end (execute frees one page).
                raw.executescript("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")

        async with self._write_lock:
            await asyncio.get_running_loop().run_in_executor(self._writer_thread, vacuum)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only snapshot (one transaction)."""
        async with self._read_engine.begin() as conn:
            yield conn

    async def close(self) -> None:
        """Close every connection; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        if self.is_sqlite:
            await asyncio.get_running_loop().run_in_executor(self._writer_thread,
                                                             self._sync_writer.dispose)
            self._writer_thread.shutdown(wait=True)
        await self._write_engine.dispose()
        if self._read_engine is not self._write_engine:
            await self._read_engine.dispose()
