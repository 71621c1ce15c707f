"""How much one other server may ask of us at once (Synapse's ``rc_federation``): a few of its
requests are handled concurrently, more wait their turn, and beyond a queue bound they are
refused with 429, so one busy or hostile server cannot take the whole process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from core.errors import LimitExceeded

CONCURRENT = 3
QUEUED = 50
RETRY_AFTER_MS = 1000


class OriginLimiter:
    def __init__(self, concurrent: int = CONCURRENT, queued: int = QUEUED) -> None:
        self._concurrent = concurrent
        self._queued = queued
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._waiting: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def slot(self, origin: str) -> AsyncIterator[None]:
        """Hold one of ``origin``'s request slots for the block.

        Raises:
            LimitExceeded: ``origin`` already has ``queued`` requests waiting.
        """
        waiting = self._waiting.get(origin, 0)
        if waiting >= self._queued:
            raise LimitExceeded(RETRY_AFTER_MS)
        slots = self._slots.get(origin)
        if slots is None:
            slots = self._slots[origin] = asyncio.Semaphore(self._concurrent)
        self._waiting[origin] = waiting + 1
        try:
            async with slots:
                yield
        finally:
            left = self._waiting[origin] - 1
            if left:
                self._waiting[origin] = left
            else:  # nothing in flight or waiting: forget the server
                del self._waiting[origin]
                del self._slots[origin]
