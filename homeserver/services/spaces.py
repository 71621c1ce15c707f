"""Space hierarchies: ``GET /_matrix/client/v1/rooms/{roomId}/hierarchy`` and its federation
form ``GET /_matrix/federation/v1/hierarchy/{roomId}``
(https://spec.matrix.org/v1.16/client-server-api/#get_matrixclientv1roomsroomidhierarchy).

A walk, depth first, over the ``m.space.child`` state events (with a non-empty ``via``) of
the space and its child spaces, as Synapse's ``RoomSummaryHandler`` does: children in the
order of their ``order`` (printable ASCII, at most 50 characters; those without come last),
then ``origin_server_ts``, then room ID. A room is listed when the requester may see it: they
are joined or invited, anyone may join or knock, its history is world-readable, or it is
restricted to members of a room they are joined to. Rooms this server is not in are asked of
the servers in the child event's ``via`` (answers are untrusted: checked field by field,
cached for ``REMOTE_CACHE_TTL_S``). Pages continue from a token naming the walk's remaining
queue, kept in memory for ``SESSION_TTL_S``.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache

from core.clock import Clock
from core.errors import Forbidden, InvalidParam, NotFound
from core.events.model import Event
from homeserver.services.ports import RemoteHierarchy
from homeserver.services.remote_rooms import MAX_ID_CHARS, checked_summary, is_count, short_str
from roomserver.api import RoomReader

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 50  # rooms a page, as Synapse
DEFAULT_MAX_DEPTH = 50
MAX_DEPTH = 50
MAX_CHILDREN_PER_SPACE = 50  # children listed in a federation answer, as Synapse
SESSION_TTL_S = 300.0  # as Synapse's pagination sessions
SESSIONS = 1000
REMOTE_CACHE_TTL_S = 60.0
REMOTE_CACHE_ENTRIES = 500
_MAX_ORDER_CHARS = 50
_ACCESSIBLE_RULES = ("public", "knock", "knock_restricted")
_SUMMARY_STATE = {
    ("m.room.name", ""): ("name", "name"),
    ("m.room.topic", ""): ("topic", "topic"),
    ("m.room.canonical_alias", ""): ("alias", "canonical_alias"),
    ("m.room.avatar", ""): ("url", "avatar_url"),
}
_OTHER_STATE = (("m.room.create", ""), ("m.room.join_rules", ""),
                ("m.room.history_visibility", ""), ("m.room.guest_access", ""),
                ("m.room.encryption", ""))


@dataclass(frozen=True, slots=True)
class _Local:
    """A room this server holds, as far as a summary needs it."""

    room_id: str
    room_version: str
    state: Mapping[tuple[str, str], Event]
    joined: frozenset[str]
    children: Sequence[Event]  # m.space.child events with a usable via, in order

    def content(self, event_type: str) -> Mapping[str, Any]:
        event = self.state.get((event_type, ""))
        return event.content if event is not None else {}

    @property
    def join_rule(self) -> str:
        rule = self.content("m.room.join_rules").get("join_rule")
        return rule if isinstance(rule, str) else "invite"

    @property
    def world_readable(self) -> bool:
        return self.content("m.room.history_visibility").get(
            "history_visibility") == "world_readable"

    @property
    def allowed_room_ids(self) -> list[str]:
        if self.join_rule not in ("restricted", "knock_restricted"):
            return []
        allow = self.content("m.room.join_rules").get("allow")
        return [a["room_id"] for a in allow if isinstance(a, Mapping)
                and a.get("type") == "m.room_membership"
                and isinstance(a.get("room_id"), str)] if isinstance(allow, list) else []

    def membership(self, user_id: str) -> str | None:
        event = self.state.get(("m.room.member", user_id))
        return event.membership if event is not None else None


@dataclass
class _Queued:
    room_id: str
    via: tuple[str, ...]
    depth: int
    # The room's summary from its parent's federation answer (None: ask for it).
    remote: dict[str, Any] | None = None


@dataclass
class _Session:
    user_id: str
    room_id: str
    suggested_only: bool
    max_depth: int
    queue: list[_Queued]
    processed: set[str] = field(default_factory=set)


@dataclass
class _Summary:
    entry: dict[str, Any]  # the room summary, with children_state
    children: list[dict[str, Any]]  # stripped m.space.child events to walk, in order
    prefetched: dict[str, dict[str, Any]] = field(default_factory=dict)
    inaccessible: set[str] = field(default_factory=set)


class SpaceHierarchyService:
    def __init__(self, rooms: RoomReader, clock: Clock, server_name: str, *,
                 remote: RemoteHierarchy | None = None) -> None:
        self._rooms = rooms
        self._server_name = server_name
        self._suffix = ":" + server_name
        self._remote = remote
        self._sessions: TTLCache[str, _Session] = TTLCache(SESSIONS, SESSION_TTL_S,
                                                           timer=clock.monotonic)
        self._remote_answers: TTLCache[tuple[str, bool], dict[str, Any] | None] = TTLCache(
            REMOTE_CACHE_ENTRIES, REMOTE_CACHE_TTL_S, timer=clock.monotonic)

    # -- the client API ----------------------------------------------------------------------

    async def hierarchy(self, user_id: str, room_id: str, *, suggested_only: bool = False,
                        max_depth: int | None = None, limit: int | None = None,
                        from_token: str | None = None) -> dict[str, Any]:
        """One page of the space tree under ``room_id`` that ``user_id`` may see.

        Raises:
            Forbidden: the user may not see the room (or it is unknown here).
            InvalidParam: an unknown ``from`` token, or other parameters than its first page's.
        """
        depth_cap = MAX_DEPTH if max_depth is None else min(max_depth, MAX_DEPTH)
        page_size = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
        if from_token is not None:
            session = self._sessions.pop(from_token, None)
            if session is None or session.user_id != user_id or session.room_id != room_id:
                raise InvalidParam("Unknown pagination token")
            if session.suggested_only != suggested_only or session.max_depth != depth_cap:
                raise InvalidParam(
                    "suggested_only and max_depth cannot change on paginated requests")
        else:
            root = await self._local(room_id, user_id)
            if root is None or not await self._user_may_see(root, user_id):
                raise Forbidden(f"You are not allowed to view the room {room_id}")
            session = _Session(user_id, room_id, suggested_only, depth_cap,
                               [_Queued(room_id, (), 0)])
        rooms: list[dict[str, Any]] = []
        joined_rooms: list[set[str]] = []  # the user's rooms, read once when needed
        while session.queue and len(rooms) < page_size:
            queued = session.queue.pop()
            if queued.room_id in session.processed:
                continue
            session.processed.add(queued.room_id)
            summary = await self._summarize_for_user(queued, user_id, suggested_only,
                                                     joined_rooms)
            if summary is None:
                continue
            rooms.append(summary.entry)
            if queued.depth < session.max_depth:
                # Reversed: the queue is a stack, the first child is walked next.
                session.queue.extend(
                    _Queued(child["state_key"], tuple(child["content"]["via"]),
                            queued.depth + 1, summary.prefetched.get(child["state_key"]))
                    for child in reversed(summary.children)
                    if child["state_key"] not in summary.inaccessible
                    and child["state_key"] not in session.processed)
        body: dict[str, Any] = {"rooms": rooms}
        if session.queue:
            token = secrets.token_urlsafe(16)
            self._sessions[token] = session
            body["next_batch"] = token
        return body

    async def _summarize_for_user(self, queued: _Queued, user_id: str, suggested_only: bool,
                                  joined_rooms: list[set[str]]) -> _Summary | None:
        local = await self._local(queued.room_id, user_id)
        if local is not None and self._we_are_in(local):
            if not await self._user_may_see(local, user_id, joined_rooms):
                return None
            return _Summary(self._entry(local, suggested_only),
                            self._children_json(local, suggested_only))
        remote = queued.remote
        summary: _Summary | None
        if remote is not None and remote.get("room_type") != "m.space":
            # A room (not a space) its parent's server told us of: nothing more to ask.
            summary = _Summary({**remote, "children_state": []}, [])
        else:
            summary = await self._remote_summary(queued, suggested_only)
        if summary is None:
            if local is not None and await self._user_may_see(local, user_id, joined_rooms):
                # A room we left: what we knew of it.
                return _Summary(self._entry(local, suggested_only),
                                self._children_json(local, suggested_only))
            return None
        if not await self._user_may_see_remote(summary.entry, local, user_id, joined_rooms):
            return None
        return summary

    async def _user_may_see(self, room: _Local, user_id: str,
                            joined_rooms: list[set[str]] | None = None) -> bool:
        if room.join_rule in _ACCESSIBLE_RULES or room.world_readable:
            return True
        if room.membership(user_id) in ("join", "invite"):
            return True
        allowed = room.allowed_room_ids
        return bool(allowed) and bool(
            set(allowed) & await self._joined_rooms(user_id, joined_rooms))

    async def _user_may_see_remote(self, entry: Mapping[str, Any], local: _Local | None,
                                   user_id: str, joined_rooms: list[set[str]]) -> bool:
        """As Synapse's ``_is_remote_room_accessible``."""
        if entry.get("join_rule") in _ACCESSIBLE_RULES or entry.get("world_readable") is True:
            return True
        allowed = entry.get("allowed_room_ids") or []
        if allowed and set(allowed) & await self._joined_rooms(user_id, joined_rooms):
            return True
        return local is not None and local.membership(user_id) in ("join", "invite")

    async def _joined_rooms(self, user_id: str, cache: list[set[str]] | None) -> set[str]:
        if cache:
            return cache[0]
        rooms = set(await self._rooms.joined_rooms(user_id))
        if cache is not None:
            cache.append(rooms)
        return rooms

    # -- the federation API ------------------------------------------------------------------

    async def federation_hierarchy(self, origin: str, room_id: str, *,
                                   suggested_only: bool) -> dict[str, Any]:
        """The answer to ``origin``'s ``/hierarchy/{roomId}``: the room and its children that
        the origin's users could peek or join (no paging).

        Raises:
            NotFound: the room is unknown here, or the origin could not see it.
        """
        root = await self._local(room_id)
        if root is None or not self._we_are_in(root) \
                or not await self._server_may_see(root, origin):
            raise NotFound(f"Unknown room: {room_id}")
        children: list[dict[str, Any]] = []
        inaccessible: list[str] = []
        for child in self._children_json(root, suggested_only)[:MAX_CHILDREN_PER_SPACE]:
            local = await self._local(child["state_key"])
            if local is None or not self._we_are_in(local):
                continue  # nothing to tell of it
            if await self._server_may_see(local, origin):
                children.append(self._entry(local, suggested_only, with_children=False))
            else:
                inaccessible.append(local.room_id)
        return {"room": self._entry(root, suggested_only), "children": children,
                "inaccessible_children": inaccessible}

    async def _server_may_see(self, room: _Local, server: str) -> bool:
        if room.join_rule in _ACCESSIBLE_RULES or room.world_readable:
            return True
        suffix = ":" + server
        if any(user.endswith(suffix) for user in room.joined):
            return True
        for allowed in room.allowed_room_ids:
            if server in await self._rooms.joined_servers(allowed):
                return True
        return False

    # -- rooms this server holds -------------------------------------------------------------

    def _we_are_in(self, room: _Local) -> bool:
        return any(user.endswith(self._suffix) for user in room.joined)

    async def _local(self, room_id: str, user_id: str | None = None) -> _Local | None:
        """The room's summary state from its current state (one read of its events)."""
        head = await self._rooms.room_head(room_id)
        if head is None:
            return None
        wanted = {key: event_id for key, event_id in head.state.items()
                  if key in _SUMMARY_STATE or key in _OTHER_STATE
                  or key[0] == "m.space.child"
                  or key == ("m.room.member", user_id)}
        events = await self._rooms.get_events(list(wanted.values()))
        state = {key: events[event_id] for key, event_id in wanted.items()
                 if event_id in events}
        children = sorted((e for key, e in state.items()
                           if key[0] == "m.space.child" and _usable_via(e.content)),
                          key=_child_order)
        return _Local(room_id, head.room_version.identifier, state, head.joined, children)

    def _children_json(self, room: _Local, suggested_only: bool) -> list[dict[str, Any]]:
        if room.content("m.room.create").get("type") != "m.space":
            return []
        return [{"type": e.type, "state_key": e.state_key, "content": dict(e.content),
                 "sender": e.sender, "origin_server_ts": e.origin_server_ts}
                for e in room.children
                if not suggested_only or e.content.get("suggested") is True]

    def _entry(self, room: _Local, suggested_only: bool, *,
               with_children: bool = True) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "room_id": room.room_id,
            "num_joined_members": len(room.joined),
            "world_readable": room.world_readable,
            "guest_can_join": room.content("m.room.guest_access").get(
                "guest_access") == "can_join",
            "join_rule": room.join_rule,
            "room_version": room.room_version,
        }
        for key, (content_key, name) in _SUMMARY_STATE.items():
            value = room.content(key[0]).get(content_key)
            if isinstance(value, str) and value:
                entry[name] = value
        room_type = room.content("m.room.create").get("type")
        if isinstance(room_type, str):
            entry["room_type"] = room_type
        if room.content("m.room.encryption").get("algorithm") == "m.megolm.v1.aes-sha2":
            entry["encryption"] = "m.megolm.v1.aes-sha2"
        if room.allowed_room_ids:
            entry["allowed_room_ids"] = room.allowed_room_ids
        entry["children_state"] = self._children_json(room, suggested_only) \
            if with_children else []
        return entry

    # -- rooms on other servers ----------------------------------------------------------

    async def _remote_summary(self, queued: _Queued, suggested_only: bool
                              ) -> _Summary | None:
        servers = [s for s in queued.via if s != self._server_name]
        if self._remote is None or not servers:
            return None
        key = (queued.room_id, suggested_only)
        if key in self._remote_answers:
            answer = self._remote_answers[key]
        else:
            raw = await self._remote.hierarchy(servers, queued.room_id, suggested_only)
            answer = checked_answer(raw, queued.room_id)
            if answer is None and raw is not None:
                logger.info("Unusable hierarchy answer for %s", queued.room_id)
            self._remote_answers[key] = answer
        if answer is None:
            return None
        room = answer["room"]
        children = [c for c in room["children_state"]
                    if not suggested_only or c["content"].get("suggested") is True]
        return _Summary(room, children, {c["room_id"]: c for c in answer["children"]},
                        set(answer["inaccessible_children"]))


