"""Read receipts and read markers
(https://spec.matrix.org/v1.19/client-server-api/#receipts,
https://spec.matrix.org/v1.19/client-server-api/#fully-read-markers).

Receipts are stored (each change a position in the receipt stream) and reach the room's members
as ephemeral ``m.receipt`` events in /sync; private ones (``m.read.private``) reach only their
owner. ``m.fully_read`` is the user's room account data. Receipts never move backwards.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import astuple
from typing import Any

from cachetools import LRUCache

from core.clock import Clock
from core.errors import Forbidden, InvalidParam, NotFound
from homeserver.services.account_data import AccountDataService
from homeserver.services.changes import ChangeLog
from homeserver.services.member_cache import MembershipCache
from homeserver.services.notifier import Notifier
from homeserver.services.ports import ALONE, LocalEdus, Replication
from homeserver.services.typing import RoomWakes
from storage.stores.events import EventStore
from storage.stores.receipts import NewReceipt, Receipt, ReceiptStore

RECEIPT_TYPES = ("m.read", "m.read.private", "m.fully_read")
READ_TYPES = ("m.read", "m.read.private")


class _RecentReceipts:
    """The receipts stored since start-up (the newest ``SIZE``), so an incremental sync reads
    what changed in its rooms without a query. Only a key's latest receipt counts, as in the
    table, where a newer receipt overwrites the row."""

    SIZE = 20_000

    def __init__(self) -> None:
        self._latest: dict[tuple[str, str, str, str], Receipt] = {}
        self._log: deque[Receipt] = deque()
        # Every receipt stored after this position is here.
        self.floor = 0

    def reset(self, position: int) -> None:
        self._latest.clear()
        self._log.clear()
        self.floor = position

    def add(self, receipt: Receipt) -> None:
        key = (receipt.room_id, receipt.receipt_type, receipt.user_id, receipt.thread_id)
        self._latest[key] = receipt
        self._log.append(receipt)
        while len(self._log) > self.SIZE:
            old = self._log.popleft()
            self.floor = old.stream_id
            old_key = (old.room_id, old.receipt_type, old.user_id, old.thread_id)
            if self._latest.get(old_key) is old:
                del self._latest[old_key]

    def holds(self, new: NewReceipt) -> bool:
        """Whether the latest stored receipt of the same room, type, user and thread is known
        to be at or past ``new``'s event (it would change nothing: receipts never go back)."""
        latest = self._latest.get((new.room_id, new.receipt_type, new.user_id,
                                   new.thread_id))
        return latest is not None and latest.event_stream_ordering >= \
            new.event_stream_ordering

    def between(self, room_ids: set[str], after: int, up_to: int) -> list[Receipt]:
        """The rooms' receipts in ``(after, up_to]`` (``after`` at or above the floor)."""
        out = []
        for receipt in reversed(self._log):
            if receipt.stream_id <= after:
                break
            if receipt.stream_id <= up_to and receipt.room_id in room_ids and self._latest[(
                    receipt.room_id, receipt.receipt_type, receipt.user_id,
                    receipt.thread_id)] is receipt:
                out.append(receipt)
        out.reverse()
        return out


