"""State resolution v2 (room versions 2-11) and v2.1 (room version 12).

Spec: https://spec.matrix.org/v1.16/rooms/v2/#state-resolution and, for v2.1,
https://spec.matrix.org/v1.16/rooms/v12/#state-resolution (MSC4297). The algorithm:

1. Split the state sets into the *unconflicted state map* (keys every set has, with the same
   event) and the *conflicted state set* (every other event). The *full conflicted set* is the
   conflicted state set plus the *auth difference* and, in v2.1, the *conflicted state
   subgraph* (events both auth ancestors and auth descendants of conflicted events).
2. Take the *power events* of the full conflicted set, with their auth ancestors in it, in
   *reverse topological power ordering*; apply the *iterative auth checks* to them, starting
   from the unconflicted state map (v2) or, in v2.1, from an **empty** state map.
3. Order the remaining events of the full conflicted set by *mainline ordering* based on the
   power levels event of that partially resolved state, and apply the iterative auth checks to
   them, starting from the partially resolved state.
4. Replace every key of the result that the unconflicted state map has with its event.

The unconflicted state is not laid back over the state between steps 2 and 3: in v2.1 the
mainline of step 3 is that of the power levels the replayed power events reached (none, if no
power levels event was in the full conflicted set), as in Synapse and ruma.

Why v2.1 (MSC4297): a state set from a partial synchronisation can hold an outdated event.
Starting from the unconflicted state then checks the replayed events against state their own
auth chains never saw ("Problem A": both forks agree Alice has left, so her conflicting join
rules both fail and the room loses its join rules); and the auth difference misses events
every auth chain holds but the conflict depends on ("Problem B": Bob's promotion, needed for
Bob's later promotion of Charlie, is in both chains, so only the stale and the new power
levels are replayed and the new one fails). Replaying on an empty map falls back to each
event's own ``auth_events``; adding the subgraph replays the events in between.

Fetching: one fetch of the full conflicted set (v2.1: one per level of the auth ancestors of
the conflicted events instead), one of everything the auth checks and the power ordering read,
and one per level of the power levels chains the mainline needs that are not loaded yet.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence

from core.events.model import Event
from core.events.room_versions import RoomVersion
from core.rooms.auth import AuthError, auth_types_for_event, check_auth_rules
from core.state_res.auth_chain import conflicted_state_subgraph
from core.state_res.loader import POWER_LEVELS_KEY, EventFetcher, EventLoader, StateKey
from core.state_res.ordering import is_power_event, mainline_order, reverse_topological_power_order

logger = logging.getLogger(__name__)


async def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    auth_chain_difference: Collection[str],
    fetch: EventFetcher,
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` into one state (see the module docstring for the algorithm).

    The answer does not depend on the order of ``state_sets``.

    Args:
        room_version: The room's version; ``state_res_v2_1`` selects v2.1.
        state_sets: The states to resolve (the states after the ``prev_events`` of an event),
            each ``(type, state_key) -> event ID``. All their events are in one room.
        auth_chain_difference: Their auth difference, the state events themselves counted in
            the auth chains (see :mod:`core.state_res.auth_chain`; the roomserver's index, or
            :func:`core.state_res.auth_chain_difference`).
        fetch: Fetches events by ID, leaving out unknown and rejected ones. Events that cannot
            be fetched are left out of the full conflicted set and of the auth checks (as
            Synapse does); the unconflicted state is taken as it is, unfetched. (The spec
            would still replay an event rejected only against the state before it, not
            against its own auth events; Synapse leaves those out too.)

    Returns:
        The resolved state.
    """
    unconflicted, conflicted = split_state_sets(state_sets)
    if not conflicted:
        return unconflicted
    loader = EventLoader(fetch)
    conflicted_ids = set(itertools.chain.from_iterable(conflicted.values()))
    full_conflicted = await full_conflicted_set(
        room_version, conflicted_ids, auth_chain_difference, loader
    )
    initial_state = {} if room_version.state_res_v2_1 else unconflicted
    await _load_for_auth_checks(room_version, full_conflicted, initial_state, loader)

    power_events = [e for e in full_conflicted if is_power_event(_known(loader, e))]
    power_ordered = reverse_topological_power_order(
        room_version, power_events, full_conflicted, loader
    )
    partial = iterative_auth_checks(room_version, power_ordered, initial_state, loader)

    replayed = set(power_ordered)
    others = [e for e in full_conflicted if e not in replayed]
    power_levels_id = partial.get(POWER_LEVELS_KEY)
    await loader.load_power_levels_chains(
        [*others, *([power_levels_id] if power_levels_id is not None else [])]
    )
    others_ordered = mainline_order(others, power_levels_id, loader)
    resolved = iterative_auth_checks(room_version, others_ordered, partial, loader)

    resolved.update(unconflicted)
    logger.debug(
        "Resolved %d state sets: %d conflicted keys, full conflicted set %d (%d power "
        "events replayed), %d fetches",
        len(state_sets), len(conflicted), len(full_conflicted), len(power_ordered),
        loader.fetches,
    )
    return resolved


