"""The stream position and the waiters woken when it moves.

Every persisted batch advances the position and wakes the waiters (sync requests, SSE streams)
of the rooms it touched. Issue #4 builds per-user waiters on this; nothing here polls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class Notifier:
    def __init__(self) -> None:
        self._position = 0
        self._changed = asyncio.Event()

    @property
    def position(self) -> int:
        """The highest stream ordering whose events, and all before them, are committed."""
        return self._position

    def set_initial_position(self, position: int) -> None:
        self._position = position

    def on_new_events(self, position: int, room_ids: Iterable[str]) -> None:
        if position > self._position:
            self._position = position
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_change(self, wait_s: float) -> bool:
        """Wait until the next change or ``wait_s`` seconds; True if something changed."""
        try:
            await asyncio.wait_for(self._changed.wait(), wait_s)
            return True
        except TimeoutError:
            return False
