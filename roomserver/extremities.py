"""Keeping a room's forward extremities few.

Every event built here lists the room's extremities as its prev events (up to
``MAX_PREV_EVENTS``), so the next local message merges what other servers forked. A room that
forked further than one event can merge, with nobody here speaking, would make every state
resolution and every new event heavier: as Synapse does, a room with more than
``DUMMY_THRESHOLD`` extremities gets an ``org.matrix.dummy_event`` from one of its local
members, which merges them (and goes to the other servers like any event).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from core.clock import Clock
from core.errors import MatrixError
from roomserver.api import NewEvent
from roomserver.local import LocalEvents
from roomserver.writer import Writer

logger = logging.getLogger(__name__)

DUMMY_THRESHOLD = 10
DUMMY_EVENT = "org.matrix.dummy_event"
CHECK_INTERVAL_S = 60.0


class ExtremityMerger:
    def __init__(self, writer: Writer, local: LocalEvents, clock: Clock, server_name: str
                 ) -> None:
        self._writer = writer
        self._local = local
        self._clock = clock
        self._server_name = server_name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await self._clock.sleep(CHECK_INTERVAL_S)
            try:
                await self.merge_wide_rooms()
            except Exception:
                logger.exception("Merging forward extremities failed")

    async def merge_wide_rooms(self) -> int:
        """Send a dummy event into each room with too many extremities; returns how many
        were sent."""
        sent = 0
        for room_id in self._writer.rooms_wider_than(DUMMY_THRESHOLD):
            snapshot = self._writer.cached_snapshot(room_id)
            if snapshot is None:
                continue
            ours = sorted(u for u in snapshot.joined if u.endswith(":" + self._server_name))
            for user_id in ours:
                try:
                    await self._local.send_events(room_id, [NewEvent(DUMMY_EVENT, user_id, {})])
                except MatrixError as e:  # not allowed to speak: the next member may be
                    logger.debug("%s may not merge %s: %s", user_id, room_id, e)
                    continue
                logger.info("Merged the forward extremities of %s (dummy event from %s)",
                            room_id, user_id)
                sent += 1
                break
        return sent
