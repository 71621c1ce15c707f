"""Who may see which events: history visibility and membership, checked on every read
(https://spec.matrix.org/v1.19/client-server-api/#history-visibility).

For each event we look at the state before it: the room's ``m.room.history_visibility`` and
the reader's membership. A user's own membership events are judged by the state after them,
so everyone sees their own join and leave. A user who cleared their history of a room
(``history.py``) sees nothing at or before the point they cleared it up to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from homeserver.services.history import ClearedHistory, hidden
from storage.stores.events import EventStore, StoredEvent
from storage.stores.state import StateKey, StateMap, StateStore

HISTORY_VISIBILITY = ("m.room.history_visibility", "")


class VisibilityService:
    def __init__(self, state: StateStore, events: EventStore, cleared: ClearedHistory) -> None:
        self._state = state
        self._events = events
        self._cleared = cleared

    async def not_cleared(self, user_id: str, room_id: str, events: Sequence[StoredEvent]
                          ) -> list[StoredEvent]:
        """The events the user has not cleared from their history (all from one room)."""
        point = await self._cleared.point(user_id, room_id)
        if point is None:
            return list(events)
        return [e for e in events if not hidden(point, e.depth, e.stream_ordering)]

    async def _visibility_and_membership(self, group: int | None, user_id: str
                                         ) -> tuple[str, str | None]:
        """``(history_visibility, membership of user_id)`` in a state group."""
        if group is None:
            return "shared", None
        member_key = ("m.room.member", user_id)
        state = await self._state.state_at_group(group, only=[HISTORY_VISIBILITY, member_key])
        return _read(state, await self._state_contents(list(state.values())), member_key)

    async def count_visible(self, user_id: str,
                            counts: Iterable[tuple[int | None, bool, int]]) -> int:
        """How many of some events ``user_id`` may see, from counts of them by the state
        before them and by whether the user joined after them: ``(state group, joined
        later, how many)``. For events that are neither the user's own membership nor a
        change of visibility (their rules differ), such as search matches; cleared history
        is the caller's to leave out. A few queries whatever the number of groups."""
        counts = list(counts)
        member_key = ("m.room.member", user_id)
        states = await self._state.states_at_groups(
            (group for group, _, _ in counts), only=[HISTORY_VISIBILITY, member_key])
        contents = await self._state_contents(
            [e for state in states.values() for e in state.values()])
        total = 0
        for group, joined_later, how_many in counts:
            visibility, membership = (_read(states.get(group, {}), contents, member_key)
                                      if group is not None else ("shared", None))
            if _allowed(visibility, membership, joined_later):
                total += how_many
        return total

    async def _state_contents(self, event_ids: list[str]) -> dict[str, dict[str, object]]:
        events = await self._events.get_events(event_ids)
        return {e: dict(s.pdu.get("content") or {}) for e, s in events.items()}

    async def filter_for_user(self, user_id: str, events: Sequence[StoredEvent]
                              ) -> list[StoredEvent]:
        """The events ``user_id`` may see, in the given order (all from one room)."""
        if not events:
            return []
        events = await self.not_cleared(user_id, events[0].room_id, events)
        if not events:
            return []
        # `shared` history opens to anyone who joined at some point after the event.
        joins = await self._events.join_positions(events[0].room_id, user_id)
        last_join = max(joins, default=-1)
        out = []
        cache: dict[int | None, tuple[str, str | None]] = {}
        for event in events:
            own_member = (event.pdu.get("type") == "m.room.member"
                          and event.pdu.get("state_key") == user_id)
            if own_member:
                out.append(event)
                continue
            group = event.state_group_before
            if group not in cache:
                cache[group] = await self._visibility_and_membership(group, user_id)
            visibility, membership = cache[group]
            if event.pdu.get("type") == "m.room.history_visibility" \
                    and event.pdu.get("state_key") == "":
                # A change of visibility is judged by the more open of the old and new rules.
                new = (event.pdu.get("content") or {}).get("history_visibility")
                if new == "world_readable" or (new == "shared" and visibility != "world_readable"):
                    visibility = new
            joined_later = last_join > (event.stream_ordering or 0)
            if _allowed(visibility, membership, joined_later):
                out.append(event)
        return out


def _read(state: StateMap, contents: Mapping[str, Mapping[str, object]], member_key: StateKey
          ) -> tuple[str, str | None]:
    """``(history_visibility, membership)`` from a state's two events."""
    visibility, membership = "shared", None
    if HISTORY_VISIBILITY in state:
        value = contents.get(state[HISTORY_VISIBILITY], {}).get("history_visibility")
        if isinstance(value, str):
            visibility = value
    if member_key in state:
        value = contents.get(state[member_key], {}).get("membership")
        if isinstance(value, str):
            membership = value
    return visibility, membership


def _allowed(visibility: str, membership: str | None, joined_later: bool) -> bool:
    if visibility == "world_readable":
        return True
    if membership == "join":
        return True
    if visibility == "shared" and joined_later:
        return True
    return visibility == "invited" and membership == "invite"
