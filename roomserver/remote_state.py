"""Room state that comes from other servers whole: auth chains and state as outliers, the
room a remote join brings, memberships of rooms this server is not in (invites and their
rejections), and history from before our join (backfill)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from core.errors import MatrixError
from core.events.model import Event
from core.events.stripped import stripped
from roomserver.api import StateKey
from roomserver.placement import Placer
from roomserver.receive import ReceivedEvents
from roomserver.snapshot import RoomSnapshot
from roomserver.writer import Writer
from storage.stores.events import PersistItem


class RemoteState:
    def __init__(self, writer: Writer, placer: Placer, received: ReceivedEvents) -> None:
        self._writer = writer
        self._store = writer.store
        self._placer = placer
        self._received = received

    async def store_outliers(self, events: list[Event]) -> None:
        """Store checked events (auth chains, a room's state on joining) with no place in the
        timeline; already stored ones are skipped. The room must exist here."""
        known = await self._received.is_stored([e.event_id for e in events])
        now = self._writer.clock.time_ms()
        futures = []
        seen: set[str] = set()
        for event in sorted(events, key=lambda e: e.depth):
            if event.event_id in known or event.event_id in seen:
                continue
            seen.add(event.event_id)
            futures.append(self._writer.enqueue(self._store.outlier_item(event, now)))
        for future in futures:
            await self._writer.committed(future, events[0].room_id)

    async def join_remote_room(self, join: Event, state: list[Event], auth_chain: list[Event]
                               ) -> None:
        """Store the room a remote join brought: its state and auth chain as outliers, then
        our join event as the first event of its timeline here, on that state."""
        room_id = join.room_id
        version = join.room_version
        create = next((e for e in state if e.state_tuple == ("m.room.create", "")), None)
        if create is None:
            raise MatrixError("The room's state has no create event", status=502)
        await self._store.load_key_nids([e.state_tuple for e in state
                                         if e.state_tuple is not None])
        futures = []
        async with self._writer.lock(room_id):
            existing = await self._writer.snapshot(room_id)
            now = self._writer.clock.time_ms()
            known = await self._received.is_stored([e.event_id for e in [*state, *auth_chain]])
            outliers: dict[str, PersistItem] = {}
            for event in sorted([*auth_chain, *state], key=lambda e: e.depth):
                if event.event_id not in known and event.event_id not in outliers:
                    outliers[event.event_id] = self._store.outlier_item(event, now)
            nids = {e: i.nid for e, i in outliers.items()}
            stored_ids = [e.event_id for e in state if e.event_id not in nids]
            nids.update(await self._store.event_nids(stored_ids))
            new_keys: list[tuple[int, str, str]] = []
            state_map: dict[StateKey, str] = {}
            state_nids: dict[int, int] = {}
            joined: set[str] = set()
            delta = []
            for event in state:
                key = event.state_tuple
                if key is None:
                    continue
                state_map[key] = event.event_id
                state_nids[self._store.key_nid(key, new_keys)] = nids[event.event_id]
                delta.append((key[0], key[1], event.event_id, event.membership))
                if event.membership == "join" and event.state_key:
                    joined.add(event.state_key)
            base, new_group = self._store.whole_group(state_nids, room_id)
            group = base.group_id
            snapshot = RoomSnapshot(room_id, version, state_map, state_nids, group, [base],
                                    list(join.prev_event_ids), max(join.depth - 1, 0), joined,
                                    {e: group for e in join.prev_event_ids})
            item = self._placer.local(snapshot, join, None, now)
            item.new_state_keys[:0] = new_keys
            item.new_state_groups.insert(0, new_group)
            item.state_group_before = group
            item.current_state_delta[:0] = delta
            item.destinations = []  # the resident server sends our join to the others
            if existing is None:
                item.new_room = (version.identifier, create.sender, now)
            self._writer.remember_room(snapshot)
            futures = [self._writer.enqueue(o) for o in outliers.values()]
            futures.append(self._writer.enqueue(item))
        for future in futures:
            await self._writer.committed(future, room_id)

    async def store_remote_membership(self, event: Event, stripped_state: list[Any] | None
                                      ) -> None:
        """Store a member event of a room this server is not in (an invite of one of our
        users, or the leave that rejects it): it shows in that user's sync, with the stripped
        state that came with an invite."""
        room_id = event.room_id
        async with self._writer.lock(room_id):
            snapshot = await self._writer.snapshot(room_id)
            now = self._writer.clock.time_ms()
            item = self._store.outlier_item(event, now)
            item.outlier = False
            item.stream_ordering = self._store.next_stream()
            assert event.state_key is not None
            item.current_state_delta.append(("m.room.member", event.state_key,
                                             event.event_id, event.membership))
            if stripped_state is not None:  # (servers send whole events since Matrix 1.16)
                item.invite_state_json = json.dumps(
                    [stripped(s) for s in stripped_state if isinstance(s, Mapping)])
            if snapshot is None:
                item.new_room = (event.room_version.identifier, event.sender, now)
                self._writer.remember_room(RoomSnapshot(room_id, event.room_version, {}, {},
                                                        None, [], [], 0))
            future = self._writer.enqueue(item)
        await self._writer.committed(future, room_id)

    def reserve_backfill(self, count: int) -> list[int]:
        """Stream positions for ``count`` backfilled events, lowest first: give them to the
        events oldest first, so the older an event the earlier its place."""
        return self._store.reserve_backfill(count)

    async def backfill_queued(self, event: Event, position: int, state_group: int | None
                              ) -> asyncio.Future[None] | None:
        """Store an event of the room's history from before anything here (backfilled from
        another server) at ``position`` (from ``reserve_backfill``), answering with its
        commit's future (None when it is in the timeline already).

        It is checked against its own auth events only (the state before it is not known
        here) and changes no current state; it reads as of ``state_group`` (the state before
        the earliest event here) for history visibility. An event stored as an outlier (the
        room's state fetched on joining) takes its place in the timeline.

        Raises:
            MissingEvents: some of its auth events are not stored.
            AuthError: it fails the authorization rules against them.
        """
        async with self._writer.lock(event.room_id):
            if self._writer.queued(event.event_id) is not None:
                return None
            stored = await self._store.stored_event(event.event_id)
            if stored is not None and (not stored.outlier or stored.rejected_reason):
                return None
            create = await self._received.auth_against_auth_events(event)
            nid = await self._store.stored_nid(event.event_id) if stored is not None else None
            item = self._store.item(event, room_version=event.room_version,
                                    now=self._writer.clock.time_ms(), stream_ordering=position,
                                    group_before=state_group, group_after=state_group, nid=nid)
            item.redacts = None
            item.moves_head = False
            item.was_outlier = stored is not None
            if event.redacts is not None and create is not None:
                auth = await self._store.get_events(event.auth_event_ids)
                item.redacts, item.redaction_requires = await self._received.redaction_scope(
                    event, {e.state_tuple: e for e in auth.values() if e.state_tuple}, create)
            self._store.cache_event(event)
            return self._writer.enqueue(item)
