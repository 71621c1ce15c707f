"""The roomserver's store: the only writer of the event, edge, state-group, state-key,
current-state and room-head tables. Stored events are rewritten (redacted content erased,
unseen history's content dropped) and deleted (purges) here too, so that the cache forgets
them as they change.

It allocates their row IDs in memory (the writer is the one process that writes them), plans
each new state group's layers, turns an authorized event into the write that stores it, loads
a room's snapshot, and keeps the event cache that every read of the roomserver goes through.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from core.errors import MatrixError
from core.events.canonical import encode_canonical
from core.events.model import Event
from core.events.redaction import redact
from core.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from core.stats import HitCounter
from roomserver.api import StateKey
from roomserver.snapshot import RoomSnapshot
from storage import Database
from storage.delta_map import DeltaMap
from storage.ids import IdAllocator
from storage.schema import events as events_table
from storage.schema import state_groups as state_groups_table
from storage.schema import state_keys as state_keys_table
from storage.state_layers import Layer, Pair, pack_pairs, plan_group
from storage.stores.events import NewStateGroup, PersistItem, StoredEvent

_EVENT_CACHE_SIZE = 20_000


@dataclass(slots=True)
class Group:
    """A state group, stored or about to be: its ID, full state in nids (immutable: groups
    derived from it share it), and its layers."""

    group_id: int | None
    nids: Mapping[int, int]
    chain: list[Layer]


class GraphStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._events: OrderedDict[str, Event] = OrderedDict()
        self.cache_stats = HitCounter()  # lookups of the event cache (metrics)
        # Bumped by every forgetting: a load that overlapped one does not cache what it read
        # (it may be what was just erased).
        self._evictions = 0
        self._nids = IdAllocator(events_table.c.nid)
        self._stream = IdAllocator(events_table.c.stream_ordering)
        # History backfilled from other servers comes before everything: negative positions.
        self._backfill_stream = IdAllocator(events_table.c.stream_ordering, descending=True)
        self._groups = IdAllocator(state_groups_table.c.id)
        self._key_nids = IdAllocator(state_keys_table.c.nid)
        self._last_encoded: tuple[str, bytes] = ("", b"")
        # Interned state keys whose row is not committed yet: every event using one writes it
        # (a failed write may have been the one that carried it).
        self._unstored_keys: set[int] = set()

    async def start(self) -> int:
        """Load the ID allocators; returns the last stream position."""
        for allocator in (self._nids, self._stream, self._backfill_stream, self._groups,
                          self._key_nids):
            await allocator.load(self.db.engine)
        return self._stream.last

    # -- events -----------------------------------------------------------------------------

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, Event]:
        """Events by ID from the cache or the database (rejected and unknown ones left out)."""
        wanted = list(event_ids)
        out = {e: self._events[e] for e in wanted if e in self._events}
        missing = [e for e in wanted if e not in out]
        stats = self.cache_stats
        stats.hits += len(out)
        if missing:
            stats.misses += len(missing)
            evictions = self._evictions
            for event_id, stored in (await self.db.events.get_events(missing)).items():
                if stored.rejected_reason is None:
                    event = event_from_stored(stored)
                    out[event_id] = self.cache_event(event) \
                        if evictions == self._evictions else event
        return out

    def cached(self, event_id: str) -> bool:
        return event_id in self._events

    async def stored_event(self, event_id: str) -> StoredEvent | None:
        """The event as stored (outliers and rejected events too), bypassing the cache."""
        return (await self.db.events.get_events([event_id])).get(event_id)

    async def stored_events(self, event_ids: Iterable[str]) -> dict[str, StoredEvent]:
        """Events as stored (outliers and rejected events too), bypassing the cache."""
        return await self.db.events.get_events(event_ids)

    def cache_event(self, event: Event) -> Event:
        self._events[event.event_id] = event
        if len(self._events) > _EVENT_CACHE_SIZE:
            self._events.popitem(last=False)
        return event

    def forget_events(self, event_ids: Iterable[str]) -> None:
        self._evictions += 1
        for event_id in event_ids:
            self._events.pop(event_id, None)

    def forget_room_events(self, room_id: str) -> None:
        self._evictions += 1
        for event_id in [e for e, ev in self._events.items() if ev.room_id == room_id]:
            del self._events[event_id]

    def encoded(self, event: Event) -> bytes:
        """The event's canonical JSON, encoded once per new event."""
        if self._last_encoded[0] != event.event_id:
            self._last_encoded = (event.event_id, encode_canonical(dict(event.pdu)))
        return self._last_encoded[1]

    # -- IDs and state groups ---------------------------------------------------------------

    def next_stream(self) -> int:
        return self._stream.next()

    def reserve_backfill(self, count: int) -> list[int]:
        return sorted(self._backfill_stream.next() for _ in range(count))

    def new_group_id(self) -> int:
        return self._groups.next()

    def new_nid(self, event_id: str) -> int:
        nid = self._nids.next()
        self.db.state.remember_event_nid(nid, event_id)
        return nid

    async def stored_nid(self, event_id: str) -> int | None:
        """The nid of a stored event (an outlier taking its place in the timeline keeps
        it), remembered for the state maps."""
        return (await self.event_nids([event_id])).get(event_id)

    async def event_nids(self, event_ids: Iterable[str]) -> dict[str, int]:
        """Stored events' nids (unknown ones left out), remembered for the state maps."""
        return await self.db.state.nids_for_events(event_ids)

    async def load_key_nids(self, keys: Iterable[StateKey]) -> None:
        """Load the nids of the keys other rooms interned already (before ``key_nid``)."""
        await self.db.state.key_nids(keys)

    def key_nid(self, key: StateKey, new_keys: list[tuple[int, str, str]]) -> int:
        """The key's nid, interning it if new (and listing it in ``new_keys`` while its row
        is not committed). Call ``load_key_nids`` first for keys other rooms interned."""
        nid = self.db.state.cached_key_nid(key)
        if nid is None:
            nid = self._key_nids.next()
            self.db.state.remember_key(nid, key)
            self._unstored_keys.add(nid)
        if nid in self._unstored_keys:
            new_keys.append((nid, key[0], key[1]))
        return nid

    async def state_nids(self, state: Mapping[StateKey, str],
                         new_keys: list[tuple[int, str, str]]) -> dict[int, int]:
        """A state map in nids (its events are stored or queued)."""
        await self.load_key_nids(list(state))
        event_nids = await self.db.state.nids_for_events(
            [e for e in state.values() if self.db.state.cached_event_nid(e) is None])
        out: dict[int, int] = {}
        for key, event_id in state.items():
            nid = event_nids.get(event_id) or self.db.state.cached_event_nid(event_id)
            if nid is not None:
                out[self.key_nid(key, new_keys)] = nid
        return out

    def derive_group(self, base: Group, changes: Mapping[int, int], room_id: str,
                     removed: Iterable[int] = ()) -> tuple[Group, NewStateGroup | None]:
        """The group for the state ``base`` becomes with ``changes`` (state key nid -> event
        nid) set and the ``removed`` keys deleted: ``base`` itself if that changes nothing,
        else a new group planned as layers over ``base`` (remembered at once, written with
        the item that carries the returned ``NewStateGroup``). The work follows the change,
        not the size of the state."""
        old = base.nids
        set_ = [(k, e) for k, e in changes.items() if old.get(k) != e]
        dropped = {(k, e) for k in removed if k not in changes and (e := old.get(k)) is not None}
        if not set_ and not dropped and base.group_id is not None:
            return base, None
        replaced = {(k, e) for k, _ in set_ if (e := old.get(k)) is not None}
        nids = DeltaMap.of(old).changed(set_, [k for k, _ in dropped])
        return self._new_group(base, nids, set(set_), dropped | replaced, room_id)

    def _new_group(self, base: Group, nids: DeltaMap[int, int], added: set[Pair],
                   removed: set[Pair], room_id: str) -> tuple[Group, NewStateGroup]:
        plan = plan_group(base.chain, added, removed)
        group_id = self.new_group_id()
        layer = Layer(group_id, plan.parent_id, plan.added, plan.removed)
        parent_depth = next((i for i, lay in enumerate(base.chain)
                             if lay.group_id == plan.parent_id), -1)
        chain = [*base.chain[:parent_depth + 1], layer]
        self.db.state.remember_layer(layer, nids)
        return Group(group_id, nids, chain), NewStateGroup(
            group_id, room_id, plan.parent_id, pack_pairs(plan.added), pack_pairs(plan.removed))

    def whole_group(self, nids: Mapping[int, int], room_id: str
                    ) -> tuple[Layer, NewStateGroup]:
        """A new state group of ``nids`` stored whole, one layer with no parent (the state a
        remote join brought), remembered at once; written with the item that carries the
        returned ``NewStateGroup``."""
        layer = Layer(self.new_group_id(), None, frozenset(nids.items()), frozenset())
        self.db.state.remember_layer(layer, dict(nids))
        return layer, NewStateGroup(layer.group_id, room_id, None, pack_pairs(layer.added), b"")

    async def group(self, group_id: int | None) -> Group:
        if group_id is None:
            return Group(None, {}, [])
        return Group(group_id, DeltaMap.of(await self.db.state.full_state_nids(group_id)),
                     await self.db.state.chain(group_id))

    def keys_committed(self, items: Sequence[PersistItem]) -> None:
        self._unstored_keys.difference_update(n for i in items for n, _, _ in i.new_state_keys)

    # -- writes -----------------------------------------------------------------------------

    def item(self, event: Event, *, room_version: RoomVersion, now: int,
             stream_ordering: int | None, group_before: int | None, group_after: int | None,
             nid: int | None = None) -> PersistItem:
        """The write of one event (the caller fills in what it changes)."""
        return PersistItem(
            event_id=event.event_id, room_id=event.room_id,
            pdu_json=self.encoded(event).decode("utf-8"),
            nid=nid if nid is not None else self.new_nid(event.event_id),
            stream_ordering=stream_ordering, depth=event.depth, type=event.type,
            state_key=event.state_key, sender=event.sender,
            origin_server_ts=event.origin_server_ts, received_ts=now,
            prev_event_ids=event.prev_event_ids, auth_event_ids=event.auth_event_ids,
            state_group_before=group_before, state_group_after=group_after,
            redacts=event.redacts, pdu=dict(event.pdu), room_version=room_version.identifier)

    def outlier_item(self, event: Event, now: int) -> PersistItem:
        """An event with no place in the timeline or the state (an outlier redacts
        nothing)."""
        item = self.item(event, room_version=event.room_version, now=now,
                         stream_ordering=None, group_before=None, group_after=None)
        item.redacts = None
        item.outlier = True
        item.moves_head = False
        # Readable at once: the next event of a transaction may cite it among its auth
        # events before the batch is written (a soft-failed member event, say).
        self.cache_event(event)
        return item

    async def persist_batch(self, items: Sequence[PersistItem]) -> None:
        redacted = await self.db.events.persist_batch(items)
        if redacted:  # loaded again, in their redacted form (event_from_stored)
            self.forget_events(redacted)

    # -- rewriting and deleting stored events (``api.EventErasure``) -----------------------

    async def erase_redacted(self, pruned: Mapping[str, str]) -> None:
        """Store redacted events in their pruned form and mark their redactions done."""
        await self.db.events.erase_redacted(dict(pruned))
        self.forget_events(pruned)

    async def drop_content(self, room_id: str, pruned: Mapping[str, str],
                           up_to: tuple[int, int]) -> None:
        """Store history nobody can see in its pruned form, out of the search index, and
        move the room's dropped point to ``up_to``."""
        await self.db.events.drop_content(room_id, dict(pruned), up_to)
        self.forget_events(pruned)

    async def delete_events(self, nids_and_ids: Sequence[tuple[int, str]]) -> None:
        """Delete events (``(nid, event ID)``) with their edges, redaction records and
        search entries (a history purge)."""
        await self.db.purge.delete_events(nids_and_ids)
        event_ids = [e for _, e in nids_and_ids]
        self.db.events.forget_cached(event_ids)
        self.forget_events(event_ids)

    # -- loading ----------------------------------------------------------------------------

    async def group_states(self, group_ids: Iterable[int], *,
                           only: Sequence[StateKey] | None = None
                           ) -> dict[int, Mapping[StateKey, str]]:
        """The states of groups (or only their keys ``only``): their layers in one query."""
        groups = set(group_ids)
        if only is not None:
            return dict(await self.db.state.states_at_groups(groups, only=only))
        await self.db.state.prefetch_chains(groups)
        return {g: await self.db.state.state_at_group(g) for g in sorted(groups)}

    async def load_snapshot(self, room_id: str) -> RoomSnapshot | None:
        info = await self.db.events.room_info(room_id)
        if info is None:
            return None
        version_id, group_id = info
        version = KNOWN_ROOM_VERSIONS.get(version_id)
        if version is None:
            raise MatrixError(f"Unsupported room version {version_id}", status=400,
                              errcode="M_UNSUPPORTED_ROOM_VERSION")
        chain = await self.db.state.chain(group_id) if group_id is not None else []
        state_nids = await self.db.state.full_state_nids(group_id) if group_id else {}
        state = DeltaMap.owning(await self.db.state.state_at_group(group_id))
        head = await self.db.events.room_head(room_id)
        extremities, depth = (head.extremities, head.depth) if head else ([], 0)
        members = await self.db.state.current_state(room_id, types=["m.room.member"])
        return RoomSnapshot(room_id, version, state, DeltaMap.of(state_nids), group_id, chain,
                            extremities, depth,
                            {m.state_key for m in members if m.membership == "join"})


def event_from_stored(stored: StoredEvent) -> Event:
    """The event as the room sees it: redacted events in their redacted form (their stored
    content stays until the retention period is over, for moderators)."""
    version = KNOWN_ROOM_VERSIONS[stored.room_version]
    pdu = redact(stored.pdu, version) if stored.redacted_by is not None else stored.pdu
    return Event(stored.event_id, version, pdu)
