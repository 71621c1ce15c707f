"""The one place sliding sync keeps data in memory between requests (besides the
per-connection state): each room's current state IDs (with its members' memberships, so
member counts and heroes need no query), each room's latest timeline events and bump
stamp, and each user's account data.

Rooms are kept exact by the roomserver's commit listener (``events_committed``, called on
the event loop right after each commit): state deltas and removals are applied, new
timeline events appended, bump stamps moved. A room is loaded on first use, all missing
rooms in one query; a load that a commit to one of its rooms overtook is not kept (the
next read loads the room again). A commit whose state change cannot be followed exactly
(a member event not in the timeline, as a state resolution brings) drops the room instead.
Rooms with more than ``MAX_STATE`` state entries are not kept: their reads go to the
database, as before.

A user's account data is read once and used until the notifier says it changed
(``Notifier.on_account_data``, called by every write).

``forget_room`` drops what is kept of a room (a deleted room; writers in other processes,
later; a purge of its history too). No entry ever expires on a timer; the bounds only drop
entries.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from homeserver.services.notifier import Notifier
from roomserver.api import CommittedBatch
from storage.stores.sliding_sync import BUMP_TYPES, SlidingSyncStore
from storage.stores.sync import RoomSummary, SyncStore

MEMBER = "m.room.member"
StateKey = tuple[str, str]
AccountDataRow = tuple[str, str, dict[str, Any], int]
# A position past every event (what is kept is the newest).
NEWEST = 2**62


@dataclass(slots=True)
class _RoomState:
    state: dict[StateKey, str]
    # User -> (membership, stream ordering of their member event; None: not in the
    # timeline, or unknown).
    members: dict[str, tuple[str | None, int | None]]
    # Member candidates for heroes, in the summaries' order (worked out when first asked).
    ranked: list[tuple[int, str]] | None = None
    joined: int = 0
    invited: int = 0

    def count(self) -> None:
        memberships = [m for m, _ in self.members.values()]
        self.joined = memberships.count("join")
        self.invited = memberships.count("invite")
        self.ranked = None


@dataclass(slots=True)
class _Timeline:
    # Every timeline event of the room with a stream ordering at or above the first one's,
    # oldest first; ``complete``: every event of the room.
    events: deque[tuple[int, str]]
    complete: bool = False


@dataclass(slots=True)
class _Loads:
    """Loads in flight per room and the commits that touched the room meanwhile."""

    running: dict[str, int] = field(default_factory=dict)
    touched: dict[str, int] = field(default_factory=dict)

    def start(self, room_ids: Iterable[str]) -> dict[str, int]:
        out = {}
        for room_id in room_ids:
            self.running[room_id] = self.running.get(room_id, 0) + 1
            out[room_id] = self.touched.get(room_id, 0)
        return out

    def finish(self, started: dict[str, int]) -> set[str]:
        """The rooms whose load is still exact (no commit touched them meanwhile)."""
        kept = set()
        for room_id, touched in started.items():
            if self.touched.get(room_id, 0) == touched:
                kept.add(room_id)
            left = self.running[room_id] - 1
            if left:
                self.running[room_id] = left
            else:
                del self.running[room_id]
                self.touched.pop(room_id, None)
        return kept

    def touch(self, room_id: str) -> None:
        if room_id in self.running:
            self.touched[room_id] = self.touched.get(room_id, 0) + 1


class SlidingSyncCache:
    """See the module docstring."""

    ROOMS = 50_000
    BUMPS = 200_000
    MAX_STATE = 1_000
    # Timeline events kept per room (a list's timeline_limit is 1; a room opened on
    # screen asks for 20: that read goes to the database).
    TIMELINE = 8

    USERS = 10_000

    def __init__(self, store: SlidingSyncStore, sync_store: SyncStore, notifier: Notifier
                 ) -> None:
        self._store = store
        self._sync = sync_store
        self._notifier = notifier
        # User -> (account data position read at, their entries as (room, type, content,
        # stream position), in stream order).
        self._account_data: LRUCache[str, tuple[int, list[AccountDataRow]]] = \
            LRUCache(self.USERS)
        self._states: LRUCache[str, _RoomState] = LRUCache(self.ROOMS)
        # Room -> the position of its newest MSC4186 bump event (0: none). A plain dict
        # (a room list looks up every room of the user on each request), emptied when full.
        self._bumps: dict[str, int] = {}
        self._timelines: LRUCache[str, _Timeline] = LRUCache(self.ROOMS)
        self._state_loads = _Loads()
        self._timeline_loads = _Loads()

    # -- kept exact -------------------------------------------------------------------------

    def events_committed(self, batch: CommittedBatch) -> None:
        for event in batch.events:
            room_id = event.room_id
            if event.state_delta or event.state_removed:
                self._state_loads.touch(room_id)
                self._apply_state(event.room_id, event.event_id, event.stream_ordering,
                                  event.state_delta, event.state_removed)
            if event.stream_ordering is not None and event.stream_ordering > 0:
                self._timeline_loads.touch(room_id)
                if event.type in BUMP_TYPES:
                    bump = self._bumps.get(room_id)
                    if bump is not None and bump < event.stream_ordering:
                        self._bumps[room_id] = event.stream_ordering
                timeline = self._timelines.get(room_id)
                if timeline is not None and (not timeline.events or
                                             timeline.events[-1][0] < event.stream_ordering):
                    if len(timeline.events) == timeline.events.maxlen:
                        timeline.complete = False
                    timeline.events.append((event.stream_ordering, event.event_id))

    def _apply_state(self, room_id: str, event_id: str, stream_ordering: int | None,
                     delta: Sequence[tuple[str, str, str, str | None]],
                     removed: Sequence[StateKey]) -> None:
        entry = self._states.get(room_id)
        if entry is None:
            return
        members = False
        for key in removed:
            entry.state.pop(key, None)
            if key[0] == MEMBER:
                entry.members.pop(key[1], None)
                members = True
        for type_, state_key, state_event_id, membership in delta:
            entry.state[(type_, state_key)] = state_event_id
            if type_ == MEMBER:
                if state_event_id != event_id:
                    # Its stream ordering is not known here: read the room again.
                    self._states.pop(room_id, None)
                    return
                entry.members[state_key] = (membership, stream_ordering)
                members = True
        if len(entry.state) > self.MAX_STATE:
            self._states.pop(room_id, None)
        elif members:
            entry.count()

    def forget_room(self, room_id: str) -> None:
        """Drop what is kept of a room (changed by a writer that does not announce its
        commits here)."""
        self._states.pop(room_id, None)
        self._timelines.pop(room_id, None)
        self._bumps.pop(room_id, None)
        self._state_loads.touch(room_id)
        self._timeline_loads.touch(room_id)
        # Its room account data may have gone with it (the room was deleted).
        self._account_data.clear()

    # -- account data -----------------------------------------------------------------------

    async def account_data(self, user_id: str, after: int, up_to: int
                           ) -> list[tuple[str, str, dict[str, Any]]]:
        """As ``SlidingSyncStore.account_data_between``, from memory."""
        notifier = self._notifier
        if not notifier.account_data_changed_since(user_id, after):
            return []
        cached = self._account_data.get(user_id)
        if cached is None or notifier.account_data_changed_since(user_id, cached[0]):
            position = notifier.account_data_position
            cached = (position, await self._store.account_data_of(user_id))
            self._account_data[user_id] = cached
        return [(r, t, c) for r, t, c, p in cached[1] if after < p <= up_to]

    # -- state ------------------------------------------------------------------------------

    async def _states_of(self, room_ids: Sequence[str]) -> dict[str, _RoomState]:
        """The kept state of the rooms (loading the missing ones); rooms too big to keep
        are left out."""
        out: dict[str, _RoomState] = {}
        missing = []
        for room_id in room_ids:
            entry = self._states.get(room_id)
            if entry is None:
                missing.append(room_id)
            else:
                out[room_id] = entry
        if missing:
            started = self._state_loads.start(missing)
            try:
                found, _ = await self._store.room_states(missing, self.MAX_STATE)
            finally:
                kept = self._state_loads.finish(started)
            for room_id, rows in found.items():
                entry = _RoomState({(t, k): e for t, k, e, _, _ in rows},
                                   {k: (m, s) for t, k, _, m, s in rows if t == MEMBER})
                entry.count()
                out[room_id] = entry
                if room_id in kept:
                    self._states[room_id] = entry
        return out

    async def current_state_ids(self, room_ids: Sequence[str], *, all_types: bool,
                                types: Sequence[str], pairs: Sequence[StateKey]
                                ) -> dict[str, dict[StateKey, str]]:
        """As ``SlidingSyncStore.current_state_ids``, from memory where kept."""
        kept = await self._states_of(room_ids)
        out: dict[str, dict[StateKey, str]] = {}
        wanted_types = set(types)
        for room_id, entry in kept.items():
            state = entry.state
            if all_types:
                out[room_id] = dict(state)
                continue
            found = {key: state[key] for key in pairs if key in state}
            if wanted_types:
                found.update({k: e for k, e in state.items() if k[0] in wanted_types})
            out[room_id] = found
        rest = [r for r in room_ids if r not in kept]
        if rest:
            out.update(await self._store.current_state_ids(rest, all_types=all_types,
                                                           types=types, pairs=pairs))
        return out

    async def room_summaries(self, room_ids: Sequence[str], user_id: str, *, heroes: int
                             ) -> dict[str, RoomSummary]:
        """As ``SyncStore.room_summaries``, from memory where kept."""
        kept = await self._states_of(room_ids)
        out: dict[str, RoomSummary] = {}
        rest = []
        for room_id in room_ids:
            entry = kept.get(room_id)
            ranked = self._ranked(entry) if entry is not None else None
            if entry is None or ranked is None:
                rest.append(room_id)
                continue
            found = [(k, u) for k, u in ranked if u != user_id][:heroes]
            present = [u for k, u in found if k < 2]
            out[room_id] = RoomSummary(entry.joined, entry.invited,
                                       present or [u for _, u in found])
        if rest:
            out.update(await self._sync.room_summaries(rest, user_id, heroes=heroes))
        return out

    @staticmethod
    def _ranked(entry: _RoomState) -> list[tuple[int, str]] | None:
        """Members as (kind, user) ordered as the summaries' query orders them: joined,
        invited, then the rest, each by their member event's position; None when a
        member event's position is unknown (the database orders those)."""
        if entry.ranked is None:
            rows = []
            for user, (membership, position) in entry.members.items():
                if position is None:
                    return None
                kind = 0 if membership == "join" else 1 if membership == "invite" else 2
                rows.append((kind, position, user))
            rows.sort()
            entry.ranked = [(kind, user) for kind, _, user in rows]
        return entry.ranked

    # -- timelines --------------------------------------------------------------------------

    async def bump_stamps(self, room_ids: Sequence[str], up_to: int) -> dict[str, int]:
        """Room -> the position of its newest bump event at or before ``up_to`` (0: none)."""
        out: dict[str, int] = {}
        missing = []
        bumps = self._bumps
        for room_id in room_ids:
            stamp = bumps.get(room_id)
            if stamp is not None and stamp <= up_to:
                out[room_id] = stamp
            else:
                missing.append(room_id)
        if not missing:
            return out
        started = self._timeline_loads.start(missing)
        try:
            found = await self._store.bump_stamps(missing, NEWEST)
        finally:
            kept = self._timeline_loads.finish(started)
        if len(bumps) + len(kept) > self.BUMPS:
            bumps.clear()
        later = []
        for room_id in missing:
            stamp = found.get(room_id, 0)
            if room_id in kept:
                bumps[room_id] = stamp
            if stamp <= up_to:
                out[room_id] = stamp
            else:
                later.append(room_id)  # (built before its newest: asked again)
        if later:
            found = await self._store.bump_stamps(later, up_to)
            out.update({r: found.get(r, 0) for r in later})
        return out

    def newest_positions(self, room_ids: Iterable[str], up_to: int) -> int:
        """The position of the newest event at or before ``up_to`` among these rooms, from
        memory (``up_to`` when a room is not kept)."""
        newest = 0
        for room_id in room_ids:
            timeline = self._timelines.get(room_id)
            position = _newest(timeline, up_to) if timeline is not None else None
            if position is None:
                return up_to
            newest = max(newest, position)
        return newest

    async def latest_event_ids(self, room_ids: Sequence[str], *, after: int, up_to: int,
                               limit: int) -> dict[str, list[str]]:
        """As ``SyncStore.latest_event_ids``, from memory where kept."""
        out: dict[str, list[str]] = {}
        missing = []
        for room_id in room_ids:
            timeline = self._timelines.get(room_id)
            found = _window(timeline, after, up_to, limit) if timeline is not None else None
            if found is None:
                if timeline is None:
                    missing.append(room_id)
            else:
                out[room_id] = found
        if missing:
            started = self._timeline_loads.start(missing)
            try:
                loaded = await self._store.latest_events(missing, self.TIMELINE)
            finally:
                kept = self._timeline_loads.finish(started)
            for room_id, rows in loaded.items():
                timeline = _Timeline(deque(rows, maxlen=self.TIMELINE),
                                     complete=len(rows) < self.TIMELINE)
                if room_id in kept:
                    self._timelines[room_id] = timeline
                found = _window(timeline, after, up_to, limit)
                if found is not None:
                    out[room_id] = found
        rest = [r for r in room_ids if r not in out]
        if rest:
            out.update(await self._sync.latest_event_ids(rest, after=after, up_to=up_to,
                                                         limit=limit))
        return out


def _newest(timeline: _Timeline, up_to: int) -> int | None:
    """The position of the newest event at or before ``up_to`` (0: none); None when what is
    kept does not tell."""
    for position, _ in reversed(timeline.events):
        if position <= up_to:
            return position
    return 0 if timeline.complete else None


def _window(timeline: _Timeline, after: int, up_to: int, limit: int) -> list[str] | None:
    """The newest ``limit`` event IDs in ``(after, up_to]``, oldest first; None when what
    is kept does not tell."""
    picked: list[str] = []
    if limit <= 0:
        return picked
    for position, event_id in reversed(timeline.events):
        if position > up_to:
            continue
        if position <= after:
            return picked[::-1]
        picked.append(event_id)
        if len(picked) == limit:
            return picked[::-1]
    if timeline.complete or (timeline.events and timeline.events[0][0] <= after + 1):
        return picked[::-1]
    return None