def _usable_via(content: Mapping[str, Any]) -> bool:
    via = content.get("via")
    return isinstance(via, list) and bool(via) and all(
        isinstance(s, str) and 0 < len(s) <= MAX_ID_CHARS for s in via)


def _valid_order(order: Any) -> str | None:
    if isinstance(order, str) and len(order) <= _MAX_ORDER_CHARS and all(
            0x20 <= ord(c) <= 0x7E for c in order):
        return order
    return None


def _child_order(event: Event) -> tuple[bool, str, int, str]:
    order = _valid_order(event.content.get("order"))
    return order is None, order or "", event.origin_server_ts, event.state_key or ""


# -- another server's answer ---------------------------------------------------------------

def checked_entry(raw: Any) -> dict[str, Any] | None:
    """A room summary from another server with the spec's fields alone (None without a
    required one; a malformed optional one is left out, free text cut short)."""
    entry = checked_summary(raw, (("room_version", ""),))
    if entry is None:
        return None
    if raw.get("encryption") == "m.megolm.v1.aes-sha2":
        entry["encryption"] = "m.megolm.v1.aes-sha2"
    allowed = raw.get("allowed_room_ids")
    if isinstance(allowed, list):
        entry["allowed_room_ids"] = [r for r in allowed[:MAX_CHILDREN_PER_SPACE]
                                     if short_str(r, "!")]
    return entry


