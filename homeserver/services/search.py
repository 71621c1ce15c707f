"""Server-side search (``POST /search``, category ``room_events``).

Candidates come from the full-text index over the rooms the user is or was in (not rooms they
forgot); each is then checked like any other read — history visibility, membership at the
event, cleared history, the request's filter — so a search never shows what ``/messages``
would not. Results page by rank (an offset into the ranked matches) or by recency (the index
position of the last result), in the opaque ``next_batch``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from core.clock import Clock
from core.errors import InvalidParam
from homeserver.services.filtering import RoomEventFilter
from homeserver.services.member_cache import MembershipCache
from homeserver.services.messages import MessageService, Reader
from homeserver.services.serialize import EventSerializer
from homeserver.services.visibility import VisibilityService
from storage.search_text import INDEXED, Query, highlights, parse_query
from storage.search_text import KEY_TYPES as KEY_TYPES  # the keys a search may name
from storage.stores.events import EventStore, StoredEvent
from storage.stores.rooms import RoomStore
from storage.stores.search import SearchHit, SearchQuery, SearchStore
from storage.stores.state import StateStore

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_CONTEXT = 100
_ROUNDS = 8
_BATCH_NUMBER = re.compile(r"[0-9]{1,16}")


@dataclass(frozen=True, slots=True)
class RoomEventsSearch:
    """The ``room_events`` criteria of a search request."""

    search_term: str
    keys: tuple[str, ...] = tuple(KEY_TYPES)
    event_filter: RoomEventFilter = field(default_factory=RoomEventFilter)
    order_by: str = "rank"
    before_limit: int | None = None  # event_context; None when not asked for
    after_limit: int = 5
    include_profile: bool = False
    include_state: bool = False
    group_by: tuple[str, ...] = ()


def _parse_batch(token: str | None, by_rank: bool) -> tuple[int, int | None]:
    """(offset, before index position) from a ``next_batch``."""
    if token is None:
        return 0, None
    kind, _, value = token.partition("_")
    # At most 16 ASCII digits: a larger number would overflow the database's integers.
    if kind != ("rank" if by_rank else "recent") or _BATCH_NUMBER.fullmatch(value) is None:
        raise InvalidParam("Invalid next_batch token")
    return (int(value), None) if by_rank else (0, int(value))


class SearchService:
    def __init__(self, store: SearchStore, events: EventStore, state: StateStore,
                 rooms: RoomStore, members: MembershipCache, visibility: VisibilityService,
                 messages: MessageService, serializer: EventSerializer, clock: Clock) -> None:
        self._store = store
        self._events = events
        self._state = state
        self._rooms = rooms
        self._members = members
        self._visibility = visibility
        self._messages = messages
        self._serializer = serializer
        self._clock = clock

    async def _searchable_rooms(self, user_id: str, event_filter: RoomEventFilter
                                ) -> list[str]:
        """Rooms the user is in or left without forgetting, within the filter."""
        memberships = await self._members.memberships(user_id)
        forgotten = await self._rooms.forgotten_rooms(user_id) if any(
            m in ("leave", "ban") for m, _ in memberships.values()) else set()
        return sorted(
            room_id for room_id, (membership, _) in memberships.items()
            if (membership == "join" or (membership in ("leave", "ban")
                                         and room_id not in forgotten))
            and (event_filter.rooms is None or room_id in event_filter.rooms)
            and room_id not in event_filter.not_rooms)

    async def search(self, reader: Reader, criteria: RoomEventsSearch,
                     next_batch: str | None) -> dict[str, Any]:
        unknown = [k for k in criteria.keys if k not in KEY_TYPES]
        if unknown:
            raise InvalidParam(f"Unknown search key: {unknown[0]}")
        if criteria.order_by not in ("rank", "recent"):
            raise InvalidParam("order_by must be 'rank' or 'recent'")
        by_rank = criteria.order_by == "rank"
        offset, before = _parse_batch(next_batch, by_rank)
        event_filter = criteria.event_filter
        limit = max(1, min(event_filter.limit or DEFAULT_LIMIT, MAX_LIMIT))
        query = parse_query(criteria.search_term)
        room_ids = await self._searchable_rooms(reader.user_id, event_filter)
        keys = [k for k in dict.fromkeys(criteria.keys)
                if event_filter.allows_type(KEY_TYPES[k])]
        empty = {"results": [], "count": 0, "highlights": []}
        if query is None or not room_ids or not keys:
            return empty
        search = SearchQuery(query, room_ids, [k.split(".")[-1] for k in keys],
                             event_filter.senders,
                             event_filter.not_senders, by_rank)
        found, more = await self._visible_hits(reader, search, event_filter, limit,
                                               offset, before)
        body: dict[str, Any] = {
            "count": await self._count(reader.user_id, search),
            "highlights": sorted(self._highlights(query, [e for e, _ in found])),
            "results": [],
        }
        if more is not None:
            body["next_batch"] = more
        serialized = await self._serialize(reader, [e for e, _ in found])
        contexts = ([await self._context(reader, event, criteria) for event, _ in found]
                    if criteria.before_limit is not None else [])
        for i, ((_, hit), client_event) in enumerate(zip(found, serialized, strict=True)):
            result: dict[str, Any] = {"rank": hit.rank, "result": client_event}
            if contexts:
                result["context"] = contexts[i]
            body["results"].append(result)
        if criteria.include_state:
            body["state"] = {room_id: await self._messages.room_state(reader, room_id)
                             for room_id in dict.fromkeys(e.room_id for e, _ in found)}
        if criteria.group_by:
            body["groups"] = self._groups(found, criteria.group_by, more)
        return body

    async def _visible_hits(self, reader: Reader, search: SearchQuery,
                            event_filter: RoomEventFilter, limit: int, offset: int,
                            before: int | None
                            ) -> tuple[list[tuple[StoredEvent, SearchHit]], str | None]:
        """Up to ``limit`` matches the reader may see, and the token of the next page."""
        found: list[tuple[StoredEvent, SearchHit]] = []
        fetch = max(limit * 2, 20)
        for _ in range(_ROUNDS):
            hits = await self._store.search(search, offset=offset, before_nid=before,
                                            limit=fetch)
            allowed = await self._allowed(reader.user_id, hits, event_filter)
            for i, hit in enumerate(hits):
                event = allowed.get(hit.event_id)
                if event is not None:
                    found.append((event, hit))
                if len(found) == limit:
                    consumed = hits[:i + 1]
                    offset += len(consumed)
                    before = hit.nid
                    more = i + 1 < len(hits) or len(hits) == fetch
                    return found, (self._token(search.by_rank, offset, before)
                                   if more else None)
            if len(hits) < fetch:
                return found, None
            # Go on past these hits: by rank with the offset, by recency with the stream
            # bound (never both, or the next fetch skips matches).
            if search.by_rank:
                offset += len(hits)
            else:
                before = hits[-1].nid
        # Many invisible matches in a row: hand back a token to go on from.
        return found, self._token(search.by_rank, offset, before)

    async def _count(self, user_id: str, search: SearchQuery) -> int:
        """How many matches the user may see (up to ``MAX_CANDIDATES`` matches): what they
        cleared is left out in the count's query, and history visibility is judged once per
        state the matches were sent in — a few queries however many rooms and matches."""
        last_joins = await self._events.last_join_positions(user_id, search.room_ids)
        counts = await self._store.count_by_state(search, user_id, last_joins)
        return await self._visibility.count_visible(
            user_id, [(c.state_group, c.joined_later, c.count) for c in counts])

    @staticmethod
    def _token(by_rank: bool, offset: int, before: int | None) -> str:
        return f"rank_{offset}" if by_rank else f"recent_{before}"

    async def _allowed(self, user_id: str, hits: list[SearchHit],
                       event_filter: RoomEventFilter) -> dict[str, StoredEvent]:
        """The hits' events the user may see and the filter allows, by ID."""
        stored = await self._events.get_events(h.event_id for h in hits)
        by_room: dict[str, list[StoredEvent]] = defaultdict(list)
        for hit in hits:
            event = stored.get(hit.event_id)
            if event is not None and event.redacted_by is None \
                    and event_filter.matches(event.pdu):
                by_room[event.room_id].append(event)
        allowed: dict[str, StoredEvent] = {}
        for events in by_room.values():
            for event in await self._visibility.filter_for_user(user_id, events):
                allowed[event.event_id] = event
        return allowed

    @staticmethod
    def _highlights(query: Query, events: list[StoredEvent]) -> set[str]:
        words: set[str] = set()
        for event in events:
            key = INDEXED.get(str(event.pdu.get("type")))
            value = (event.pdu.get("content") or {}).get(key[0]) if key else None
            if isinstance(value, str):
                words |= highlights(query, value)
        return words

    async def _serialize(self, reader: Reader, events: list[StoredEvent]
                         ) -> list[dict[str, Any]]:
        return await self._serializer.serialize(events, requester_device=reader.device_id,
                                                requester_user=reader.user_id,
                                                now=self._clock.time_ms())

    async def _context(self, reader: Reader, event: StoredEvent, criteria: RoomEventsSearch
                       ) -> dict[str, Any]:
        """The events around a result, as ``/context`` would give them."""
        assert criteria.before_limit is not None
        context = await self._messages.around(
            reader, event, max(0, min(criteria.before_limit, MAX_CONTEXT)),
            max(0, min(criteria.after_limit, MAX_CONTEXT)), RoomEventFilter())
        if criteria.include_profile:
            senders = {str(event.pdu.get("sender"))}
            senders |= {e["sender"] for e in context["events_before"] + context["events_after"]}
            context["profile_info"] = await self._profiles(event, senders)
        return context

    async def _profiles(self, event: StoredEvent, senders: set[str]
                        ) -> dict[str, dict[str, Any]]:
        """Each sender's display name and avatar as of the result event."""
        state = await self._state.state_at_group(
            event.state_group_after, only=[("m.room.member", s) for s in senders])
        members = await self._events.get_events(state.values())
        out: dict[str, dict[str, Any]] = {}
        for (_, user_id), event_id in state.items():
            content = members[event_id].pdu.get("content") or {} if event_id in members else {}
            out[user_id] = {k: v for k in ("displayname", "avatar_url")
                            if isinstance(v := content.get(k), str)}
        return out

    @staticmethod
    def _groups(found: list[tuple[StoredEvent, SearchHit]], group_by: tuple[str, ...],
                next_batch: str | None) -> dict[str, Any]:
        groups: dict[str, Any] = {}
        for key in group_by:
            grouped: dict[str, dict[str, Any]] = {}
            for event, _ in found:
                value = event.room_id if key == "room_id" else str(event.pdu.get("sender"))
                group = grouped.setdefault(value, {"results": [], "order": len(grouped) + 1})
                group["results"].append(event.event_id)
                if next_batch is not None:
                    group["next_batch"] = next_batch
            groups[key] = grouped
        return groups
