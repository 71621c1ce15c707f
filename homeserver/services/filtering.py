"""Event filters (https://spec.matrix.org/v1.19/client-server-api/#filtering): parsing and
matching. Pure code, shared by /messages, /context and (issue #4) /sync."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from homeserver.errors import BadJson

MAX_LIMIT = 1000


def _str_list(body: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadJson(f"filter '{key}' must be a list of strings")
    return tuple(value)


def _type_matches(patterns: tuple[str, ...], event_type: str) -> bool:
    for pattern in patterns:
        if pattern.endswith("*"):
            if event_type.startswith(pattern[:-1]):
                return True
        elif pattern == event_type:
            return True
    return False


@dataclass(frozen=True, slots=True)
class RoomEventFilter:
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    contains_url: bool | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    limit: int | None = None

    @classmethod
    def from_json(cls, body: Any) -> RoomEventFilter:
        if body is None:
            return cls()
        if not isinstance(body, dict):
            raise BadJson("filter must be an object")
        limit = body.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                                  or limit < 0):
            raise BadJson("filter 'limit' must be a non-negative integer")
        flags = {}
        for key in ("contains_url", "lazy_load_members", "include_redundant_members"):
            value = body.get(key)
            if value is not None and not isinstance(value, bool):
                raise BadJson(f"filter '{key}' must be a boolean")
            flags[key] = value
        return cls(
            types=_str_list(body, "types"),
            not_types=_str_list(body, "not_types") or (),
            senders=_str_list(body, "senders"),
            not_senders=_str_list(body, "not_senders") or (),
            rooms=_str_list(body, "rooms"),
            not_rooms=_str_list(body, "not_rooms") or (),
            contains_url=flags["contains_url"],
            lazy_load_members=bool(flags["lazy_load_members"]),
            include_redundant_members=bool(flags["include_redundant_members"]),
            limit=min(limit, MAX_LIMIT) if limit is not None else None,
        )

    @classmethod
    def from_query(cls, value: str | None) -> RoomEventFilter:
        if value is None:
            return cls()
        try:
            body = json.loads(value)
        except ValueError:
            raise BadJson("filter is not valid JSON") from None
        return cls.from_json(body)

    def allows_type(self, event_type: str) -> bool:
        """Whether events of this type can pass at all (whatever their sender or room)."""
        if _type_matches(self.not_types, event_type):
            return False
        return self.types is None or _type_matches(self.types, event_type)

    def matches(self, event: Mapping[str, Any]) -> bool:
        event_type = str(event.get("type", ""))
        sender = str(event.get("sender", ""))
        room_id = str(event.get("room_id", ""))
        if _type_matches(self.not_types, event_type):
            return False
        if self.types is not None and not _type_matches(self.types, event_type):
            return False
        if sender in self.not_senders:
            return False
        if self.senders is not None and sender not in self.senders:
            return False
        if room_id in self.not_rooms:
            return False
        if self.rooms is not None and room_id not in self.rooms:
            return False
        if self.contains_url is not None:
            content = event.get("content")
            has_url = isinstance(content, dict) and isinstance(content.get("url"), str)
            if has_url != self.contains_url:
                return False
        return True


def _sub(body: Mapping[str, Any], key: str) -> Any:
    value = body.get(key)
    if value is not None and not isinstance(value, dict):
        raise BadJson(f"filter '{key}' must be an object")
    return value


@dataclass(frozen=True, slots=True)
class SyncFilter:
    """A whole /sync filter (https://spec.matrix.org/v1.19/client-server-api/#filtering)."""

    timeline: RoomEventFilter = RoomEventFilter()
    state: RoomEventFilter = RoomEventFilter()
    ephemeral: RoomEventFilter = RoomEventFilter()
    room_account_data: RoomEventFilter = RoomEventFilter()
    account_data: RoomEventFilter = RoomEventFilter()
    presence: RoomEventFilter = RoomEventFilter()
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    include_leave: bool = False
    event_fields: tuple[str, ...] | None = None
    event_format: str = "client"

    @classmethod
    def from_json(cls, body: Any) -> SyncFilter:
        if not isinstance(body, dict):
            raise BadJson("filter must be an object")
        room = _sub(body, "room") or {}
        include_leave = room.get("include_leave", False)
        if not isinstance(include_leave, bool):
            raise BadJson("filter 'include_leave' must be a boolean")
        event_format = body.get("event_format", "client")
        if event_format not in ("client", "federation"):
            raise BadJson("filter 'event_format' must be client or federation")
        return cls(
            timeline=RoomEventFilter.from_json(_sub(room, "timeline")),
            state=RoomEventFilter.from_json(_sub(room, "state")),
            ephemeral=RoomEventFilter.from_json(_sub(room, "ephemeral")),
            room_account_data=RoomEventFilter.from_json(_sub(room, "account_data")),
            account_data=RoomEventFilter.from_json(_sub(body, "account_data")),
            presence=RoomEventFilter.from_json(_sub(body, "presence")),
            rooms=_str_list(room, "rooms"),
            not_rooms=_str_list(room, "not_rooms") or (),
            include_leave=include_leave,
            event_fields=_str_list(body, "event_fields"),
            event_format=event_format,
        )

    def room_allowed(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms


def apply_event_fields(event: dict[str, Any], fields: tuple[str, ...] | None
                       ) -> dict[str, Any]:
    """Keep only the listed (dot-separated, ``\\.``-escaped) fields of a client event."""
    if fields is None:
        return event
    out: dict[str, Any] = {}
    for field in fields:
        parts = [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", field)]
        source: Any = event
        for part in parts[:-1]:
            source = source.get(part) if isinstance(source, dict) else None
        if not isinstance(source, dict) or parts[-1] not in source:
            continue
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = source[parts[-1]]
    return out
