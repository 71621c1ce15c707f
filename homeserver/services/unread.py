"""Unread counts: ``unread_notifications`` in /sync.

What the spec's default push rules make notify — messages, encrypted messages, stickers and
polls from others, edits excepted — counts once it comes after the user's read receipt (and
their join); it highlights when it mentions the user (``m.mentions``; for clients that do not
send it, their display name, their user name or ``@room`` in the body). Evaluating the user's
own push rules comes with push notifications.

Counts are cached per user and room at a stream position and move forward over the room's new
events (the recent ones are in memory); a room read up to its newest event counts nothing;
anything else recounts (a few queries for all rooms of a sync).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from homeserver.services.recent_events import RecentRoomEvents
from storage.stores.events import EventStore
from storage.stores.sync import SyncStore

COUNTED_TYPES = ("m.room.message", "m.room.encrypted", "m.sticker", "m.poll.start")


def notifies(pdu: dict[str, Any], user_id: str) -> bool:
    if pdu.get("sender") == user_id or pdu.get("type") not in COUNTED_TYPES:
        return False
    relates = (pdu.get("content") or {}).get("m.relates_to")
    return not (isinstance(relates, dict) and relates.get("rel_type") == "m.replace")


def highlights(pdu: dict[str, Any], user_id: str, display_name: str | None) -> bool:
    content = pdu.get("content") or {}
    mentions = content.get("m.mentions")
    if isinstance(mentions, dict):
        ids = mentions.get("user_ids")
        return (isinstance(ids, list) and user_id in ids) or mentions.get("room") is True
    body = content.get("body")
    if not isinstance(body, str):
        return False
    if "@room" in body:
        return True
    lowered = body.lower()
    localpart = user_id[1:].split(":", 1)[0]
    # The substring test first: most messages mention nobody, and it is cheap.
    return any(n.lower() in lowered and
               re.search(rf"(^|\W){re.escape(n)}(\W|$)", body, re.IGNORECASE)
               for n in (display_name, localpart) if n)


@dataclass(frozen=True, slots=True)
class Counts:
    at: int  # the stream position the counts are up to
    start: int  # counting starts after this position (read receipt or join)
    notifications: int
    highlights: int


class UnreadCounter:
    CACHE_SIZE = 50_000
    # Counts move forward from memory over at most this many new events of a room.
    MAX_STEP = 200

    def __init__(self, store: SyncStore, events: EventStore, recent: RecentRoomEvents
                 ) -> None:
        self._store = store
        self._events = events
        self._recent = recent
        self._cache: LRUCache[tuple[str, str], Counts] = LRUCache(self.CACHE_SIZE)

    async def counts(self, user_id: str, starts: dict[str, int], up_to: int, *,
                     display_names: dict[str, str | None]) -> dict[str, tuple[int, int]]:
        """Room -> (notification_count, highlight_count) for the rooms in ``starts``.

        Args:
            starts: room -> the position counting starts after (read receipt or join).
            up_to: count events up to this position.
            display_names: room -> the user's display name there (highlights).

        Counts cached at an earlier position move forward over the room's new events, and
        a start that moved (a new read receipt) is counted from there, from memory as far as
        it reaches (the recent events of a room); only what is left is counted by query (all
        such rooms at once).
        """
        out: dict[str, tuple[int, int]] = {}
        recount: dict[str, int] = {}
        steps: dict[str, tuple[Counts, list[str]]] = {}
        for room_id, start in starts.items():
            cached = self._cache.get((user_id, room_id))
            if cached is not None and cached.start == start and cached.at == up_to:
                out[room_id] = (cached.notifications, cached.highlights)
                continue
            if cached is not None and cached.start == start and cached.at < up_to:
                new = self._recent.events_between(room_id, cached.at, up_to, self.MAX_STEP)
                if new is not None and len(new) < self.MAX_STEP:
                    steps[room_id] = (cached, new)
                    continue
            # The start moved (the user read on), or nothing is cached: what came after it
            # is usually recent enough to be in memory.
            new = self._recent.events_between(room_id, start, up_to, self.MAX_STEP)
            if new is not None and len(new) < self.MAX_STEP:
                steps[room_id] = (Counts(start, start, 0, 0), new)
                continue
            recount[room_id] = start
        if steps:
            loaded = await self._events.get_events(e for _, ids in steps.values() for e in ids)
            for room_id, (cached, ids) in steps.items():
                new_pdus = [loaded[e].pdu for e in ids if e in loaded]
                counted = self._cache[(user_id, room_id)] = Counts(
                    up_to, cached.start, cached.notifications + _count(new_pdus, user_id),
                    cached.highlights + _count_highlights(new_pdus, user_id,
                                                          display_names.get(room_id)))
                out[room_id] = (counted.notifications, counted.highlights)
        if recount:
            found = await self._store.unread_events(user_id, recount, up_to, COUNTED_TYPES,
                                                    [n for n in display_names.values() if n])
            for room_id, start in recount.items():
                count, candidates = found.get(room_id, (0, []))
                counted = Counts(up_to, start, count, _count_highlights(
                    candidates, user_id, display_names.get(room_id)))
                self._cache[(user_id, room_id)] = counted
                out[room_id] = (counted.notifications, counted.highlights)
        return out


def _count(pdus: Iterable[dict[str, Any]], user_id: str) -> int:
    return sum(1 for p in pdus if notifies(p, user_id))


def _count_highlights(pdus: Iterable[dict[str, Any]], user_id: str,
                      display_name: str | None) -> int:
    return sum(1 for p in pdus if notifies(p, user_id)
               and highlights(p, user_id, display_name))
