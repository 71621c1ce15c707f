"""/sync (https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3sync) and the SSE
stream's turns: when to answer. The response itself is built in ``sync_response``.

A request whose ``since`` is behind gets its response at once; one that is up to date waits on
the notifier for its user and rooms and is answered the moment something is committed for it.
Typing, receipts and presence alone are gathered for half a second on a device that just had
a response, and while the server is behind (waiters run late after their wake-up) a device's
responses are held to 75 ms apart, so a busy room reaches each connection in batches.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cachetools import LRUCache

from core.clock import Clock
from homeserver.services.filtering import SyncFilter
from homeserver.services.member_cache import MembershipCache
from homeserver.services.notifier import Notifier
from homeserver.services.presence import PresenceService
from homeserver.services.receipts import ReceiptService
from homeserver.services.serialize import EventSerializer
from homeserver.services.sync_response import (
    ResponseBuilder,
    SentMembers,
    SyncSources,
)
from homeserver.services.sync_token import SyncToken, empty_response, is_empty
from homeserver.services.to_device import ToDeviceService
from homeserver.services.typing import TypingService
from homeserver.services.unread import UnreadCounter
from homeserver.services.visibility import VisibilityService
from storage.stores.account_data import AccountDataStore
from storage.stores.events import EventStore
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore
from storage.stores.sync import SyncStore

__all__ = ["SyncService", "SyncToken", "empty_response", "is_empty"]


class SyncService:
    DEVICES = 10_000
    # While the server is behind (waiters run this long after they were woken, on average), a
    # device's next incremental response waits until MIN_INTERVAL_S after its previous one, so
    # a busy room reaches each connection in batches instead of one response per event per
    # connection. A server keeping up answers every waiter the moment something is committed.
    BUSY_LAG_S = 0.010
    # Weight of each wake-up's lag in the running average that says "behind" (a single slow
    # moment, a garbage collection, is not a busy server).
    LAG_WEIGHT = 0.2
    MIN_INTERVAL_S = 0.075
    # Typing, receipts and presence alone reach a busy device at most this often (a
    # message's readers' receipts come in a burst; each would wake every member).
    EPHEMERAL_INTERVAL_S = 0.5

    def __init__(self, sync_store: SyncStore, events: EventStore, state: StateStore,
                 account_data: AccountDataStore, rooms: RoomStore, notifier: Notifier,
                 serializer: EventSerializer, visibility: VisibilityService,
                 members: MembershipCache, typing: TypingService, receipts: ReceiptService,
                 presence: PresenceService, clock: Clock, to_device: ToDeviceService
                 ) -> None:
        self._notifier = notifier
        self._members = members
        self._typing = typing
        self._receipts = receipts
        self._presence = presence
        self._to_device = to_device
        self._sources = SyncSources(
            sync_store, events, state, account_data, rooms, notifier, serializer, visibility,
            members, typing, receipts, presence, clock, to_device,
            UnreadCounter(sync_store, events, notifier.recent), SentMembers(),
            LRUCache(200_000))
        # The running average of how late woken waiters run (seconds).
        self._lag = 0.0
        # (user, device) -> when its last non-empty incremental response was built.
        self._last_sent: LRUCache[tuple[str, str | None], float] = LRUCache(self.DEVICES)

    def current_token(self) -> SyncToken:
        return SyncToken(self._notifier.position, self._notifier.account_data_position,
                         self._receipts.position, self._presence.position,
                         self._typing.position, self._to_device.position)

    async def sync(self, user_id: str, device_id: str | None, *, since: str | None,
                   timeout_ms: int, full_state: bool, sync_filter: SyncFilter,
                   complete: bool = False, until: asyncio.Future[None] | None = None
                   ) -> dict[str, Any]:
        """One /sync response; waits up to ``timeout_ms`` when there is nothing new.

        Args:
            complete: never leave events out: when more are pending in a room than the
                timeline limit, answer with the oldest of them (``next_batch`` stops there)
                instead of the newest with ``limited`` (the SSE stream's contract).
            until: stop waiting when this is done (the client went away).
        """
        since_token = SyncToken.parse(since) if since else None
        deadline = time.monotonic() + timeout_ms / 1000
        device = (user_id, device_id)
        if since_token is not None and self.busy:
            # Behind: what came since this device's last response waits for the interval.
            await self._pace(device, deadline, until)
        now = self.current_token()
        if since_token is not None:
            since_token = since_token.at_most(now)
        if since_token == now and not full_state:
            # Nothing at all happened since the client's last response (a long poll's next
            # request, an SSE stream's next turn): straight to waiting, once what the token
            # acknowledges is done with.
            if device_id is not None:
                await self._to_device.acknowledge(user_id, device_id, now.to_device)
            response = empty_response(now)
            rooms, presence_rooms = self._sources.followed(
                await self._members.memberships(user_id), sync_filter)
        else:
            response, rooms, presence_rooms = await self._build(
                user_id, device_id, since_token, now, full_state, sync_filter, complete)
        while since_token is not None and is_empty(response):
            # Wait for something new; what wakes us may turn out to be nothing for this
            # request (its filter), so wait again until the timeout. Something committed while
            # the response was being built is looked at at once (no await between the check
            # and the waiter's registration, so nothing slips in between).
            reached = SyncToken.parse(response["next_batch"])
            if reached.events < now.events:
                # A complete response stopped short of `now` with nothing for this user: go
                # on from there at once.
                since_token = reached
            elif (remaining := deadline - time.monotonic()) <= 0:
                break
            elif self.current_token() == now:
                woken = await self._notifier.wait(user_id, rooms, remaining, presence_rooms,
                                                  until)
                if woken is None:
                    break
                self._lag += (time.monotonic() - woken - self._lag) * self.LAG_WEIGHT
                if self.busy:
                    await self._pace(device, deadline, until)
                elif not self._has_news(now):
                    await self._gather_ephemeral(user_id, device, rooms, presence_rooms, now,
                                                 deadline, until)
            now = self.current_token()
            response, rooms, presence_rooms = await self._build(
                user_id, device_id, since_token, now, full_state, sync_filter, complete)
        if since_token is not None and not is_empty(response):
            self._last_sent[device] = time.monotonic()
        return response

    def _has_news(self, since: SyncToken) -> bool:
        """Whether more than ephemeral data (typing, receipts, presence) came after ``since``:
        events, account data or to-device messages."""
        now = self.current_token()
        return (now.events, now.account_data, now.to_device) != \
            (since.events, since.account_data, since.to_device)

    async def _gather_ephemeral(self, user_id: str, device: tuple[str, str | None],
                                rooms: list[str], presence_rooms: list[str], now: SyncToken,
                                deadline: float, until: asyncio.Future[None] | None) -> None:
        """Woken by typing, receipts or presence only: a device that had a response less
        than EPHEMERAL_INTERVAL_S ago gets the next one when that interval is over, with
        whatever else of the kind came meanwhile (a room's readers' receipts, typing that
        starts and stops), unless an event comes first. A quiet device is answered at once."""
        last = self._last_sent.get(device)
        if last is None:
            return
        hold_until = min(last + self.EPHEMERAL_INTERVAL_S, deadline)
        while (left := hold_until - time.monotonic()) > 0 and not self._has_news(now):
            if await self._notifier.wait(user_id, rooms, left, presence_rooms, until) is None:
                return  # the interval is over, or the client left

    @property
    def busy(self) -> bool:
        """Whether the server is behind: woken waiters run late, on average."""
        return self._lag > self.BUSY_LAG_S

    async def _pace(self, device: tuple[str, str | None], deadline: float,
                    until: asyncio.Future[None] | None) -> None:
        """The server is behind: hold a device's next incremental response until
        MIN_INTERVAL_S after its last one (a device that was quiet is not held)."""
        last = self._last_sent.get(device)
        if last is None:
            return
        hold = min(last + self.MIN_INTERVAL_S, deadline) - time.monotonic()
        if hold > 0:
            if until is None:
                await asyncio.sleep(hold)
            else:
                await asyncio.wait([until], timeout=hold)

    async def _build(self, user_id: str, device_id: str | None, since: SyncToken | None,
                     now: SyncToken, full_state: bool, sync_filter: SyncFilter,
                     complete: bool) -> tuple[dict[str, Any], list[str], list[str]]:
        """The response, the rooms whose events it follows, and the rooms whose members'
        presence it follows (what a long poll waits on)."""
        builder = ResponseBuilder(self._sources, user_id, device_id, since, now, full_state,
                                  sync_filter, complete)
        return await builder.build()
