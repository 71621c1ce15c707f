"""Copying a SQLite database into PostgreSQL (``ktchat port-db``, as Synapse's
``synapse_port_db``).

Every table of the schema is copied in the order its foreign keys need, in batches taken in
SQLite ``rowid`` order. Each batch is inserted in one PostgreSQL transaction together with
the table's progress (the last rowid copied) in ``port_db_progress``, so an interrupted port
continues where it stopped: nothing is copied twice, nothing is skipped. The search index
(an FTS5 table in SQLite, a tsvector table in PostgreSQL) is rebuilt from its stored text.
At the end, identity sequences are moved past the greatest copied ID and the row counts of
every table are compared.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Identity,
    MetaData,
    Table,
    Text,
    func,
    inspect,
    literal_column,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from storage import migrations, schema, search_index

logger = logging.getLogger(__name__)

BATCH_ROWS = 5_000
SEARCH_INDEX = "event_search"

_progress_metadata = MetaData()
# The port's own bookkeeping, in the target only (as Synapse's port_from_sqlite3).
progress_table = Table(
    "port_db_progress",
    _progress_metadata,
    Column("table_name", Text, primary_key=True),
    Column("last_rowid", BigInteger, nullable=False),
    Column("rows_copied", BigInteger, nullable=False),
    Column("done", Boolean, nullable=False),
)


class PortError(Exception):
    """The port cannot start or did not end well; the message says why."""


@dataclass(frozen=True, slots=True)
class TableCount:
    table: str
    source: int
    target: int

    @property
    def matches(self) -> bool:
        return self.source == self.target


# Called after each batch with (table, rows copied so far in that table).
OnBatch = Callable[[str, int], None]


def sqlite_url(path: str) -> str:
    return f"sqlite+aiosqlite:///{path}"


def postgres_url(url: str) -> str:
    """The asyncpg form of a PostgreSQL URL (``postgresql://`` is accepted too)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    return url


async def schema_version(conn: AsyncConnection) -> int | None:
    """The database's schema version; None when it has no schema yet."""
    if not await conn.run_sync(lambda c: inspect(c).has_table("schema_version")):
        return None
    value = (await conn.execute(select(schema.schema_version.c.version))).scalar()
    return None if value is None else int(value)


class Porter:
    def __init__(self, source: AsyncEngine, target: AsyncEngine, *,
                 batch_rows: int = BATCH_ROWS, on_batch: OnBatch | None = None) -> None:
        self._source = source
        self._target = target
        self._batch = batch_rows
        self._on_batch = on_batch

    async def prepare(self) -> None:
        """Check both schema versions and give the target the schema (when it has none) and
        the progress table; refuses a target holding rows this port did not copy."""
        async with self._source.connect() as src:
            source_version = await schema_version(src)
        if source_version is None:
            raise PortError("the SQLite database has no KT-Chat schema")
        if source_version != migrations.LATEST:
            raise PortError(
                f"the SQLite database is at schema version {source_version}, this version of "
                f"KT-Chat is at {migrations.LATEST}: run this version of the server on it once "
                "(it upgrades the schema), stop it, then port")
        async with self._target.begin() as dst:
            target_version = await schema_version(dst)
            if target_version is None:
                await dst.run_sync(migrations.migrate)
            elif target_version != source_version:
                raise PortError(f"the PostgreSQL database is at schema version "
                                f"{target_version}, the SQLite one at {source_version}")
            await dst.run_sync(_progress_metadata.create_all)
            started = {r[0] for r in await dst.execute(select(progress_table.c.table_name))}
            for table in self.tables():
                if table.name in started:
                    continue
                if (await dst.execute(select(func.count()).select_from(table))).scalar():
                    raise PortError(f"the PostgreSQL database already has rows in {table.name} "
                                    "that this port did not copy: port into an empty database")

    @staticmethod
    def tables() -> list[Table]:
        """Every table copied, parents before children (schema_version is the target's
        own)."""
        return [t for t in schema.metadata.sorted_tables if t.name != "schema_version"]

    async def copy_all(self) -> None:
        for table in self.tables():
            await self._copy(table.name,
                             select(literal_column("rowid"), *table.columns).select_from(table),
                             functools.partial(_insert, table))
        fts = search_index.fts5
        await self._copy(SEARCH_INDEX,
                         select(literal_column("rowid"), fts.c.value, fts.c.room_id, fts.c.kind)
                         .select_from(fts), _insert_search)
        async with self._target.begin() as dst:
            await dst.run_sync(_advance_sequences)

    async def _copy(self, name: str, query: Any,
                    insert: Callable[[Connection, list[dict[str, Any]]], None]) -> None:
        async with self._target.connect() as dst:
            row = (await dst.execute(select(progress_table).where(
                progress_table.c.table_name == name))).first()
        last, copied, done = (row.last_rowid, row.rows_copied, row.done) if row else (0, 0, False)
        if done:
            return
        rowid: Any = literal_column("rowid")
        async with self._source.connect() as src:
            while True:
                result = await src.execute(query.where(rowid > last).order_by(rowid)
                                           .limit(self._batch))
                rows = [dict(r._mapping) for r in result]
                if rows:
                    last = int(rows[-1]["rowid"])
                copied += len(rows)
                finished = len(rows) < self._batch
                async with self._target.begin() as dst:
                    if rows:
                        await dst.run_sync(insert, rows)
                    await dst.run_sync(_save_progress, name, last, copied, finished)
                if rows and self._on_batch is not None:
                    self._on_batch(name, copied)
                if finished:
                    logger.info("Copied %s: %d rows", name, copied)
                    return

    async def verify(self) -> list[TableCount]:
        """Rows per table in both databases."""
        counts = []
        async with self._source.connect() as src, self._target.connect() as dst:
            for table in self.tables():
                query = select(func.count()).select_from(table)
                counts.append(TableCount(table.name, int((await src.execute(query)).scalar_one()),
                                         int((await dst.execute(query)).scalar_one())))
            source_index = (await src.execute(text("SELECT count(*) FROM event_search")))
            target_index = (await dst.execute(text("SELECT count(*) FROM event_search")))
            counts.append(TableCount(SEARCH_INDEX, int(source_index.scalar_one()),
                                     int(target_index.scalar_one())))
        return counts


def _insert(table: Table, conn: Connection, rows: list[dict[str, Any]]) -> None:
    conn.execute(table.insert(), [{c.name: r[c.name] for c in table.columns} for r in rows])


def _insert_search(conn: Connection, rows: list[dict[str, Any]]) -> None:
    search_index.add(conn, [{"nid": r["rowid"], "value": r["value"], "room_id": r["room_id"],
                             "kind": r["kind"]} for r in rows])


def _save_progress(conn: Connection, name: str, last: int, copied: int, done: bool) -> None:
    values = {"last_rowid": last, "rows_copied": copied, "done": done}
    updated = conn.execute(progress_table.update()
                           .where(progress_table.c.table_name == name).values(**values))
    if not updated.rowcount:
        conn.execute(progress_table.insert().values(table_name=name, **values))


def _advance_sequences(conn: Connection) -> None:
    """Identity columns' sequences continue after the greatest copied value."""
    for table in schema.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.identity, Identity):
                greatest = conn.execute(select(func.max(column))).scalar()
                conn.execute(text("SELECT setval(pg_get_serial_sequence(:table, :column), "
                                  ":next, false)"),
                             {"table": table.name, "column": column.name,
                              "next": int(greatest or 0) + 1})


def open_engines(sqlite_path: str, target_url: str) -> tuple[AsyncEngine, AsyncEngine]:
    source = create_async_engine(sqlite_url(sqlite_path), pool_size=1, max_overflow=0)
    target = create_async_engine(postgres_url(target_url), pool_size=2, max_overflow=0)
    return source, target
