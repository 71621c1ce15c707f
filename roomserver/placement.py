"""Placing an authorized event in its room: the write that stores it, and the room's state
and head after it (the snapshot moves past it at once, ahead of the commit).

An event built here follows every forward extremity, so the state before it is the current
state. A received event may follow only some of them, or older events: the state before it
and the room's current state after it are resolved (:class:`roomserver.state.ForkState`).
"""

from __future__ import annotations

from collections.abc import Mapping

from core.events.model import Event
from roomserver.api import NewEvent, StateKey
from roomserver.snapshot import RoomSnapshot
from roomserver.state import ForkState, StateAt, state_changes
from roomserver.store import GraphStore, Group
from storage.delta_map import DeltaMap
from storage.stores.events import PersistItem


class Placer:
    def __init__(self, store: GraphStore, forks: ForkState, server_name: str, *,
                 federates: bool = True) -> None:
        self._store = store
        self._forks = forks
        self._server_name = server_name
        self._federates = federates

    def local(self, snapshot: RoomSnapshot, event: Event, new: NewEvent | None, now: int, *,
              relay_except: str | None = None) -> PersistItem:
        """The write of an event that follows the room's forward extremities (built here, or
        one we asked another server to sign): the current state is the state before it,
        and it replaces the extremities it lists (all of them, unless there were more than
        an event may list)."""
        servers_before = snapshot.servers() if self._federates else set()
        item = self._store.item(event, room_version=snapshot.room_version, now=now,
                                 stream_ordering=self._store.next_stream(),
                                 group_before=snapshot.state_group,
                                 group_after=snapshot.state_group)
        item.built_here = new is not None
        if new is not None and new.txn_id is not None:
            item.device_id, item.txn_id = new.device_id, new.txn_id
        key = event.state_tuple
        if key is not None:
            # The state moves by one entry: the work follows that, not the room's size.
            current = Group(snapshot.state_group, snapshot.state_nids, snapshot.chain)
            after, new_group = self._store.derive_group(
                current, {self._store.key_nid(key, item.new_state_keys): item.nid},
                snapshot.room_id)
            if new_group is not None:
                item.new_state_groups.append(new_group)
            item.state_group_after = after.group_id
            state = DeltaMap.of(snapshot.state).changed({key: event.event_id})
            self._move_state(snapshot, item, state, after, {event.event_id: event.membership})
        # Extremities beyond the prev events an event may list stay, for the next to merge.
        prevs = set(event.prev_event_ids)
        left = [e for e in snapshot.extremities if e not in prevs and e != event.event_id]
        self._move_head(snapshot, event, item, [*left, event.event_id],
                        item.state_group_after)
        self._route(snapshot, event, item, servers_before, relay_except)
        return item

    async def received(self, snapshot: RoomSnapshot, event: Event, before: StateAt, now: int,
                       *, relay_except: str | None = None) -> PersistItem:
        """The write of a received event with ``before``, the state before it: its own state
        after it, and the room's current state resolved across the forward extremities."""
        prevs = set(event.prev_event_ids)
        others = [e for e in snapshot.extremities if e not in prevs]
        if before.is_current and not others:
            return self.local(snapshot, event, None, now, relay_except=relay_except)
        servers_before = snapshot.servers() if self._federates else set()
        self._store.cache_event(event)  # resolution reads it with the other branches' events
        item = self._store.item(event, room_version=snapshot.room_version, now=now,
                                stream_ordering=self._store.next_stream(), group_before=None,
                                group_after=None)
        before_group = await self._forks.group_for(snapshot, before, item)
        after_state: Mapping[StateKey, str] = before.state
        after_group = before_group
        key = event.state_tuple
        if key is not None:
            after_group, new_group = self._store.derive_group(
                before_group, {self._store.key_nid(key, item.new_state_keys): item.nid},
                snapshot.room_id)
            if new_group is not None:
                item.new_state_groups.append(new_group)
            after_state = DeltaMap.of(before.state).changed({key: event.event_id})
        item.state_group_before = before_group.group_id
        item.state_group_after = after_group.group_id
        self._forks.remember(after_group.group_id, after_state)
        current: Mapping[StateKey, str]
        if others:
            current = await self._forks.after_extremities(
                snapshot, [*others, event.event_id],
                {event.event_id: StateAt(after_state, after_group.group_id)})
            current_group = after_group if current == after_state else \
                await self._forks.group_for(snapshot, current, item)
        else:
            current, current_group = after_state, after_group
        changes = state_changes(snapshot.state, current)
        changed_members = [e for k, e in changes[0] if k[0] == "m.room.member"
                           and e != event.event_id]
        memberships = {e.event_id: e.membership for e in
                       (await self._store.get_events(changed_members)).values()}
        memberships[event.event_id] = event.membership
        self._move_state(snapshot, item, current, current_group, memberships, changes)
        self._move_head(snapshot, event, item, [*others, event.event_id], after_group.group_id)
        self._route(snapshot, event, item, servers_before, relay_except)
        return item

    def _move_state(self, snapshot: RoomSnapshot, item: PersistItem,
                    state: Mapping[StateKey, str], group: Group,
                    memberships: Mapping[str, str | None],
                    changes: tuple[list[tuple[StateKey, str]], list[StateKey]] | None = None
                    ) -> None:
        """The room's current state becomes ``state`` (held in ``group``); ``memberships``:
        the membership of each member event among the changes; ``changes``: what differs
        from the current state (``_changes``), when already known."""
        if item.state_key is not None:
            item.replaces_state = snapshot.state.get((item.type, item.state_key))
        changed, removed = changes if changes is not None else state_changes(snapshot.state, state)
        for (type_, state_key), event_id in changed:
            membership = memberships.get(event_id) if type_ == "m.room.member" else None
            item.current_state_delta.append((type_, state_key, event_id, membership))
            if type_ == "m.room.member":
                if membership == "join":
                    snapshot.join(state_key)
                else:
                    snapshot.leave(state_key)
        for type_, state_key in removed:
            item.current_state_removed.append((type_, state_key))
            if type_ == "m.room.member":
                snapshot.leave(state_key)
        snapshot.state = DeltaMap.of(state)
        self._forks.remember(group.group_id, snapshot.state)
        snapshot.state_nids = DeltaMap.of(group.nids)
        snapshot.chain = list(group.chain)
        snapshot.state_group = group.group_id
        item.head_state_group = group.group_id

    def _move_head(self, snapshot: RoomSnapshot, event: Event, item: PersistItem,
                   extremities: list[str], group_after: int | None) -> None:
        for prev in event.prev_event_ids:
            snapshot.extremity_groups.pop(prev, None)
        snapshot.extremities = extremities
        snapshot.extremity_groups[event.event_id] = group_after
        item.extremities_after = list(extremities)
        snapshot.depth = max(snapshot.depth, event.depth)
        if item.head_state_group is None:
            item.head_state_group = snapshot.state_group
        self._store.cache_event(event)

    def _route(self, snapshot: RoomSnapshot, event: Event, item: PersistItem,
               servers_before: set[str], relay_except: str | None) -> None:
        """An event sent from here goes to every other server in the room before or after it
        (and to a member event's target's server); an event received from ``relay_except``
        (a join, leave or knock it asked us to sign in) goes to the other servers too; any
        other server's event is its own server's to send."""
        if not self._federates:
            return
        origin = event.sender.split(":", 1)[1]
        if origin != self._server_name and relay_except is None:
            return
        servers = servers_before | snapshot.servers()
        if event.type == "m.room.member" and event.state_key and ":" in event.state_key:
            servers.add(event.state_key.split(":", 1)[1])
        item.destinations = sorted(servers - {self._server_name, origin, relay_except or ""})

