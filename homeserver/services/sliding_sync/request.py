"""The body of a simplified sliding sync request (MSC4186) as Synapse reads it
(``synapse/types/rest/client: SlidingSyncBody``): strict types, ``timeline_limit`` and
``required_state`` required on lists and subscriptions, unknown keys and extensions
ignored. Anything of the wrong shape is ``400 M_BAD_JSON`` (never a 500)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import BadJson

MAX_TIMELINE_LIMIT = 1000
MAX_LISTS = 100
MAX_LIST_KEY = 64
WILDCARD = "*"
LAZY = "$LAZY"
ME = "$ME"

# type -> state keys ("*" for any).
RequiredState = frozenset[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class RoomConfig:
    """What a response carries of one room (a list's or a subscription's, or their union)."""

    timeline_limit: int
    required_state: RequiredState

    def combine(self, other: RoomConfig) -> RoomConfig:
        return RoomConfig(max(self.timeline_limit, other.timeline_limit),
                          self.required_state | other.required_state)


@dataclass(frozen=True, slots=True)
class Filters:
    is_dm: bool | None = None
    spaces: list[str] | None = None
    is_encrypted: bool | None = None
    is_invite: bool | None = None
    room_types: list[str | None] | None = None
    not_room_types: list[str | None] | None = None
    room_name_like: str | None = None
    tags: list[str] | None = None
    not_tags: list[str] | None = None


@dataclass(frozen=True, slots=True)
class ListConfig:
    room: RoomConfig
    ranges: list[tuple[int, int]] | None
    filters: Filters | None
    slow_get_all_rooms: bool = False


@dataclass(frozen=True, slots=True)
class ExtensionConfig:
    """One extension's settings (the fields an extension does not have keep defaults)."""

    enabled: bool = False
    lists: list[str] | None = field(default_factory=lambda: [WILDCARD])
    rooms: list[str] | None = field(default_factory=lambda: [WILDCARD])
    limit: int = 100
    since: str | None = None


@dataclass(frozen=True, slots=True)
class SlidingSyncRequest:
    conn_id: str | None = None
    lists: dict[str, ListConfig] = field(default_factory=dict)
    room_subscriptions: dict[str, RoomConfig] = field(default_factory=dict)
    extensions: dict[str, ExtensionConfig] = field(default_factory=dict)
    unsubscribe_rooms: tuple[str, ...] = ()


EXTENSIONS = ("to_device", "e2ee", "account_data", "receipts", "typing")


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadJson(f"'{where}' must be an object")
    return value


def _optional(body: Mapping[str, Any], key: str) -> Any:
    """The value of an optional key (null is the same as absent, as in pydantic)."""
    return body.get(key)