def split_state_sets(
    state_sets: Iterable[Mapping[StateKey, str]],
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """Split state sets into the unconflicted state map and the conflicted state set.

    A key present in every set with the same event is unconflicted; any other key is
    conflicted, with the events the sets that have it give it (a key missing from one set is
    conflicted even if the others agree).

    Returns:
        ``(unconflicted state map, conflicted events by key)``.
    """
    sets = list(state_sets)
    unconflicted: dict[StateKey, str] = {}
    conflicted: dict[StateKey, set[str]] = {}
    if not sets:
        return unconflicted, conflicted
    first, rest = sets[0], sets[1:]
    for key, event_id in first.items():
        if all(state_set.get(key) == event_id for state_set in rest):
            unconflicted[key] = event_id
    for state_set in sets:
        for key, event_id in state_set.items():
            if key not in unconflicted:
                conflicted.setdefault(key, set()).add(event_id)
    return unconflicted, conflicted


async def full_conflicted_set(
    room_version: RoomVersion,
    conflicted: Collection[str],
    auth_difference: Collection[str],
    loader: EventLoader,
) -> set[str]:
    """The full conflicted set: the conflicted events, the auth difference and, in v2.1, the
    conflicted state subgraph; fetched, and without the events that could not be."""
    full = set(conflicted).union(auth_difference)
    if room_version.state_res_v2_1:
        full |= await conflicted_state_subgraph(conflicted, loader)
    await loader.load(full)
    return {event_id for event_id in full if loader.get(event_id) is not None}


def iterative_auth_checks(
    room_version: RoomVersion,
    event_ids: Iterable[str],
    initial_state: Mapping[StateKey, str],
    loader: EventLoader,
) -> dict[StateKey, str]:
    """The iterative auth checks: apply each event, in order, to the state if the
    authorization rules allow it against that state; ignore it otherwise.

    The state checked against is the event's own ``auth_events``, with every key the auth
    events selection picks for it (``auth_types_for_event``) taken from the state instead where
    the state has it (spec: a key "not present in the state" falls back to "the appropriate
    state event from the event's ``auth_events``"; rejected auth events are never fetched). In
    v12 the create event, never among ``auth_events``, is the one the room ID names.

    Args:
        room_version: The room's version.
        event_ids: The events, in order (known, with their auth events loaded).
        initial_state: The state to start from (not changed).
        loader: Holds the events, and the events of ``initial_state`` the checks read.

    Returns:
        The new state.
    """
    state = dict(initial_state)
    for event_id in event_ids:
        event = loader.get(event_id)
        key = event.state_tuple if event is not None else None
        if event is None or key is None:
            continue
        auth_map = {}
        for auth_event in loader.auth_events(event):
            auth_key = auth_event.state_tuple
            if auth_key is not None:
                auth_map[auth_key] = auth_event
        for auth_key in auth_types_for_event(
            room_version, event.type, event.state_key, event.sender, event.content
        ):
            current_id = state.get(auth_key)
            current = loader.get(current_id) if current_id is not None else None
            if current is not None:
                auth_map[auth_key] = current
        create = loader.create_event(event) if room_version.room_id_is_create_event_hash else None
        try:
            check_auth_rules(event, auth_map, create_event=create)
        except AuthError as e:
            logger.debug("State resolution leaves out %s: %s", event_id, e.message)
            continue
        state[key] = event_id
    return state


async def _load_for_auth_checks(
    room_version: RoomVersion,
    full_conflicted: Iterable[str],
    initial_state: Mapping[StateKey, str],
    loader: EventLoader,
) -> None:
    """Fetch, in one go, what the power ordering and the iterative auth checks read: the auth
    events of the full conflicted set, the events of ``initial_state`` under the keys the auth
    rules read for them, and (v12) the create event."""
    wanted: set[str] = set()
    for event_id in full_conflicted:
        event = _known(loader, event_id)
        wanted.update(event.auth_event_ids)
        if initial_state:
            for key in auth_types_for_event(
                room_version, event.type, event.state_key, event.sender, event.content
            ):
                state_event_id = initial_state.get(key)
                if state_event_id is not None:
                    wanted.add(state_event_id)
        if room_version.room_id_is_create_event_hash:
            create_event_id = loader.create_event_id(event)
            if create_event_id is not None:
                wanted.add(create_event_id)
    await loader.load(wanted)


def _known(loader: EventLoader, event_id: str) -> Event:
    event = loader.get(event_id)
    if event is None:
        raise KeyError(event_id)  # the full conflicted set holds only fetched events
    return event
