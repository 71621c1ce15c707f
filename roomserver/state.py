"""The state of a room's forks: the state before an event, and the room's current state, each
resolved with state resolution v2 (:mod:`core.state_res`) wherever branches meet.

- The state before an event is the resolution of the states after each of its prev events
  (when it follows the room's one extremity, that is simply the current state).
- The state after a state event is the state before it with the event in its place.
- The room's current state is the resolution of the states after each of its forward
  extremities.

The auth difference that resolution needs comes from the auth chain index kept at write time
(:mod:`storage.stores.auth_chains`); the reference walk through the event cache
(:func:`core.state_res.auth_chain_difference`) is the fallback when the index cannot answer.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from core.events.model import Event
from core.events.room_versions import RoomVersion
from core.state_res import auth_chain_difference, resolve_state
from roomserver.api import StateKey
from roomserver.snapshot import RoomSnapshot
from roomserver.store import GraphStore, Group
from storage.delta_map import DeltaMap, as_dict
from storage.stores.events import PersistItem

logger = logging.getLogger(__name__)

# States (event IDs) of the groups placed last, so that the next event on a branch does not
# convert its prev event's group from storage (a 10,000-member state cost ~25 ms to convert).
# Maps placed here share their base (DeltaMap), so each costs about its overlay.
_RECENT_GROUPS = 32


@dataclass(frozen=True, slots=True)
class StateAt:
    """A state map and, when it is one, its stored (or queued) state group."""

    state: Mapping[StateKey, str]
    group: int | None
    is_current: bool = False


class ForkState:
    def __init__(self, store: GraphStore) -> None:
        self._store = store
        self._recent: OrderedDict[int, Mapping[StateKey, str]] = OrderedDict()

    def remember(self, group: int | None, state: Mapping[StateKey, str]) -> None:
        """``state`` is the state of ``group`` (never changed afterwards)."""
        if group is None:
            return
        self._recent[group] = state
        self._recent.move_to_end(group)
        if len(self._recent) > _RECENT_GROUPS:
            self._recent.popitem(last=False)

    def current(self, snapshot: RoomSnapshot) -> StateAt:
        return StateAt(snapshot.state, snapshot.state_group, is_current=True)

    async def before(self, snapshot: RoomSnapshot, event: Event,
                     prev_states: Mapping[str, Mapping[StateKey, str]]) -> StateAt:
        """The state before a received event: the resolution of the states after its prev
        events. A prev event not in the graph here takes its state from ``prev_states``
        (another server's word, checked event by event) or, without it, is left out; with
        none known the current state stands in."""
        prevs = list(dict.fromkeys(event.prev_event_ids))
        if not prevs or set(prevs) == set(snapshot.extremities):
            return self.current(snapshot)
        groups = await self._groups_after(snapshot, prevs)
        known = list(dict.fromkeys(g for g in groups.values() if g is not None))
        given = [prev_states[p] for p in prevs if groups.get(p) is None and p in prev_states]
        if not known and not given:
            return self.current(snapshot)
        if len(known) == 1 and not given:
            return await self.at_group(snapshot, known[0])
        states = [*[(await self.at_group(snapshot, g)).state for g in known], *given]
        unique = _distinct(states)
        if len(unique) == 1:
            return StateAt(dict(unique[0]), None)
        return StateAt(await self.resolve(snapshot.room_version, unique), None)

    async def at_group(self, snapshot: RoomSnapshot, group: int) -> StateAt:
        if group == snapshot.state_group:
            return self.current(snapshot)
        state = self._recent.get(group)
        if state is None:
            state = await self._store.db.state.state_at_group(group)
            self.remember(group, state)
        return StateAt(state, group)

    async def after_extremities(self, snapshot: RoomSnapshot, extremities: Sequence[str],
                                known: Mapping[str, StateAt]) -> dict[StateKey, str]:
        """The resolution of the states after ``extremities`` (``known``: some of them)."""
        missing = [e for e in extremities if e not in known]
        groups = await self._groups_after(snapshot, missing)
        states: list[Mapping[StateKey, str]] = [known[e].state for e in extremities
                                                if e in known]
        for group in dict.fromkeys(g for g in groups.values() if g is not None):
            states.append((await self.at_group(snapshot, group)).state)
        unique = _distinct(states)
        if len(unique) == 1:
            return dict(unique[0])
        return await self.resolve(snapshot.room_version, unique)

    async def resolve(self, version: RoomVersion, states: Sequence[Mapping[StateKey, str]]
                      ) -> dict[StateKey, str]:
        fetch = self._store.get_events
        # Plain dicts: the algorithm walks whole states, at C speed on dicts.
        states = [as_dict(state) for state in states]
        # From the auth chain index; events it does not hold yet (queued, not committed) are
        # walked through the event cache down to indexed ones. None: walk it all.
        difference = await self._store.db.auth_chains.difference(states, fetch)
        walked = difference is None
        if difference is None:
            difference = await auth_chain_difference(states, fetch)
        resolved = await resolve_state(version, states, difference, fetch)
        logger.debug("Resolved %d state sets (%d in the auth difference%s)", len(states),
                     len(difference), ", walked" if walked else "")
        return resolved

    async def _groups_after(self, snapshot: RoomSnapshot, event_ids: Sequence[str]
                            ) -> dict[str, int | None]:
        """The state group after each event (None: unknown here, an outlier, rejected)."""
        out = {e: snapshot.extremity_groups[e] for e in event_ids
               if e in snapshot.extremity_groups}
        wanted = [e for e in event_ids if e not in out]
        if wanted:
            stored = await self._store.db.events.get_events(wanted)
            for event_id in wanted:
                found = stored.get(event_id)
                out[event_id] = found.state_group_after if found is not None \
                    and not found.outlier and found.rejected_reason is None else None
        return out

    async def group_for(self, snapshot: RoomSnapshot, at: Mapping[StateKey, str] | StateAt,
                        item: PersistItem) -> Group:
        """The state group holding a state: its own if it has one, else a new one planned
        over the current group and written with ``item``."""
        current = Group(snapshot.state_group, snapshot.state_nids, snapshot.chain)
        if isinstance(at, StateAt):
            if at.is_current:
                return current
            if at.group is not None:
                return await self._store.group(at.group)
            at = at.state
        # Only what differs from the current state is turned into nids.
        changed, removed = state_changes(snapshot.state, at)
        if not changed and not removed:
            return current
        new_keys = item.new_state_keys
        nids = await self._store.state_nids(dict(changed), new_keys)
        gone = [self._store.key_nid(k, new_keys) for k in removed]
        # An event without a nid (neither stored nor queued) leaves its key out, as whole.
        gone += [n for n in (self._store.key_nid(k, new_keys) for k, _ in changed)
                 if n not in nids]
        group, new = self._store.derive_group(current, nids, snapshot.room_id, gone)
        if new is not None:
            item.new_state_groups.append(new)
        return group


def _distinct(states: Sequence[Mapping[StateKey, str]]) -> list[Mapping[StateKey, str]]:
    """The different states among ``states`` (compared as maps: no sorting of big ones)."""
    out: list[Mapping[StateKey, str]] = []
    for state in states:
        if not any(state is seen or state == seen for seen in out):
            out.append(state)
    return out


def state_changes(old: Mapping[StateKey, str], new: Mapping[StateKey, str]
                  ) -> tuple[list[tuple[StateKey, str]], list[StateKey]]:
    """The entries of ``new`` that differ from ``old`` and the keys ``new`` lacks: from the
    overlays when ``new`` was derived from ``old`` (a state event on the current state), else
    by comparing the two whole (a resolved state)."""
    found = DeltaMap.changes(old, new)
    if found is not None:
        return found
    old, new = as_dict(old), as_dict(new)  # compared whole: at C speed on dicts
    return ([(k, e) for k, e in new.items() if old.get(k) != e],
            [k for k in old if k not in new])
