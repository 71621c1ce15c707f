"""Room state: interned state keys, layered state groups, and each room's current state."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, func, select, text, tuple_

from storage.delta_map import DeltaMap
from storage.engine import DatabaseEngine
from storage.schema import current_state, events, state_groups, state_keys
from storage.state_layers import Layer, full_state, unpack_pairs

StateKey = tuple[str, str]
StateMap = dict[StateKey, str]
"""(type, state_key) -> event ID"""

_LAYER_CACHE_GROUPS = 20_000
_FULL_STATE_CACHE_ENTRIES = 2_000_000
_EVENT_ID_CACHE = 200_000


@dataclass(frozen=True, slots=True)
class CurrentStateEntry:
    type: str
    state_key: str
    event_id: str
    membership: str | None


class StateStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine
        self._key_nids: dict[StateKey, int] = {}
        self._keys_by_nid: dict[int, StateKey] = {}
        self._layers: OrderedDict[int, Layer] = OrderedDict()
        # Full states in nids (immutable: a group derived from another shares its map).
        self._full: OrderedDict[int, Mapping[int, int]] = OrderedDict()
        self._full_entries = 0
        self._event_ids: OrderedDict[int, str] = OrderedDict()
        self._event_nids: OrderedDict[str, int] = OrderedDict()

    # -- state keys -------------------------------------------------------------------------

    def cached_key_nid(self, key: StateKey) -> int | None:
        return self._key_nids.get(key)

    def remember_key(self, nid: int, key: StateKey) -> None:
        self._key_nids[key] = nid
        self._keys_by_nid[nid] = key

    async def key_nids(self, keys: Iterable[StateKey]) -> dict[StateKey, int]:
        """Nids of already interned keys (missing keys are left out)."""
        wanted = [k for k in keys if k not in self._key_nids]
        if wanted:
            async with self._db.read() as conn:
                for i in range(0, len(wanted), 200):
                    chunk = wanted[i:i + 200]
                    rows = await conn.execute(select(state_keys).where(
                        tuple_(state_keys.c.type, state_keys.c.state_key).in_(chunk)))
                    for row in rows:
                        self.remember_key(row.nid, (row.type, row.state_key))
        return {k: self._key_nids[k] for k in keys if k in self._key_nids}

    async def keys_for_nids(self, nids: Iterable[int]) -> dict[int, StateKey]:
        missing = [n for n in nids if n not in self._keys_by_nid]
        if missing:
            async with self._db.read() as conn:
                for i in range(0, len(missing), 500):
                    rows = await conn.execute(
                        select(state_keys).where(state_keys.c.nid.in_(missing[i:i + 500])))
                    for row in rows:
                        self.remember_key(row.nid, (row.type, row.state_key))
        return {n: self._keys_by_nid[n] for n in nids if n in self._keys_by_nid}

    # -- state groups -----------------------------------------------------------------------

    def remember_layer(self, layer: Layer, full: Mapping[int, int] | None = None) -> None:
        """Cache a group's layer and, given, its full state (never changed afterwards)."""
        self._layers[layer.group_id] = layer
        if len(self._layers) > _LAYER_CACHE_GROUPS:
            self._layers.popitem(last=False)
        if full is not None:
            self._remember_full(layer.group_id, full)

    async def chain(self, group_id: int) -> list[Layer]:
        """The layers of a group, root first."""
        out: list[Layer] = []
        next_id: int | None = group_id
        while next_id is not None and next_id in self._layers:
            layer = self._layers[next_id]
            out.append(layer)
            next_id = layer.parent_id
        if next_id is not None:
            async with self._db.read() as conn:
                rows = (await conn.execute(text(
                    "WITH RECURSIVE chain(id) AS (SELECT CAST(:gid AS BIGINT) UNION ALL "
                    "SELECT g.parent_id FROM state_groups g JOIN chain c ON g.id = c.id "
                    "WHERE g.parent_id IS NOT NULL) "
                    "SELECT g.id, g.parent_id, g.added, g.removed FROM state_groups g "
                    "WHERE g.id IN (SELECT id FROM chain)"), {"gid": next_id})).all()
            by_id = {r.id: Layer(r.id, r.parent_id, frozenset(unpack_pairs(r.added)),
                                 frozenset(unpack_pairs(r.removed))) for r in rows}
            while next_id is not None:
                layer = by_id[next_id]
                self.remember_layer(layer)
                out.append(layer)
                next_id = layer.parent_id
        out.reverse()
        return out

    async def prefetch_chains(self, group_ids: Iterable[int | None]) -> None:
        """Load the layers of many groups in one query (a sync over many rooms)."""
        missing = sorted({g for g in group_ids if g is not None and g not in self._full
                          and g not in self._layers})
        for i in range(0, len(missing), 500):
            chunk = missing[i:i + 500]
            params = {f"g{n}": gid for n, gid in enumerate(chunk)}
            starts = " UNION ".join(f"SELECT CAST(:g{n} AS BIGINT)" for n in range(len(chunk)))
            async with self._db.read() as conn:
                rows = (await conn.execute(text(
                    f"WITH RECURSIVE chain(id) AS ({starts} UNION "  # noqa: S608 (no input)
                    "SELECT g.parent_id FROM state_groups g JOIN chain c ON g.id = c.id "
                    "WHERE g.parent_id IS NOT NULL) "
                    "SELECT g.id, g.parent_id, g.added, g.removed FROM state_groups g "
                    "WHERE g.id IN (SELECT id FROM chain)"), params)).all()
            for r in rows:
                self.remember_layer(Layer(r.id, r.parent_id, frozenset(unpack_pairs(r.added)),
                                          frozenset(unpack_pairs(r.removed))))

    async def full_state_nids(self, group_id: int) -> Mapping[int, int]:
        """A group's full state in nids (shared: read it, never change it)."""
        cached = self._full.get(group_id)
        if cached is not None:
            self._full.move_to_end(group_id)
            return cached
        state = DeltaMap.owning(full_state(await self.chain(group_id)))
        self._remember_full(group_id, state)
        return state

    def _remember_full(self, group_id: int, state: Mapping[int, int]) -> None:
        """Cache a full state; the cache is bounded by entries, not groups (one big room
        weighs as much as many small ones)."""
        previous = self._full.pop(group_id, None)
        if previous is not None:
            self._full_entries -= len(previous)
        self._full[group_id] = state
        self._full_entries += len(state)
        while self._full_entries > _FULL_STATE_CACHE_ENTRIES and len(self._full) > 1:
            _, evicted = self._full.popitem(last=False)
            self._full_entries -= len(evicted)

    async def state_at_group(self, group_id: int | None, *,
                             only: Sequence[StateKey] | None = None) -> StateMap:
        """The state of a group as (type, state_key) -> event ID, optionally only some keys."""
        if group_id is None:
            return {}
        nids = await self.full_state_nids(group_id)
        if only is not None:
            wanted = await self.key_nids(only)
            nids = {k: nids[k] for k in wanted.values() if k in nids}
        keys = await self.keys_for_nids(nids.keys())
        event_ids = await self._event_ids_for_nids(nids.values())
        return {keys[k]: event_ids[e] for k, e in nids.items() if e in event_ids}

    async def states_at_groups(self, group_ids: Iterable[int | None], *,
                               only: Sequence[StateKey]) -> dict[int, StateMap]:
        """Some keys of the state of many groups: one query for all their layers, then each
        group's keys read off its few layers (top first) without building its full state."""
        groups = sorted({g for g in group_ids if g is not None})
        wanted = await self.key_nids(only)
        if not groups:
            return {}
        key_of = {nid: key for key, nid in wanted.items()}
        await self.prefetch_chains(groups)
        # Per layer, only the pairs of the wanted keys (a room's root layer is big and shared).
        subsets: dict[int, tuple[dict[int, int], set[int]]] = {}
        picked: dict[int, dict[int, int]] = {}
        for group in groups:
            found: dict[int, int] = {}
            open_keys = set(key_of)
            for layer in reversed(await self.chain(group)):
                if not open_keys:
                    break
                subset = subsets.get(layer.group_id)
                if subset is None:
                    subset = subsets[layer.group_id] = (
                        {k: e for k, e in layer.added if k in key_of},
                        {k for k, _ in layer.removed if k in key_of})
                added, removed = subset
                for key in list(open_keys):
                    # A layer removes, then adds: what it adds is the key's value.
                    if key in added:
                        found[key] = added[key]
                        open_keys.discard(key)
                    elif key in removed:
                        open_keys.discard(key)
            picked[group] = found
        event_ids = await self._event_ids_for_nids(
            e for found in picked.values() for e in found.values())
        return {group: {key_of[k]: event_ids[e] for k, e in found.items() if e in event_ids}
                for group, found in picked.items()}

    def remember_event_nid(self, nid: int, event_id: str) -> None:
        """An event's nid never changes: cache the mapping (state maps are in nids)."""
        self._event_ids[nid] = event_id
        self._event_nids[event_id] = nid
        if len(self._event_ids) > _EVENT_ID_CACHE:
            self._event_ids.popitem(last=False)
        if len(self._event_nids) > _EVENT_ID_CACHE:
            self._event_nids.popitem(last=False)

    def cached_event_nid(self, event_id: str) -> int | None:
        return self._event_nids.get(event_id)

    async def _event_ids_for_nids(self, nids: Iterable[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        wanted = []
        for nid in set(nids):
            event_id = self._event_ids.get(nid)
            if event_id is None:
                wanted.append(nid)
            else:
                out[nid] = event_id
        if wanted:
            async with self._db.read() as conn:
                for i in range(0, len(wanted), 500):
                    rows = await conn.execute(select(events.c.nid, events.c.event_id)
                                              .where(events.c.nid.in_(wanted[i:i + 500])))
                    for row in rows:
                        out[row.nid] = row.event_id
                        self.remember_event_nid(row.nid, row.event_id)
        return out

    async def nids_for_events(self, event_ids: Iterable[str]) -> dict[str, int]:
        """Stored events' nids by event ID (unknown IDs left out)."""
        wanted = list(set(event_ids))
        out: dict[str, int] = {}
        async with self._db.read() as conn:
            for i in range(0, len(wanted), 500):
                rows = await conn.execute(select(events.c.nid, events.c.event_id)
                                          .where(events.c.event_id.in_(wanted[i:i + 500])))
                for row in rows:
                    out[row.event_id] = row.nid
                    self.remember_event_nid(row.nid, row.event_id)
        return out

    # -- current state ----------------------------------------------------------------------

    async def current_state(self, room_id: str, *, types: Iterable[str] | None = None
                            ) -> list[CurrentStateEntry]:
        query = select(current_state).where(current_state.c.room_id == room_id)
        if types is not None:
            query = query.where(current_state.c.type.in_(list(types)))
        async with self._db.read() as conn:
            rows = await conn.execute(query)
            return [CurrentStateEntry(r.type, r.state_key, r.event_id, r.membership)
                    for r in rows]

    async def rooms_for_user(self, user_id: str, memberships: Sequence[str] = ("join",)
                             ) -> list[str]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(current_state.c.room_id).where(and_(
                current_state.c.type == "m.room.member",
                current_state.c.state_key == user_id,
                current_state.c.membership.in_(list(memberships)))))
            return [r[0] for r in rows]

    async def memberships_of(self, pairs: Sequence[tuple[str, str]]
                             ) -> dict[tuple[str, str], tuple[str, str]]:
        """(room, user) -> the user's current ``(membership, event_id)`` there, for many pairs
        in one query per chunk."""
        out: dict[tuple[str, str], tuple[str, str]] = {}
        wanted = set(pairs)
        for i in range(0, len(pairs), 500):
            chunk = pairs[i:i + 500]
            async with self._db.read() as conn:
                rows = await conn.execute(select(
                    current_state.c.room_id, current_state.c.state_key,
                    current_state.c.membership, current_state.c.event_id).where(and_(
                        current_state.c.room_id.in_({r for r, _ in chunk}),
                        current_state.c.type == "m.room.member",
                        current_state.c.state_key.in_({u for _, u in chunk}))))
                for row in rows:
                    if (row.room_id, row.state_key) in wanted:
                        out[(row.room_id, row.state_key)] = (row.membership, row.event_id)
        return out

    async def membership(self, room_id: str, user_id: str) -> tuple[str, str] | None:
        """The user's current ``(membership, event_id)`` in the room, if any."""
        async with self._db.read() as conn:
            row = (await conn.execute(select(current_state.c.membership,
                                             current_state.c.event_id).where(and_(
                current_state.c.room_id == room_id,
                current_state.c.type == "m.room.member",
                current_state.c.state_key == user_id)))).first()
        return (row.membership, row.event_id) if row is not None else None

    async def count_state_groups(self, room_id: str) -> int:
        async with self._db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(state_groups)
                                           .where(state_groups.c.room_id == room_id))).scalar_one())

