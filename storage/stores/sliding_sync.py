"""The reads simplified sliding sync (MSC4186) makes over many rooms at once: bump stamps,
the current state a room list is filtered on, the state events a response carries, and
what state changed in a window — one query each, whatever the number of rooms."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, or_, select

from storage.engine import DatabaseEngine
from storage.schema import account_data, current_state, events

_CHUNK = 500

# MSC4186's bump event types: what moves a room up the list.
BUMP_TYPES = ("m.room.create", "m.room.message", "m.room.encrypted", "m.sticker",
              "m.call.invite", "m.poll.start", "m.beacon_info")


class SlidingSyncStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def bump_stamps(self, room_ids: Sequence[str], up_to: int) -> dict[str, int]:
        """Room -> stream ordering of its latest bump event at or before ``up_to`` (rooms
        without one are left out)."""
        out: dict[str, int] = {}
        for i in range(0, len(room_ids), _CHUNK):
            async with self._db.read() as conn:
                rows = await conn.execute(
                    select(events.c.room_id, func.max(events.c.stream_ordering))
                    .where(and_(events.c.room_id.in_(list(room_ids[i:i + _CHUNK])),
                                events.c.type.in_(BUMP_TYPES),
                                events.c.stream_ordering > 0,
                                events.c.stream_ordering <= up_to,
                                events.c.rejected_reason.is_(None)))
                    .group_by(events.c.room_id))
                out.update({r[0]: int(r[1]) for r in rows if r[1] is not None})
        return out

    async def memberships(self, user_id: str) -> dict[str, tuple[str, str, int, str]]:
        """Room -> (membership, member event ID, its stream ordering, its sender) of every
        room the user has a member event in (no event JSON read)."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(current_state.c.room_id, current_state.c.membership,
                       current_state.c.event_id, events.c.stream_ordering, events.c.sender)
                .select_from(current_state.join(
                    events, events.c.event_id == current_state.c.event_id))
                .where(and_(current_state.c.type == "m.room.member",
                            current_state.c.state_key == user_id)))
            return {r.room_id: (r.membership, r.event_id, int(r.stream_ordering or 0),
                                r.sender) for r in rows}

    async def state_contents(self, room_ids: Sequence[str], types: Sequence[str]
                             ) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
        """Room -> (type, state_key) -> content of the rooms' current state events of these
        types (what list filters look at: create, encryption, space children)."""
        out: dict[str, dict[tuple[str, str], dict[str, Any]]] = {r: {} for r in room_ids}
        for i in range(0, len(room_ids), _CHUNK):
            async with self._db.read() as conn:
                rows = await conn.execute(
                    select(current_state.c.room_id, current_state.c.type,
                           current_state.c.state_key, events.c.json)
                    .select_from(current_state.join(
                        events, events.c.event_id == current_state.c.event_id))
                    .where(and_(current_state.c.room_id.in_(list(room_ids[i:i + _CHUNK])),
                                current_state.c.type.in_(list(types)))))
                for row in rows:
                    content = json.loads(row.json).get("content")
                    out[row.room_id][(row.type, row.state_key)] = \
                        content if isinstance(content, dict) else {}
        return out

    async def current_state_ids(self, room_ids: Sequence[str], *, all_types: bool,
                                types: Sequence[str], pairs: Sequence[tuple[str, str]]
                                ) -> dict[str, dict[tuple[str, str], str]]:
        """Room -> (type, state_key) -> event ID of the rooms' current state: all of it when
        ``all_types``, else the events of ``types`` (any state key) and the exact
        ``pairs``."""
        out: dict[str, dict[tuple[str, str], str]] = {r: {} for r in room_ids}
        conditions: list[Any] = []
        if all_types:
            conditions.append(current_state.c.type.is_not(None))
        elif types:
            conditions.append(current_state.c.type.in_(list(types)))
        by_type: dict[str, list[str]] = {}
        for type_, key in pairs:
            by_type.setdefault(type_, []).append(key)
        for type_, keys in by_type.items():
            conditions.append(and_(current_state.c.type == type_,
                                   current_state.c.state_key.in_(sorted(set(keys)))))
        if not conditions or not room_ids:
            return out
        for i in range(0, len(room_ids), _CHUNK):
            async with self._db.read() as conn:
                rows = await conn.execute(
                    select(current_state.c.room_id, current_state.c.type,
                           current_state.c.state_key, current_state.c.event_id)
                    .where(and_(current_state.c.room_id.in_(list(room_ids[i:i + _CHUNK])),
                                or_(*conditions))))
                for row in rows:
                    out[row.room_id][(row.type, row.state_key)] = row.event_id
        return out

    async def state_changes(self, bounds: dict[str, tuple[int, int]]
                            ) -> dict[str, dict[tuple[str, str], str]]:
        """Room -> (type, state_key) -> the last state event of that key in the room's
        window ``(after, up_to]`` (the state deltas an incremental response carries)."""
        out: dict[str, dict[tuple[str, str], str]] = {r: {} for r in bounds}
        if not bounds:
            return out
        windows = [and_(events.c.room_id == r, events.c.stream_ordering > after,
                        events.c.stream_ordering <= up_to)
                   for r, (after, up_to) in bounds.items()]
        for i in range(0, len(windows), 100):
            async with self._db.read() as conn:
                rows = await conn.execute(
                    select(events.c.room_id, events.c.type, events.c.state_key,
                           events.c.event_id)
                    .where(and_(or_(*windows[i:i + 100]), events.c.state_key.is_not(None),
                                events.c.outlier.is_(False),
                                events.c.rejected_reason.is_(None)))
                    .order_by(events.c.stream_ordering))
                for row in rows:
                    out[row.room_id][(row.type, row.state_key)] = row.event_id
        return out

    async def account_data_between(self, user_id: str, after: int, up_to: int
                                   ) -> list[tuple[str, str, dict[str, Any]]]:
        """``(room_id, type, content)`` of the user's account data written in
        ``(after, up_to]`` (room ``""``: global)."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(account_data.c.room_id, account_data.c.type, account_data.c.content)
                .where(and_(account_data.c.user_id == user_id,
                            account_data.c.stream_id > after,
                            account_data.c.stream_id <= up_to))
                .order_by(account_data.c.stream_id))
            return [(r.room_id, r.type, json.loads(r.content)) for r in rows]

    async def account_data_of(self, user_id: str) -> list[tuple[str, str, dict[str, Any], int]]:
        """``(room_id, type, content, stream position)`` of all the user's account data, in
        stream order (room ``""``: global)."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(account_data.c.room_id, account_data.c.type, account_data.c.content,
                       account_data.c.stream_id)
                .where(account_data.c.user_id == user_id)
                .order_by(account_data.c.stream_id))
            return [(r.room_id, r.type, json.loads(r.content), int(r.stream_id)) for r in rows]

    async def room_account_data_of_type(self, user_id: str, type_: str
                                        ) -> dict[str, dict[str, Any]]:
        """Room -> the user's room account data of this type (``m.tag``)."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(account_data.c.room_id, account_data.c.content)
                .where(and_(account_data.c.user_id == user_id,
                            account_data.c.type == type_, account_data.c.room_id != "")))
            out: dict[str, dict[str, Any]] = {}
            for room_id, content in rows:
                value = json.loads(content)
                out[room_id] = value if isinstance(value, dict) else {}
            return out

    async def room_states(self, room_ids: Sequence[str], max_state: int
                          ) -> tuple[dict[str, list[tuple[str, str, str, str | None,
                                                          int | None]]], set[str]]:
        """Room -> its current state as ``(type, state_key, event ID, membership, the
        event's stream ordering)`` of the rooms with at most ``max_state`` state entries
        (unknown rooms: none), and the rooms with more (left out)."""
        out: dict[str, list[tuple[str, str, str, str | None, int | None]]] = {}
        big: set[str] = set()
        for i in range(0, len(room_ids), _CHUNK):
            chunk = list(room_ids[i:i + _CHUNK])
            async with self._db.read() as conn:
                sizes: dict[str, int] = {
                    r[0]: int(r[1]) for r in await conn.execute(
                        select(current_state.c.room_id, func.count())
                        .where(current_state.c.room_id.in_(chunk))
                        .group_by(current_state.c.room_id))}
                small = [r for r in chunk if sizes.get(r, 0) <= max_state]
                big.update(r for r in chunk if sizes.get(r, 0) > max_state)
                out.update({r: [] for r in small})
                if not small:
                    continue
                rows = await conn.execute(
                    select(current_state.c.room_id, current_state.c.type,
                           current_state.c.state_key, current_state.c.event_id,
                           current_state.c.membership, events.c.stream_ordering)
                    .select_from(current_state.outerjoin(
                        events, events.c.event_id == current_state.c.event_id))
                    .where(current_state.c.room_id.in_(small)))
                for row in rows:
                    out[row.room_id].append((row.type, row.state_key, row.event_id,
                                             row.membership, row.stream_ordering))
        return out, big

    async def latest_events(self, room_ids: Sequence[str], limit: int
                            ) -> dict[str, list[tuple[int, str]]]:
        """Room -> its newest ``limit`` timeline events as ``(stream ordering, event ID)``,
        oldest first."""
        out: dict[str, list[tuple[int, str]]] = {r: [] for r in room_ids}
        for i in range(0, len(room_ids), _CHUNK):
            rank = func.row_number().over(partition_by=events.c.room_id,
                                          order_by=events.c.stream_ordering.desc()).label("rank")
            ranked = (select(events.c.room_id, events.c.event_id, events.c.stream_ordering,
                             rank)
                      .where(and_(events.c.room_id.in_(list(room_ids[i:i + _CHUNK])),
                                  events.c.stream_ordering > 0,
                                  events.c.rejected_reason.is_(None)))
                      .subquery())
            async with self._db.read() as conn:
                rows = await conn.execute(
                    select(ranked.c.room_id, ranked.c.event_id, ranked.c.stream_ordering)
                    .where(ranked.c.rank <= limit)
                    .order_by(ranked.c.stream_ordering))
                for row in rows:
                    out[row.room_id].append((int(row.stream_ordering), row.event_id))
        return out
