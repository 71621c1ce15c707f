"""The latest events of each room since start-up, in memory.

An incremental sync asks each changed room for its events after a position the client synced
a moment ago; with many clients following a busy room that is the hottest read there is. The
persister adds every event here as it commits, so those reads need no query. What is not here
(a room quiet since start-up, a client far behind) comes from the database as before.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Literal


class RecentRoomEvents:
    """Bounded twice: events per room, and events in all (least recently active rooms go
    first), about 150 bytes each."""

    PER_ROOM = 512
    TOTAL = 100_000

    def __init__(self, start_position: int = 0, *, per_room: int = PER_ROOM,
                 total: int = TOTAL) -> None:
        # Room -> (floor, events): every event of the room with stream ordering above
        # `floor` is in `events`, as (stream ordering, event ID), oldest first.
        self._rooms: OrderedDict[str, tuple[int, deque[tuple[int, str]]]] = OrderedDict()
        # Rooms not listed have no events above this floor.
        self._floor = start_position
        self._per_room = per_room
        self._max_total = total
        self._total = 0

    def reset(self, start_position: int) -> None:
        self._rooms.clear()
        self._floor = start_position
        self._total = 0

    def add(self, room_id: str, stream_ordering: int, event_id: str) -> None:
        """A committed event (called in stream order)."""
        entry = self._rooms.get(room_id)
        if entry is None:
            entry = (self._floor, deque())
        floor, events = entry
        events.append((stream_ordering, event_id))
        self._total += 1
        if len(events) > self._per_room:
            floor = events.popleft()[0]
            self._total -= 1
        self._rooms[room_id] = (floor, events)
        self._rooms.move_to_end(room_id)
        while self._total > self._max_total and len(self._rooms) > 1:
            _, (_, dropped) = self._rooms.popitem(last=False)
            self._total -= len(dropped)
            if dropped:
                self._floor = max(self._floor, dropped[-1][0])

    def discard(self, room_id: str, event_ids: set[str]) -> None:
        """Events that were deleted (purged) leave the window."""
        entry = self._rooms.get(room_id)
        if entry is None:
            return
        floor, events = entry
        kept = deque(e for e in events if e[1] not in event_ids)
        self._total -= len(events) - len(kept)
        self._rooms[room_id] = (floor, kept)

    def events_between(self, room_id: str, after: int, up_to: int, limit: int
                       ) -> list[str] | None:
        """IDs of the room's newest ``limit`` events in ``(after, up_to]``, oldest first, or
        None when memory does not reach back to ``after``."""
        entry = self._rooms.get(room_id)
        if entry is None:
            return [] if after >= self._floor else None
        floor, events = entry
        if after < floor:
            return None
        if not limit:
            return []
        # Newest first, stopping at `after` or `limit`: the cost is what the client lacks.
        picked: list[str] = []
        for position, event_id in reversed(events):
            if position <= after or len(picked) == limit:
                break
            if position <= up_to:
                picked.append(event_id)
        picked.reverse()
        return picked

    def overflow_position(self, room_id: str, after: int, up_to: int, limit: int
                          ) -> int | Literal[False] | None:
        """The stream ordering of the room's ``limit``-th event after ``after`` when it has
        more than ``limit`` in ``(after, up_to]`` (None when it has no more), or False when
        memory does not reach back to ``after``."""
        entry = self._rooms.get(room_id)
        if entry is None:
            return None if after >= self._floor else False
        floor, events = entry
        if after < floor:
            return False
        # Walk back from the newest to `after`: the cost is what the client lacks.
        in_window: list[int] = []
        for position, _ in reversed(events):
            if position <= after:
                break
            if position <= up_to:
                in_window.append(position)
        if len(in_window) <= limit:
            return None
        return in_window[-limit]  # newest first: the limit-th oldest
