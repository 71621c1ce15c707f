"""Events built here: a new room's first events, and events users send, each built, signed
and authorized on the room's current state under its lock, then queued for the commit.

A repeated ``(sender, device_id, txn_id)`` returns the event first created for it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from signedjson.types import SigningKey

from core.errors import Forbidden, MatrixError, NotFound, TooLarge
from core.events.builder import build_event
from core.events.model import Event
from core.events.room_versions import RoomVersion
from core.rooms.auth import AuthError, auth_types_for_event, check_auth_rules
from roomserver.api import MAX_DEPTH, MAX_PDU_BYTES, MAX_PREV_EVENTS, NewEvent, StateKey
from roomserver.placement import Placer
from roomserver.snapshot import RoomSnapshot, TxnKey
from roomserver.writer import Writer

_CREATORS_REMEMBERED = 5_000


class LocalEvents:
    def __init__(self, writer: Writer, placer: Placer, server_name: str,
                 signing_key: SigningKey) -> None:
        self._writer = writer
        self._store = writer.store
        self._clock = writer.clock
        self._placer = placer
        self._server_name = server_name
        self._signing_key = signing_key
        self._last_create_ts: OrderedDict[str, int] = OrderedDict()

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
        if len(self._last_create_ts) > _CREATORS_REMEMBERED:
            self._last_create_ts.popitem(last=False)
        content = dict(create_content)
        if not room_version.implicit_room_creator:
            content["creator"] = creator
        content["room_version"] = room_version.identifier
        await self._store.db.state.key_nids([("m.room.create", "")])  # interned elsewhere?
        for attempt in range(100):
            event = build_event(
                room_version, type="m.room.create", sender=creator, content=content,
                room_id=None if room_version.room_id_is_create_event_hash else room_id,
                state_key="", prev_events=[], auth_events=[], depth=1,
                origin_server_ts=now + attempt, server_name=self._server_name,
                signing_key=self._signing_key)
            check_auth_rules(event, {}, create_event=event)
            lock = self._writer.lock(event.room_id)
            await lock.acquire()
            if self._writer.cached_snapshot(event.room_id) is None and \
                    await self._store.db.events.room_info(event.room_id) is None:
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
            item = self._placer.local(snapshot, event,
                                      NewEvent("m.room.create", creator, content, ""), now)
            item.new_room = (room_version.identifier, creator, now)
            items = [item, *(self._placer.local(snapshot, e, new, e.origin_server_ts)
                             for new, e in zip(initial, built, strict=True))]
            self._writer.remember_room(snapshot)
            futures = [self._writer.enqueue(item) for item in items]
        finally:
            lock.release()
        for future in futures:
            await self._writer.committed(future, room_id)
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
                scratch.state = {**scratch.state, event.state_tuple: event.event_id}
            scratch.extremities = [event.event_id]
            scratch.depth = max(scratch.depth, event.depth)
            out.append(event)
        return out

    async def send_events(self, room_id: str, news: list[NewEvent]) -> list[Event]:
        """Build, authorize and persist events in order; returns them once all are committed.

        Raises:
            NotFound: the room is unknown here.
            Forbidden: an event fails the room's authorization rules (it and the events after
                it are not created; those before it are).
        """
        out: list[Event] = []
        futures: list[asyncio.Future[None]] = []
        try:
            async with self._writer.lock(room_id):
                snapshot = await self._writer.snapshot(room_id)
                if snapshot is None:
                    raise NotFound("Unknown room")
                for new in news:
                    txn: TxnKey | None = (room_id, new.sender, new.device_id, new.txn_id) \
                        if new.txn_id is not None and new.device_id is not None else None
                    if txn is not None:
                        existing_id = await self._writer.txns.lookup(txn)
                        if existing_id is not None:
                            existing = (await self._store.get_events([existing_id])
                                        ).get(existing_id)
                            if existing is not None:
                                out.append(existing)
                                queued = self._writer.queued(existing_id)
                                if queued is not None:  # answer after the commit
                                    futures.append(queued)
                                continue
                    event = await self._build_and_auth(snapshot, new)
                    if not self._writer.is_current(snapshot):
                        # A write failed meanwhile: the snapshot holds lost events.
                        raise MatrixError("Could not store the event", status=500)
                    futures.append(self._writer.enqueue(self._placer.local(
                        snapshot, event, new, event.origin_server_ts)))
                    if txn is not None:
                        self._writer.txns.add(txn, event.event_id)
                    out.append(event)
        finally:
            # Events queued before a failure are still written: wait for them either way.
            for future in futures:
                await self._writer.committed(future, room_id)
        return out

    async def build(self, room_id: str, new: NewEvent) -> Event:
        """Build, sign and authorize an event against the current state without storing it
        (an invite that the invitee's server must sign first; it is stored on receipt)."""
        async with self._writer.lock(room_id):
            snapshot = await self._writer.snapshot(room_id)
            if snapshot is None:
                raise NotFound("Unknown room")
            return await self._build_and_auth(snapshot, new)

    async def _build_and_auth(self, snapshot: RoomSnapshot, new: NewEvent,
                              pending: Mapping[str, Event] | None = None) -> Event:
        """Build, sign and authorize ``new`` on the snapshot; ``pending``: events built but
        not stored yet that it may refer to."""
        if new.state_key is not None:  # a key other rooms interned is cached for placing
            await self._store.db.state.key_nids([(new.type, new.state_key)])
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
        if len(self._store.encoded(event)) > MAX_PDU_BYTES:
            raise TooLarge("Event is too large")
        await self._check_auth(snapshot, event, auth_ids, pending or {})
        return event

    async def _check_auth(self, snapshot: RoomSnapshot, event: Event, auth_ids: list[str],
                          pending: Mapping[str, Event]) -> None:
        create_id = snapshot.state.get(("m.room.create", ""))
        wanted = [*auth_ids, create_id] if create_id else list(auth_ids)
        loaded = {e: pending[e] for e in wanted if e in pending}
        loaded.update(await self._store.get_events([e for e in wanted if e not in pending]))
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
