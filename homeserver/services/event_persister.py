"""The one write path for events.

Every new event — created here or, later, received over federation — is built, authorized
and ordered under its room's lock against the room's in-memory current state, then handed to
one batch writer that commits everything queued in a single transaction. A request gets its
answer only after the commit, so an acknowledged event is durable. Rooms proceed in
parallel; within a room the next event builds on the previous one while it is still being
written, so concurrent senders share commits instead of queueing for one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from signedjson.types import SigningKey

from homeserver.clock import Clock
from homeserver.errors import Forbidden, MatrixError, NotFound, TooLarge
from homeserver.events.builder import build_event
from homeserver.events.canonical import encode_canonical
from homeserver.events.model import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.rooms.auth import AuthError, auth_types_for_event, check_auth_rules
from homeserver.services.notifier import Notifier
from storage import Database
from storage.ids import IdAllocator
from storage.schema import events as events_table
from storage.schema import state_groups as state_groups_table
from storage.schema import state_keys as state_keys_table
from storage.state_layers import Layer, diff, pack_pairs, plan_group
from storage.stores.events import EventStore, NewStateGroup, PersistItem, StoredEvent
from storage.stores.state import StateKey

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PREV_EVENTS = 10
MAX_PDU_BYTES = 65536
MAX_BATCH = 500
_EVENT_CACHE_SIZE = 20_000
_ROOM_CACHE_SIZE = 5_000


@dataclass(slots=True)
class RoomSnapshot:
    """A room's current state as the writer sees it (ahead of the database while a batch is
    being written)."""

    room_id: str
    room_version: RoomVersion
    state: dict[StateKey, str]
    state_nids: dict[int, int]
    state_group: int | None
    chain: list[Layer]
    extremities: list[str]
    depth: int


TxnKey = tuple[str, str, str, str]
"""(room_id, sender, device_id, txn_id)"""


class TxnIndex:
    """Transaction IDs already used, so a repeated send returns the first event.

    Each (room, sender, device) loads its recent transaction IDs from the database once, then
    is kept in memory (new ones are added as events are queued); only a device with more
    than ``PER_DEVICE`` of them in one room falls back to a database lookup on a miss.
    """

    PER_DEVICE = 5_000
    DEVICES = 20_000

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._devices: OrderedDict[tuple[str, str, str], tuple[OrderedDict[str, str], bool]] = \
            OrderedDict()

    async def lookup(self, key: TxnKey) -> str | None:
        device = key[:3]
        entry = self._devices.get(device)
        if entry is None:
            recent = await self._store.recent_txns(*device, limit=self.PER_DEVICE + 1)
            entry = (OrderedDict(recent), len(recent) <= self.PER_DEVICE)
            self._devices[device] = entry
            if len(self._devices) > self.DEVICES:
                self._devices.popitem(last=False)
        self._devices.move_to_end(device)
        txns, complete = entry
        found = txns.get(key[3])
        if found is not None or complete:
            return found
        return await self._store.event_for_txn(*key)

    def add(self, key: TxnKey, event_id: str) -> None:
        device = key[:3]
        entry = self._devices.get(device)
        if entry is None:
            return  # never looked up: the next lookup loads it from the database
        txns, _complete = entry
        txns[key[3]] = event_id
        if len(txns) > self.PER_DEVICE:
            txns.popitem(last=False)
            self._devices[device] = (txns, False)

    def forget_room(self, room_id: str) -> None:
        for device in [d for d in self._devices if d[0] == room_id]:
            del self._devices[device]


@dataclass(frozen=True, slots=True)
class NewEvent:
    """What a service asks the persister to create."""

    type: str
    sender: str
    content: Mapping[str, Any]
    state_key: str | None = None
    redacts: str | None = None
    device_id: str | None = None
    txn_id: str | None = None


class EventPersister:
    def __init__(self, db: Database, clock: Clock, notifier: Notifier, server_name: str,
                 signing_key: SigningKey) -> None:
        self._db = db
        self._clock = clock
        self._notifier = notifier
        self._server_name = server_name
        self._signing_key = signing_key
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._last_create_ts: OrderedDict[str, int] = OrderedDict()
        self._rooms: OrderedDict[str, RoomSnapshot] = OrderedDict()
        self._events: OrderedDict[str, Event] = OrderedDict()
        self._nids = IdAllocator(events_table.c.nid)
        self._stream = IdAllocator(events_table.c.stream_ordering)
        self._groups = IdAllocator(state_groups_table.c.id)
        self._key_nids = IdAllocator(state_keys_table.c.nid)
        self._txns = TxnIndex(db.events)
        self._last_encoded: tuple[str, bytes] = ("", b"")
        self._queue: asyncio.Queue[tuple[PersistItem, asyncio.Future[None], int]] = \
            asyncio.Queue()
        # Bumped when a room's write fails: queued events built on the lost ones are dropped.
        self._room_generation: dict[str, int] = {}
        self._writer: asyncio.Task[None] | None = None
        # Futures of queued events by event ID, so a repeated transaction waits for the commit.
        self._uncommitted: dict[str, asyncio.Future[None]] = {}
        self._in_flight: dict[str, int] = {}  # room ID -> its queued events
        # Room ID -> the future of its last queued event (events commit in queue order).
        self._room_tail: dict[str, asyncio.Future[None]] = {}
        # Interned state keys whose row is not committed yet: every event using one writes it
        # (a failed write may have been the one that carried it).
        self._unstored_keys: set[int] = set()

    async def start(self) -> None:
        for allocator in (self._nids, self._stream, self._groups, self._key_nids):
            await allocator.load(self._db.engine)
        self._notifier.set_initial_position(self._stream.last)
        self._writer = asyncio.create_task(self._write_loop())

    async def stop(self) -> None:
        if self._writer is not None:
            # Let queued events finish: their senders are waiting for the commit.
            await self._queue.join()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    # -- reading what the persister knows -----------------------------------------------------

    async def get_events(self, event_ids: list[str]) -> dict[str, Event]:
        """Events by ID from the cache or the database (rejected and unknown ones left out)."""
        out = {e: self._events[e] for e in event_ids if e in self._events}
        missing = [e for e in event_ids if e not in out]
        if missing:
            for event_id, stored in (await self._db.events.get_events(missing)).items():
                if stored.rejected_reason is None:
                    out[event_id] = self._cache_event(self.event_from_stored(stored))
        return out

    @staticmethod
    def event_from_stored(stored: StoredEvent) -> Event:
        version = KNOWN_ROOM_VERSIONS[stored.room_version]
        return Event(stored.event_id, version, stored.pdu)

    def _cache_event(self, event: Event) -> Event:
        self._events[event.event_id] = event
        if len(self._events) > _EVENT_CACHE_SIZE:
            self._events.popitem(last=False)
        return event

    async def current_state(self, room_id: str) -> dict[StateKey, str] | None:
        """The room's current state (type, state_key) -> event ID; None for unknown rooms."""
        async with self._lock(room_id):
            snapshot = await self._snapshot(room_id)
        return dict(snapshot.state) if snapshot is not None else None

    async def room_version(self, room_id: str) -> RoomVersion | None:
        snapshot = self._rooms.get(room_id)
        if snapshot is not None:
            return snapshot.room_version
        info = await self._db.events.room_info(room_id)
        return KNOWN_ROOM_VERSIONS.get(info[0]) if info is not None else None

    # -- writing ----------------------------------------------------------------------------

    def _lock(self, room_id: str) -> asyncio.Lock:
        lock = self._room_locks.get(room_id)
        if lock is None:
            lock = self._room_locks[room_id] = asyncio.Lock()
        return lock

    async def create_room(self, room_version: RoomVersion, creator: str,
                          create_content: Mapping[str, Any], *, room_id: str | None = None
                          ) -> Event:
        """Create a room with its m.room.create event; returns that event.

        A v12 room ID is the create event's hash, so two rooms created by one user with the
        same content in the same millisecond would collide: each creator's create events get
        increasing timestamps here, and a clash with another process moves the timestamp on
        until the ID is free.
        """
        now = max(self._clock.time_ms(), self._last_create_ts.get(creator, 0) + 1)
        self._last_create_ts[creator] = now
        self._last_create_ts.move_to_end(creator)
        if len(self._last_create_ts) > _ROOM_CACHE_SIZE:
            self._last_create_ts.popitem(last=False)
        content = dict(create_content)
        if not room_version.implicit_room_creator:
            content["creator"] = creator
        content["room_version"] = room_version.identifier
        await self._db.state.key_nids([("m.room.create", "")])  # interned by other rooms?
        for attempt in range(100):
            event = build_event(
                room_version, type="m.room.create", sender=creator, content=content,
                room_id=None if room_version.room_id_is_create_event_hash else room_id,
                state_key="", prev_events=[], auth_events=[], depth=1,
                origin_server_ts=now + attempt, server_name=self._server_name,
                signing_key=self._signing_key)
            check_auth_rules(event, {}, create_event=event)
            lock = self._lock(event.room_id)
            await lock.acquire()
            if event.room_id not in self._rooms and \
                    await self._db.events.room_info(event.room_id) is None:
                break
            lock.release()
            if not room_version.room_id_is_create_event_hash:
                raise MatrixError("Room already exists", status=400, errcode="M_ROOM_IN_USE")
        else:
            raise MatrixError("Could not find a free room ID", status=500)
        room_id = event.room_id
        try:
            snapshot = RoomSnapshot(room_id, room_version, {}, {}, None, [], [], 0)
            item = self._prepare(snapshot, event, NewEvent("m.room.create", creator, content,
                                                           ""), now)
            item.new_room = (room_version.identifier, creator, now)
            self._remember_room(snapshot)
            future = self._enqueue(item)
        finally:
            lock.release()
        await self._await_commit(future, room_id)
        return event

    async def send(self, room_id: str, new: NewEvent) -> Event:
        """Build, authorize and persist one event; see ``send_events``."""
        return (await self.send_events(room_id, [new]))[0]

    async def send_events(self, room_id: str, news: list[NewEvent]) -> list[Event]:
        """Build, authorize and persist events in order; returns them once all are committed.

        A repeated ``(sender, device_id, txn_id)`` returns the event first created for it.

        Raises:
            NotFound: the room is unknown here.
            Forbidden: an event fails the room's authorization rules (it and the events after
                it are not created; those before it are).
        """
        out: list[Event] = []
        futures: list[asyncio.Future[None]] = []
        try:
            async with self._lock(room_id):
                snapshot = await self._snapshot(room_id)
                if snapshot is None:
                    raise NotFound("Unknown room")
                for new in news:
                    txn: TxnKey | None = (room_id, new.sender, new.device_id, new.txn_id) \
                        if new.txn_id is not None and new.device_id is not None else None
                    if txn is not None:
                        existing_id = await self._txns.lookup(txn)
                        if existing_id is not None:
                            existing = (await self.get_events([existing_id])).get(existing_id)
                            if existing is not None:
                                out.append(existing)
                                if existing_id in self._uncommitted:  # answer after the commit
                                    futures.append(self._uncommitted[existing_id])
                                continue
                    event = await self._build_and_auth(snapshot, new)
                    if self._rooms.get(room_id) is not snapshot:
                        # A write failed meanwhile: the snapshot holds lost events.
                        raise MatrixError("Could not store the event", status=500)
                    futures.append(self._enqueue(self._prepare(snapshot, event, new,
                                                               event.origin_server_ts)))
                    if txn is not None:
                        self._txns.add(txn, event.event_id)
                    out.append(event)
        finally:
            # Events queued before a failure are still written: wait for them either way.
            for future in futures:
                await self._await_commit(future, room_id)
        return out

    async def _build_and_auth(self, snapshot: RoomSnapshot, new: NewEvent) -> Event:
        if new.state_key is not None:  # a key other rooms interned is cached for _prepare
            await self._db.state.key_nids([(new.type, new.state_key)])
        version = snapshot.room_version
        auth_ids = [snapshot.state[k] for k in auth_types_for_event(
            version, new.type, new.state_key, new.sender, new.content) if k in snapshot.state]
        try:
            event = build_event(
                version, type=new.type, sender=new.sender, content=new.content,
                room_id=snapshot.room_id, state_key=new.state_key,
                prev_events=snapshot.extremities[-MAX_PREV_EVENTS:], auth_events=auth_ids,
                depth=snapshot.depth + 1, origin_server_ts=self._clock.time_ms(),
                redacts=new.redacts, server_name=self._server_name,
                signing_key=self._signing_key)
        except ValueError as e:
            raise MatrixError(f"Invalid event: {e}", status=400, errcode="M_BAD_JSON") from None
        if len(self._encoded(event)) > MAX_PDU_BYTES:
            raise TooLarge("Event is too large")
        await self._check_auth(snapshot, event, auth_ids)
        return event

    async def _check_auth(self, snapshot: RoomSnapshot, event: Event, auth_ids: list[str]
                          ) -> None:
        create_id = snapshot.state.get(("m.room.create", ""))
        wanted = [*auth_ids, create_id] if create_id else list(auth_ids)
        loaded = await self.get_events(wanted)
        auth_events: dict[StateKey, Event] = {}
        for event_id in auth_ids:
            auth_event = loaded[event_id]
            if auth_event.state_tuple is not None:
                auth_events[auth_event.state_tuple] = auth_event
        try:
            check_auth_rules(event, auth_events,
                             create_event=loaded.get(create_id) if create_id else None)
        except AuthError as e:
            raise Forbidden(str(e)) from None

    def _encoded(self, event: Event) -> bytes:
        """The event's canonical JSON, encoded once per new event."""
        if self._last_encoded[0] != event.event_id:
            self._last_encoded = (event.event_id, encode_canonical(dict(event.pdu)))
        return self._last_encoded[1]

    def _prepare(self, snapshot: RoomSnapshot, event: Event, new: NewEvent, now: int
                 ) -> PersistItem:
        """Turn an authorized event into a write, and move the snapshot past it."""
        nid = self._nids.next()
        item = PersistItem(
            event_id=event.event_id, room_id=snapshot.room_id,
            pdu_json=self._encoded(event).decode("utf-8"), nid=nid,
            stream_ordering=self._stream.next(), depth=event.depth, type=event.type,
            state_key=event.state_key, sender=event.sender,
            origin_server_ts=event.origin_server_ts, received_ts=now,
            prev_event_ids=event.prev_event_ids, auth_event_ids=event.auth_event_ids,
            state_group_before=snapshot.state_group, state_group_after=snapshot.state_group,
            device_id=new.device_id if new.txn_id is not None else None, txn_id=new.txn_id,
            redacts=event.redacts, extremities_after=[event.event_id], pdu=dict(event.pdu),
            room_version=snapshot.room_version.identifier)
        if event.state_tuple is not None:
            key = event.state_tuple
            item.replaces_state = snapshot.state.get(key)
            key_nid = self._state_key_nid(key, item)
            new_nids = dict(snapshot.state_nids)
            new_nids[key_nid] = nid
            added, removed = diff(snapshot.state_nids, new_nids)
            plan = plan_group(snapshot.chain, added, removed)
            group_id = self._groups.next()
            layer = Layer(group_id, plan.parent_id, plan.added, plan.removed)
            item.new_state_group = NewStateGroup(group_id, snapshot.room_id, plan.parent_id,
                                                 pack_pairs(plan.added),
                                                 pack_pairs(plan.removed))
            item.state_group_after = group_id
            item.current_state_delta.append((key[0], key[1], event.event_id, event.membership))
            parent_depth = next((i for i, lay in enumerate(snapshot.chain)
                                 if lay.group_id == plan.parent_id), -1)
            snapshot.chain = [*snapshot.chain[:parent_depth + 1], layer]
            snapshot.state_group = group_id
            snapshot.state_nids = new_nids
            snapshot.state[key] = event.event_id
            self._db.state.remember_layer(layer, new_nids)
        snapshot.extremities = [event.event_id]
        snapshot.depth = max(snapshot.depth, event.depth)
        self._cache_event(event)
        self._db.state.remember_event_nid(nid, event.event_id)
        return item

    def _state_key_nid(self, key: StateKey, item: PersistItem) -> int:
        nid = self._db.state.cached_key_nid(key)
        if nid is None:
            nid = self._key_nids.next()
            self._db.state.remember_key(nid, key)
            self._unstored_keys.add(nid)
        if nid in self._unstored_keys:
            item.new_state_keys.append((nid, key[0], key[1]))
        return nid

    def _enqueue(self, item: PersistItem) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future, self._room_generation.get(item.room_id, 0)))
        self._uncommitted[item.event_id] = future
        self._in_flight[item.room_id] = self._in_flight.get(item.room_id, 0) + 1
        self._room_tail[item.room_id] = future
        future.add_done_callback(lambda _: self._committed(item))
        return future

    def _committed(self, item: PersistItem) -> None:
        """The item's write ended (stored or not)."""
        self._uncommitted.pop(item.event_id, None)
        left = self._in_flight.pop(item.room_id, 1) - 1
        if left:
            self._in_flight[item.room_id] = left
        else:
            self._room_tail.pop(item.room_id, None)

    async def _await_commit(self, future: asyncio.Future[None], room_id: str) -> None:
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
            batch = []
            for item, future, generation in queued:
                if generation != self._room_generation.get(item.room_id, 0):
                    self._events.pop(item.event_id, None)
                    future.set_exception(RuntimeError("an earlier event of the room was lost"))
                else:
                    batch.append((item, future))
            if not batch:
                for _ in queued:
                    self._queue.task_done()
                continue
            items = [item for item, _ in batch]
            try:
                await self._db.events.persist_batch(items)
            except Exception as e:
                self._forget_failed(items)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                for _ in queued:
                    self._queue.task_done()
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
            for _ in queued:
                self._queue.task_done()
            self._unstored_keys.difference_update(n for i in items for n, _, _ in i.new_state_keys)
            self._notifier.on_new_events(
                items[-1].stream_ordering, {i.room_id for i in items},
                {i.state_key for i in items if i.type == "m.room.member" and i.state_key},
                [(i.room_id, i.stream_ordering, i.event_id) for i in items],
                [(i.room_id, key) for i in items for type_, key, _, membership
                 in i.current_state_delta if type_ == "m.room.member" and membership != "join"],
                [i.redacts for i in items if i.redacts is not None])

    def _forget_failed(self, items: list[PersistItem]) -> None:
        """The snapshots ran ahead of what is stored: forget them, so the next event in each
        room reloads the truth, and drop what was queued on top of the lost events."""
        for item in items:
            self._rooms.pop(item.room_id, None)
            self._events.pop(item.event_id, None)
            self._room_generation[item.room_id] = self._room_generation.get(item.room_id, 0) + 1
            self._txns.forget_room(item.room_id)
        # Interned keys stay (events of other rooms queued meanwhile may use them): they are
        # still in _unstored_keys, so the next event using one writes it.

    async def remove_room(self, room_id: str, delete: Callable[[], Awaitable[T]]) -> T:
        """Run ``delete`` (which deletes the room's stored events) once the room's queued
        events are written, with nothing new built meanwhile; what is cached of the room goes
        with it."""
        async with self._lock(room_id):
            tail = self._room_tail.get(room_id)
            if tail is not None:
                await asyncio.wait([tail])
            try:
                return await delete()
            finally:
                self._rooms.pop(room_id, None)
                self._txns.forget_room(room_id)
                for event_id in [e for e, ev in self._events.items() if ev.room_id == room_id]:
                    del self._events[event_id]

    def forget_events(self, event_ids: Iterable[str]) -> None:
        """Deleted events (a history purge) leave the cache."""
        for event_id in event_ids:
            self._events.pop(event_id, None)

    # -- loading snapshots ------------------------------------------------------------------

    def _remember_room(self, snapshot: RoomSnapshot) -> None:
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

    async def _snapshot(self, room_id: str) -> RoomSnapshot | None:
        snapshot = self._rooms.get(room_id)
        if snapshot is not None:
            self._rooms.move_to_end(room_id)
            return snapshot
        info = await self._db.events.room_info(room_id)
        if info is None:
            return None
        version_id, group_id = info
        version = KNOWN_ROOM_VERSIONS.get(version_id)
        if version is None:
            raise MatrixError(f"Unsupported room version {version_id}", status=400,
                              errcode="M_UNSUPPORTED_ROOM_VERSION")
        chain = await self._db.state.chain(group_id) if group_id is not None else []
        state_nids = await self._db.state.full_state_nids(group_id) if group_id else {}
        state = await self._db.state.state_at_group(group_id)
        head = await self._db.events.room_head(room_id)
        extremities, depth = (head.extremities, head.depth) if head else ([], 0)
        snapshot = RoomSnapshot(room_id, version, state, dict(state_nids), group_id, chain,
                                extremities, depth)
        self._remember_room(snapshot)
        return snapshot

