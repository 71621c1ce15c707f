"""Allocating IDs in process: event nids, stream orderings and state group IDs.

The writer allocates before it commits, so a batch of events (and the state groups that refer
to them) is written with plain multi-row INSERTs. One process writes events; when event
writing is sharded across workers, each shard gets its own allocator range.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Column, func, select

from storage.engine import DatabaseEngine


class IdAllocator:
    """Counts up from the column's greatest value; ``descending``: down from its least (and
    from 0), as for the stream orderings of history backfilled from other servers, which
    come before everything here."""

    def __init__(self, column: Column[int], *, descending: bool = False) -> None:
        self._column = column
        self._step = -1 if descending else 1
        self._last = 0

    async def load(self, engine: DatabaseEngine) -> None:
        aggregate = func.min if self._step < 0 else func.max
        async with engine.read() as conn:
            value = (await conn.execute(select(aggregate(self._column)))).scalar()
        self._last = min(int(value or 0), 0) if self._step < 0 else int(value or 0)

    def next(self) -> int:
        self._last += self._step
        return self._last

    @property
    def last(self) -> int:
        return self._last


class StreamStore:
    """Base of the stores that number their changes in a stream a sync reads "after N" of
    (account data, receipts, presence): positions are allocated in process and must commit
    in order — SQLite's single writer gives that already, PostgreSQL needs ``_ordered``."""

    def __init__(self, engine: DatabaseEngine, column: Column[int]) -> None:
        self._db = engine
        self._stream = IdAllocator(column)
        self._ordered = asyncio.Lock()
        self._visible = 0

    async def load(self) -> None:
        await self._stream.load(self._db)
        self._visible = max(self._visible, self._stream.last)

    @property
    def position(self) -> int:
        """The last position whose change is committed: a sync that counts up to it sees
        it (an allocated position becomes visible only once its write commits)."""
        return self._visible

    def advance(self, position: int) -> None:
        """Another process (the stream's writer) committed up to ``position``."""
        self._visible = max(self._visible, position)

    def _committed(self, position: int) -> None:
        """A write that allocated ``position`` committed (writes commit in order)."""
        self._visible = max(self._visible, position)
