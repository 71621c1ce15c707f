"""Relations between events (https://spec.matrix.org/v1.19/client-server-api/#forming-relationships-between-events):
the aggregations bundled with the events a client sees (``unsigned["m.relations"]``: threads,
the edit that applies, references), ``/relations`` and ``/threads``.

Bundles are computed for a page of events at once: the store's summaries (cached per parent,
the same for every reader), then one load of the events they name and one visibility check
per room, so a reader is only shown the thread replies and edits they may see.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.clock import Clock
from core.errors import Forbidden, InvalidParam, NotFound
from homeserver.services.messages import (
    MAX_PAGE,
    MessageService,
    Reader,
    make_token,
    parse_token,
    sync_token_position,
)
from homeserver.services.serialize import EventSerializer
from homeserver.services.visibility import VisibilityService
from storage.relations_index import THREAD, relation_of
from storage.stores.events import EventStore, StoredEvent
from storage.stores.relations import RECURSION_DEPTH, REPLACE, RelationStore, RelationSummary

# Events that relate this way take no aggregations of their own (as Synapse).
_NO_AGGREGATIONS = ("m.replace", "m.annotation")
_SCAN_ROUNDS = 10
_THREADS_TOKEN = re.compile(r"^r(-?[0-9]{1,19})$")


@dataclass(frozen=True, slots=True)
class ThreadBundle:
    latest: StoredEvent
    latest_edit: StoredEvent | None
    count: int
    participated: bool


@dataclass(frozen=True, slots=True)
class Bundle:
    """What is bundled with one event for one reader."""

    thread: ThreadBundle | None
    edit: StoredEvent | None
    references: tuple[str, ...]


def _in_thread(event: StoredEvent) -> bool:
    """A thread reply (which is no thread root itself)."""
    relation = relation_of(event.pdu)
    return relation is not None and relation[0] == THREAD


def _valid_edit(original: StoredEvent, edit: StoredEvent) -> bool:
    """The spec's rules for a replacement to apply (the index already holds only those of
    the original's sender, type and room): neither is a state event, the original is no
    replacement itself, and an unencrypted replacement has ``m.new_content``."""
    if "state_key" in original.pdu or "state_key" in edit.pdu:
        return False
    relation = relation_of(original.pdu)
    if relation is not None and relation[0] == REPLACE:
        return False
    if edit.pdu.get("type") == "m.room.encrypted":
        return True
    return isinstance((edit.pdu.get("content") or {}).get("m.new_content"), dict)


class RelationAggregator:
    """The bundled aggregations of events, for a reader (``serialize.Aggregations``)."""

    def __init__(self, relations: RelationStore, events: EventStore,
                 visibility: VisibilityService) -> None:
        self._relations = relations
        self._events = events
        self._visibility = visibility

    async def bundles(self, events: Sequence[StoredEvent], user_id: str) -> dict[str, Bundle]:
        """Event ID -> its bundle, for the events that have one (state events never do)."""
        wanted = {}
        for event in events:
            if "state_key" in event.pdu:
                continue
            relation = relation_of(event.pdu)
            if relation is not None and relation[0] in _NO_AGGREGATIONS:
                continue
            wanted[event.event_id] = event
        if not wanted:
            return {}
        summaries = await self._relations.summaries(wanted)
        if not summaries:
            return {}
        latest_ids = {s.thread.latest_event_id for p, s in summaries.items()
                      if s.thread is not None and not _in_thread(wanted[p])}
        latest_summaries = await self._relations.summaries(latest_ids)
        edit_ids = {s.edits[-1] for p, s in summaries.items()
                    if s.edits and wanted[p].redacted_by is None}
        edit_ids |= {s.edits[-1] for s in latest_summaries.values() if s.edits}
        loaded = await self._events.get_events(
            latest_ids | edit_ids | {r for s in summaries.values() for r in s.references})
        visible = await self._visible(user_id, list(loaded.values()))
        out: dict[str, Bundle] = {}
        for parent_id, summary in summaries.items():
            bundle = self._bundle(wanted[parent_id], summary, latest_summaries, visible,
                                  user_id)
            if bundle is not None:
                out[parent_id] = bundle
        return out

    def _bundle(self, parent: StoredEvent, summary: RelationSummary,
                latest_summaries: dict[str, RelationSummary], visible: dict[str, StoredEvent],
                user_id: str) -> Bundle | None:
        thread = None
        if summary.thread is not None and not _in_thread(parent) \
                and (latest := visible.get(summary.thread.latest_event_id)) is not None:
            latest_summary = latest_summaries.get(latest.event_id)
            latest_edit = visible.get(latest_summary.edits[-1]) \
                if latest_summary is not None and latest_summary.edits else None
            if latest_edit is not None and not _valid_edit(latest, latest_edit):
                latest_edit = None
            thread = ThreadBundle(
                latest, latest_edit, summary.thread.count,
                user_id == parent.pdu.get("sender") or user_id in summary.thread.senders)
        edit = visible.get(summary.edits[-1]) \
            if summary.edits and parent.redacted_by is None else None
        if edit is not None and not _valid_edit(parent, edit):
            edit = None
        references = tuple(r for r in summary.references if r in visible)
        if thread is None and edit is None and not references:
            return None
        return Bundle(thread, edit, references)

    async def _visible(self, user_id: str, events: list[StoredEvent]
                       ) -> dict[str, StoredEvent]:
        """The events ``user_id`` may see (one visibility check per room)."""
        by_room: dict[str, list[StoredEvent]] = {}
        for event in events:
            if event.rejected_reason is None and event.stream_ordering is not None:
                by_room.setdefault(event.room_id, []).append(event)
        out: dict[str, StoredEvent] = {}
        for room_events in by_room.values():
            for event in await self._visibility.filter_for_user(user_id, room_events):
                out[event.event_id] = event
        return out


class RelationService:
    """``/relations`` and ``/threads``."""

    def __init__(self, relations: RelationStore, events: EventStore, messages: MessageService,
                 visibility: VisibilityService, serializer: EventSerializer,
                 clock: Clock) -> None:
        self._relations = relations
        self._events = events
        self._messages = messages
        self._visibility = visibility
        self._serializer = serializer
        self._clock = clock

    async def _serialize(self, reader: Reader, events: list[StoredEvent]
                         ) -> list[dict[str, Any]]:
        return await self._serializer.serialize(events, requester_device=reader.device_id,
                                                requester_user=reader.user_id,
                                                now=self._clock.time_ms())

    async def _position(self, room_id: str, token: str) -> tuple[int, int]:
        """A /relations, /messages or /sync token as the ``(depth, stream)`` just before
        the place it names (see ``MessageService``)."""
        stream = sync_token_position(token)
        if stream is None:
            return parse_token(token)
        return await self._events.position_at_stream(room_id, stream) or (-1, 0)

    async def relations(self, reader: Reader, room_id: str, event_id: str, *,
                        rel_type: str | None, event_type: str | None,
                        from_token: str | None, to_token: str | None, backwards: bool,
                        limit: int, recurse: bool | None) -> dict[str, Any]:
        """GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]].

        Raises:
            NotFound: the room or event is unknown, or the reader may not see the event.
        """
        try:
            await self._messages.access(reader.user_id, room_id)
        except Forbidden:
            raise NotFound("Event not found.") from None
        parent = await self._events.get_event(event_id)
        if parent is None or parent.room_id != room_id or parent.rejected_reason is not None \
                or parent.stream_ordering is None \
                or not await self._visibility.filter_for_user(reader.user_id, [parent]):
            raise NotFound("Event not found.")
        limit = max(1, min(limit, MAX_PAGE))
        start = await self._position(room_id, from_token) if from_token else None
        end = await self._position(room_id, to_token) if to_token else None
        # As /messages: a token is the place just after its position.
        if backwards and start is not None:
            start = (start[0], start[1] + 1)
        if not backwards and end is not None:
            end = (end[0], end[1] + 1)
        chunk: list[StoredEvent] = []
        cursor = start
        exhausted = False
        for _ in range(_SCAN_ROUNDS):
            fetch = limit - len(chunk)
            page = await self._relations.children(
                room_id, event_id, rel_type=rel_type, event_type=event_type,
                recurse=bool(recurse), before=cursor if backwards else end,
                after=end if backwards else cursor, backwards=backwards, limit=fetch)
            if not page:
                exhausted = True
                break
            loaded = await self._events.get_events(c.event_id for c in page)
            found = [loaded[c.event_id] for c in page if c.event_id in loaded]
            chunk += await self._visibility.filter_for_user(reader.user_id, found)
            last = page[-1]
            cursor = (last.depth, last.stream_ordering)
            if len(page) < fetch:
                exhausted = True
                break
            if len(chunk) >= limit:
                break
        body: dict[str, Any] = {"chunk": await self._serialize(reader, chunk)}
        if not exhausted and cursor is not None:
            body["next_batch"] = make_token(cursor[0], cursor[1] - 1) if backwards \
                else make_token(*cursor)
        if from_token:
            body["prev_batch"] = from_token
        if recurse is not None:
            body["recursion_depth"] = RECURSION_DEPTH if recurse else 1
        return body

    async def threads(self, reader: Reader, room_id: str, *, participated: bool,
                      from_token: str | None, limit: int) -> dict[str, Any]:
        """GET /rooms/{roomId}/threads: thread roots, latest activity first.

        Raises:
            Forbidden: the reader may not read the room.
            InvalidParam: a malformed ``from``.
        """
        await self._messages.access(reader.user_id, room_id)
        before: int | None = None
        if from_token is not None:
            match = _THREADS_TOKEN.match(from_token)
            if match is None or abs(int(match.group(1))) > 2**63 - 1:
                raise InvalidParam("Unknown pagination token")
            before = int(match.group(1))
        limit = max(1, min(limit, MAX_PAGE))
        chunk: list[StoredEvent] = []
        exhausted = False
        for _ in range(_SCAN_ROUNDS):
            fetch = limit - len(chunk)
            roots = await self._relations.thread_roots(
                room_id, participant=reader.user_id if participated else None,
                before=before, limit=fetch)
            if not roots:
                exhausted = True
                break
            loaded = await self._events.get_events(r.event_id for r in roots)
            found = [loaded[r.event_id] for r in roots if r.event_id in loaded
                     and loaded[r.event_id].stream_ordering is not None]
            chunk += await self._visibility.filter_for_user(reader.user_id, found)
            before = roots[-1].latest_stream
            if len(roots) < fetch:
                exhausted = True
                break
            if len(chunk) >= limit:
                break
        body: dict[str, Any] = {"chunk": await self._serialize(reader, chunk)}
        if not exhausted and before is not None:
            body["next_batch"] = f"r{before}"
        return body
