"""Clearing my history (the ``org.ktchat.history`` extension, DESIGN.md).

A user hides a room's events up to a point from themselves alone: every read path asks
``ClearedHistory`` through history visibility (``VisibilityService``) and sync's timeline cut.
The point only moves forward: clearing again up to an earlier event changes nothing.

When no user here can see a stretch of a room's history any more — everyone who was in it
cleared past it or forgot the room, nobody is waiting to join, no other server is in it and
it is not world-readable — the server drops that stretch's content: the stored messages keep
only what the redaction algorithm keeps, and leave the search index.
"""

from __future__ import annotations

from cachetools import LRUCache

from core.clock import Clock
from core.errors import Forbidden, NotFound
from homeserver.services.censor import pruned_json
from homeserver.services.membership import MembershipService
from homeserver.services.ports import ALONE, Replication
from homeserver.services.serialize import EventSerializer
from roomserver.api import EventErasure
from storage.stores.events import EventStore
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore

Position = tuple[int, int]  # (depth, stream ordering): a place in the room's topological order


class ClearedHistory:
    """Where each user cleared each room up to, cached per user (every read asks)."""

    SIZE = 10_000

    def __init__(self, rooms: RoomStore, replication: Replication = ALONE) -> None:
        self._rooms = rooms
        self._replication = replication
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
        self._replication.publish("history_cleared", user_id)
        self.forget(user_id)

    def forget(self, user_id: str) -> None:
        """The user's points changed (here, or in the process that writes them)."""
        self._points.pop(user_id, None)


def hidden(point: Position | None, depth: int, stream_ordering: int | None) -> bool:
    """Whether an event at (depth, stream) is at or before a cleared point."""
    return point is not None and (depth, stream_ordering or 0) <= point


class HistoryService:
    def __init__(self, cleared: ClearedHistory, events: EventStore, state: StateStore,
                 rooms: RoomStore, membership: MembershipService, serializer: EventSerializer,
                 erasure: EventErasure, clock: Clock, server_name: str) -> None:
        self._cleared = cleared
        self._events = events
        self._state = state
        self._rooms = rooms
        self._membership = membership
        self._serializer = serializer
        self._erasure = erasure
        self._clock = clock
        self._local = ":" + server_name

    def forget_cleared(self, user_id: str) -> None:
        """A worker: the writer stored where the user cleared a room up to."""
        self._cleared.forget(user_id)

    async def forget(self, user_id: str, room_id: str) -> None:
        """POST /forget: the room's history is gone for the user (``MembershipService``)."""
        await self._membership.forget(user_id, room_id)
        await self.drop_unseen(room_id)

    async def clear(self, user_id: str, room_id: str, up_to_event_id: str | None) -> None:
        """Hide the room's events up to ``up_to_event_id`` (default: all so far) from the
        user.

        Raises:
            Forbidden: not a member (now, or before without forgetting the room; a leave or
                ban without ever having joined — a rejected invite, say — is not "before").
            NotFound: the event is not in the room.
        """
        membership = await self._state.membership(room_id, user_id)
        if membership is None or not await self._has_history(room_id, user_id, membership[0]):
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
        await self.drop_unseen(room_id)

    async def _has_history(self, room_id: str, user_id: str, membership: str | None
                           ) -> bool:
        """Whether a member sees some of the room's history: joined, or once joined and
        left (or was banned) without forgetting the room."""
        if membership == "join":
            return True
        return membership in ("leave", "ban") \
            and room_id not in await self._rooms.forgotten_rooms(user_id) \
            and bool(await self._events.join_positions(room_id, user_id))

    async def unseen_up_to(self, room_id: str) -> Position | None:
        """Up to where no user of this server can see the room's history (None: they can
        see all of it, or it cannot be known)."""
        members = await self._state.current_state(room_id, types=["m.room.member"])
        if any(m.membership in ("invite", "knock") or (
                m.membership == "join" and not m.state_key.endswith(self._local))
               for m in members):
            return None
        visibility = await self._state.current_state(room_id,
                                                     types=["m.room.history_visibility"])
        if visibility:
            stored = await self._events.get_event(visibility[0].event_id)
            if stored is None or (stored.pdu.get("content") or {}).get(
                    "history_visibility") == "world_readable":
                return None
        points = []
        was_here = False
        for member in members:
            user_id = member.state_key
            if not user_id.endswith(self._local):
                continue
            was_here = True
            if not await self._has_history(room_id, user_id, member.membership):
                continue  # sees nothing of the room
            point = await self._cleared.point(user_id, room_id)
            if point is None:
                return None
            points.append(point)
        if points:
            return min(points)
        if not was_here:
            return None
        # Everyone here forgot the room: none of it is seen.
        latest = await self._events.paginate(room_id, backwards=True, limit=1)
        return (latest[0].depth, latest[0].stream_ordering or 0) if latest else None

    async def drop_unseen(self, room_id: str) -> int:
        """Drop the content of history nobody here can see any more; returns how many
        events lost theirs."""
        up_to = await self.unseen_up_to(room_id)
        info = await self._events.room_info(room_id)
        if up_to is None or info is None:
            return 0
        dropped = 0
        while True:
            batch, last = await self._events.undropped_history(room_id, up_to)
            if last is None:
                return dropped
            pruned = {}
            for event_id, raw in batch:
                erased = pruned_json(raw, info[0])
                if erased is not None and erased != raw:
                    pruned[event_id] = erased
            await self._erasure.drop_history_content(room_id, pruned, last)
            self._serializer.forget(pruned)
            dropped += len(pruned)