class ReceiptService:
    READ_POSITION_USERS = 10_000
    # Receipts that come less than this after the writer's last commit wait for the interval
    # to end and share one commit: a message's readers' receipts come in a burst, and each
    # commit costs as much as the receipts in it. A receipt after a quiet spell is written
    # at once. (They reach other devices at most every half second anyway, see
    # ``SyncService.EPHEMERAL_INTERVAL_S``.)
    COMMIT_INTERVAL_S = 0.1

    def __init__(self, store: ReceiptStore, events: EventStore, members: MembershipCache,
                 account_data: AccountDataService, notifier: Notifier, clock: Clock,
                 edus: LocalEdus | None = None, *, replication: Replication = ALONE) -> None:
        self._store = store
        self._replication = replication
        self._events = events
        self._members = members
        self._account_data = account_data
        self._notifier = notifier
        self._clock = clock
        # Since start-up: each room's latest public receipt, each user's latest private one.
        self._rooms = ChangeLog()
        self._private = ChangeLog()
        self._recent = _RecentReceipts()
        # User -> room -> stream ordering of the latest event they have read (unread counts).
        self._read: LRUCache[str, dict[str, int]] = LRUCache(self.READ_POSITION_USERS)
        self._writes = 0
        self._wakes = RoomWakes.for_notifier(notifier)
        # When the writer's last commit ended (monotonic).
        self._last_commit = 0.0
        # Receipts waiting for the writer (whoever comes while it writes joins its next
        # transaction), with whether a user of this server sent each.
        self._waiting: list[tuple[NewReceipt, bool, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        # Told each new public receipt of a user of this server (None: no federation).
        self._edus = edus

    def start(self) -> None:
        self._rooms.reset(self._store.position)
        self._private.reset(self._store.position)
        self._recent.reset(self._store.position)

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
        await self._write([(NewReceipt(room_id, receipt_type, user_id, thread_id or "",
                                       event_id, position, self._clock.time_ms()), True)])

    async def remote_receipts(self, receipts: Sequence[tuple[str, str, str, str]]) -> None:
        """Public read receipts another server sent for its users, as (user, room, event ID,
        thread ID): each checked as a local one (the user is in the room, the event is
        there); the valid ones are stored in one transaction."""
        now = self._clock.time_ms()
        found = await self._events.get_events({event_id for _, _, event_id, _ in receipts})
        valid = []
        for user_id, room_id, event_id, thread_id in receipts:
            event = found.get(event_id)
            membership = (await self._members.memberships(user_id)).get(room_id)
            if event is None or event.room_id != room_id or event.stream_ordering is None \
                    or membership is None or membership[0] != "join":
                continue
            valid.append((NewReceipt(room_id, "m.read", user_id, thread_id, event_id,
                                     event.stream_ordering, now), False))
        await self._write(valid)

    async def read_markers(self, user_id: str, room_id: str, body: dict[str, Any]) -> None:
        """POST /rooms/{roomId}/read_markers"""
        markers = {t: body[t] for t in RECEIPT_TYPES if body.get(t) is not None}
        for type_, event_id in markers.items():
            if not isinstance(event_id, str):
                raise InvalidParam(f"'{type_}' must be an event ID")
        for type_, event_id in markers.items():
            await self.receipt(user_id, room_id, type_, event_id, None)

    async def _check(self, user_id: str, room_id: str, event_id: str) -> int:
        membership = (await self._members.memberships(user_id)).get(room_id)
        if membership is None or membership[0] != "join":
            raise Forbidden("You are not in this room")
        event = await self._events.get_event(event_id)
        if event is None or event.room_id != room_id or event.stream_ordering is None:
            raise NotFound("Event not found in this room")
        return event.stream_ordering

    async def _write(self, receipts: Sequence[tuple[NewReceipt, bool]]) -> None:
        """Store receipts (with whether each is a local user's), sharing a transaction with
        whatever else is waiting (a burst of readers costs one commit, not one each); returns
        once they are committed."""
        receipts = [(r, local) for r, local in receipts if not self._recent.holds(r)]
        if not receipts:
            return
        loop = asyncio.get_running_loop()
        futures = []
        for receipt, local in receipts:
            future: asyncio.Future[None] = loop.create_future()
            self._waiting.append((receipt, local, future))
            futures.append(future)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        await asyncio.gather(*futures)

    async def _write_waiting(self) -> None:
        while self._waiting:
            wait = self._last_commit + self.COMMIT_INTERVAL_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # gather what comes meanwhile
            batch, self._waiting = self._waiting, []
            try:
                stored = await self._store.put_many([r for r, _, _ in batch])
            except Exception as e:
                for _, _, future in batch:
                    future.set_exception(e)
                continue
            finally:
                self._last_commit = time.monotonic()
            self._committed(stored, [local for _, local, _ in batch])
            for _, _, future in batch:
                future.set_result(None)

    def _committed(self, stored: list[Receipt | None], local: list[bool]) -> None:
        """Bookkeeping once receipts are stored: listeners, caches, waking the syncs."""
        new = [r for r in stored if r is not None]  # (others: not newer than what was there)
        if new and self._replication.active:
            self._replication.publish("receipts", [list(astuple(r)) for r in new])
        for receipt, is_local in zip(stored, local, strict=True):
            if receipt is not None and is_local and receipt.receipt_type == "m.read" and \
                    self._edus is not None:
                self._edus.receipt_sent(receipt.room_id, receipt.user_id, receipt.receipt_type,
                                        receipt.event_id, receipt.thread_id, receipt.ts)
        rooms, users = self._remember(new)
        if rooms:
            self._wakes.wake(rooms)
        if users:
            self._notifier.wake(user_ids=users)  # private receipts: their owner, at once

    def apply_replicated(self, receipts: list[list[Any]]) -> None:
        """A worker: the receipts the writer stored (its wakes come on their own)."""
        self._remember([Receipt(*r) for r in receipts])

    def _remember(self, stored: list[Receipt]) -> tuple[set[str], set[str]]:
        """Caches and change logs: the rooms and the users (private receipts) to wake."""
        rooms: set[str] = set()
        users: set[str] = set()
        for receipt in stored:
            self._writes += 1
            self._recent.add(receipt)
            if receipt.receipt_type in READ_TYPES and receipt.thread_id in ("", "main"):
                read = self._read.get(receipt.user_id)
                if read is not None:
                    read[receipt.room_id] = max(read.get(receipt.room_id, 0),
                                                receipt.event_stream_ordering)
            if receipt.receipt_type == "m.read.private":
                self._private.mark(receipt.user_id, receipt.stream_id)
                users.add(receipt.user_id)
            else:
                self._rooms.mark(receipt.room_id, receipt.stream_id)
                rooms.add(receipt.room_id)
        return rooms, users

    async def read_positions(self, user_id: str, room_ids: Sequence[str]) -> dict[str, int]:
        """Room -> stream ordering of the latest event the user has read there."""
        read = self._read.get(user_id)
        if read is None:
            # All the user's rooms at once (one query); `_committed` keeps it current. A load
            # that overlapped a receipt's write may have missed it: used, but not kept.
            writes = self._writes
            read = await self._store.read_up_to(user_id)
            if writes == self._writes:
                self._read[user_id] = read
        return {r: read[r] for r in room_ids if r in read}

    async def read_by(self, user_id: str, room_ids: Sequence[str], after: int, up_to: int
                      ) -> set[str]:
        """The rooms where the user's own read receipt (public or private) moved in
        ``(after, up_to]``: their unread counts changed."""
        rooms = sorted(self.rooms_changed_since(user_id, room_ids, after))
        if not rooms:
            return set()
        receipts: list[Receipt]
        if after >= self._recent.floor:
            receipts = self._recent.between(set(rooms), after, up_to)
        else:
            receipts = await self._store.for_rooms(rooms, after=after, up_to=up_to)
        return {r.room_id for r in receipts if r.user_id == user_id
                and r.receipt_type in ("m.read", "m.read.private")}

    async def ephemeral(self, user_id: str, room_ids: Sequence[str], after: int, up_to: int
                        ) -> dict[str, dict[str, Any]]:
        """Room -> the ``m.receipt`` content of receipts in ``(after, up_to]`` the user may
        see (other users' private receipts are left out)."""
        out: dict[str, dict[str, Any]] = {}
        if not room_ids:
            return out
        receipts: list[Receipt]
        if after >= self._recent.floor:
            receipts = self._recent.between(set(room_ids), after, up_to)
        else:
            receipts = await self._store.for_rooms(room_ids, after=after, up_to=up_to)
        for r in receipts:
            if r.receipt_type == "m.read.private" and r.user_id != user_id:
                continue
            entry: dict[str, Any] = {"ts": r.ts}
            if r.thread_id:
                entry["thread_id"] = r.thread_id
            out.setdefault(r.room_id, {}).setdefault(r.event_id, {}).setdefault(
                r.receipt_type, {})[r.user_id] = entry
        return out
