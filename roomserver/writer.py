"""The writer core: per-room locks, room snapshots and the batch commit loop.

Every event, built here or received, is decided under its room's lock against the room's
in-memory snapshot, then handed to one batch writer that commits everything queued in a
single transaction. A caller gets its answer only after the commit, so an acknowledged event
is durable. Rooms proceed in parallel; within a room the next event builds on the previous one
while it is still being written, so concurrent senders share commits instead of queueing for
one each. After each commit the listeners hear of it (the notifier, the federation outbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from core.clock import Clock
from core.errors import MatrixError
from core.stats import SIZE_BUCKETS, Histogram
from roomserver.api import CommitListener, CommittedBatch, CommittedEvent
from roomserver.snapshot import RoomSnapshot, TxnIndex
from roomserver.store import GraphStore
from storage.stores.events import PersistItem

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH = 500
_ROOM_CACHE_SIZE = 5_000


class Writer:
    def __init__(self, store: GraphStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.txns = TxnIndex(store.db.events)
        self._listeners: list[CommitListener] = []
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._rooms: OrderedDict[str, RoomSnapshot] = OrderedDict()
        # Bumped by ``forget_rooms`` (a worker's snapshots as another process writes).
        self._forgotten = 0
        self._queue: asyncio.Queue[tuple[PersistItem, asyncio.Future[None], int]] = \
            asyncio.Queue()
        # Bumped when a room's write fails: queued events built on the lost ones are dropped.
        self._room_generation: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        # Futures of queued events by event ID, so a repeated transaction waits for the commit.
        self._uncommitted: dict[str, asyncio.Future[None]] = {}
        self._in_flight: dict[str, int] = {}  # room ID -> its queued events
        # Room ID -> the future of its last queued event (events commit in queue order).
        self._room_tail: dict[str, asyncio.Future[None]] = {}
        # Metrics: events committed, events per commit, seconds per commit.
        self.events_persisted = 0
        self.batch_sizes = Histogram(SIZE_BUCKETS)
        self.commit_seconds = Histogram()

    def add_listener(self, listener: CommitListener) -> None:
        """Hear of every commit from now on (the composition root subscribes the notifier
        and the federation outbox before the server starts)."""
        self._listeners.append(listener)

    async def start(self, *, loop: bool = True) -> int:
        position = await self.store.start()
        if loop:
            self._task = asyncio.create_task(self._write_loop())
        return position

    async def stop(self) -> None:
        if self._task is not None:
            # Let queued events finish: their senders are waiting for the commit.
            await self._queue.join()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- rooms ------------------------------------------------------------------------------

    def lock(self, room_id: str) -> asyncio.Lock:
        lock = self._room_locks.get(room_id)
        if lock is None:
            lock = self._room_locks[room_id] = asyncio.Lock()
        return lock

    def cached_snapshot(self, room_id: str) -> RoomSnapshot | None:
        return self._rooms.get(room_id)

    def cached_rooms(self) -> list[str]:
        return list(self._rooms)

    def forget_rooms(self, room_ids: Iterable[str]) -> None:
        """Another process wrote these rooms: their snapshots here are out of date (and a
        load running now may have read before that write: it is not kept)."""
        self._forgotten += 1
        for room_id in room_ids:
            self._rooms.pop(room_id, None)

    def rooms_wider_than(self, extremities: int) -> list[str]:
        """Rooms (of those in memory) with more than ``extremities`` forward extremities."""
        return [r for r, s in self._rooms.items() if len(s.extremities) > extremities]

    def is_current(self, snapshot: RoomSnapshot) -> bool:
        """False once a failed write made the snapshot hold lost events."""
        return self._rooms.get(snapshot.room_id) is snapshot

    async def snapshot(self, room_id: str) -> RoomSnapshot | None:
        """The room's snapshot (hold its lock to change it)."""
        snapshot = self._rooms.get(room_id)
        if snapshot is not None:
            self._rooms.move_to_end(room_id)
            return snapshot
        forgotten = self._forgotten
        snapshot = await self.store.load_snapshot(room_id)
        if snapshot is not None and forgotten == self._forgotten:
            self.remember_room(snapshot)
        return snapshot

    def remember_room(self, snapshot: RoomSnapshot) -> None:
        self._rooms[snapshot.room_id] = snapshot
        self._rooms.move_to_end(snapshot.room_id)
        if len(self._rooms) > _ROOM_CACHE_SIZE:
            for room_id in list(self._rooms)[:len(self._rooms) - _ROOM_CACHE_SIZE]:
                # A room with queued events keeps its snapshot: the database lacks them. Its
                # lock goes only when nobody holds or waits for it (a woken waiter has not
                # taken it yet while `locked()` is already false).
                lock = self._room_locks.get(room_id)
                busy = lock is not None and (lock.locked() or bool(getattr(lock, "_waiters",
                                                                           None)))
                if not busy and room_id not in self._in_flight:
                    del self._rooms[room_id]
                    self._room_locks.pop(room_id, None)

    async def remove_room(self, room_id: str, delete: Callable[[], Awaitable[T]]) -> T:
        """Run ``delete`` once the room's queued events are written, with nothing new built
        meanwhile; what is cached of the room goes with it."""
        async with self.lock(room_id):
            tail = self._room_tail.get(room_id)
            if tail is not None:
                await asyncio.wait([tail])
            try:
                return await delete()
            finally:
                self._rooms.pop(room_id, None)
                self.txns.forget_room(room_id)
                self.store.forget_room_events(room_id)

    # -- the queue --------------------------------------------------------------------------

    def queued(self, event_id: str) -> asyncio.Future[None] | None:
        """The commit future of an event queued and not yet written."""
        return self._uncommitted.get(event_id)

    def enqueue(self, item: PersistItem) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future, self._room_generation.get(item.room_id, 0)))
        self._uncommitted[item.event_id] = future
        self._in_flight[item.room_id] = self._in_flight.get(item.room_id, 0) + 1
        self._room_tail[item.room_id] = future
        future.add_done_callback(lambda _: self._ended(item))
        return future

    def _ended(self, item: PersistItem) -> None:
        """The item's write ended (stored or not)."""
        self._uncommitted.pop(item.event_id, None)
        left = self._in_flight.pop(item.room_id, 1) - 1
        if left:
            self._in_flight[item.room_id] = left
        else:
            self._room_tail.pop(item.room_id, None)

    async def committed(self, future: asyncio.Future[None], room_id: str) -> None:
        """Wait for a queued event's commit (``MatrixError`` if it failed)."""
        try:
            await asyncio.shield(future)
        except Exception:
            logger.exception("Persisting an event in %s failed", room_id)
            raise MatrixError("Could not store the event", status=500) from None

    async def _write_loop(self) -> None:
        while True:
            queued = [await self._queue.get()]
            while len(queued) < MAX_BATCH and not self._queue.empty():
                queued.append(self._queue.get_nowait())
            try:
                await self._write(queued)
            finally:
                for _ in queued:
                    self._queue.task_done()

    async def _write(self, queued: list[tuple[PersistItem, asyncio.Future[None], int]]
                     ) -> None:
        batch = []
        for item, future, generation in queued:
            if generation != self._room_generation.get(item.room_id, 0):
                self.store.forget_events([item.event_id])
                future.set_exception(RuntimeError("an earlier event of the room was lost"))
            else:
                batch.append((item, future))
        if not batch:
            return
        items = [item for item, _ in batch]
        started = self.clock.monotonic()
        try:
            await self.store.persist_batch(items)
        except Exception as e:
            self._forget_failed(items)
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        elapsed = self.clock.monotonic() - started
        self.events_persisted += len(items)
        self.batch_sizes.observe(len(items))
        self.commit_seconds.observe(elapsed)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Committed %d events in %d rooms in %.1f ms", len(items),
                         len({i.room_id for i in items}), elapsed * 1000)
        for _, future in batch:
            if not future.done():
                future.set_result(None)
        self.store.keys_committed(items)
        self.announce(CommittedBatch(tuple(CommittedEvent(
            i.room_id, i.event_id, i.type, i.sender, i.stream_ordering, i.redacts,
            tuple(i.current_state_delta), tuple(i.destinations),
            tuple(i.current_state_removed)) for i in items)))

    def announce(self, announced: CommittedBatch) -> None:
        """Tell the listeners of a commit (this process's, or another's a worker heard of)."""
        for listener in self._listeners:
            try:
                listener.events_committed(announced)
            except Exception:
                logger.exception("A commit listener failed")

    def _forget_failed(self, items: list[PersistItem]) -> None:
        """The snapshots ran ahead of what is stored: forget them, so the next event in each
        room reloads the truth, and drop what was queued on top of the lost events."""
        for item in items:
            self._rooms.pop(item.room_id, None)
            self.store.forget_events([item.event_id])
            self._room_generation[item.room_id] = self._room_generation.get(item.room_id, 0) + 1
            self.txns.forget_room(item.room_id)
        # Interned keys stay (events of other rooms queued meanwhile may use them): they are
        # still unstored in the store's eyes, so the next event using one writes it.
