"""Reading rooms: events, history pages, context, state and members — each filtered by
what the reader may see."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from core.clock import Clock
from core.errors import Forbidden, InvalidParam, NotFound
from homeserver.services.filtering import RoomEventFilter
from homeserver.services.ignored_users import IgnoredUsers, hidden_by
from homeserver.services.serialize import EventSerializer
from homeserver.services.visibility import HISTORY_VISIBILITY, VisibilityService
from storage.stores.events import EventStore, StoredEvent
from storage.stores.rooms import RoomStore
from storage.stores.state import StateKey, StateMap, StateStore

# Numbers within the database's 64-bit integers (a larger one would overflow them): every
# depth and stream position fits, and so does the place after everything (2**62, below).
_TOKEN_RE = re.compile(r"^t(-?[0-9]{1,19})-(-?[0-9]{1,19})$")
_INT64 = 2**63 - 1
# A /sync token (``SyncToken`` in services/sync.py): the events stream position comes first.
_SYNC_TOKEN_RE = re.compile(r"^s([0-9]{1,16})(?:_[0-9]+){0,6}$")
# A place before every event (depths are never negative): for a sync token from before the
# room had any event.
_BEFORE_EVERYTHING = (-1, 0)
MAX_PAGE = 1000
_SCAN_ROUNDS = 10
_TS_PAGE = 50


def make_token(depth: int, stream: int) -> str:
    """A /messages pagination token: a place in the room's topological order, just after the
    event at ``(depth, stream)`` (as Synapse's: tokens are places between events, so one
    token means the same place whichever direction it is used in)."""
    return f"t{depth}-{stream}"


def parse_token(token: str) -> tuple[int, int]:
    match = _TOKEN_RE.match(token)
    if match is None or any(abs(int(n)) > _INT64 for n in match.groups()):
        raise InvalidParam("Invalid pagination token")
    return int(match.group(1)), int(match.group(2))


def sync_token_position(token: str) -> int | None:
    """The events stream position of a /sync token, or None if ``token`` is not one."""
    match = _SYNC_TOKEN_RE.match(token)
    return int(match.group(1)) if match is not None else None


@dataclass(frozen=True, slots=True)
class Reader:
    user_id: str
    device_id: str | None


@dataclass(frozen=True, slots=True)
class RoomAccess:
    """What the reader's relation to the room allows: everything up to ``until`` (the
    reader's leave, as a (depth, stream) position), or everything when None."""

    membership: str | None
    until: tuple[int, int] | None
    state_group: int | None  # the state the reader sees as "current"


