"""Questions about rooms as they stand, answered from the writer's snapshots and the event
cache: events, current state, the head, membership across servers, server ACLs, auth
chains."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.errors import NotFound
from core.events.model import Event
from core.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from core.rooms.auth import check_auth_rules, create_event_id_for_room
from core.rooms.server_acl import server_allowed
from roomserver.api import RoomHead, StateKey
from roomserver.receive import ReceivedEvents
from roomserver.snapshot import RoomSnapshot
from roomserver.writer import Writer
from storage.delta_map import as_dict


class RoomReads:
    def __init__(self, writer: Writer, received: ReceivedEvents) -> None:
        self._writer = writer
        self._store = writer.store
        self._received = received

    async def get_events(self, event_ids: list[str]) -> dict[str, Event]:
        return await self._store.get_events(event_ids)

    async def _snapshot(self, room_id: str) -> RoomSnapshot | None:
        snapshot = self._writer.cached_snapshot(room_id)
        if snapshot is None:
            async with self._writer.lock(room_id):
                snapshot = await self._writer.snapshot(room_id)
        return snapshot

    async def current_state(self, room_id: str) -> dict[StateKey, str] | None:
        """The room's current state (type, state_key) -> event ID; None for unknown rooms."""
        async with self._writer.lock(room_id):
            snapshot = await self._writer.snapshot(room_id)
        return as_dict(snapshot.state) if snapshot is not None else None

    async def room_version(self, room_id: str) -> RoomVersion | None:
        snapshot = self._writer.cached_snapshot(room_id)
        if snapshot is not None:
            return snapshot.room_version
        info = await self._store.db.events.room_info(room_id)
        return KNOWN_ROOM_VERSIONS.get(info[0]) if info is not None else None

    async def room_head(self, room_id: str) -> RoomHead | None:
        """A copy of the room's current state and head (for templates and answers)."""
        async with self._writer.lock(room_id):
            snapshot = await self._writer.snapshot(room_id)
            return snapshot.head() if snapshot is not None else None

    async def state_content(self, room_id: str, key: StateKey) -> Mapping[str, Any] | None:
        """The content of one entry of the room's current state (None if unset or the room
        is unknown)."""
        snapshot = await self._snapshot(room_id)
        event_id = snapshot.state.get(key) if snapshot is not None else None
        if event_id is None:
            return None
        event = (await self._store.get_events([event_id])).get(event_id)
        return event.content if event is not None else None

    async def server_allowed(self, room_id: str, server_name: str) -> bool:
        """Whether the room's server ACL lets ``server_name`` take part."""
        return server_allowed(server_name,
                              await self.state_content(room_id, ("m.room.server_acl", "")))

    async def joined_servers(self, room_id: str) -> set[str]:
        """The servers with a user joined to the room (empty for an unknown room)."""
        snapshot = await self._snapshot(room_id)
        return snapshot.servers() if snapshot is not None else set()

    async def check_against_current(self, event: Event) -> None:
        """Would ``event`` pass the rules against the room's current state (a template a
        remote server asked for)? Raises ``AuthError`` if not."""
        async with self._writer.lock(event.room_id):
            snapshot = await self._writer.snapshot(event.room_id)
            if snapshot is None:
                raise NotFound("Unknown room")
            create_id = snapshot.state.get(("m.room.create", ""))
            create = (await self._store.get_events([create_id])).get(create_id) \
                if create_id else None
            check_auth_rules(event, await self._received.state_events(snapshot.state, event),
                             create_event=create)

    async def auth_chain(self, event_ids: list[str]) -> list[Event]:
        """The events' auth chain (their auth events, theirs, and so on; one load per level;
        in a v12 room the create event too), oldest first."""
        seen: dict[str, Event] = {}
        start = await self._store.get_events(list(set(event_ids)))
        frontier = {a for e in start.values() for a in e.auth_event_ids}
        frontier |= {create_event_id_for_room(e.room_id) for e in start.values()
                     if e.room_version.room_id_is_create_event_hash
                     and e.type != "m.room.create"}
        while frontier:
            loaded = await self._store.get_events(list(frontier))
            seen.update(loaded)
            frontier = {a for e in loaded.values() for a in e.auth_event_ids if a not in seen}
        return sorted(seen.values(), key=lambda e: e.depth)

    async def is_stored(self, event_ids: list[str]) -> set[str]:
        return await self._received.is_stored(event_ids)
