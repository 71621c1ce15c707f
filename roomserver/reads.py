"""Questions about rooms as they stand, answered from the writer's snapshots and the event
cache: events, current state, the head, membership across servers, server ACLs, auth
chains; and about their graph as stored, for other servers: events in their stored form, the
state before them, where their history here begins."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cachetools import LRUCache

from core.errors import NotFound
from core.events.model import Event
from core.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from core.rooms.auth import check_auth_rules, create_event_id_for_room
from core.rooms.server_acl import server_allowed
from roomserver.api import RoomHead, StateKey, StoredPdu
from roomserver.receive import ReceivedEvents
from roomserver.snapshot import RoomSnapshot
from roomserver.writer import Writer
from storage.delta_map import as_dict
from storage.stores.events import StoredEvent

# Rooms whose version is remembered apart from their snapshots.
_VERSIONS_KEPT = 100_000


class RoomReads:
    def __init__(self, writer: Writer, received: ReceivedEvents) -> None:
        self._writer = writer
        self._store = writer.store
        self._received = received
        # A room's version never changes: remembered once read, however often the room's
        # snapshot is forgotten (a worker forgets it at every commit it follows).
        self._versions: LRUCache[str, RoomVersion] = LRUCache(_VERSIONS_KEPT)

    def forget_room(self, room_id: str) -> None:
        """The room was removed here or elsewhere."""
        self._versions.pop(room_id, None)

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
        version = self._versions.get(room_id)
        if version is not None:
            return version
        info = await self._store.db.events.room_info(room_id)
        version = KNOWN_ROOM_VERSIONS.get(info[0]) if info is not None else None
        if version is not None:
            self._versions[room_id] = version
        return version

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

    # -- the graph as stored ----------------------------------------------------------------

    async def stored_pdus(self, event_ids: Iterable[str]) -> dict[str, StoredPdu]:
        """Events by ID as stored, outliers and rejected ones too (unknown ones left out)."""
        return {event_id: _stored_pdu(stored)
                for event_id, stored in (await self._store.stored_events(event_ids)).items()}

    async def state_before(self, event_ids: Iterable[str], *,
                           only: Sequence[StateKey] | None = None
                           ) -> dict[str, Mapping[StateKey, str]]:
        """The state before each of the events (or only its keys ``only``), read once per
        state group; outliers and unknown events are left out."""
        groups = await self._groups_before(event_ids)
        states = await self._store.group_states(set(groups.values()), only=only)
        return {event_id: states[group] for event_id, group in groups.items()}

    async def members_before(self, event_ids: Iterable[str], server_name: str
                             ) -> dict[str, Mapping[str, str]]:
        """The member events (user ID -> event ID) of ``server_name``'s users in the state
        before each of the events, picked once per state group; outliers and unknown events
        are left out."""
        groups = await self._groups_before(event_ids)
        states = await self._store.group_states(set(groups.values()))
        members: dict[int, Mapping[str, str]] = {
            group: {k: e for (t, k), e in state.items()
                    if t == "m.room.member" and ":" in k
                    and k.split(":", 1)[1] == server_name}
            for group, state in states.items()}
        return {event_id: members[group] for event_id, group in groups.items()}

    async def _groups_before(self, event_ids: Iterable[str]) -> dict[str, int]:
        """The state group before each of the events (those that have one)."""
        stored = await self._store.stored_events(event_ids)
        return {event_id: e.state_group_before for event_id, e in stored.items()
                if e.state_group_before is not None}

    async def backfill_points(self, room_id: str) -> tuple[list[str], int | None]:
        return await self._store.db.events.backward_extremities(room_id)

    async def joined_rooms(self, user_id: str) -> list[str]:
        return await self._store.db.state.rooms_for_user(user_id)


def _stored_pdu(stored: StoredEvent) -> StoredPdu:
    return StoredPdu(stored.event_id, stored.room_id, stored.room_version, stored.pdu,
                     stored.depth, stored.stream_ordering, stored.redacted_by is not None,
                     stored.rejected_reason is not None, stored.outlier)