class MessageService:
    def __init__(self, events: EventStore, state: StateStore, visibility: VisibilityService,
                 serializer: EventSerializer, rooms: RoomStore, clock: Clock, *,
                 ignored: IgnoredUsers,
                 backfill: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self._events = events
        self._ignored = ignored
        self._rooms = rooms
        self._state = state
        self._visibility = visibility
        self._serializer = serializer
        self._clock = clock
        # Federation: fetch a room's history from before anything here (``Backfiller``);
        # returns whether anything new came.
        self.backfill = backfill

    async def access(self, user_id: str, room_id: str) -> RoomAccess:
        """Whether ``user_id`` may read the room at all, and up to where.

        Raises:
            Forbidden: not a member now or before, and the room is not world-readable.
        """
        info = await self._events.room_info(room_id)
        if info is None:
            raise Forbidden("You are not allowed to view this room.")
        _version, group = info
        membership = await self._state.membership(room_id, user_id)
        if membership is not None and membership[0] == "join":
            return RoomAccess("join", None, group)
        if membership is not None and membership[0] in ("leave", "ban"):
            if room_id in await self._rooms.forgotten_rooms(user_id):
                # Forgotten: the history is gone for this user, unless the room is public.
                membership = None
        if membership is not None and membership[0] in ("leave", "ban"):
            leave = await self._events.get_event(membership[1])
            if leave is not None and leave.stream_ordering is not None:
                # A left user reads the room as it was when they left (if they were ever in).
                joins = await self._events.join_positions(room_id, user_id)
                if joins:
                    return RoomAccess(membership[0], (leave.depth, leave.stream_ordering),
                                      leave.state_group_after)
        current = await self._state.state_at_group(group, only=[HISTORY_VISIBILITY])
        if HISTORY_VISIBILITY in current:
            vis_event = await self._events.get_event(current[HISTORY_VISIBILITY])
            if vis_event is not None and (vis_event.pdu.get("content") or {}).get(
                    "history_visibility") == "world_readable":
                return RoomAccess(membership[0] if membership else None, None, group)
        # Invited (or knocking) users see the invite's stripped state through /sync; like
        # Synapse, they read the room itself only once joined (or when it is world-readable).
        raise Forbidden("You are not allowed to view this room.")

    async def _admin_access(self, room_id: str) -> RoomAccess:
        info = await self._events.room_info(room_id)
        if info is None:
            raise NotFound("Room not found")
        return RoomAccess(None, None, info[1])

    async def _serialize(self, reader: Reader, events: list[StoredEvent]
                         ) -> list[dict[str, Any]]:
        return await self._serializer.serialize(events, requester_device=reader.device_id,
                                                requester_user=reader.user_id,
                                                now=self._clock.time_ms())

    async def _position(self, room_id: str, token: str) -> tuple[int, int]:
        """The place a token names, as the ``(depth, stream)`` of the event just before it.

        Besides its own tokens, /messages takes any token /sync gave (the spec allows it;
        matrix-nio's ``room_messages(start=next_batch)`` relies on it): that names the place
        just after the room's last event the sync covered, so backwards from it come the
        newest events at or before it, forwards what came after.

        Raises:
            InvalidParam: neither a pagination token nor a sync token.
        """
        stream = sync_token_position(token)
        if stream is None:
            return parse_token(token)
        return await self._events.position_at_stream(room_id, stream) or _BEFORE_EVERYTHING

    async def get_event(self, reader: Reader, room_id: str, event_id: str) -> dict[str, Any]:
        await self.access(reader.user_id, room_id)
        stored = await self._events.get_event(event_id)
        if stored is None or stored.room_id != room_id or stored.rejected_reason is not None:
            raise NotFound("Event not found.")
        if not await self._visibility.filter_for_user(reader.user_id, [stored]) or \
                hidden_by(await self._ignored.of(reader.user_id), stored.pdu):
            raise NotFound("Event not found.")
        return (await self._serialize(reader, [stored]))[0]

    async def timestamp_to_event(self, reader: Reader, room_id: str, ts: int,
                                 forwards: bool) -> dict[str, Any]:
        """GET /rooms/{roomId}/timestamp_to_event: the event the reader may see closest to
        ``ts`` (by ``origin_server_ts``), at or after it (``forwards``) or at or before it.

        Raises:
            Forbidden: the reader may not read the room.
            NotFound: no such event.
        """
        await self.access(reader.user_id, room_id)
        after: tuple[int, int] | None = None
        for _ in range(_SCAN_ROUNDS):
            page = await self._events.by_timestamp(room_id, ts, forwards=forwards,
                                                   after=after, limit=_TS_PAGE)
            visible = await self._visibility.filter_for_user(reader.user_id, page)
            if visible:
                return {"event_id": visible[0].event_id,
                        "origin_server_ts": int(visible[0].pdu["origin_server_ts"])}
            if len(page) < _TS_PAGE:
                break
            last = page[-1]
            after = (int(last.pdu["origin_server_ts"]), last.stream_ordering or 0)
        raise NotFound(f"Unable to find event from {ts} in direction "
                       f"{'f' if forwards else 'b'}")

    async def messages(self, reader: Reader, room_id: str, *, from_token: str | None,
                       to_token: str | None, backwards: bool, limit: int,
                       event_filter: RoomEventFilter, as_admin: bool = False
                       ) -> dict[str, Any]:
        """GET /rooms/{roomId}/messages; ``as_admin``: the admin API's, which reads every
        event of any room this server knows, member or not."""
        access = await self._admin_access(room_id) if as_admin \
            else await self.access(reader.user_id, room_id)
        limit = max(0, min(limit, MAX_PAGE))
        # Internally both bounds are exclusive event positions; a token is the place just
        # after its position, so the events at or before it are behind it.
        start = await self._position(room_id, from_token) if from_token else None
        end = await self._position(room_id, to_token) if to_token else None
        if backwards and start is not None:
            start = (start[0], start[1] + 1)
        if not backwards and end is not None:
            end = (end[0], end[1] + 1)
        if access.until is not None:
            # Nothing after the reader left: cap the starting point there.
            cap = (access.until[0], access.until[1] + 1)
            if backwards and (start is None or start > cap):
                start = cap
            if not backwards:
                end = min(end, cap) if end is not None else cap
        chunk: list[StoredEvent] = []
        cursor, exhausted = await self._scan(reader, room_id, chunk, start, end, backwards,
                                             limit, event_filter, as_admin)
        if exhausted and backwards and end is None and len(chunk) < limit \
                and self.backfill is not None and await self.backfill(room_id):
            # The beginning of the room here, but other servers have more: go on into it.
            cursor, exhausted = await self._scan(reader, room_id, chunk, cursor, end,
                                                 backwards, limit, event_filter, as_admin)
        if from_token:
            start_token = from_token
        elif backwards:
            start_token = make_token(2**62, 2**62)
        else:
            start_token = make_token(0, 0)
        body: dict[str, Any] = {"chunk": await self._serialize(reader, chunk),
                                "start": start_token}
        if not exhausted and cursor is not None:
            # Going backwards, the place to go on from is just before the last event.
            body["end"] = make_token(cursor[0], cursor[1] - 1) if backwards \
                else make_token(*cursor)
        if event_filter.lazy_load_members and chunk:
            body["state"] = await self._members_for(reader, chunk, access)
        return body

    async def _scan(self, reader: Reader, room_id: str, chunk: list[StoredEvent],
                    cursor: tuple[int, int] | None, end: tuple[int, int] | None,
                    backwards: bool, limit: int, event_filter: RoomEventFilter,
                    as_admin: bool = False) -> tuple[tuple[int, int] | None, bool]:
        """Add to ``chunk`` the events after ``cursor`` (in the direction of reading) the
        reader may see and the filter takes, up to ``limit`` in all; returns where it
        stopped and whether the room has no more in that direction. Events of users the
        reader ignores are left out (their state events aside)."""
        ignored = await self._ignored.of(reader.user_id)
        for _ in range(_SCAN_ROUNDS):
            if len(chunk) >= limit:
                break
            fetch = max(limit - len(chunk), 20) if (event_filter.types or
                                                     event_filter.senders) else limit - len(chunk)
            if backwards:
                page = await self._events.paginate(room_id, before=cursor, after=end,
                                                   backwards=True, limit=fetch)
            else:
                page = await self._events.paginate(room_id, after=cursor, before=end,
                                                   backwards=False, limit=fetch)
            if not page:
                return cursor, True
            wanted = [e for e in page if event_filter.matches(e.pdu)
                      and not hidden_by(ignored, e.pdu)]
            visible = wanted if as_admin \
                else await self._visibility.filter_for_user(reader.user_id, wanted)
            room = limit - len(chunk)
            chunk += visible[:room]
            last = visible[room - 1] if len(visible) > room else page[-1]
            cursor = (last.depth, last.stream_ordering or 0)
            if len(visible) <= room and len(page) < fetch:
                return cursor, True
        return cursor, False

    async def _members_for(self, reader: Reader, chunk: list[StoredEvent],
                           access: RoomAccess) -> list[dict[str, Any]]:
        """The member events of the chunk's senders (lazy-loading members): for each, the one
        in force at their newest event in the chunk (they may have joined within it)."""
        newest: dict[str, StoredEvent] = {}
        for event in chunk:
            sender = str(event.pdu.get("sender"))
            seen = newest.get(sender)
            if seen is None or (event.depth, event.stream_ordering or 0) > (
                    seen.depth, seen.stream_ordering or 0):
                newest[sender] = event
        member_ids: list[str] = []
        for sender, event in sorted(newest.items()):
            state = await self._state.state_at_group(event.state_group_after,
                                                     only=[("m.room.member", sender)])
            member_ids += state.values()
        members = await self._events.get_events(member_ids)
        return await self._serialize(reader, [members[e] for e in member_ids if e in members])

    async def context(self, reader: Reader, room_id: str, event_id: str, limit: int,
                      event_filter: RoomEventFilter) -> dict[str, Any]:
        """GET /rooms/{roomId}/context/{eventId}."""
        await self.access(reader.user_id, room_id)
        stored = await self._events.get_event(event_id)
        if stored is None or stored.room_id != room_id or stored.stream_ordering is None or \
                not await self._visibility.filter_for_user(reader.user_id, [stored]) or \
                hidden_by(await self._ignored.of(reader.user_id), stored.pdu):
            raise NotFound("Event not found.")
        limit = max(0, min(limit, MAX_PAGE))
        around = await self.around(reader, stored, limit // 2, limit - limit // 2,
                                   event_filter)
        # The spec: "the state of the room at the last event returned".
        last = stored
        if around["events_after"]:
            last = await self._events.get_event(
                around["events_after"][-1]["event_id"]) or stored
        state = await self._state.state_at_group(last.state_group_after)
        state_events = await self._events.get_events(state.values())
        if event_filter.lazy_load_members:
            senders = {e["sender"] for e in around["events_before"] + around["events_after"]}
            senders.add(str(stored.pdu.get("sender")))
            state_events = {k: v for k, v in state_events.items()
                            if v.pdu.get("type") != "m.room.member"
                            or v.pdu.get("state_key") in senders}
        return {
            "event": (await self._serialize(reader, [stored]))[0],
            **around,
            "state": await self._serialize(reader, list(state_events.values())),
        }

    async def around(self, reader: Reader, stored: StoredEvent, before_limit: int,
                     after_limit: int, event_filter: RoomEventFilter) -> dict[str, Any]:
        """``events_before``, ``events_after``, ``start`` and ``end`` around a stored event
        (as /context gives them)."""
        assert stored.stream_ordering is not None
        position = make_token(stored.depth, stored.stream_ordering)
        just_before = make_token(stored.depth, stored.stream_ordering - 1)
        before = await self.messages(reader, stored.room_id, from_token=just_before,
                                     to_token=None, backwards=True, limit=before_limit,
                                     event_filter=event_filter)
        after = await self.messages(reader, stored.room_id, from_token=position,
                                    to_token=None, backwards=False, limit=after_limit,
                                    event_filter=event_filter)
        return {"events_before": before["chunk"], "events_after": after["chunk"],
                "start": before.get("end", just_before), "end": after.get("end", position)}

    async def _visible_state(self, user_id: str, room_id: str) -> StateMap:
        access = await self.access(user_id, room_id)
        return await self._state.state_at_group(access.state_group)

    async def room_state(self, reader: Reader, room_id: str) -> list[dict[str, Any]]:
        """GET /rooms/{roomId}/state: current state, or the state when the reader left."""
        state = await self._visible_state(reader.user_id, room_id)
        events = await self._events.get_events(state.values())
        return await self._serialize(reader, [events[e] for e in state.values() if e in events])

    async def state_event(self, reader: Reader, room_id: str, key: StateKey
                          ) -> dict[str, Any]:
        state = await self._visible_state(reader.user_id, room_id)
        event_id = state.get(key)
        stored = await self._events.get_event(event_id) if event_id else None
        if stored is None:
            raise NotFound("Event not found.")
        return (await self._serialize(reader, [stored]))[0]

    async def members(self, reader: Reader, room_id: str, *, at: str | None,
                      membership: str | None, not_membership: str | None
                      ) -> list[dict[str, Any]]:
        """GET /rooms/{roomId}/members."""
        access = await self.access(reader.user_id, room_id)
        group = access.state_group
        if at is not None:
            depth, stream = await self._position(room_id, at)
            page = await self._events.paginate(room_id, before=(depth, stream + 1),
                                               backwards=True, limit=1)
            if page:
                group = page[0].state_group_after
        state = await self._state.state_at_group(group)
        member_ids = [e for (t, _), e in state.items() if t == "m.room.member"]
        events = await self._events.get_events(member_ids)
        chosen = []
        for event_id in member_ids:
            event = events.get(event_id)
            if event is None:
                continue
            value = (event.pdu.get("content") or {}).get("membership")
            if membership is not None and value != membership:
                continue
            if not_membership is not None and value == not_membership:
                continue
            chosen.append(event)
        return await self._serialize(reader, chosen)

    async def joined_members(self, reader: Reader, room_id: str) -> dict[str, Any]:
        access = await self.access(reader.user_id, room_id)
        if access.membership != "join":
            raise Forbidden("You are not in this room.")
        state = await self._state.state_at_group(access.state_group)
        member_ids = [e for (t, _), e in state.items() if t == "m.room.member"]
        events = await self._events.get_events(member_ids)
        joined = {}
        for event in events.values():
            content = event.pdu.get("content") or {}
            if content.get("membership") == "join":
                # Unknown profile fields are left out (the spec's values are strings).
                joined[str(event.pdu.get("state_key"))] = {
                    key: value for key, value in (("display_name", content.get("displayname")),
                                                  ("avatar_url", content.get("avatar_url")))
                    if isinstance(value, str)}
        return {"joined": joined}
