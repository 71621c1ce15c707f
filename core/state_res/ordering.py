"""The two orders of state resolution v2: reverse topological power ordering and mainline
ordering (https://spec.matrix.org/v1.16/rooms/v2/#definitions; unchanged in v12).

Both are plain sorts over events already fetched (:class:`EventLoader`); the caller loads the
auth events of the events to sort, and the power levels chains for the mainline, first.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Collection, Iterable
from typing import TypeAlias

from core.events.model import Event
from core.events.room_versions import RoomVersion
from core.rooms.auth import BAN, JOIN_RULES, LEAVE, MEMBER
from core.rooms.power_levels import CREATE, POWER_LEVELS, PowerLevel, PowerLevels, room_creators
from core.state_res.loader import EventLoader

_SortKey: TypeAlias = Callable[[str], tuple[PowerLevel, int, str]]

_POWER_STATE = frozenset({(POWER_LEVELS, ""), (JOIN_RULES, ""), (CREATE, "")})


def is_power_event(event: Event) -> bool:
    """Whether ``event`` is a *power event*: one that might take away someone's ability to
    do something in the room.

    Spec: ``m.room.power_levels``, ``m.room.join_rules``, and ``m.room.member`` with
    ``membership`` ``leave`` or ``ban`` whose ``sender`` is not its ``state_key`` (kicks and
    bans). The spec's list leaves out ``m.room.create``; Synapse (``_is_power_event``) and
    ruma (``is_power_event``) have always counted it, in every room version, and so do we:
    the create event is in the full conflicted set only when the state sets disagree on it
    (or, in v12, where no event cites it, when one of them lacks it), and it is then replayed
    first either way (in v10/v11 every other event descends from it; in v12 its sender is a
    creator, of infinite power).
    """
    if event.state_tuple in _POWER_STATE:
        return True
    if event.type == MEMBER and event.membership in (LEAVE, BAN):
        return event.sender != event.state_key
    return False


class SenderPowerLevels:
    """The power level of an event's sender "when looking at [its] ``auth_events``".

    That is the levels of the ``m.room.power_levels`` among its auth events (none: the room
    defaults, the v10/v11 creator 100), with v12 creators infinite (MSC4289). The creators
    come from the create event among the auth events (v10/v11; so the create event's own
    sender has 0, as in Synapse, which never matters: it precedes every event citing it) or
    named by the room ID (v12). Many events cite the same power levels event, so the parsed
    levels are kept per (power levels, create) pair.
    """

    def __init__(self, room_version: RoomVersion, loader: EventLoader) -> None:
        self._room_version = room_version
        self._loader = loader
        self._levels: dict[tuple[str | None, str | None], PowerLevels] = {}

    def of(self, event: Event) -> PowerLevel:
        power_levels = self._loader.power_levels_auth_event(event)
        create = self._loader.create_event(event)
        key = (
            power_levels.event_id if power_levels is not None else None,
            create.event_id if create is not None else None,
        )
        levels = self._levels.get(key)
        if levels is None:
            levels = PowerLevels(
                room_version=self._room_version,
                content=power_levels.content if power_levels is not None else None,
                creators=room_creators(create) if create is not None else frozenset(),
            )
            self._levels[key] = levels
        return levels.user_level(event.sender)


def reverse_topological_power_order(
    room_version: RoomVersion,
    power_event_ids: Iterable[str],
    full_conflicted_set: Collection[str],
    loader: EventLoader,
) -> list[str]:
    """Step 1 of the algorithm: the power events and their auth ancestors in the full
    conflicted set, in reverse topological power ordering (earliest first).

    Kahn's algorithm on the auth DAG restricted to those events, taking at each step the
    smallest ready event by (greater sender power level first, then smaller
    ``origin_server_ts``, then smaller ``event_id``).

    The ancestors are found by following ``auth_events`` edges through events of the full
    conflicted set only, and the edges of the sort are those direct edges, as Synapse and
    ruma do (``_add_event_and_auth_chain_to_graph``). The spec's "the events in the auth chain
    of P which also belong to the full conflicted set" would also take an event reached only
    through an event outside the set; that needs an event in every auth chain above a
    conflicted one, which v2.1's conflicted state subgraph mostly closes.

    Args:
        room_version: The room's version.
        power_event_ids: The power events of the full conflicted set.
        full_conflicted_set: The full conflicted set (known events only).
        loader: Holds those events and their auth events.

    Returns:
        The event IDs, earliest first.
    """
    auth_parents: dict[str, list[str]] = {}
    stack = list(power_event_ids)
    while stack:
        event_id = stack.pop()
        if event_id in auth_parents:
            continue
        event = loader.get(event_id)
        parents = (
            [a for a in dict.fromkeys(event.auth_event_ids) if a in full_conflicted_set]
            if event is not None
            else []
        )
        auth_parents[event_id] = parents
        stack.extend(p for p in parents if p not in auth_parents)

    power = SenderPowerLevels(room_version, loader)

    def sort_key(event_id: str) -> tuple[PowerLevel, int, str]:
        event = loader.get(event_id)
        if event is None:
            return (0, 0, event_id)
        return (-power.of(event), event.origin_server_ts, event_id)

    return _kahn(auth_parents, sort_key)


def _kahn(auth_parents: dict[str, list[str]], sort_key: _SortKey) -> list[str]:
    """Kahn's algorithm, auth events before the events citing them, ties by ``sort_key``."""
    cited_by: dict[str, list[str]] = {event_id: [] for event_id in auth_parents}
    waiting_for: dict[str, int] = {}
    for event_id, parents in auth_parents.items():
        waiting_for[event_id] = len(parents)
        for parent in parents:
            cited_by[parent].append(event_id)
    ready = [(sort_key(e), e) for e, count in waiting_for.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[str] = []
    while ready:
        _, event_id = heapq.heappop(ready)
        ordered.append(event_id)
        for child in cited_by[event_id]:
            waiting_for[child] -= 1
            if waiting_for[child] == 0:
                heapq.heappush(ready, (sort_key(child), child))
    return ordered


def mainline_order(
    event_ids: Iterable[str], power_levels_id: str | None, loader: EventLoader
) -> list[str]:
    """Step 3 of the algorithm: ``event_ids`` in the mainline ordering based on the power
    levels event ``power_levels_id`` (that of the partially resolved state).

    The mainline of ``P0`` is ``P0``, the power levels event among its auth events ``P1``, and
    so on. An event's mainline position is the index ``i`` of the first ``Pi`` met walking the
    same way from the event (the event itself excluded: "j ≥ 1"), or infinity if none is.
    Events sort by greater position first (based on an earlier power levels event), then
    smaller ``origin_server_ts``, then smaller ``event_id``.

    Synapse and ruma start the walk at the event itself; that only differs for a power levels
    event on the mainline, and those are power events, sorted in step 1, never here.

    Args:
        event_ids: The events to sort (known, with their power levels chains loaded:
            :meth:`EventLoader.load_power_levels_chains`).
        power_levels_id: The power levels event to base the mainline on, or None (then every
            position is infinite, and the order is by timestamp and ID).
        loader: Holds the events.

    Returns:
        The event IDs, earliest first.
    """
    mainline: dict[str, int] = {}
    link = loader.get(power_levels_id) if power_levels_id is not None else None
    while link is not None and link.event_id not in mainline:
        mainline[link.event_id] = len(mainline)
        link = loader.power_levels_auth_event(link)

    # For a power levels event off the mainline: the position its own walk reaches.
    reached: dict[str, float] = {}

    def position(event: Event) -> float:
        walked: list[str] = []
        on_walk: set[str] = set()
        link = loader.power_levels_auth_event(event)
        found = math.inf
        while link is not None:
            if link.event_id in mainline:
                found = mainline[link.event_id]
                break
            if link.event_id in reached:
                found = reached[link.event_id]
                break
            if link.event_id in on_walk:  # a cycle: only made-up events can have one
                break
            walked.append(link.event_id)
            on_walk.add(link.event_id)
            link = loader.power_levels_auth_event(link)
        for event_id in walked:
            reached[event_id] = found
        return found

    keys: dict[str, tuple[float, int, str]] = {}
    for event_id in event_ids:
        event = loader.get(event_id)
        if event is not None:
            keys[event_id] = (-position(event), event.origin_server_ts, event_id)
    return sorted(keys, key=keys.__getitem__)
