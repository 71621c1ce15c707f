"""Event filters (https://spec.matrix.org/v1.19/client-server-api/#filtering): parsing and
matching. Pure code, shared by /messages, /context, /search and /sync.

A filter is parsed once (``FilterService`` keeps parsed ones) and compiled as it is parsed:
type patterns into sets looked up by prefix, senders and rooms into sets, ``event_fields``
into a tree walked along the event. Matching an event then costs about the length of its
type, and picking its fields about the size of what is picked, however long the filter's
lists are. The lists are capped too (``MAX_FILTER_LIST``), and so is an uploaded filter
(``MAX_FILTER_BYTES``, checked by ``filters.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import BadJson, TooLarge

MAX_LIMIT = 1000
# Entries in one list of a filter (types, senders, rooms, event_fields, ...). A filter is
# also capped at MAX_FILTER_BYTES when stored, which bounds it to about 1,500 room IDs.
MAX_FILTER_LIST = 1000
# An uploaded filter, encoded as compact UTF-8 JSON: the spec's limit for an event.
MAX_FILTER_BYTES = 65536
# Event types whose match results a type pattern set remembers (the few a sync meets).
_MEMO_SIZE = 1024


def _str_list(body: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadJson(f"filter '{key}' must be a list of strings")
    if len(value) > MAX_FILTER_LIST:
        raise TooLarge(f"filter '{key}' has more than {MAX_FILTER_LIST} entries")
    return tuple(value)


class TypePatterns:
    """Event types and type patterns (a trailing ``*`` matches any rest, as in Synapse),
    compiled: exact types in one set, the prefixes of the patterns in another, probed with
    the type's own prefixes of the lengths that occur. Remembers recent answers."""

    __slots__ = ("_exact", "_lengths", "_memo", "_prefixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        prefixes: set[str] = set()
        for pattern in patterns:
            if pattern.endswith("*"):
                prefixes.add(pattern[:-1])
            else:
                exact.add(pattern)
        self._exact = frozenset(exact)
        self._prefixes = frozenset(prefixes)
        self._lengths = tuple(sorted({len(p) for p in prefixes}))
        self._memo: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._exact or self._prefixes)

    def matches(self, event_type: str) -> bool:
        found = self._memo.get(event_type)
        if found is None:
            found = event_type in self._exact or self._prefix_matches(event_type)
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[event_type] = found
        return found

    def _prefix_matches(self, event_type: str) -> bool:
        size = len(event_type)
        for length in self._lengths:
            if length > size:
                return False
            if event_type[:length] in self._prefixes:
                return True
        return False


_NO_PATTERNS = TypePatterns(())


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
    # Compiled from the lists above by __post_init__.
    _types: TypePatterns | None = field(init=False, repr=False, compare=False)
    _not_types: TypePatterns = field(init=False, repr=False, compare=False)
    _senders: frozenset[str] | None = field(init=False, repr=False, compare=False)
    _not_senders: frozenset[str] = field(init=False, repr=False, compare=False)
    _rooms: frozenset[str] | None = field(init=False, repr=False, compare=False)
    _not_rooms: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "_types", None if self.types is None else TypePatterns(self.types))
        set_(self, "_not_types", TypePatterns(self.not_types) if self.not_types
             else _NO_PATTERNS)
        set_(self, "_senders", None if self.senders is None else frozenset(self.senders))
        set_(self, "_not_senders", frozenset(self.not_senders))
        set_(self, "_rooms", None if self.rooms is None else frozenset(self.rooms))
        set_(self, "_not_rooms", frozenset(self.not_rooms))

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
        except (ValueError, RecursionError):
            raise BadJson("filter is not valid JSON") from None
        return cls.from_json(body)

    def allows_type(self, event_type: str) -> bool:
        """Whether events of this type can pass at all (whatever their sender or room)."""
        if self._not_types.matches(event_type):
            return False
        return self._types is None or self._types.matches(event_type)

    def allows_room(self, room_id: str) -> bool:
        if room_id in self._not_rooms:
            return False
        return self._rooms is None or room_id in self._rooms

    def matches(self, event: Mapping[str, Any]) -> bool:
        event_type = event.get("type", "")
        if not isinstance(event_type, str):
            event_type = str(event_type)
        if not self.allows_type(event_type):
            return False
        sender = event.get("sender", "")
        if not isinstance(sender, str):
            sender = str(sender)
        if sender in self._not_senders:
            return False
        if self._senders is not None and sender not in self._senders:
            return False
        room_id = event.get("room_id", "")
        if not self.allows_room(room_id if isinstance(room_id, str) else str(room_id)):
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


# -- event_fields -------------------------------------------------------------------------------

# A node of the compiled event_fields: key -> the node below it, or _WHOLE (take the value).
_FieldTree = dict[str, Any]
_WHOLE = True


def _field_path(field_: str) -> list[str]:
    """``content.m\\.relates_to`` -> ``["content", "m.relates_to"]``: dots separate, and a
    backslash makes the character after it literal (``\\.``, ``\\\\``)."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for char in field_:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _compile_fields(fields: Iterable[str]) -> _FieldTree:
    tree: _FieldTree = {}
    for field_ in fields:
        *parents, last = _field_path(field_)
        node = tree
        for part in parents:
            child = node.get(part)
            if child is _WHOLE:
                break  # an ancestor is taken whole already
            if child is None:
                child = node[part] = {}
            node = child
        else:
            node[last] = _WHOLE
    return tree


def _pick(source: Mapping[str, Any], tree: _FieldTree) -> dict[str, Any]:
    """The parts of ``source`` the tree names; walks the smaller of the two at each level,
    so a long field list costs no more than the event it is applied to."""
    out: dict[str, Any] = {}
    keys: Iterable[str] = tree if len(tree) <= len(source) else source
    for key in keys:
        node = tree.get(key)
        if node is None or key not in source:
            continue
        value = source[key]
        if node is _WHOLE:
            out[key] = value
        elif isinstance(value, dict):
            picked = _pick(value, node)
            if picked:
                out[key] = picked
    return out


class EventFields:
    """A filter's ``event_fields``, compiled once."""

    __slots__ = ("_tree",)

    def __init__(self, fields: Iterable[str]) -> None:
        self._tree = _compile_fields(fields)

    def apply(self, event: dict[str, Any]) -> dict[str, Any]:
        return _pick(event, self._tree)


# -- the whole /sync filter ---------------------------------------------------------------------


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
    # Counts per thread (room.timeline.unread_thread_notifications).
    unread_thread_notifications: bool = False
    # Compiled by __post_init__.
    _rooms: frozenset[str] | None = field(init=False, repr=False, compare=False)
    _not_rooms: frozenset[str] = field(init=False, repr=False, compare=False)
    _fields: EventFields | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "_rooms", None if self.rooms is None else frozenset(self.rooms))
        set_(self, "_not_rooms", frozenset(self.not_rooms))
        set_(self, "_fields", None if self.event_fields is None
             else EventFields(self.event_fields))

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
        threads = (_sub(room, "timeline") or {}).get("unread_thread_notifications", False)
        if not isinstance(threads, bool):
            raise BadJson("filter 'unread_thread_notifications' must be a boolean")
        return cls(
            unread_thread_notifications=threads,
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
        if room_id in self._not_rooms:
            return False
        return self._rooms is None or room_id in self._rooms

    def pick_fields(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event with only the filter's ``event_fields`` (all of it without them)."""
        return event if self._fields is None else self._fields.apply(event)

