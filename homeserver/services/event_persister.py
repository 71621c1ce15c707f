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
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from signedjson.types import SigningKey

from core.clock import Clock
from core.errors import Forbidden, MatrixError, NotFound, TooLarge
from core.events.builder import build_event
from core.events.canonical import encode_canonical
from core.events.model import Event
from core.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from core.events.stripped import stripped
from core.rooms.auth import (
    AuthError,
    auth_types_for_event,
    check_auth_events,
    check_auth_rules,
    create_event_id_for_room,
)
from core.rooms.power_levels import PowerLevels
from core.rooms.server_acl import server_allowed
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
# The greatest depth (canonical JSON's greatest integer): a received event may claim it, so
# new events stop growing there instead of becoming unsendable.
MAX_DEPTH = 2**53 - 1
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
    # Joined members, so each new event knows which servers it goes to.
    joined: set[str] = field(default_factory=set)

    def servers(self) -> set[str]:
        return {user_id.split(":", 1)[1] for user_id in self.joined}


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


class MissingEvents(Exception):
    """Events an event refers to are not stored here (fetch them, then try again)."""

    def __init__(self, event_ids: list[str]) -> None:
        super().__init__(f"missing events: {', '.join(event_ids[:5])}")
        self.event_ids = event_ids


class EventPersister:
    def __init__(self, db: Database, clock: Clock, notifier: Notifier, server_name: str,
                 signing_key: SigningKey, *, federates: bool = True) -> None:
        self._db = db
        self._federates = federates
        # Told which destinations have new queued PDUs once they are committed.
        # Told, after each commit, the events queued for each destination (in order).
        self.outbox_listener: Callable[[dict[str, list[str]]], None] | None = None
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
        # History backfilled from other servers comes before everything: negative positions.
        self._backfill_stream = IdAllocator(events_table.c.stream_ordering, descending=True)
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
        for allocator in (self._nids, self._stream, self._backfill_stream, self._groups,
                          self._key_nids):
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
                          create_content: Mapping[str, Any], *, room_id: str | None = None,
                          initial: Sequence[NewEvent] = ()) -> Event:
        """Create a room with its m.room.create event and the ``initial`` events after it;
        returns the create event once all are committed.

        All or nothing: every event is built and authorized before any is queued, so an
        initial event that fails (``send_events``' errors) leaves no room behind.

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
            built = await self._build_initial(event, initial)
            # From here on nothing awaits: the events take their stream positions and join
            # the queue together, in order.
            snapshot = RoomSnapshot(room_id, room_version, {}, {}, None, [], [], 0)
            item = self._prepare(snapshot, event, NewEvent("m.room.create", creator, content,
                                                           ""), now)
            item.new_room = (room_version.identifier, creator, now)
            items = [item, *(self._prepare(snapshot, e, new, e.origin_server_ts)
                             for new, e in zip(initial, built, strict=True))]
            self._remember_room(snapshot)
            futures = [self._enqueue(item) for item in items]
        finally:
            lock.release()
        for future in futures:
            await self._await_commit(future, room_id)
        return event

    async def _build_initial(self, create: Event, news: Sequence[NewEvent]) -> list[Event]:
        """Build and authorize a new room's first events after its create event, each on
        the state the ones before it make, storing and caching nothing."""
        scratch = RoomSnapshot(create.room_id, create.room_version,
                               {("m.room.create", ""): create.event_id}, {}, None, [],
                               [create.event_id], create.depth)
        pending = {create.event_id: create}
        out: list[Event] = []
        for new in news:
            event = await self._build_and_auth(scratch, new, pending)
            pending[event.event_id] = event
            if event.state_tuple is not None:
                scratch.state[event.state_tuple] = event.event_id
            scratch.extremities = [event.event_id]
            scratch.depth = max(scratch.depth, event.depth)
            out.append(event)
        return out

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

    async def _build_and_auth(self, snapshot: RoomSnapshot, new: NewEvent,
                              pending: Mapping[str, Event] | None = None) -> Event:
        """Build, sign and authorize ``new`` on the snapshot; ``pending``: events built but
        not stored yet that it may refer to."""
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
                depth=min(snapshot.depth + 1, MAX_DEPTH), origin_server_ts=self._clock.time_ms(),
                redacts=new.redacts, server_name=self._server_name,
                signing_key=self._signing_key)
        except ValueError as e:
            raise MatrixError(f"Invalid event: {e}", status=400, errcode="M_BAD_JSON") from None
        if len(self._encoded(event)) > MAX_PDU_BYTES:
            raise TooLarge("Event is too large")
        await self._check_auth(snapshot, event, auth_ids, pending or {})
        return event

    async def _check_auth(self, snapshot: RoomSnapshot, event: Event, auth_ids: list[str],
                          pending: Mapping[str, Event]) -> None:
        create_id = snapshot.state.get(("m.room.create", ""))
        wanted = [*auth_ids, create_id] if create_id else list(auth_ids)
        loaded = {e: pending[e] for e in wanted if e in pending}
        loaded.update(await self.get_events([e for e in wanted if e not in pending]))
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

    def _prepare(self, snapshot: RoomSnapshot, event: Event, new: NewEvent | None, now: int,
                 *, extremities: list[str] | None = None, relay_except: str | None = None,
                 apply_state: bool = True) -> PersistItem:
        """Turn an authorized event into a write, and move the snapshot past it.

        ``extremities`` are the room's forward extremities after the event (default: just the
        event, as for every event built here). An event sent from here goes to every other
        server in the room before or after it (and to a member event's target's server); an
        event received from ``relay_except`` (a join, leave or knock it asked us to sign in)
        goes to the other servers too. ``apply_state`` false: a state event that lost to
        the current value (``_supersedes``) takes its place in the timeline only.
        """
        servers_before = snapshot.servers() if self._federates else set()
        nid = self._nids.next()
        item = PersistItem(
            event_id=event.event_id, room_id=snapshot.room_id,
            pdu_json=self._encoded(event).decode("utf-8"), nid=nid,
            stream_ordering=self._stream.next(), depth=event.depth, type=event.type,
            state_key=event.state_key, sender=event.sender,
            origin_server_ts=event.origin_server_ts, received_ts=now,
            prev_event_ids=event.prev_event_ids, auth_event_ids=event.auth_event_ids,
            state_group_before=snapshot.state_group, state_group_after=snapshot.state_group,
            device_id=new.device_id if new is not None and new.txn_id is not None else None,
            txn_id=new.txn_id if new is not None else None,
            redacts=event.redacts, extremities_after=[event.event_id], pdu=dict(event.pdu),
            room_version=snapshot.room_version.identifier, built_here=new is not None)
        if event.state_tuple is not None and apply_state:
            key = event.state_tuple
            item.replaces_state = snapshot.state.get(key)
            key_nid = self._state_key_nid(key, item.new_state_keys)
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
            if event.type == "m.room.member" and event.state_key is not None:
                if event.membership == "join":
                    snapshot.joined.add(event.state_key)
                else:
                    snapshot.joined.discard(event.state_key)
        snapshot.extremities = extremities if extremities is not None else [event.event_id]
        item.extremities_after = list(snapshot.extremities)
        snapshot.depth = max(snapshot.depth, event.depth)
        if self._federates:
            servers = servers_before | snapshot.servers()
            item.destinations = sorted(self._destinations(event, servers, relay_except))
        self._cache_event(event)
        self._db.state.remember_event_nid(nid, event.event_id)
        return item

    def _destinations(self, event: Event, servers: set[str], relay_except: str | None
                      ) -> set[str]:
        origin = event.sender.split(":", 1)[1]
        if origin != self._server_name and relay_except is None:
            return set()  # another server's event: its server sends it
        if event.type == "m.room.member" and event.state_key and ":" in event.state_key:
            servers = servers | {event.state_key.split(":", 1)[1]}
        return servers - {self._server_name, origin, relay_except or ""}

    def _state_key_nid(self, key: StateKey, new_keys: list[tuple[int, str, str]]) -> int:
        nid = self._db.state.cached_key_nid(key)
        if nid is None:
            nid = self._key_nids.next()
            self._db.state.remember_key(nid, key)
            self._unstored_keys.add(nid)
        if nid in self._unstored_keys:
            new_keys.append((nid, key[0], key[1]))
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
            started = self._clock.monotonic()
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
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("Committed %d events in %d rooms in %.1f ms", len(items),
                             len({i.room_id for i in items}),
                             (self._clock.monotonic() - started) * 1000)
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
            for _ in queued:
                self._queue.task_done()
            self._unstored_keys.difference_update(n for i in items for n, _, _ in i.new_state_keys)
            destinations: dict[str, list[str]] = {}
            for item in items:
                for destination in item.destinations:
                    destinations.setdefault(destination, []).append(item.event_id)
            if destinations and self.outbox_listener is not None:
                self.outbox_listener(destinations)
            # Backfilled history (negative positions) is nothing new for syncs.
            items = [i for i in items if i.stream_ordering is not None and i.stream_ordering > 0]
            if not items:
                continue
            self._notifier.on_new_events(
                max(i.stream_ordering for i in items if i.stream_ordering is not None),
                {i.room_id for i in items},
                # Every user whose membership changed (a remote join brings a whole room's).
                {key for i in items for type_, key, _, _ in i.current_state_delta
                 if type_ == "m.room.member"},
                [(i.room_id, i.stream_ordering, i.event_id) for i in items
                 if i.stream_ordering is not None],
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

    # -- events from other servers ----------------------------------------------------------

    async def build(self, room_id: str, new: NewEvent) -> Event:
        """Build, sign and authorize an event against the current state without storing it
        (an invite that the invitee's server must sign first); store it with ``receive``."""
        async with self._lock(room_id):
            snapshot = await self._snapshot(room_id)
            if snapshot is None:
                raise NotFound("Unknown room")
            return await self._build_and_auth(snapshot, new)

    async def room_head(self, room_id: str) -> RoomSnapshot | None:
        """A copy of the room's current state and head (for templates and answers)."""
        async with self._lock(room_id):
            snapshot = await self._snapshot(room_id)
            if snapshot is None:
                return None
            return RoomSnapshot(snapshot.room_id, snapshot.room_version, dict(snapshot.state),
                                dict(snapshot.state_nids), snapshot.state_group,
                                list(snapshot.chain), list(snapshot.extremities),
                                snapshot.depth, set(snapshot.joined))

    async def state_content(self, room_id: str, key: StateKey) -> Mapping[str, Any] | None:
        """The content of one entry of the room's current state (None if unset or the room
        is unknown)."""
        snapshot = self._rooms.get(room_id)
        if snapshot is None:
            async with self._lock(room_id):
                snapshot = await self._snapshot(room_id)
        event_id = snapshot.state.get(key) if snapshot is not None else None
        if event_id is None:
            return None
        event = (await self.get_events([event_id])).get(event_id)
        return event.content if event is not None else None

    async def server_allowed(self, room_id: str, server_name: str) -> bool:
        """Whether the room's server ACL lets ``server_name`` take part."""
        return server_allowed(server_name,
                              await self.state_content(room_id, ("m.room.server_acl", "")))

    async def joined_servers(self, room_id: str) -> set[str]:
        """The servers with a user joined to the room (empty for an unknown room)."""
        snapshot = self._rooms.get(room_id)
        if snapshot is None:
            async with self._lock(room_id):
                snapshot = await self._snapshot(room_id)
        return snapshot.servers() if snapshot is not None else set()

    async def check_against_current(self, event: Event) -> None:
        """Would ``event`` pass the rules against the room's current state (a template a
        remote server asked for)? Raises ``AuthError`` if not."""
        async with self._lock(event.room_id):
            snapshot = await self._snapshot(event.room_id)
            if snapshot is None:
                raise NotFound("Unknown room")
            create_id = snapshot.state.get(("m.room.create", ""))
            create = (await self.get_events([create_id])).get(create_id) if create_id else None
            check_auth_rules(event, await self._state_events(snapshot.state, event),
                             create_event=create)

    async def auth_chain(self, event_ids: list[str]) -> list[Event]:
        """The events' auth chain (their auth events, theirs, and so on; one load per level;
        in a v12 room the create event too), oldest first."""
        seen: dict[str, Event] = {}
        start = await self.get_events(list(set(event_ids)))
        frontier = {a for e in start.values() for a in e.auth_event_ids}
        frontier |= {create_event_id_for_room(e.room_id) for e in start.values()
                     if e.room_version.room_id_is_create_event_hash
                     and e.type != "m.room.create"}
        while frontier:
            loaded = await self.get_events(list(frontier))
            seen.update(loaded)
            frontier = {a for e in loaded.values() for a in e.auth_event_ids if a not in seen}
        return sorted(seen.values(), key=lambda e: e.depth)

    async def is_stored(self, event_ids: list[str]) -> set[str]:
        """Which of the events are stored or queued here (accepted, outlier or soft-failed)."""
        known = {e for e in event_ids if e in self._events or e in self._uncommitted}
        rest = [e for e in event_ids if e not in known]
        if rest:
            known |= set(await self._db.events.get_events(rest))
        return known

    async def receive(self, event: Event, *, relay_except: str | None = None) -> str:
        """``receive_queued``, answering once the event is committed."""
        outcome, future = await self.receive_queued(event, relay_except=relay_except)
        if future is not None:
            await self.committed(future, event.room_id)
        return outcome

    async def committed(self, future: asyncio.Future[None], room_id: str) -> None:
        """Wait for a queued event's commit (``MatrixError`` if it failed)."""
        await self._await_commit(future, room_id)

    async def receive_queued(self, event: Event, *, relay_except: str | None = None,
                             known_absent: bool = False
                             ) -> tuple[str, asyncio.Future[None] | None]:
        """Store an event another server sent (or one built here that another server signed);
        returns what became of it and, when it is queued, the future of its commit (so a
        transaction of many events waits for one commit, not one each).

        Its auth events must be stored already (fetch them first, see ``store_outliers``).
        The event passes the authorization rules against its auth events and against the
        state before it; if it then fails against the room's current state it is soft-failed:
        stored, but neither in the timeline nor in the state.

        ``known_absent``: the caller has just found the event not stored (one query for a
        whole transaction); only what this process queued or cached since is checked.

        Returns:
            ``"accepted"``, ``"soft_failed"`` or ``"duplicate"``, and the commit's future.

        Raises:
            NotFound: the room is unknown here.
            MissingEvents: some of its auth events are not stored.
            AuthError: it fails the authorization rules (nothing is stored).
        """
        async with self._lock(event.room_id):
            snapshot = await self._snapshot(event.room_id)
            if snapshot is None or not snapshot.state:
                raise NotFound("Unknown room")
            if event.event_id in self._events or event.event_id in self._uncommitted or (
                    not known_absent and await self.is_stored([event.event_id])):
                return "duplicate", self._uncommitted.get(event.event_id)
            create = await self._auth_against_auth_events(event)
            state_before = await self._state_before(snapshot, event)
            auth_state = await self._state_events(state_before, event)
            check_auth_rules(event, auth_state, create_event=create)
            soft_failed = False
            if state_before is not snapshot.state:
                try:
                    check_auth_rules(event, await self._state_events(snapshot.state, event),
                                     create_event=create)
                except AuthError as e:
                    logger.info("Soft-failing %s: %s", event.event_id, e)
                    soft_failed = True
            now = self._clock.time_ms()
            if soft_failed:
                item = self._outlier_item(event, now)
            else:
                prevs = set(event.prev_event_ids)
                extremities = [e for e in snapshot.extremities if e not in prevs]
                item = self._prepare(snapshot, event, None, now,
                                     extremities=[*extremities, event.event_id],
                                     relay_except=relay_except,
                                     apply_state=await self._supersedes(snapshot, event,
                                                                        state_before))
                if event.redacts is not None and create is not None:
                    item.redacts, item.redaction_requires = await self._redaction_scope(
                        event, auth_state, create)
            future = self._enqueue(item)
        return ("soft_failed" if soft_failed else "accepted"), future

    async def _supersedes(self, snapshot: RoomSnapshot, event: Event,
                          state_before: Mapping[StateKey, str]) -> bool:
        """Whether a received state event replaces the current value of its key: yes if it
        was built on it (or the key is unset), and when the two are concurrent (branches
        of a fork), the later by ``(origin_server_ts, event_id)``, so every server reaches
        the same answer whatever order the branches arrive in. This is the order state
        resolution v2 gives events under the same power levels; a full state resolution
        is on the roadmap."""
        key = event.state_tuple
        if key is None or state_before is snapshot.state:
            return True
        current_id = snapshot.state.get(key)
        if current_id is None or state_before.get(key) == current_id:
            return True
        current = (await self.get_events([current_id])).get(current_id)
        if current is None:
            return True
        won = (event.origin_server_ts, event.event_id) > (current.origin_server_ts,
                                                          current.event_id)
        if not won:
            logger.info("%s is concurrent with the current %s and earlier: not applied",
                        event.event_id, current_id)
        return won

    def reserve_backfill(self, count: int) -> list[int]:
        """Stream positions for ``count`` backfilled events, lowest first: give them to the
        events oldest first, so the older an event the earlier its place."""
        return sorted(self._backfill_stream.next() for _ in range(count))

    async def backfill_queued(self, event: Event, position: int, state_group: int | None
                              ) -> asyncio.Future[None] | None:
        """Store an event of the room's history from before anything here (backfilled from
        another server) at ``position`` (from ``reserve_backfill``), answering with its
        commit's future (None when it is in the timeline already).

        It is checked against its own auth events only (the state before it is not known
        here) and changes no current state; it reads as of ``state_group`` (the state before
        the earliest event here) for history visibility. An event stored as an outlier (the
        room's state fetched on joining) takes its place in the timeline.

        Raises:
            MissingEvents: some of its auth events are not stored.
            AuthError: it fails the authorization rules against them.
        """
        async with self._lock(event.room_id):
            if event.event_id in self._uncommitted:
                return None
            stored = (await self._db.events.get_events([event.event_id])).get(event.event_id)
            if stored is not None and (not stored.outlier or stored.rejected_reason):
                return None
            create = await self._auth_against_auth_events(event)
            nid = (await self._db.events.nids_for_events([event.event_id]))[event.event_id] \
                if stored is not None else self._nids.next()
            self._db.state.remember_event_nid(nid, event.event_id)
            item = PersistItem(
                event_id=event.event_id, room_id=event.room_id,
                pdu_json=encode_canonical(dict(event.pdu)).decode("utf-8"), nid=nid,
                stream_ordering=position, depth=event.depth, type=event.type,
                state_key=event.state_key, sender=event.sender,
                origin_server_ts=event.origin_server_ts, received_ts=self._clock.time_ms(),
                prev_event_ids=event.prev_event_ids, auth_event_ids=event.auth_event_ids,
                state_group_before=state_group, state_group_after=state_group,
                pdu=dict(event.pdu), room_version=event.room_version.identifier,
                moves_head=False, was_outlier=stored is not None)
            if event.redacts is not None and create is not None:
                auth = await self.get_events(event.auth_event_ids)
                item.redacts, item.redaction_requires = await self._redaction_scope(
                    event, {e.state_tuple: e for e in auth.values() if e.state_tuple}, create)
            self._cache_event(event)
            return self._enqueue(item)

    async def _redaction_scope(self, event: Event, auth_state: Mapping[StateKey, Event],
                               create: Event) -> tuple[str | None, str | None]:
        """What a received redaction redacts, and what applying it still requires
        (``PersistItem.redaction_requires``). Spec (rooms v3+, "Handling redactions"): it
        applies to an event of its room if its sender has the redact power level or is on
        the same server as the event's sender; otherwise it stays in the timeline but
        redacts nothing (``(None, None)``)."""
        levels = PowerLevels.from_state(auth_state, create)
        may_redact_any = levels.user_level(event.sender) >= levels.redact_level
        redacts = event.redacts
        target = (await self.get_events([redacts])).get(redacts) if redacts else None
        if target is None:
            return redacts, "*" if may_redact_any else event.sender.split(":", 1)[1]
        same_server = target.sender.split(":", 1)[1] == event.sender.split(":", 1)[1]
        if target.room_id == event.room_id and (may_redact_any or same_server):
            return redacts, None
        logger.info("Redaction %s may not redact %s: kept, not applied", event.event_id,
                    redacts)
        return None, None

    async def _auth_against_auth_events(self, event: Event) -> Event | None:
        """Rule 3 and the rules against the event's own auth events; returns the create
        event."""
        wanted = list(event.auth_event_ids)
        create_id = create_event_id_for_room(event.room_id) \
            if event.room_version.room_id_is_create_event_hash else None
        if create_id is not None:
            wanted.append(create_id)
        loaded = await self.get_events(wanted)
        missing = [e for e in wanted if e not in loaded]
        if missing:
            raise MissingEvents(missing)
        auth_map = check_auth_events(event, [loaded[e] for e in event.auth_event_ids])
        create = loaded[create_id] if create_id is not None else auth_map.get(("m.room.create",
                                                                                ""))
        check_auth_rules(event, auth_map, create_event=create)
        return create

    async def _state_events(self, state: Mapping[StateKey, str], event: Event
                            ) -> dict[StateKey, Event]:
        """The state entries the rules read for ``event``, loaded."""
        keys = auth_types_for_event(event.room_version, event.type, event.state_key,
                                    event.sender, event.content)
        keys.add(("m.room.create", ""))
        ids = {k: state[k] for k in keys if k in state}
        loaded = await self.get_events(list(ids.values()))
        return {k: loaded[e] for k, e in ids.items() if e in loaded}

    async def _state_before(self, snapshot: RoomSnapshot, event: Event
                            ) -> dict[StateKey, str]:
        """The room state before a received event: the current state when it follows the
        room's extremities (the common case), else the state after its prev events, merged.

        Where branches disagree, the current value wins if it is one of theirs. This is not
        state resolution (that arrives with forks and backfill); it is exact for a room that
        does not fork and keeps to what this server has accepted when it does.
        """
        prevs = event.prev_event_ids
        if not prevs or set(prevs) <= set(snapshot.extremities):
            return snapshot.state
        stored = await self._db.events.get_events(prevs)
        groups = {s.state_group_after for s in stored.values()
                  if not s.outlier and s.rejected_reason is None}
        if len(stored) < len(prevs) or not groups or None in groups:
            return snapshot.state  # a prev event is unknown: keep to the current state
        maps = [await self._db.state.state_at_group(g) for g in groups]
        merged: dict[StateKey, str] = {}
        for key in {k for m in maps for k in m}:
            values = {m[key] for m in maps if key in m}
            current = snapshot.state.get(key)
            merged[key] = current if current in values else min(values)
        return merged

    def _outlier_item(self, event: Event, now: int) -> PersistItem:
        nid = self._nids.next()
        self._db.state.remember_event_nid(nid, event.event_id)
        return PersistItem(
            event_id=event.event_id, room_id=event.room_id,
            pdu_json=encode_canonical(dict(event.pdu)).decode("utf-8"), nid=nid,
            stream_ordering=None, depth=event.depth, type=event.type,
            state_key=event.state_key, sender=event.sender,
            origin_server_ts=event.origin_server_ts, received_ts=now,
            prev_event_ids=event.prev_event_ids, auth_event_ids=event.auth_event_ids,
            state_group_before=None, state_group_after=None,  # an outlier redacts nothing
            pdu=dict(event.pdu), room_version=event.room_version.identifier, outlier=True,
            moves_head=False)

    async def store_outliers(self, events: list[Event]) -> None:
        """Store checked events (auth chains, a room's state on joining) with no place in the
        timeline; already stored ones are skipped. The room must exist here."""
        known = await self.is_stored([e.event_id for e in events])
        now = self._clock.time_ms()
        futures = []
        seen: set[str] = set()
        for event in sorted(events, key=lambda e: e.depth):
            if event.event_id in known or event.event_id in seen:
                continue
            seen.add(event.event_id)
            futures.append(self._enqueue(self._outlier_item(event, now)))
        for future in futures:
            await self._await_commit(future, events[0].room_id)

    async def join_remote_room(self, join: Event, state: list[Event], auth_chain: list[Event]
                               ) -> None:
        """Store the room a remote join brought: its state and auth chain as outliers, then
        our join event as the first event of its timeline here, on that state."""
        room_id = join.room_id
        version = join.room_version
        create = next((e for e in state if e.state_tuple == ("m.room.create", "")), None)
        if create is None:
            raise MatrixError("The room's state has no create event", status=502)
        keys = [e.state_tuple for e in state if e.state_tuple is not None]
        await self._db.state.key_nids(keys)  # keys other rooms interned
        futures = []
        async with self._lock(room_id):
            existing = await self._snapshot(room_id)
            now = self._clock.time_ms()
            known = await self.is_stored([e.event_id for e in [*state, *auth_chain]])
            outliers: dict[str, PersistItem] = {}
            for event in sorted([*auth_chain, *state], key=lambda e: e.depth):
                if event.event_id not in known and event.event_id not in outliers:
                    outliers[event.event_id] = self._outlier_item(event, now)
            nids = {e: i.nid for e, i in outliers.items()}
            stored_ids = [e.event_id for e in state if e.event_id not in nids]
            nids.update(await self._db.state.nids_for_events(stored_ids))
            new_keys: list[tuple[int, str, str]] = []
            state_map: dict[StateKey, str] = {}
            state_nids: dict[int, int] = {}
            joined: set[str] = set()
            delta = []
            for event in state:
                key = event.state_tuple
                if key is None:
                    continue
                state_map[key] = event.event_id
                state_nids[self._state_key_nid(key, new_keys)] = nids[event.event_id]
                delta.append((key[0], key[1], event.event_id, event.membership))
                if event.membership == "join" and event.state_key:
                    joined.add(event.state_key)
            group_id = self._groups.next()
            base = Layer(group_id, None, frozenset(state_nids.items()), frozenset())
            self._db.state.remember_layer(base, dict(state_nids))
            snapshot = RoomSnapshot(room_id, version, state_map, state_nids, group_id, [base],
                                    list(join.prev_event_ids), max(join.depth - 1, 0), joined)
            item = self._prepare(snapshot, join, None, now)
            item.new_state_keys[:0] = new_keys
            item.base_state_group = NewStateGroup(group_id, room_id, None,
                                                  pack_pairs(base.added), b"")
            item.state_group_before = group_id
            item.current_state_delta[:0] = delta
            item.destinations = []  # the resident server sends our join to the others
            if existing is None:
                item.new_room = (version.identifier, create.sender, now)
            self._remember_room(snapshot)
            futures = [self._enqueue(o) for o in outliers.values()]
            futures.append(self._enqueue(item))
        for future in futures:
            await self._await_commit(future, room_id)

    async def store_remote_membership(self, event: Event, stripped_state: list[Any] | None
                                      ) -> None:
        """Store a member event of a room this server is not in (an invite of one of our
        users, or the leave that rejects it): it shows in that user's sync, with the stripped
        state that came with an invite."""
        room_id = event.room_id
        async with self._lock(room_id):
            snapshot = await self._snapshot(room_id)
            now = self._clock.time_ms()
            item = self._outlier_item(event, now)
            item.outlier = False
            item.stream_ordering = self._stream.next()
            assert event.state_key is not None
            item.current_state_delta.append(("m.room.member", event.state_key,
                                             event.event_id, event.membership))
            if stripped_state is not None:  # (servers send whole events since Matrix 1.16)
                item.invite_state_json = json.dumps(
                    [stripped(s) for s in stripped_state if isinstance(s, Mapping)])
            if snapshot is None:
                item.new_room = (event.room_version.identifier, event.sender, now)
                self._remember_room(RoomSnapshot(room_id, event.room_version, {}, {}, None,
                                                 [], [], 0))
            future = self._enqueue(item)
        await self._await_commit(future, room_id)

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
        members = await self._db.state.current_state(room_id, types=["m.room.member"])
        snapshot = RoomSnapshot(room_id, version, state, dict(state_nids), group_id, chain,
                                extremities, depth,
                                {m.state_key for m in members if m.membership == "join"})
        self._remember_room(snapshot)
        return snapshot

