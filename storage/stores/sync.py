"""The reads /sync makes: a user's memberships, what changed in their rooms between two
stream positions, and each room's latest events — a few queries for any number of rooms."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, select

from storage.engine import DatabaseEngine
from storage.schema import current_state, events, invite_state

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class RoomSummary:
    joined: int
    invited: int
    heroes: list[str]


@dataclass(frozen=True, slots=True)
class MembershipChange:
    room_id: str
    event_id: str
    membership: str
    stream_ordering: int


def _ranked(room_ids: Sequence[str], after: int, up_to: int, *, newest_first: bool) -> Any:
    """The rooms' events in ``(after, up_to]``, numbered per room (``rank``, from 1) newest
    or oldest first."""
    order = events.c.stream_ordering.desc() if newest_first else events.c.stream_ordering
    rank = func.row_number().over(partition_by=events.c.room_id, order_by=order).label("rank")
    return (select(events.c.room_id, events.c.event_id, events.c.stream_ordering, rank)
            .where(and_(events.c.room_id.in_(list(room_ids)),
                        events.c.stream_ordering > after,
                        events.c.stream_ordering <= up_to,
                        events.c.rejected_reason.is_(None)))
            .subquery())


class SyncStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def memberships(self, user_id: str) -> dict[str, tuple[str, str]]:
        """Room -> (membership, member event ID) for every room the user has a member
        event in."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(current_state.c.room_id, current_state.c.membership,
                       current_state.c.event_id)
                .where(and_(current_state.c.type == "m.room.member",
                            current_state.c.state_key == user_id)))
            return {r.room_id: (r.membership, r.event_id) for r in rows}

    async def memberships_of(self, user_ids: Sequence[str]
                             ) -> dict[str, dict[str, tuple[str, str]]]:
        """``memberships`` of many users at once (each user asked for is in the answer)."""
        out: dict[str, dict[str, tuple[str, str]]] = {u: {} for u in user_ids}
        async with self._db.read() as conn:
            for i in range(0, len(user_ids), 500):
                rows = await conn.execute(
                    select(current_state.c.state_key, current_state.c.room_id,
                           current_state.c.membership, current_state.c.event_id)
                    .where(and_(current_state.c.type == "m.room.member",
                                current_state.c.state_key.in_(list(user_ids[i:i + 500])))))
                for r in rows:
                    out[r.state_key][r.room_id] = (r.membership, r.event_id)
        return out

    async def membership_changes(self, user_id: str, after: int, up_to: int
                                 ) -> list[MembershipChange]:
        """The user's member events with ``after < stream_ordering <= up_to``, in order."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(events.c.room_id, events.c.event_id, events.c.json,
                       events.c.stream_ordering)
                .where(and_(events.c.type == "m.room.member", events.c.state_key == user_id,
                            events.c.stream_ordering > after,
                            events.c.stream_ordering <= up_to,
                            events.c.rejected_reason.is_(None)))
                .order_by(events.c.stream_ordering))
            return [MembershipChange(r.room_id, r.event_id,
                                     str(json.loads(r.json).get("content", {})
                                         .get("membership")), r.stream_ordering)
                    for r in rows]

    async def invite_state(self, event_id: str) -> list[dict[str, Any]] | None:
        """The stripped state that came with an invite (or knock) to a room this server is
        not in, if that is what the event is."""
        async with self._db.read() as conn:
            row = (await conn.execute(select(invite_state.c.stripped_json).where(
                invite_state.c.event_id == event_id))).first()
        return json.loads(row[0]) if row is not None else None

    async def latest_event_ids(self, room_ids: Sequence[str], *, after: int, up_to: int,
                               limit: int) -> dict[str, list[str]]:
        """For each room, the IDs of its newest ``limit`` events in ``(after, up_to]``,
        oldest first."""
        out: dict[str, list[str]] = {r: [] for r in room_ids}
        for i in range(0, len(room_ids), _CHUNK):
            ranked = _ranked(room_ids[i:i + _CHUNK], after, up_to, newest_first=True)
            async with self._db.read() as conn:
                rows = await conn.execute(
                    select(ranked.c.room_id, ranked.c.event_id)
                    .where(ranked.c.rank <= limit)
                    .order_by(ranked.c.stream_ordering))
                for row in rows:
                    out[row.room_id].append(row.event_id)
        return out

    async def overflow_positions(self, room_ids: Sequence[str], *, after: int, up_to: int,
                                 limit: int) -> dict[str, int]:
        """For each room with more than ``limit`` events in ``(after, up_to]``, the stream
        ordering of the ``limit``-th of them (oldest first)."""
        out: dict[str, int] = {}
        for i in range(0, len(room_ids), _CHUNK):
            ranked = _ranked(room_ids[i:i + _CHUNK], after, up_to, newest_first=False)
            async with self._db.read() as conn:
                rows = await conn.execute(
                    select(ranked.c.room_id, ranked.c.stream_ordering, ranked.c.rank)
                    .where(ranked.c.rank.in_([limit, limit + 1])))
                found: dict[str, dict[int, int]] = {}
                for row in rows:
                    found.setdefault(row.room_id, {})[row.rank] = row.stream_ordering
            out.update({r: ranks[limit] for r, ranks in found.items()
                        if limit in ranks and limit + 1 in ranks})
        return out

    async def rooms_with_events(self, room_ids: Sequence[str], *, after: int, up_to: int
                                ) -> set[str]:
        """Which of the rooms have events in ``(after, up_to]``."""
        found: set[str] = set()
        for i in range(0, len(room_ids), _CHUNK):
            async with self._db.read() as conn:
                rows = await conn.execute(
                    select(events.c.room_id).distinct()
                    .where(and_(events.c.room_id.in_(list(room_ids[i:i + _CHUNK])),
                                events.c.stream_ordering > after,
                                events.c.stream_ordering <= up_to)))
                found.update(r[0] for r in rows)
        return found

    async def room_summaries(self, room_ids: Sequence[str], user_id: str, *, heroes: int
                             ) -> dict[str, RoomSummary]:
        """Member counts and heroes of many rooms in two queries, whatever their size.

        Heroes are other users: joined ones, then invited ones, each in the order they became
        members; only when there are none, those who left or were banned (the spec's rule).
        """
        out = {r: RoomSummary(0, 0, []) for r in room_ids}
        if not room_ids:
            return out
        member = current_state.c.type == "m.room.member"
        kind = case((current_state.c.membership == "join", 0),
                    (current_state.c.membership == "invite", 1), else_=2)
        for i in range(0, len(room_ids), _CHUNK):
            chunk = list(room_ids[i:i + _CHUNK])
            async with self._db.read() as conn:
                counts = await conn.execute(
                    select(current_state.c.room_id, current_state.c.membership, func.count())
                    .where(and_(current_state.c.room_id.in_(chunk), member,
                                current_state.c.membership.in_(("join", "invite"))))
                    .group_by(current_state.c.room_id, current_state.c.membership))
                for room_id, membership, count in counts:
                    summary = out[room_id]
                    if membership == "join":
                        out[room_id] = RoomSummary(int(count), summary.invited, summary.heroes)
                    else:
                        out[room_id] = RoomSummary(summary.joined, int(count), summary.heroes)
                rank = func.row_number().over(
                    partition_by=current_state.c.room_id,
                    order_by=(kind, events.c.stream_ordering, current_state.c.state_key))
                ranked = (select(current_state.c.room_id, current_state.c.state_key,
                                 kind.label("kind"), rank.label("rank"))
                          .select_from(current_state.outerjoin(
                              events, events.c.event_id == current_state.c.event_id))
                          .where(and_(current_state.c.room_id.in_(chunk), member,
                                      current_state.c.state_key != user_id))
                          .subquery())
                rows = await conn.execute(select(ranked).where(ranked.c.rank <= heroes)
                                          .order_by(ranked.c.room_id, ranked.c.rank))
                candidates: dict[str, list[tuple[int, str]]] = {}
                for row in rows:
                    candidates.setdefault(row.room_id, []).append((row.kind, row.state_key))
            for room_id, found in candidates.items():
                present = [u for k, u in found if k < 2]
                out[room_id].heroes.extend(present or [u for _, u in found])
        return out

    async def co_members(self, user_id: str, room_ids: Sequence[str]) -> set[str]:
        """Users joined to any of the rooms (the user's own rooms: who shares one with them)."""
        found: set[str] = set()
        for i in range(0, len(room_ids), _CHUNK):
            async with self._db.read() as conn:
                rows = await conn.execute(
                    select(current_state.c.state_key).distinct()
                    .where(and_(current_state.c.room_id.in_(list(room_ids[i:i + _CHUNK])),
                                current_state.c.type == "m.room.member",
                                current_state.c.membership == "join")))
                found.update(r[0] for r in rows)
        return found

    async def last_event_at(self, room_id: str, position: int) -> tuple[int | None, int] | None:
        """``(state_group_after, stream_ordering)`` of the room's last event at or before
        ``position``."""
        async with self._db.read() as conn:
            row = (await conn.execute(
                select(events.c.state_group_after, events.c.stream_ordering)
                .where(and_(events.c.room_id == room_id,
                            events.c.stream_ordering <= position,
                            events.c.rejected_reason.is_(None)))
                .order_by(events.c.stream_ordering.desc()).limit(1))).first()
        return (row.state_group_after, row.stream_ordering) if row is not None else None
