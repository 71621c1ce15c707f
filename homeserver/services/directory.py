"""The public room directory (/publicRooms) and directory visibility.

Our own directory is built from the published rooms' current state. Another server's
(``/publicRooms?server=...``) is asked over federation through the ``RemoteDirectory`` port;
its answer is untrusted: only entries of the spec's shape are passed on, with the spec's
fields alone, strings capped. Answers are cached for ``REMOTE_CACHE_TTL_S`` (by server, limit,
token and filter), and identical questions asked meanwhile share one request, so clients
cannot make us hammer a server. A server that takes no filtered query (``POST``) is asked
unfiltered, a page of ``REMOTE_MAX_LIMIT`` at a time, and each page is filtered here (as
Synapse does, which only ever asks for the first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from core.clock import Clock
from core.errors import BadJson, Forbidden, InvalidParam, MatrixError, NotFound
from core.rooms.power_levels import PowerLevels
from core.types import is_valid_server_name
from homeserver.services.ports import RemoteDirectory, RemoteFilterUnsupported
from homeserver.services.remote_rooms import checked_summary, is_count, short_str
from roomserver.api import LocalRooms
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

logger = logging.getLogger(__name__)

_SUMMARY_KEYS = {
    ("m.room.name", ""): ("name", "name"),
    ("m.room.topic", ""): ("topic", "topic"),
    ("m.room.canonical_alias", ""): ("alias", "canonical_alias"),
    ("m.room.avatar", ""): ("url", "avatar_url"),
}
_SEARCHED_FIELDS = ("name", "topic", "canonical_alias")
MAX_LIMIT = 500

# Another server's directory: at most this many rooms a page (Synapse serves at most 100).
REMOTE_MAX_LIMIT = 100
REMOTE_CACHE_TTL_S = 30.0  # as Synapse's remote_response_cache
REMOTE_CACHE_ENTRIES = 100
# The longest pagination token passed on either way; identifiers are at most 255 bytes.
MAX_TOKEN_CHARS = 1024
_OFFSET = re.compile(r"[0-9]{1,16}")  # a 'since' token's number
_MAX_ROOM_TYPES = 100


@dataclass(frozen=True)
class RoomFilter:
    """The ``filter`` of ``POST /publicRooms``: ``room_types`` None is every type; a None in
    it is rooms without one."""

    search_term: str | None = None
    room_types: tuple[str | None, ...] | None = None

    @classmethod
    def parse(cls, value: Any) -> RoomFilter | None:
        """The ``filter`` of a request body (None when absent); 400 when malformed."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise BadJson("'filter' must be an object")
        term = value.get("generic_search_term")
        if term is not None and not isinstance(term, str):
            raise InvalidParam("'generic_search_term' must be a string")
        types = value.get("room_types")
        if types is not None and (
                not isinstance(types, list) or len(types) > _MAX_ROOM_TYPES
                or not all(t is None or short_str(t) for t in types)):
            raise InvalidParam("'room_types' must be a list of room types (strings or null)")
        return cls(term, None if types is None else tuple(types))

    def matches(self, entry: Mapping[str, Any], *, by_type: bool = True) -> bool:
        if self.search_term:
            term = self.search_term.lower()
            if not any(term in str(entry.get(k, "")).lower() for k in _SEARCHED_FIELDS):
                return False
        return not by_type or self.room_types is None or entry.get("room_type") in \
            self.room_types

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.search_term is not None:
            body["generic_search_term"] = self.search_term
        if self.room_types is not None:
            body["room_types"] = list(self.room_types)
        return body


_CacheKey = tuple[str, int, str | None, bool, str | None, str | None]


