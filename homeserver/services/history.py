"""Clearing my history (the ``org.ktchat.history`` extension, DESIGN.md).

A user hides a room's events up to a point from themselves alone: every read path asks
``ClearedHistory`` through history visibility (``VisibilityService``) and sync's timeline cut.
The point only moves forward: clearing again up to an earlier event changes nothing.
"""

from __future__ import annotations

from cachetools import LRUCache

from homeserver.clock import Clock
from homeserver.errors import Forbidden, NotFound
from storage.stores.events import EventStore
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

Position = tuple[int, int]  # (depth, stream ordering): a place in the room's topological order


class ClearedHistory:
    """Where each user cleared each room up to, cached per user (every read asks)."""

    SIZE = 10_000

    def __init__(self, rooms: RoomStore) -> None:
        self._rooms = rooms
        self._points: LRUCache[str, dict[str, Position]] = LRUCache(self.SIZE)

    async def points(self, user_id: str) -> dict[str, Position]:
        """Room -> the position up to which the user cleared it."""
        points = self._points.get(user_id)
        if points is None:
            points = await self._rooms.cleared_history(user_id)
            self._points[user_id] = points
        return points

    async def point(self, user_id: str, room_id: str) -> Position | None:
        return (await self.points(user_id)).get(room_id)

    async def advance(self, user_id: str, room_id: str, event_id: str, position: Position,
                      ts: int) -> None:
        current = await self.point(user_id, room_id)
        if current is not None and current >= position:
            return
        await self._rooms.clear_history(user_id, room_id, event_id, position, ts)
        # Reloaded on the next read, so a concurrent load cannot put back the old point.
        self._points.pop(user_id, None)


def hidden(point: Position | None, depth: int, stream_ordering: int | None) -> bool:
    """Whether an event at (depth, stream) is at or before a cleared point."""
    return point is not None and (depth, stream_ordering or 0) <= point


class HistoryService:
    def __init__(self, cleared: ClearedHistory, events: EventStore, state: StateStore,
                 rooms: RoomStore, clock: Clock) -> None:
        self._cleared = cleared
        self._events = events
        self._state = state
        self._rooms = rooms
        self._clock = clock

    async def clear(self, user_id: str, room_id: str, up_to_event_id: str | None) -> None:
        """Hide the room's events up to ``up_to_event_id`` (default: all so far) from the
        user.

        Raises:
            Forbidden: not a member (now, or before without forgetting the room; a leave or
                ban without ever having joined — a rejected invite, say — is not "before").
            NotFound: the event is not in the room.
        """
        membership = await self._state.membership(room_id, user_id)
        if membership is None or membership[0] not in ("join", "leave", "ban") or (
                membership[0] != "join" and (
                    room_id in await self._rooms.forgotten_rooms(user_id)
                    or not await self._events.join_positions(room_id, user_id))):
            raise Forbidden("You are not a member of this room.")
        if up_to_event_id is not None:
            event = await self._events.get_event(up_to_event_id)
            if event is None or event.room_id != room_id or event.stream_ordering is None:
                raise NotFound("Event not found in this room.")
        else:
            latest = await self._events.paginate(room_id, backwards=True, limit=1)
            if not latest:
                return
            event = latest[0]
        assert event.stream_ordering is not None
        await self._cleared.advance(user_id, room_id, event.event_id,
                                    (event.depth, event.stream_ordering), self._clock.time_ms())
