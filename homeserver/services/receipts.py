"""Read receipts and read markers
(https://spec.matrix.org/v1.19/client-server-api/#receipts,
https://spec.matrix.org/v1.19/client-server-api/#fully-read-markers).

Receipts are stored (each change a position in the receipt stream) and reach the room's members
as ephemeral ``m.receipt`` events in /sync; private ones (``m.read.private``) reach only their
owner. ``m.fully_read`` is the user's room account data. Receipts never move backwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cachetools import LRUCache

from homeserver.clock import Clock
from homeserver.errors import Forbidden, InvalidParam, NotFound
from homeserver.services.account_data import AccountDataService
from homeserver.services.changes import ChangeLog
from homeserver.services.notifier import Notifier
from storage.stores.events import EventStore
from storage.stores.receipts import Receipt, ReceiptStore
from storage.stores.state import StateStore

RECEIPT_TYPES = ("m.read", "m.read.private", "m.fully_read")
READ_TYPES = ("m.read", "m.read.private")


class ReceiptService:
    READ_POSITION_USERS = 10_000

    def __init__(self, store: ReceiptStore, events: EventStore, state: StateStore,
                 account_data: AccountDataService, notifier: Notifier, clock: Clock) -> None:
        self._store = store
        self._events = events
        self._state = state
        self._account_data = account_data
        self._notifier = notifier
        self._clock = clock
        # Since start-up: each room's latest public receipt, each user's latest private one.
        self._rooms = ChangeLog()
        self._private = ChangeLog()
        # User -> room -> stream ordering of the latest event they have read (unread counts).
        self._read: LRUCache[str, dict[str, int]] = LRUCache(self.READ_POSITION_USERS)
        self._writes = 0
        # Told (room, user, receipt type, event ID, thread ID, ts) of each new public receipt
        # of a user of this server, so other servers in the room get it.
        self.local_listener: Callable[[str, str, str, str, str, int], None] | None = None

    def start(self) -> None:
        self._rooms.reset(self._store.position)
        self._private.reset(self._store.position)

    @property
    def position(self) -> int:
        return self._store.position

    def rooms_changed_since(self, user_id: str, room_ids: Sequence[str], position: int
                            ) -> set[str]:
        """Which rooms may have receipts this user can see after ``position``."""
        if self._private.changed_since(user_id, position):
            return set(room_ids)
        return {r for r in room_ids if self._rooms.changed_since(r, position)}

    async def receipt(self, user_id: str, room_id: str, receipt_type: str, event_id: str,
                      thread_id: str | None) -> None:
        """POST /rooms/{roomId}/receipt/{receiptType}/{eventId}"""
        if receipt_type not in RECEIPT_TYPES:
            raise InvalidParam(f"Receipt type must be one of {', '.join(RECEIPT_TYPES)}")
        if thread_id is not None:
            if receipt_type == "m.fully_read":
                raise InvalidParam("m.fully_read receipts cannot be threaded")
            if thread_id != "main" and not thread_id.startswith("$"):
                raise InvalidParam("thread_id must be 'main' or an event ID")
        position = await self._check(user_id, room_id, event_id)
        if receipt_type == "m.fully_read":
            await self._account_data.set_managed(user_id, room_id, "m.fully_read",
                                                 {"event_id": event_id})
            return
        await self._put(user_id, room_id, receipt_type, event_id, position, thread_id or "",
                        local=True)

    async def remote_receipt(self, user_id: str, room_id: str, receipt_type: str,
                             event_id: str, thread_id: str) -> None:
        """A receipt another server sent for one of its users (checked as a local one)."""
        if receipt_type != "m.read":
            return  # only public read receipts travel
        position = await self._check(user_id, room_id, event_id)
        await self._put(user_id, room_id, receipt_type, event_id, position, thread_id,
                        local=False)

    async def read_markers(self, user_id: str, room_id: str, body: dict[str, Any]) -> None:
        """POST /rooms/{roomId}/read_markers"""
        markers = {t: body[t] for t in RECEIPT_TYPES if body.get(t) is not None}
        for type_, event_id in markers.items():
            if not isinstance(event_id, str):
                raise InvalidParam(f"'{type_}' must be an event ID")
        for type_, event_id in markers.items():
            await self.receipt(user_id, room_id, type_, event_id, None)

    async def _check(self, user_id: str, room_id: str, event_id: str) -> int:
        membership = await self._state.membership(room_id, user_id)
        if membership is None or membership[0] != "join":
            raise Forbidden("You are not in this room")
        event = await self._events.get_event(event_id)
        if event is None or event.room_id != room_id or event.stream_ordering is None:
            raise NotFound("Event not found in this room")
        return event.stream_ordering

    async def _put(self, user_id: str, room_id: str, receipt_type: str, event_id: str,
                   event_position: int, thread_id: str, *, local: bool) -> None:
        now = self._clock.time_ms()
        position = await self._store.put(room_id, receipt_type, user_id, thread_id, event_id,
                                         event_position, now)
        if position is None:
            return  # not newer than the receipt already there
        if local and receipt_type == "m.read" and self.local_listener is not None:
            self.local_listener(room_id, user_id, receipt_type, event_id, thread_id, now)
        self._writes += 1
        if receipt_type in READ_TYPES and thread_id in ("", "main"):
            read = self._read.get(user_id)
            if read is not None:
                read[room_id] = max(read.get(room_id, 0), event_position)
        if receipt_type == "m.read.private":
            self._private.mark(user_id, position)
            self._notifier.wake(user_ids=[user_id])
        else:
            self._rooms.mark(room_id, position)
            self._notifier.wake(room_ids=[room_id])

    async def read_positions(self, user_id: str, room_ids: Sequence[str]) -> dict[str, int]:
        """Room -> stream ordering of the latest event the user has read there."""
        read = self._read.get(user_id)
        if read is None:
            # All the user's rooms at once (one query); `_put` keeps it current. A load that
            # overlapped a receipt's write may have missed it: used, but not kept.
            writes = self._writes
            read = await self._store.read_up_to(user_id)
            if writes == self._writes:
                self._read[user_id] = read
        return {r: read[r] for r in room_ids if r in read}

    async def ephemeral(self, user_id: str, room_ids: Sequence[str], after: int, up_to: int
                        ) -> dict[str, dict[str, Any]]:
        """Room -> the ``m.receipt`` content of receipts in ``(after, up_to]`` the user may
        see (other users' private receipts are left out)."""
        out: dict[str, dict[str, Any]] = {}
        if not room_ids:
            return out
        receipts: list[Receipt] = await self._store.for_rooms(room_ids, after=after,
                                                             up_to=up_to)
        for r in receipts:
            if r.receipt_type == "m.read.private" and r.user_id != user_id:
                continue
            entry: dict[str, Any] = {"ts": r.ts}
            if r.thread_id:
                entry["thread_id"] = r.thread_id
            out.setdefault(r.room_id, {}).setdefault(r.event_id, {}).setdefault(
                r.receipt_type, {})[r.user_id] = entry
        return out
