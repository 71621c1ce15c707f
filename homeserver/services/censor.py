"""Erasing redacted content (issue #6's "delete a message").

A redaction hides an event's content at once; its content stays in storage for
``redaction_retention_period`` (moderators may need it) and is then erased: the stored JSON
becomes the redacted form, keeping what the redaction algorithm keeps (so signatures, hashes
and the room's state still check out). With a period of 0 it happens as the redaction commits.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable

from core.clock import Clock
from core.events.canonical import encode_canonical
from core.events.redaction import redact
from core.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.services.notifier import Notifier
from homeserver.services.serialize import EventSerializer
from roomserver.api import EventErasure
from storage.stores.events import EventStore

logger = logging.getLogger(__name__)


def pruned_json(raw: str, version_id: str) -> str | None:
    """An event's stored JSON with only what the redaction algorithm keeps (None for an
    unknown room version)."""
    version = KNOWN_ROOM_VERSIONS.get(version_id)
    if version is None:
        return None
    return encode_canonical(redact(json.loads(raw), version)).decode()


class RedactionCensor:
    def __init__(self, events: EventStore, erasure: EventErasure, serializer: EventSerializer,
                 notifier: Notifier, clock: Clock, retention_ms: int | None) -> None:
        self._events = events
        self._erasure = erasure
        self._serializer = serializer
        self._clock = clock
        self.retention_ms = retention_ms
        self._running: asyncio.Task[None] | None = None
        self._again = False
        if retention_ms == 0:
            notifier.on_redacted.append(self._redacted)

    async def run(self, now_ms: int | None = None) -> int:
        """Erase every redacted event whose retention has passed; returns how many."""
        if self.retention_ms is None:
            return 0
        now = self._clock.time_ms() if now_ms is None else now_ms
        # `received_ts < before`: a period of 0 takes redactions of this very millisecond.
        before = now - self.retention_ms + 1
        erased = 0
        while True:
            due = await self._events.redactions_due(before)
            if not due:
                return erased
            pruned = {}
            for event_id, raw, version_id in due:
                erased_json = pruned_json(raw, version_id)
                if erased_json is not None:
                    pruned[event_id] = erased_json
            if not pruned:
                return erased
            await self._erasure.erase_redacted_content(pruned)
            self._serializer.forget(pruned)
            erased += len(pruned)

    def _redacted(self, event_ids: Iterable[str]) -> None:
        """A redaction committed and content goes at once: erase it in the background (one
        pass at a time; a redaction during a pass gets another)."""
        if self._running is not None and not self._running.done():
            self._again = True
            return
        self._running = asyncio.get_running_loop().create_task(self._passes())

    async def _passes(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                await self.run()
            except Exception:
                logger.exception("Erasing redacted content failed; the next pass retries")
                return

    async def stop(self) -> None:
        if self._running is not None:
            await self._running
