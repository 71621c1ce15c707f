"""The public room directory (/publicRooms) and directory visibility."""

from __future__ import annotations

from typing import Any

from homeserver.errors import Forbidden, InvalidParam, NotFound
from homeserver.rooms.power_levels import PowerLevels
from homeserver.services.event_persister import EventPersister
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

_SUMMARY_KEYS = {
    ("m.room.name", ""): ("name", "name"),
    ("m.room.topic", ""): ("topic", "topic"),
    ("m.room.canonical_alias", ""): ("alias", "canonical_alias"),
    ("m.room.avatar", ""): ("url", "avatar_url"),
}
MAX_LIMIT = 500


class DirectoryService:
    def __init__(self, persister: EventPersister, rooms: RoomStore, state: StateStore) -> None:
        self._persister = persister
        self._rooms = rooms
        self._state = state

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
                           search_term: str | None) -> dict[str, Any]:
        offset = 0
        if since:
            if not since.startswith("o") or not since[1:].isdigit():
                raise InvalidParam("Invalid 'since' token")
            offset = int(since[1:])
        rooms = [await self.summary(r) for r in await self._rooms.public_room_ids()]
        if search_term:
            term = search_term.lower()
            rooms = [r for r in rooms if any(term in str(r.get(k, "")).lower()
                                             for k in ("name", "topic", "canonical_alias"))]
        rooms.sort(key=lambda r: (-r["num_joined_members"], r["room_id"]))
        limit = min(limit, MAX_LIMIT) if limit else MAX_LIMIT
        page = rooms[offset:offset + limit]
        body: dict[str, Any] = {"chunk": page, "total_room_count_estimate": len(rooms)}
        if offset + limit < len(rooms):
            body["next_batch"] = f"o{offset + limit}"
        if offset > 0:
            body["prev_batch"] = f"o{max(0, offset - limit)}"
        return body