def _checked_child_event(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, Mapping) or raw.get("type") != "m.space.child" \
            or not short_str(raw.get("state_key"), "!") \
            or not isinstance(raw.get("content"), Mapping) \
            or not _usable_via(raw["content"]) or not short_str(raw.get("sender"), "@") \
            or not is_count(raw.get("origin_server_ts")):
        return None
    content: dict[str, Any] = {"via": list(raw["content"]["via"])}
    if _valid_order(raw["content"].get("order")) is not None:
        content["order"] = raw["content"]["order"]
    if isinstance(raw["content"].get("suggested"), bool):
        content["suggested"] = raw["content"]["suggested"]
    return {"type": "m.space.child", "state_key": raw["state_key"], "content": content,
            "sender": raw["sender"], "origin_server_ts": raw["origin_server_ts"]}


def checked_answer(raw: Any, room_id: str) -> dict[str, Any] | None:
    """What may be used of another server's ``/hierarchy`` answer about ``room_id``."""
    if not isinstance(raw, Mapping):
        return None
    room = checked_entry(raw.get("room"))
    if room is None or room["room_id"] != room_id:
        return None
    state = raw["room"].get("children_state")
    events = [e for e in (_checked_child_event(c) for c in state[:MAX_CHILDREN_PER_SPACE])
              if e is not None] if isinstance(state, list) else []
    room["children_state"] = sorted(
        events, key=lambda e: (_valid_order(e["content"].get("order")) is None,
                               e["content"].get("order", ""), e["origin_server_ts"],
                               e["state_key"]))
    children = raw.get("children")
    inaccessible = raw.get("inaccessible_children")
    return {
        "room": room,
        "children": [c for c in (checked_entry(c) for c in children[:MAX_CHILDREN_PER_SPACE])
                     if c is not None] if isinstance(children, list) else [],
        "inaccessible_children": [r for r in inaccessible[:MAX_CHILDREN_PER_SPACE]
                                  if short_str(r, "!")]
        if isinstance(inaccessible, list) else [],
    }

