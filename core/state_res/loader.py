"""The events one state resolution reads, fetched in batches and kept for its duration.

State resolution reads a few hundred events of a room in scattered order (the full conflicted
set, the auth events of each, power levels chains); fetching them one at a time would make
one database round trip per event. Every phase here says up front which events it needs, so
each phase costs one fetch, or one per level where a walk only learns the next IDs from the
events it has just read (auth ancestors, power levels chains).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import TypeAlias

from core.events.model import Event
from core.rooms.auth import create_event_id_for_room
from core.rooms.power_levels import CREATE, POWER_LEVELS

StateKey: TypeAlias = tuple[str, str]
"""``(type, state_key)`` of a state event."""

EventFetcher: TypeAlias = Callable[[Collection[str]], Awaitable[Mapping[str, Event]]]
"""Fetches events by ID. Unknown and rejected events are left out of the answer (state
resolution then treats them as absent, as Synapse does)."""

POWER_LEVELS_KEY: StateKey = (POWER_LEVELS, "")
CREATE_KEY: StateKey = (CREATE, "")


class EventLoader:
    """The events fetched so far for one resolution.

    Attributes:
        fetches: How many times the fetcher was called (for tests and the bench).
    """

    def __init__(self, fetch: EventFetcher) -> None:
        self._fetch = fetch
        self._events: dict[str, Event] = {}
        self._unknown: set[str] = set()
        self.fetches = 0

    async def load(self, event_ids: Iterable[str]) -> None:
        """Fetch, in one call, those of ``event_ids`` not fetched (or found unknown) before."""
        wanted = {
            event_id
            for event_id in event_ids
            if event_id not in self._events and event_id not in self._unknown
        }
        if not wanted:
            return
        self.fetches += 1
        found = await self._fetch(wanted)
        for event_id in wanted:
            event = found.get(event_id)
            # An answer under the wrong ID would poison every lookup after it.
            if event is None or event.event_id != event_id:
                self._unknown.add(event_id)
            else:
                self._events[event_id] = event

    def get(self, event_id: str) -> Event | None:
        """The event, if it was fetched; None if unknown, rejected or not fetched yet."""
        return self._events.get(event_id)

    def auth_events(self, event: Event) -> list[Event]:
        """The known events among ``event``'s ``auth_events``, in their order."""
        known = []
        for auth_event_id in event.auth_event_ids:
            auth_event = self._events.get(auth_event_id)
            if auth_event is not None:
                known.append(auth_event)
        return known

    def power_levels_auth_event(self, event: Event) -> Event | None:
        """The ``m.room.power_levels`` event among ``event``'s known auth events (the first,
        should a malformed event list two, as Synapse and ruma take it)."""
        for auth_event_id in event.auth_event_ids:
            auth_event = self._events.get(auth_event_id)
            if auth_event is not None and auth_event.state_tuple == POWER_LEVELS_KEY:
                return auth_event
        return None

    def create_event_id(self, event: Event) -> str | None:
        """The ID of the create event that ``event`` relies on.

        v12 (MSC4291): derived from the room ID, since no event lists the create event in its
        ``auth_events`` (for the create event itself this is its own ID). Earlier versions:
        the create event among its ``auth_events`` (known ones only), None for the create
        event itself.
        """
        if event.room_version.room_id_is_create_event_hash:
            return create_event_id_for_room(event.room_id)
        for auth_event_id in event.auth_event_ids:
            auth_event = self._events.get(auth_event_id)
            if auth_event is not None and auth_event.state_tuple == CREATE_KEY:
                return auth_event_id
        return None

    def create_event(self, event: Event) -> Event | None:
        """The create event that ``event`` relies on (see :meth:`create_event_id`), if known."""
        create_event_id = self.create_event_id(event)
        return self._events.get(create_event_id) if create_event_id is not None else None

    async def load_auth_ancestors(self, event_ids: Iterable[str]) -> set[str]:
        """Fetch ``event_ids`` and every event in their auth chains, one fetch per level.

        Returns:
            The IDs reached, ``event_ids`` included, known or not (an unknown event ends its
            branch of the walk).
        """
        frontier = set(event_ids)
        seen = set(frontier)
        while frontier:
            await self.load(frontier)
            following: set[str] = set()
            for event_id in frontier:
                event = self._events.get(event_id)
                if event is None:
                    continue
                for auth_event_id in event.auth_event_ids:
                    if auth_event_id not in seen:
                        seen.add(auth_event_id)
                        following.add(auth_event_id)
            frontier = following
        return seen

    async def load_power_levels_chains(self, event_ids: Iterable[str]) -> None:
        """Fetch ``event_ids`` and the power levels chain of each: its
        ``m.room.power_levels`` auth event, that event's, and so on, one fetch per level.

        The chain is only known from the auth events of each link, so each level fetches all
        of the frontier's auth events, and only the power levels among them go on.
        """
        starts = set(event_ids)
        await self.load(starts)
        frontier = [e for e in (self._events.get(i) for i in starts) if e is not None]
        seen = {event.event_id for event in frontier}
        while frontier:
            await self.load(a for event in frontier for a in event.auth_event_ids)
            following = []
            for event in frontier:
                parent = self.power_levels_auth_event(event)
                if parent is not None and parent.event_id not in seen:
                    seen.add(parent.event_id)
                    following.append(parent)
            frontier = following
