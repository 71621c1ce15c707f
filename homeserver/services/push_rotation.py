"""Rotation: old push results are counted into per-user summaries and deleted, so
``push_events``/``push_actions`` stop growing (Synapse's ``_rotate_notifs`` and
``_remove_old_push_actions_that_have_rotated``, storage/databases/main/event_push_actions.py).

Synapse keeps a row per user per notifying event, rotates them every 30 s into
``event_push_summary`` (per user, room and thread: how many notify since the user's last
receipt) and deletes the non-highlight rows older than a day once rotated; highlights stay
(they are counted from the rows). Here a batch is rotated and deleted in one transaction,
once it is older than ``keep_ms`` (a day, Synapse's figure): for each room it touches, each
local member's count of the batch's non-highlight notifications after their start (read
receipt or join: what the counts start after; per thread also after the thread's receipt)
is added to their summary, or starts it when their start moved since. The counts
(:class:`~homeserver.services.push.UnreadCounts`) then add a summary whose start is still the
user's to the rows rotation left. What is lost is what Synapse loses: a user who reads up
to an event older than the horizon, with older unread notifications still summarised,
counts those rotated after their new read position as none; and GET /notifications no
longer lists non-highlight notifications older than the horizon.

Bounded: each batch is at most ``batch`` rows of each table, its own transaction; a loop
runs every ``INTERVAL_S`` until the horizon is reached.
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Sequence

from core.clock import Clock
from homeserver.services.push import PushEvaluator, join_positions
from storage.stores.events import EventStore
from storage.stores.push import PushStore, PushSummary
from storage.stores.push_rotation import (
    PushRotationStore,
    RoomWideRow,
    RotationConflict,
    SummaryWrite,
    VerdictRow,
)

logger = logging.getLogger(__name__)

DAY_MS = 24 * 60 * 60 * 1000
INTERVAL_S = 300.0
BATCH = 10_000


class _ThreadRows:
    """One thread's room-wide rows in a batch, for counting per member."""

    def __init__(self, rows: list[RoomWideRow]) -> None:
        rows.sort(key=lambda r: r.stream_ordering)
        self.positions = [r.stream_ordering for r in rows]
        self.by_event = {r.event_id: r for r in rows}
        sent: dict[str, list[int]] = defaultdict(list)
        for r in rows:
            sent[r.sender].append(r.stream_ordering)
        self.sent = dict(sent)

    def after(self, position: int, user_id: str) -> int:
        """How many of the rows after ``position`` the user did not send."""
        count = len(self.positions) - bisect.bisect_right(self.positions, position)
        own = self.sent.get(user_id)
        if own:
            count -= len(own) - bisect.bisect_right(own, position)
        return count


class PushRotation:
    def __init__(self, store: PushRotationStore, push_store: PushStore, events: EventStore,
                 evaluator: PushEvaluator, clock: Clock, server_name: str, *,
                 keep_ms: int = DAY_MS, batch: int = BATCH) -> None:
        self._store = store
        self._push = push_store
        self._events = events
        self._evaluator = evaluator
        self._clock = clock
        self._suffix = ":" + server_name
        self._keep_ms = keep_ms
        self._batch = batch

    async def loop(self) -> None:
        while True:
            await self._clock.sleep(INTERVAL_S)
            try:
                await self.rotate()
            except RotationConflict:
                logger.info("Push rotation: another process is rotating")
            except Exception:
                logger.exception("Push rotation failed")

    async def rotate(self, up_to: int | None = None) -> int:
        """Rotate everything older than the horizon (or up to ``up_to``, never past what
        evaluation has written), batch by batch. Returns the rows deleted."""
        limit = self._evaluator.position
        if up_to is None:
            up_to = await self._store.horizon(self._clock.time_ms() - self._keep_ms, limit)
        up_to = min(up_to, limit)
        deleted = 0
        after = await self._store.position()
        while after < up_to:
            end = await self._store.batch_end(after, up_to, self._batch)
            deleted += await self._rotate(after, end)
            after = end
        if deleted:
            logger.info("Push rotation: up to %d, %d rows deleted", up_to, deleted)
        return deleted

    async def _rotate(self, after: int, up_to: int) -> int:
        room_wide, verdicts = await self._store.rows(after, up_to)
        rows_of: dict[str, dict[str, list[RoomWideRow]]] = defaultdict(lambda: defaultdict(list))
        for row in room_wide:
            rows_of[row.room_id][row.thread_id].append(row)
        verdicts_of: dict[str, dict[str, list[VerdictRow]]] = defaultdict(
            lambda: defaultdict(list))
        for verdict in verdicts:
            verdicts_of[verdict.room_id][verdict.user_id].append(verdict)
        writes: list[SummaryWrite] = []
        departed: list[tuple[str, str]] = []
        for room_id in sorted(set(rows_of) | set(verdicts_of)):
            await self._room(room_id, {t: _ThreadRows(rows) for t, rows in
                                       rows_of.get(room_id, {}).items()},
                             verdicts_of.get(room_id, {}), writes, departed)
        try:
            return await self._store.apply(after, up_to, writes, departed)
        finally:
            self._evaluator.rotated()  # counts remembered from before are stale

    async def _room(self, room_id: str, threads: dict[str, _ThreadRows],
                    verdicts: dict[str, list[VerdictRow]], writes: list[SummaryWrite],
                    departed: list[tuple[str, str]]) -> None:
        """The summaries of the room's local members for one batch."""
        members, _ = await self._push.joined_members(room_id)
        local = {u: e for u, e in members.items() if u.endswith(self._suffix)}
        loaded = await self._events.get_events(list(local.values()))
        joins = await join_positions(self._events, {
            u: loaded[e] for u, e in local.items() if e in loaded})
        reads, thread_reads = await self._store.read_positions(room_id, sorted(joins))
        existing = await self._store.summaries(room_id)
        departed.extend((room_id, u) for u in {u for u, _ in existing} if u not in joins)
        for user_id, joined_at in joins.items():
            start = max(joined_at, reads.get(user_id, 0))
            own = verdicts.get(user_id, [])
            counted = set(threads) | {v.thread_id for v in own}
            for thread_id in counted:
                thread_start = start if thread_id == "main" else \
                    max(start, thread_reads.get((user_id, thread_id), 0))
                notif = self._count(threads.get(thread_id), own, thread_id, start, user_id)
                thread_notif = notif if thread_start == start else \
                    self._count(threads.get(thread_id), own, thread_id, thread_start, user_id)
                if not notif and not thread_notif:
                    continue
                before = existing.get((user_id, thread_id))
                if before is not None and before.start == start:
                    notif += before.notif
                    if before.thread_start == thread_start:
                        thread_notif += before.thread_notif
                writes.append(SummaryWrite(user_id, PushSummary(
                    room_id, thread_id, start, thread_start, notif, thread_notif)))

    @staticmethod
    def _count(rows: _ThreadRows | None, own: Sequence[VerdictRow], thread_id: str,
               start: int, user_id: str) -> int:
        """The user's non-highlight notifications of a thread after ``start``: the
        room-wide rows (less those they sent and those they have their own verdict on)
        and their notifying non-highlight verdicts."""
        count = rows.after(start, user_id) if rows is not None else 0
        for verdict in own:
            if verdict.thread_id != thread_id or verdict.stream_ordering <= start:
                continue
            if rows is not None and verdict.event_id in rows.by_event:
                count -= 1
            if verdict.notify and not verdict.highlight:
                count += 1
        return count
