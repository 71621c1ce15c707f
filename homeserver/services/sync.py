"""/sync (https://spec.matrix.org/v1.19/client-server-api/#get_matrixclientv3sync) and the SSE
stream's turns: when to answer. The response itself is built in ``sync_response``.

What came after a request's ``since`` is first looked at in memory (``_news``): when none of
it is for this request (other rooms' events, other users' typing, what its filter leaves out)
nothing is built and the request waits on the notifier for its user and rooms, to be answered
the moment something for it is committed. Events are answered at once. Typing, receipts and
presence alone are gathered for half a second on a device that just had a response, whether
they came before the request or while it waited; and while the server is behind (waiters run
late after their wake-up) a device's responses are held to 75 ms apart, so a busy room reaches
each connection in batches.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cachetools import LRUCache

from core.clock import Clock
from homeserver.services.e2e_keys import E2EKeyService
from homeserver.services.filtering import SyncFilter
from homeserver.services.ignored_users import IgnoredUsers
from homeserver.services.member_cache import MembershipCache
from homeserver.services.notifier import Notifier
from homeserver.services.presence import PresenceService
from homeserver.services.push import UnreadCounts
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
from homeserver.services.visibility import VisibilityService
from storage.stores.account_data import AccountDataStore
from storage.stores.events import EventStore
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore
from storage.stores.sync import SyncStore

__all__ = ["SyncService", "SyncToken", "empty_response", "is_empty"]

# What may be new for a sync (``SyncService._news``).
NOTHING, EPHEMERAL, EVENTS = 0, 1, 2


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
                 presence: PresenceService, clock: Clock, to_device: ToDeviceService,
                 keys: E2EKeyService, ignored: IgnoredUsers, unread: UnreadCounts
                 ) -> None:
        self._notifier = notifier
        self._members = members
        self._typing = typing
        self._receipts = receipts
        self._presence = presence
        self._to_device = to_device
        self._keys = keys
        self._sources = SyncSources(
            sync_store, events, state, account_data, rooms, notifier, serializer, visibility,
            members, typing, receipts, presence, clock, to_device, keys,
            unread, SentMembers(), LRUCache(200_000), ignored)
        # The running average of how late woken waiters run (seconds).
        self._lag = 0.0
        # (user, device) -> when its last non-empty incremental response was built.
        self._last_sent: LRUCache[tuple[str, str | None], float] = LRUCache(self.DEVICES)
        # The stream positions of the last current_token(), and that token.
        self._current: tuple[tuple[int, ...], SyncToken] = ((), SyncToken(0))

    def current_token(self) -> SyncToken:
        positions = (self._notifier.position, self._notifier.account_data_position,
                     self._receipts.position, self._presence.position,
                     self._typing.position, self._to_device.position, self._keys.position)
        # Asked several times per response, mostly with nothing moved: one token per change.
        if positions != self._current[0]:
            self._current = (positions, SyncToken(*positions))
        return self._current[1]

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
        response = await self._sync(user_id, device_id, since=since, timeout_ms=timeout_ms,
                                    full_state=full_state, sync_filter=sync_filter,
                                    complete=complete, until=until)
        if device_id is not None:
            # Every response carries the device's key counts (empty ones too).
            counts, unused_fallback = await self._keys.key_counts(user_id, device_id)
            response["device_one_time_keys_count"] = counts
            response["device_unused_fallback_key_types"] = unused_fallback
        return response

    async def _sync(self, user_id: str, device_id: str | None, *, since: str | None,
                    timeout_ms: int, full_state: bool, sync_filter: SyncFilter,
                    complete: bool, until: asyncio.Future[None] | None) -> dict[str, Any]:
        since_token = SyncToken.parse(since) if since else None
        deadline = time.monotonic() + timeout_ms / 1000
        device = (user_id, device_id)
        now = self.current_token()
        response: dict[str, Any] | None = None
        if since_token is None or full_state:
            response, rooms, presence_rooms = await self._build(
                user_id, device_id, since_token, now, full_state, sync_filter, complete)
            if since_token is None:
                return response
            since_token = since_token.at_most(now)
            checked = now
        else:
            since_token = checked = since_token.at_most(now)
            rooms, presence_rooms = self._sources.followed(
                await self._members.memberships(user_id), sync_filter)
        # Nothing up to `checked` is new for this request (the client's token, or what the
        # last build covered and found empty): only what comes after it is looked at.
        acknowledged = response is not None
        while response is None or is_empty(response):
            if response is not None:
                reached = SyncToken.parse(response["next_batch"])
                if reached.events < checked.events:
                    # A complete response stopped short of `checked` with nothing for this
                    # user: go on from there at once.
                    since_token = checked = reached
                    response = None
                    continue
                if time.monotonic() >= deadline:
                    break
            now = self.current_token()
            news = NOTHING if now == checked else await self._news(
                user_id, checked, now, rooms, presence_rooms, sync_filter)
            if news == NOTHING:
                # Nothing for this request (what moved was other rooms', other users', or
                # what its filter leaves out): nothing to build; wait from here.
                checked = now
                if not acknowledged and device_id is not None:
                    # What the token acknowledges is done with (to-device messages).
                    await self._to_device.acknowledge(user_id, device_id,
                                                      since_token.to_device)
                    acknowledged = True
                    continue  # that took an await: look again before waiting
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    response = empty_response(checked)
                    break
                if self.current_token() != now:
                    continue  # something came while `_news` looked (it may await)
                # No await between the look above and the waiter's registration, so nothing
                # committed meanwhile slips by.
                woken = await self._notifier.wait(user_id, rooms, remaining, presence_rooms,
                                                  until)
                if woken is None:
                    response = empty_response(checked)
                    break  # timed out, or the client left
                self._lag += (time.monotonic() - woken - self._lag) * self.LAG_WEIGHT
                response = None
                continue
            if news == EPHEMERAL:
                # Typing, receipts or presence alone: a device that just had a response gets
                # them together when the interval is over (or with the next event).
                await self._gather_ephemeral(user_id, device, rooms, presence_rooms, checked,
                                             deadline, until)
            elif self.busy:
                # Behind: what came since this device's last response waits for the
                # interval, so a busy room reaches it in batches.
                await self._pace(device, deadline, until)
            now = self.current_token()
            response, rooms, presence_rooms = await self._build(
                user_id, device_id, since_token, now, full_state, sync_filter, complete)
            checked = now
            acknowledged = True
        if not is_empty(response):
            self._last_sent[device] = time.monotonic()
        return response

    def _event_news(self, user_id: str, since: SyncToken, now: SyncToken, rooms: list[str]
                    ) -> bool:
        """Whether events, account data or to-device messages for this user may have come
        in ``(since, now]``: their rooms' events, member events about them (joins, invites,
        leaves anywhere), their account data."""
        if now.events != since.events and (
                self._notifier.membership_changed_since(user_id, since.events)
                or any(self._notifier.room_changed_since(r, since.events) for r in rooms)):
            return True
        return now.to_device != since.to_device or (
            now.account_data != since.account_data
            and self._notifier.account_data_changed_since(user_id, since.account_data))

    async def _news(self, user_id: str, since: SyncToken, now: SyncToken, rooms: list[str],
                    presence_rooms: list[str], sync_filter: SyncFilter) -> int:
        """What may be new for a sync of this user and filter in ``(since, now]``: EVENTS
        (anything but the kinds below), EPHEMERAL (only typing, receipts or presence), or
        NOTHING. From memory; never NOTHING when a response would carry something (a wrong
        guess the other way only costs a build that turns out empty)."""
        if self._event_news(user_id, since, now, rooms):
            return EVENTS
        if now.device_lists != since.device_lists and await self._keys.may_have_news(
                user_id, since.device_lists, now.device_lists):
            return EVENTS
        ephemeral = sync_filter.ephemeral
        if now.typing != since.typing and ephemeral.allows_type("m.typing") and \
                self._typing.rooms_changed_since(rooms, since.typing):
            return EPHEMERAL
        if now.receipts != since.receipts and ephemeral.allows_type("m.receipt") and \
                self._receipts.rooms_changed_since(user_id, rooms, since.receipts):
            return EPHEMERAL
        if now.presence != since.presence and self._presence.enabled and \
                sync_filter.presence.allows_type("m.presence"):
            mine = await self._members.joined_rooms(user_id)
            for other in self._presence.changed_since(since.presence):
                if other == user_id or not mine.isdisjoint(
                        await self._members.joined_rooms(other)):
                    return EPHEMERAL
        return NOTHING

    async def _gather_ephemeral(self, user_id: str, device: tuple[str, str | None],
                                rooms: list[str], presence_rooms: list[str],
                                checked: SyncToken, deadline: float,
                                until: asyncio.Future[None] | None) -> None:
        """Typing, receipts or presence alone are new: a device that had a response less
        than EPHEMERAL_INTERVAL_S ago gets the next one when that interval is over, with
        whatever else of the kind came meanwhile (a room's readers' receipts, typing that
        starts and stops), unless an event for it comes first. A quiet device is answered
        at once."""
        last = self._last_sent.get(device)
        if last is None:
            return
        hold_until = min(last + self.EPHEMERAL_INTERVAL_S, deadline)
        while (left := hold_until - time.monotonic()) > 0 and not self._event_news(
                user_id, checked, self.current_token(), rooms):
            # Only what ends the hold early wakes it (events, not the typing, receipts and
            # presence it gathers).
            if await self._notifier.wait(user_id, rooms, left, (), until,
                                         events_only=True) is None:
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
