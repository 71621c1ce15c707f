"""The extensions of simplified sliding sync, as Synapse serves them: ``to_device``
(MSC3885, acknowledged with ``since``), ``e2ee`` (MSC3884), ``account_data`` (MSC3959),
``receipts`` (MSC3960) and ``typing`` (MSC3961). The last three carry only rooms their
``lists``/``rooms`` pick among the response's lists and subscriptions; receipts and room
account data keep, per connection, which rooms are up to date (as rooms do)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.services.e2e_keys import E2EKeyService
from homeserver.services.push_rules import PushRuleService
from homeserver.services.receipts import ReceiptService
from homeserver.services.sliding_sync.cache import SlidingSyncCache
from homeserver.services.sliding_sync.connection import (
    LIVE,
    PREVIOUSLY,
    ConnectionState,
    RoomStatuses,
)
from homeserver.services.sliding_sync.request import WILDCARD, ExtensionConfig
from homeserver.services.sync_token import SyncToken
from homeserver.services.to_device import ToDeviceService
from homeserver.services.typing import TypingService
from storage.stores.sliding_sync import SlidingSyncStore

MAX_TO_DEVICE = 100


@dataclass(frozen=True, slots=True)
class ExtensionSources:
    to_device: ToDeviceService
    keys: E2EKeyService
    store: SlidingSyncStore
    push_rules: PushRuleService
    receipts: ReceiptService
    typing: TypingService
    cache: SlidingSyncCache


def relevant_rooms(config: ExtensionConfig, in_range: dict[str, list[str]],
                   rooms: set[str]) -> set[str]:
    """The rooms an extension covers: those of its ``lists`` (``*``: every list) and of its
    ``rooms`` (``*``: every room of the response's lists and subscriptions)."""
    out: set[str] = set()
    for room_id in config.rooms or []:
        if room_id == WILDCARD:
            out |= rooms
            break
        if room_id in rooms:
            out.add(room_id)
    for key in config.lists or []:
        if key == WILDCARD:
            for ids in in_range.values():
                out.update(ids)
            break
        out.update(in_range.get(key, []))
    return out


class ExtensionsBuilder:
    def __init__(self, sources: ExtensionSources, user_id: str, device_id: str | None,
                 since: SyncToken | None, now: SyncToken, previous: ConnectionState,
                 new: ConnectionState) -> None:
        self.s = sources
        self.user_id = user_id
        self.device_id = device_id
        self.since = since
        self.now = now
        self.previous = previous
        self.new = new

    async def build(self, configs: dict[str, ExtensionConfig], in_range: dict[str, list[str]],
                    rooms: set[str], initial_rooms: set[str]) -> dict[str, Any]:
        """The ``extensions`` section; ``rooms``: every room of the lists' ranges and the
        subscriptions; ``initial_rooms``: those sent whole in this response."""
        out: dict[str, Any] = {}
        for name, config in configs.items():
            if not config.enabled:
                continue
            scope = relevant_rooms(config, in_range, rooms)
            if name == "to_device":
                out[name] = await self._to_device(config)
            elif name == "e2ee":
                out[name] = await self._e2ee()
            elif name == "account_data":
                out[name] = await self._account_data(scope, initial_rooms)
            elif name == "receipts":
                out[name] = await self._receipts(scope, initial_rooms)
            elif name == "typing":
                out[name] = self._typing(scope)
        return out

    async def _to_device(self, config: ExtensionConfig) -> dict[str, Any]:
        if self.device_id is None:
            return {"next_batch": str(self.now.to_device), "events": []}
        since = int(config.since) if config.since is not None else None
        if since is not None and since > self.now.to_device:
            return {"next_batch": config.since, "events": []}  # from the future
        events, position = await self.s.to_device.for_sync(
            self.user_id, self.device_id, since=since, up_to=self.now.to_device)
        limit = max(1, min(config.limit, MAX_TO_DEVICE))
        if len(events) > limit:
            # The rest come next time: the position stops at the last one sent.
            rows = await self.s.to_device.page(self.user_id, self.device_id,
                                               after=since or 0, limit=limit)
            events, position = rows
        return {"next_batch": str(position), "events": events}

    async def _e2ee(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device_one_time_keys_count": {},
                               "device_unused_fallback_key_types": []}
        if self.device_id is not None:
            counts, fallback = await self.s.keys.key_counts(self.user_id, self.device_id)
            out["device_one_time_keys_count"] = counts
            out["device_unused_fallback_key_types"] = fallback
        if self.since is not None:
            changed, left = await self.s.keys.device_list_changes(self.user_id, self.since,
                                                                  self.now)
            out["device_lists"] = {"changed": changed, "left": left}
        return out

    def _split(self, statuses: RoomStatuses, scope: set[str], initial_rooms: set[str],
               since: int | None) -> tuple[set[str], dict[str, int], set[str]]:
        """Rooms in scope as (up to date since ``since``, behind since a position, new)."""
        live: set[str] = set()
        behind: dict[str, int] = {}
        new: set[str] = set()
        for room_id in scope:
            if since is None or room_id in initial_rooms:
                new.add(room_id)
                continue
            status, position = statuses.status(room_id)
            if status == LIVE:
                live.add(room_id)
            elif status == PREVIOUSLY:
                behind[room_id] = position
            else:
                new.add(room_id)
        return live, behind, new

    def _mark(self, statuses: RoomStatuses, scope: set[str], changed: set[str],
              since: int | None) -> None:
        """Rooms sent are up to date; rooms out of scope with news fall behind."""
        statuses.record_sent(scope)
        if since is not None:
            statuses.record_unsent(changed - scope, since)

    async def _account_data(self, scope: set[str], initial_rooms: set[str]
                            ) -> dict[str, Any]:
        since = self.since.account_data if self.since is not None else None
        entries = await self.s.cache.account_data(self.user_id, since or 0,
                                                  self.now.account_data)
        global_events = [{"type": t, "content": c} for r, t, c in entries if not r]
        if since is None:
            # A new connection gets the push rules with the account data, as from Synapse.
            global_events.append({"type": "m.push_rules", "content": {
                "global": await self.s.push_rules.ruleset(self.user_id)}})
        live, behind, new = self._split(self.previous.account_data, scope, initial_rooms,
                                        since)
        by_room: dict[str, list[dict[str, Any]]] = {}
        for room_id, type_, content in entries:
            if room_id in live or (since is None and room_id in new):
                by_room.setdefault(room_id, []).append({"type": type_, "content": content})
        if since is not None and (new or behind):
            # Rooms new to the connection, or behind it, get all of theirs.
            for room_id, type_, content in await self.s.cache.account_data(
                    self.user_id, 0, self.now.account_data):
                if room_id in new or room_id in behind:
                    by_room.setdefault(room_id, []).append({"type": type_,
                                                            "content": content})
        self._mark(self.new.account_data, scope, {r for r, _, _ in entries if r}, since)
        return {"global": global_events, "rooms": by_room}

    async def _receipts(self, scope: set[str], initial_rooms: set[str]) -> dict[str, Any]:
        since = self.since.receipts if self.since is not None else None
        live, behind, new = self._split(self.previous.receipts, scope, initial_rooms, since)
        content: dict[str, dict[str, Any]] = {}
        if live and since is not None:
            content.update(await self.s.receipts.ephemeral(self.user_id, sorted(live), since,
                                                           self.now.receipts))
        for room_id, position in behind.items():
            content.update(await self.s.receipts.ephemeral(self.user_id, [room_id], position,
                                                           self.now.receipts))
        if new:
            content.update(await self.s.receipts.ephemeral(self.user_id, sorted(new), 0,
                                                           self.now.receipts))
        changed: set[str] = set()
        if since is not None:
            others = [r for r, (s, _) in self.previous.receipts.statuses.items()
                      if s == LIVE and r not in scope]
            changed = self.s.receipts.rooms_changed_since(self.user_id, others, since)
        self._mark(self.new.receipts, scope, changed, since)
        return {"rooms": {r: {"type": "m.receipt", "content": c} for r, c in content.items()}}

    def _typing(self, scope: set[str]) -> dict[str, Any]:
        typing = self.s.typing
        since = self.since.typing if self.since is not None else None
        rooms = [r for r in scope if (typing.typing_users(r) if since is None
                                      else typing.room_changed_since(r, since))]
        return {"rooms": {r: {"type": "m.typing",
                              "content": {"user_ids": typing.typing_users(r)}}
                          for r in sorted(rooms)}}


def is_empty(extensions: dict[str, Any]) -> bool:
    """Whether the extensions carry nothing new (key counts alone are not news)."""
    for name, value in extensions.items():
        if name == "to_device" and value["events"]:
            return False
        if name == "e2ee" and (value.get("device_lists", {}).get("changed")
                               or value.get("device_lists", {}).get("left")):
            return False
        if name == "account_data" and (value["global"] or value["rooms"]):
            return False
        if name in ("receipts", "typing") and value["rooms"]:
            return False
    return True
