"""Simplified sliding sync (MSC4186) as Synapse serves it at
``POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync``: when to answer, and
the response. A request is answered at once when it has something new for the connection
(or has no ``pos``, or no ``timeout``); otherwise it waits on the notifier for the user and
their rooms, and is built again when woken — never polling. Each response goes up to the
stream positions its ``pos`` names, so what comes between two responses is in the next
one, once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cachetools import LRUCache

from core.clock import Clock
from homeserver.services.e2e_keys import E2EKeyService
from homeserver.services.ignored_users import IgnoredUsers
from homeserver.services.notifier import Notifier
from homeserver.services.push import PushEvaluator, UnreadCounts
from homeserver.services.push_rules import PushRuleService
from homeserver.services.receipts import ReceiptService
from homeserver.services.serialize import EventSerializer
from homeserver.services.sliding_sync.cache import SlidingSyncCache
from homeserver.services.sliding_sync.connection import (
    ConnectionState,
    ConnectionStore,
    Pos,
)
from homeserver.services.sliding_sync.extensions import (
    ExtensionsBuilder,
    ExtensionSources,
)
from homeserver.services.sliding_sync.extensions import is_empty as extensions_empty
from homeserver.services.sliding_sync.request import RoomConfig, SlidingSyncRequest
from homeserver.services.sliding_sync.room_data import RoomDataBuilder, RoomDataSources
from homeserver.services.sliding_sync.room_list import (
    ListBuilder,
    MembershipIndex,
    dm_rooms,
)
from homeserver.services.sync_token import SyncToken
from homeserver.services.to_device import ToDeviceService
from homeserver.services.typing import TypingService
from homeserver.services.visibility import VisibilityService
from storage.stores.account_data import AccountDataStore
from storage.stores.events import EventStore
from storage.stores.rooms import RoomStore
from storage.stores.sliding_sync import SlidingSyncStore
from storage.stores.state import StateStore
from storage.stores.sync import SyncStore

MAX_TIMEOUT_MS = 5 * 60 * 1000
# Room subscriptions a connection keeps (the oldest go first).
MAX_SUBSCRIPTIONS = 500


@dataclass(frozen=True, slots=True)
class SlidingSyncDeps:
    """What the service reads (given by the composition root)."""

    store: SlidingSyncStore
    sync_store: SyncStore
    events: EventStore
    state: StateStore
    account_data: AccountDataStore
    rooms: RoomStore
    notifier: Notifier
    visibility: VisibilityService
    serializer: EventSerializer
    unread: UnreadCounts
    push: PushEvaluator
    push_rules: PushRuleService
    receipts: ReceiptService
    typing: TypingService
    to_device: ToDeviceService
    keys: E2EKeyService
    ignored: IgnoredUsers
    clock: Clock
    # What is kept of rooms in memory (fed by the roomserver's commit listener).
    room_cache: SlidingSyncCache
    # The current stream positions (the sync service's).
    current_token: Callable[[], SyncToken]


def is_empty(response: dict[str, Any]) -> bool:
    """Whether a response has nothing new (lists are always there; not news by
    themselves)."""
    return not response["rooms"] and extensions_empty(response["extensions"])


class SlidingSyncService:
    def __init__(self, deps: SlidingSyncDeps) -> None:
        self.d = deps
        self.connections = ConnectionStore()
        self._memberships = MembershipIndex(deps.store, deps.notifier)
        # User -> (account data position read at, the rooms their m.direct names).
        self._dms: LRUCache[str, tuple[int, frozenset[str]]] = LRUCache(10_000)
        self._rooms = RoomDataSources(deps.sync_store, deps.store, deps.events, deps.state,
                                      deps.visibility, deps.serializer, deps.unread,
                                      deps.push, deps.receipts, deps.clock,
                                      deps.room_cache)
        self._extensions = ExtensionSources(deps.to_device, deps.keys, deps.store, deps.push_rules,
                                            deps.receipts, deps.typing, deps.room_cache)

    async def sync(self, user_id: str, device_id: str | None, request: SlidingSyncRequest,
                   *, pos: str | None, timeout_ms: int,
                   until: asyncio.Future[None] | None = None) -> dict[str, Any]:
        """One response; waits up to ``timeout_ms`` for news when the connection has a
        ``pos`` and nothing is new. An unknown ``pos`` is ``400 M_UNKNOWN_POS``."""
        since = Pos.parse(pos) if pos else None
        conn_id = request.conn_id or ""
        device = device_id or ""
        previous = self.connections.get(user_id, device, conn_id, since)
        deadline = time.monotonic() + min(max(timeout_ms, 0), MAX_TIMEOUT_MS) / 1000
        built = self.d.current_token()
        stream = since.stream.at_most(built) if since is not None else None
        response, state, rooms = await self._build(user_id, device_id, request, stream, built,
                                                   previous)
        # Nothing new up to `checked` for this connection: only what comes after it is
        # looked at (in memory), and a response is built again only when something may be
        # for it — a busy server does not rebuild every waiting connection.
        checked = built
        while since is not None and is_empty(response):
            now = self.d.current_token()
            if now != checked and await self._news(user_id, checked, now, rooms):
                built = now
                response, state, rooms = await self._build(
                    user_id, device_id, request, since.stream.at_most(now), now, previous)
                checked = now
                continue
            checked = now
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self.d.current_token() != now:
                continue  # something came while looking (it may await)
            if await self.d.notifier.wait(user_id, rooms, remaining, until=until) is None:
                break  # timed out, or the client left
        if since is not None and state == previous:
            number = since.connection  # nothing new recorded: the same connection position
        elif request.lists or state.subscriptions:
            number = self.connections.put(user_id, device, conn_id, since, state)
        else:
            number = since.connection if since is not None else 0
        response["pos"] = Pos(number, built).encode()
        return response

    async def _news(self, user_id: str, since: SyncToken, now: SyncToken, rooms: list[str]
                    ) -> bool:
        """Whether something for the user may have come in ``(since, now]``: events in their
        rooms or about them, their account data, to-device messages, typing or receipts in
        their rooms, device list changes of users they share a room with. From memory;
        never False when a response would carry something."""
        d = self.d
        notifier = d.notifier
        if now.events != since.events and (
                notifier.membership_changed_since(user_id, since.events)
                or any(notifier.room_changed_since(r, since.events) for r in rooms)):
            return True
        if now.account_data != since.account_data and \
                notifier.account_data_changed_since(user_id, since.account_data):
            return True
        if now.to_device != since.to_device and d.to_device.changed_since(user_id,
                                                                          since.to_device):
            return True
        if now.typing != since.typing and d.typing.rooms_changed_since(rooms, since.typing):
            return True
        if now.receipts != since.receipts and d.receipts.rooms_changed_since(
                user_id, rooms, since.receipts):
            return True
        return now.device_lists != since.device_lists and await d.keys.may_have_news(
            user_id, since.device_lists, now.device_lists)

    async def _dm_rooms(self, user_id: str) -> frozenset[str]:
        """The rooms the user's ``m.direct`` names (read again when their account data
        changes)."""
        cached = self._dms.get(user_id)
        notifier = self.d.notifier
        if cached is not None and not notifier.account_data_changed_since(user_id, cached[0]):
            return cached[1]
        position = notifier.account_data_position
        rooms = dm_rooms(await self.d.account_data.get(user_id, "", "m.direct"))
        self._dms[user_id] = (position, rooms)
        return rooms

    async def _build(self, user_id: str, device_id: str | None, request: SlidingSyncRequest,
                     since: SyncToken | None, now: SyncToken, previous: ConnectionState
                     ) -> tuple[dict[str, Any], ConnectionState, list[str]]:
        """The response (less ``pos``), the connection's new state, and the rooms whose
        news would wake a wait."""
        d = self.d
        new = previous.copy()
        memberships = await self._memberships.of(user_id)
        forgotten = await d.rooms.forgotten_rooms(user_id) if any(
            m[0] in ("leave", "ban") for m in memberships.values()) else set()
        ignored = await d.ignored.of(user_id)
        members = self._memberships.visible(user_id, memberships,
                                            since.events if since is not None else None,
                                            forgotten, ignored)
        dms = await self._dm_rooms(user_id)
        lists = await ListBuilder(d.store, d.room_cache, user_id, now.events).build(
            request.lists, members, dms)
        configs: dict[str, RoomConfig] = {}
        for key, room_ids in lists.in_range.items():
            for room_id in room_ids:
                config = request.lists[key].room
                configs[room_id] = configs[room_id].combine(config) \
                    if room_id in configs else config
        subscriptions = {**previous.subscriptions, **request.room_subscriptions}
        for room_id in request.unsubscribe_rooms:
            subscriptions.pop(room_id, None)
        while len(subscriptions) > MAX_SUBSCRIPTIONS:
            subscriptions.pop(next(iter(subscriptions)))
        new.subscriptions = subscriptions
        for room_id, config in subscriptions.items():
            if room_id in members:
                configs[room_id] = configs[room_id].combine(config) \
                    if room_id in configs else config
        loaded = await d.events.get_events(members[r].event_id for r in configs)
        for room_id in configs:
            members[room_id] = replace(members[room_id],
                                       event=loaded.get(members[room_id].event_id))
        configs = {r: c for r, c in configs.items() if members[r].event is not None}
        changed = {r for r in configs if since is not None and (
            d.notifier.room_changed_since(r, since.events))}
        # The user read on in a room: its counts changed (sent even with nothing else new).
        read_moved = await d.receipts.read_by(user_id, list(configs), since.receipts,
                                              now.receipts) \
            if since is not None and since.receipts != now.receipts else set()
        changed |= read_moved
        bump_stamps = dict(lists.bump_stamps)
        missing = [r for r in configs if r not in bump_stamps]
        if missing:
            bump_stamps.update(await ListBuilder(
                d.store, d.room_cache, user_id, now.events).stamps(
                    {r: members[r] for r in missing}))
        builder = RoomDataBuilder(self._rooms, user_id, device_id,
                                  since.events if since is not None else None, now.events,
                                  previous, new, ignored, bump_stamps, read_moved)
        rooms = await builder.build(configs, members, dms, changed)
        initial = {r for r, room in rooms.items()
                   if room.get("initial") or room.get("unstable_expanded_timeline")}
        extensions = await ExtensionsBuilder(
            self._extensions, user_id, device_id, since, now, previous, new).build(
                request.extensions, lists.in_range, set(configs), initial)
        if request.lists or subscriptions:
            if since is not None:
                unsent = [r for r in lists.all_rooms - configs.keys()
                          if d.notifier.room_changed_since(r, since.events)]
                new.rooms.record_unsent(unsent, since.events)
            new.rooms.record_sent(configs.keys())
        response: dict[str, Any] = {}
        if lists.lists:
            response["lists"] = lists.lists
        response["rooms"] = rooms
        response["extensions"] = extensions
        wake = [r for r, m in members.items() if m.membership == "join"]
        return response, new, wake
