"""Allocating IDs in process: event nids, stream orderings and state group IDs.

The writer allocates before it commits, so a batch of events (and the state groups that refer
to them) is written with plain multi-row INSERTs. One process writes events; when event
writing is sharded across workers, each shard gets its own allocator range.
"""

from __future__ import annotations

from sqlalchemy import Column, func, select

from storage.engine import DatabaseEngine


class IdAllocator:
    def __init__(self, column: Column[int]) -> None:
        self._column = column
        self._last = 0

    async def load(self, engine: DatabaseEngine) -> None:
        async with engine.read() as conn:
            value = (await conn.execute(select(func.max(self._column)))).scalar()
        self._last = int(value or 0)

    def next(self) -> int:
        self._last += 1
        return self._last

    @property
    def last(self) -> int:
        return self._last