class DirectoryService:
    def __init__(self, persister: LocalRooms, rooms: RoomStore, state: StateStore,
                 clock: Clock, server_name: str, *,
                 remote: RemoteDirectory | None = None) -> None:
        self._persister = persister
        self._rooms = rooms
        self._state = state
        self._server_name = server_name
        # Set by federation: other servers' directories (None: federation is off).
        self.remote = remote
        # Other servers' answers, done or in flight, by question.
        self._remote_pages: TTLCache[_CacheKey, asyncio.Task[dict[str, Any]]] = TTLCache(
            REMOTE_CACHE_ENTRIES, REMOTE_CACHE_TTL_S, timer=clock.monotonic)

    async def visibility(self, room_id: str) -> str:
        public = await self._rooms.is_public(room_id)
        if public is None:
            raise NotFound("Unknown room")
        return "public" if public else "private"

    async def set_visibility(self, user_id: str, room_id: str, visibility: str,
                             is_admin: bool) -> None:
        if visibility not in ("public", "private"):
            raise InvalidParam("visibility must be public or private")
        state = await self._persister.current_state(room_id)
        if state is None:
            raise NotFound("Unknown room")
        create_id = state.get(("m.room.create", ""))
        power_id = state.get(("m.room.power_levels", ""))
        loaded = await self._persister.get_events([e for e in (create_id, power_id) if e])
        if not is_admin and create_id in loaded:
            levels = PowerLevels.from_events(loaded[create_id],
                                             loaded.get(power_id) if power_id else None)
            needed = levels.send_level("m.room.canonical_alias", is_state=True)
            if levels.user_level(user_id) < needed:
                raise Forbidden("You are not allowed to publish this room")
        await self._rooms.set_public(room_id, visibility == "public")

    async def summary(self, room_id: str) -> dict[str, Any]:
        state = await self._persister.current_state(room_id) or {}
        wanted = {k: v for k, v in state.items() if k in _SUMMARY_KEYS or k in (
            ("m.room.join_rules", ""), ("m.room.history_visibility", ""),
            ("m.room.guest_access", ""), ("m.room.create", ""))}
        events = await self._persister.get_events(list(wanted.values()))
        entry: dict[str, Any] = {"room_id": room_id}
        for key, event_id in wanted.items():
            event = events.get(event_id)
            if event is None:
                continue
            content = event.content
            if key in _SUMMARY_KEYS:
                field, name = _SUMMARY_KEYS[key]
                if isinstance(content.get(field), str) and content.get(field):
                    entry[name] = content[field]
            elif key[0] == "m.room.join_rules":
                entry["join_rule"] = content.get("join_rule", "invite")
            elif key[0] == "m.room.history_visibility":
                entry["world_readable"] = content.get("history_visibility") == "world_readable"
            elif key[0] == "m.room.guest_access":
                entry["guest_can_join"] = content.get("guest_access") == "can_join"
            elif key[0] == "m.room.create" and isinstance(content.get("type"), str):
                entry["room_type"] = content["type"]
        entry.setdefault("world_readable", False)
        entry.setdefault("guest_can_join", False)
        joined = [m for m in await self._state.current_state(room_id, types=["m.room.member"])
                  if m.membership == "join"]
        entry["num_joined_members"] = len(joined)
        return entry

    async def public_rooms(self, *, limit: int | None, since: str | None,
                           room_filter: RoomFilter | None = None, server: str | None = None,
                           include_all_networks: bool = False,
                           third_party_instance_id: str | None = None) -> dict[str, Any]:
        """One page of the published room directory of ``server`` (ours when it is None,
        empty or our own name). ``limit`` None or 0: no limit (ours), the largest page
        (another server's). Only a third-party network (``third_party_instance_id``
        without ``include_all_networks``) lists nothing here: we bridge none."""
        if server and server != self._server_name:
            return await self._remote_public_rooms(
                server, limit, since, room_filter, include_all_networks,
                third_party_instance_id)
        if third_party_instance_id is not None and not include_all_networks:
            return {"chunk": [], "total_room_count_estimate": 0}
        offset = 0
        if since:
            if not since.startswith("o") or _OFFSET.fullmatch(since[1:]) is None:
                raise InvalidParam("Invalid 'since' token")
            offset = int(since[1:])
        rooms = [await self.summary(r) for r in await self._rooms.public_room_ids()]
        if room_filter is not None:
            rooms = [r for r in rooms if room_filter.matches(r)]
        rooms.sort(key=lambda r: (-r["num_joined_members"], r["room_id"]))
        limit = min(limit, MAX_LIMIT) if limit else MAX_LIMIT
        page = rooms[offset:offset + limit]
        body: dict[str, Any] = {"chunk": page, "total_room_count_estimate": len(rooms)}
        if offset + limit < len(rooms):
            body["next_batch"] = f"o{offset + limit}"
        if offset > 0:
            body["prev_batch"] = f"o{max(0, offset - limit)}"
        return body

    # -- other servers' directories --------------------------------------------------------

    async def _remote_public_rooms(self, server: str, limit: int | None, since: str | None,
                                   room_filter: RoomFilter | None, include_all_networks: bool,
                                   third_party_instance_id: str | None) -> dict[str, Any]:
        if not is_valid_server_name(server):
            raise InvalidParam(f"Invalid server name: {server}")
        if self.remote is None:
            raise Forbidden("Federation is disabled on this server")
        since = since or None
        if since is not None and len(since) > MAX_TOKEN_CHARS:
            raise InvalidParam("Invalid 'since' token")
        limit = min(limit or REMOTE_MAX_LIMIT, REMOTE_MAX_LIMIT)
        if room_filter == RoomFilter():
            room_filter = None
        if room_filter is not None:
            try:
                return await self._remote_page(server, limit, since, include_all_networks,
                                               third_party_instance_id, room_filter)
            except RemoteFilterUnsupported:
                logger.debug("%s takes no filtered directory query: filtering here", server)
            # As Synapse: the largest unfiltered page, filtered here (every match, even past
            # ``limit``; no room type, which such servers do not give); its tokens page on.
            page = await self._remote_page(server, REMOTE_MAX_LIMIT, since,
                                           include_all_networks, third_party_instance_id, None)
            body = {k: v for k, v in page.items() if k in ("next_batch", "prev_batch")}
            body["chunk"] = [e for e in page["chunk"] if room_filter.matches(e, by_type=False)]
            return body
        return await self._remote_page(server, limit, since, include_all_networks,
                                       third_party_instance_id, None)

    async def _remote_page(self, server: str, limit: int, since: str | None,
                           include_all_networks: bool, third_party_instance_id: str | None,
                           room_filter: RoomFilter | None) -> dict[str, Any]:
        """The checked answer of ``server``: from the cache, or shared with an identical
        question in flight, or asked now (in a task of its own, so that a client going away
        does not cancel it for the others)."""
        key: _CacheKey = (server, limit, since, include_all_networks, third_party_instance_id,
                          None if room_filter is None else
                          json.dumps(room_filter.to_json(), sort_keys=True))
        task = self._remote_pages.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch_page(key, room_filter))
            self._remote_pages[key] = task
            task.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(task)

    def _settle(self, key: _CacheKey, task: asyncio.Task[dict[str, Any]]) -> None:
        """An answer is kept from when it came. A failure is forgotten (the next question
        asks again), except that the server takes no filter."""
        if self._remote_pages.get(key) is not task:
            return
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or (error is not None
                                and not isinstance(error, RemoteFilterUnsupported)):
            self._remote_pages.pop(key, None)
        else:
            self._remote_pages[key] = task  # its time to live starts again

    async def _fetch_page(self, key: _CacheKey, room_filter: RoomFilter | None
                          ) -> dict[str, Any]:
        server, limit, since, include_all_networks, third_party_instance_id, _ = key
        assert self.remote is not None
        answer = await self.remote.public_rooms(
            server, limit=limit, since=since, include_all_networks=include_all_networks,
            third_party_instance_id=third_party_instance_id,
            room_filter=None if room_filter is None else room_filter.to_json())
        page = checked_room_list(answer, limit)
        if page is None:
            logger.info("%s answered our public room list query with no room list", server)
            raise MatrixError(f"Failed to fetch the room list of {server}", status=502)
        return page


def checked_room_list(answer: Any, max_rooms: int) -> dict[str, Any] | None:
    """What may be passed on of another server's ``/publicRooms`` answer: the entries of the
    spec's shape (at most ``max_rooms``), with the spec's fields alone, and the paging fields
    that are well-formed. None when it is not a room list at all."""
    if not isinstance(answer, Mapping) or not isinstance(answer.get("chunk"), list):
        return None
    chunk = [e for e in (checked_summary(raw) for raw in answer["chunk"][:max_rooms])
             if e is not None]
    page: dict[str, Any] = {"chunk": chunk}
    for key in ("next_batch", "prev_batch"):
        token = answer.get(key)
        if isinstance(token, str) and 0 < len(token) <= MAX_TOKEN_CHARS:
            page[key] = token
    estimate = answer.get("total_room_count_estimate")
    if is_count(estimate):
        page["total_room_count_estimate"] = estimate
    return page