def _bool(value: Any, where: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise BadJson(f"'{where}' must be a boolean")
    return value


def _int(value: Any, where: str, *, minimum: int | None = None,
         maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadJson(f"'{where}' must be an integer")
    if minimum is not None and value < minimum:
        raise BadJson(f"'{where}' must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise BadJson(f"'{where}' must be at most {maximum}")
    return value


def _strings(value: Any, where: str, *, nullable: bool = False) -> list[Any] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
            isinstance(v, str) or (nullable and v is None) for v in value):
        raise BadJson(f"'{where}' must be a list of strings")
    return list(value)


def _string(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise BadJson(f"'{where}' must be a string")
    return value


def _room_config(body: Mapping[str, Any], where: str) -> RoomConfig:
    if "timeline_limit" not in body or body["timeline_limit"] is None:
        raise BadJson(f"'{where}.timeline_limit' is required")
    limit = _int(body["timeline_limit"], f"{where}.timeline_limit",
                 maximum=MAX_TIMELINE_LIMIT)
    raw = body.get("required_state")
    if not isinstance(raw, list):
        raise BadJson(f"'{where}.required_state' must be a list of [type, state_key]")
    pairs = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2
                and all(isinstance(v, str) for v in item)):
            raise BadJson(f"'{where}.required_state' must be a list of [type, state_key]")
        pairs.append((item[0], item[1]))
    return RoomConfig(max(limit, 0), frozenset(pairs))


def _filters(value: Any, where: str) -> Filters | None:
    if value is None:
        return None
    body = _object(value, where)
    return Filters(
        is_dm=_bool(_optional(body, "is_dm"), f"{where}.is_dm"),
        spaces=_strings(_optional(body, "spaces"), f"{where}.spaces"),
        is_encrypted=_bool(_optional(body, "is_encrypted"), f"{where}.is_encrypted"),
        is_invite=_bool(_optional(body, "is_invite"), f"{where}.is_invite"),
        room_types=_strings(_optional(body, "room_types"), f"{where}.room_types",
                            nullable=True),
        not_room_types=_strings(_optional(body, "not_room_types"),
                                f"{where}.not_room_types", nullable=True),
        room_name_like=_string(_optional(body, "room_name_like"),
                               f"{where}.room_name_like"),
        tags=_strings(_optional(body, "tags"), f"{where}.tags"),
        not_tags=_strings(_optional(body, "not_tags"), f"{where}.not_tags"))


def _ranges(value: Any, where: str) -> list[tuple[int, int]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadJson(f"'{where}' must be a list of [start, end]")
    out = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2):
            raise BadJson(f"'{where}' must be a list of [start, end]")
        start = _int(item[0], where, minimum=0)
        end = _int(item[1], where, minimum=0)
        out.append((start, end))
    return out


def _list(key: Any, value: Any) -> ListConfig:
    if not isinstance(key, str) or len(key) > MAX_LIST_KEY:
        raise BadJson(f"List keys must be strings of at most {MAX_LIST_KEY} characters")
    where = f"lists.{key}"
    body = _object(value, where)
    return ListConfig(
        room=_room_config(body, where),
        ranges=_ranges(body.get("ranges"), f"{where}.ranges"),
        filters=_filters(body.get("filters"), f"{where}.filters"),
        slow_get_all_rooms=bool(_bool(body.get("slow_get_all_rooms"),
                                      f"{where}.slow_get_all_rooms")))


def _extension(name: str, value: Any) -> ExtensionConfig:
    where = f"extensions.{name}"
    body = _object(value, where)
    since = _string(body.get("since"), f"{where}.since") if name == "to_device" else None
    if since is not None:
        try:
            int(since)
        except ValueError:
            raise BadJson(f"'{where}.since' is invalid (should look like an int)") from None
    limit = body.get("limit", 100)
    return ExtensionConfig(
        enabled=bool(_bool(body.get("enabled"), f"{where}.enabled")),
        lists=_strings(body.get("lists", [WILDCARD]), f"{where}.lists"),
        rooms=_strings(body.get("rooms", [WILDCARD]), f"{where}.rooms"),
        limit=_int(100 if limit is None else limit, f"{where}.limit"),
        since=since)


def parse_request(body: Mapping[str, Any]) -> SlidingSyncRequest:
    """The request body (already a JSON object) as a ``SlidingSyncRequest``."""
    conn_id = _string(body.get("conn_id"), "conn_id")
    raw_lists = body.get("lists")
    lists: dict[str, ListConfig] = {}
    if raw_lists is not None:
        if len(_object(raw_lists, "lists")) > MAX_LISTS:
            raise BadJson(f"Max lists: {MAX_LISTS} in Sliding Window API")
        lists = {key: _list(key, value) for key, value in raw_lists.items()}
    raw_subs = body.get("room_subscriptions")
    subscriptions: dict[str, RoomConfig] = {}
    if raw_subs is not None:
        for room_id, value in _object(raw_subs, "room_subscriptions").items():
            where = f"room_subscriptions.{room_id}"
            subscriptions[room_id] = _room_config(_object(value, where), where)
    raw_extensions = body.get("extensions")
    extensions: dict[str, ExtensionConfig] = {}
    if raw_extensions is not None:
        for name, value in _object(raw_extensions, "extensions").items():
            if name in EXTENSIONS and value is not None:
                extensions[name] = _extension(name, value)
    # Subscriptions stay until `unsubscribe_rooms` names them (MSC3575's sticky
    # parameters, which matrix-js-sdk relies on: it sends a subscription once); Synapse
    # forgets them after each request, and a client that repeats them sees no difference.
    raw_unsubscribe = body.get("unsubscribe_rooms")
    unsubscribe = tuple(_strings(raw_unsubscribe, "unsubscribe_rooms") or ()) \
        if raw_unsubscribe is not None else ()
    return SlidingSyncRequest(conn_id, lists, subscriptions, extensions, unsubscribe)
