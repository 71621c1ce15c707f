"""Rotation of push results (homeserver/services/push_rotation.py): the batches of old
notification rows, what rotation needs to count them per member (receipts, summaries), and
the one transaction that stores the counts and deletes the rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, and_, delete, select, update

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.schema import (
    events,
    push_actions,
    push_events,
    push_positions,
    push_summaries,
    receipts,
)
from storage.stores.push import PushStore, PushSummary

_e = push_events.c
_a = push_actions.c
_s = push_summaries.c
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class RoomWideRow:
    """A non-highlight notification for the room's members (``push_events``)."""

    event_id: str
    room_id: str
    stream_ordering: int
    thread_id: str
    sender: str


@dataclass(frozen=True, slots=True)
class VerdictRow:
    """A user's own verdict on an event (``push_actions``)."""

    user_id: str
    event_id: str
    room_id: str
    stream_ordering: int
    thread_id: str
    notify: bool
    highlight: bool


@dataclass(frozen=True, slots=True)
class SummaryWrite:
    user_id: str
    summary: PushSummary


class RotationConflict(RuntimeError):
    """Another process rotated the same batch first (nothing was written)."""


class PushRotationStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def position(self) -> int:
        """How far rotation has got (0: never rotated)."""
        async with self._db.read() as conn:
            found = (await conn.execute(select(push_positions.c.stream_ordering).where(
                push_positions.c.name == PushStore.ROTATED))).scalar()
        return 0 if found is None else int(found)

    async def horizon(self, received_before_ts: int, up_to: int) -> int:
        """The newest timeline position up to ``up_to`` whose event was received before
        ``received_before_ts``, by binary search on the stream (events arrive in order, near
        enough; Synapse's ``find_first_stream_ordering_after_ts``): O(log n) indexed
        lookups, no scan of ``events``."""
        best, low, high = 0, 1, up_to
        c = events.c
        async with self._db.read() as conn:
            while low <= high:
                middle = (low + high) // 2
                row = (await conn.execute(select(c.stream_ordering, c.received_ts).where(and_(
                    c.stream_ordering >= middle, c.stream_ordering <= up_to))
                    .order_by(c.stream_ordering).limit(1))).first()
                if row is not None and int(row.received_ts) < received_before_ts:
                    best = int(row.stream_ordering)
                    low = best + 1
                else:
                    high = middle - 1
        return best

    async def batch_end(self, after: int, up_to: int, size: int) -> int:
        """Where a batch starting after ``after`` ends: at most about ``size`` rows of each
        table (a position's rows all go in one batch), and not past ``up_to``."""
        end = up_to
        async with self._db.read() as conn:
            for column in (_e.stream_ordering, _a.stream_ordering):
                found = (await conn.execute(select(column).where(and_(
                    column > after, column <= up_to)).order_by(column).limit(1)
                    .offset(size))).scalar()
                if found is not None:
                    end = min(end, int(found))
        return end

    async def rows(self, after: int, up_to: int
                   ) -> tuple[list[RoomWideRow], list[VerdictRow]]:
        """The room-wide non-highlight notifications and every user's own verdicts in
        ``(after, up_to]``."""
        async with self._db.read() as conn:
            room_wide = [RoomWideRow(r.event_id, r.room_id, int(r.stream_ordering),
                                     r.thread_id, r.sender)
                         for r in await conn.execute(select(
                             _e.event_id, _e.room_id, _e.stream_ordering, _e.thread_id,
                             _e.sender).where(and_(
                                 _e.stream_ordering > after, _e.stream_ordering <= up_to,
                                 _e.highlight.is_(False))))]
            verdicts = [VerdictRow(r.user_id, r.event_id, r.room_id, int(r.stream_ordering),
                                   r.thread_id, bool(r.notify), bool(r.highlight))
                        for r in await conn.execute(select(
                            _a.user_id, _a.event_id, _a.room_id, _a.stream_ordering,
                            _a.thread_id, _a.notify, _a.highlight).where(and_(
                                _a.stream_ordering > after, _a.stream_ordering <= up_to)))]
        return room_wide, verdicts

    async def read_positions(self, room_id: str, user_ids: Sequence[str]
                             ) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """(user -> their room-wide read position, (user, thread root) -> their read position
        in that thread) in the room (public or private receipts, as the counts read them)."""
        c = receipts.c
        room: dict[str, int] = {}
        threads: dict[tuple[str, str], int] = {}
        async with self._db.read() as conn:
            for i in range(0, len(user_ids), _CHUNK):
                rows = await conn.execute(select(
                    c.user_id, c.thread_id, c.event_stream_ordering).where(and_(
                        c.room_id == room_id, c.user_id.in_(list(user_ids[i:i + _CHUNK])),
                        c.receipt_type.in_(("m.read", "m.read.private")))))
                for user_id, thread_id, position in rows:
                    if thread_id in ("", "main"):
                        room[user_id] = max(room.get(user_id, 0), int(position))
                    else:
                        key = (user_id, thread_id)
                        threads[key] = max(threads.get(key, 0), int(position))
        return room, threads

    async def summaries(self, room_id: str) -> dict[tuple[str, str], PushSummary]:
        """(user, thread) -> the room's summaries."""
        async with self._db.read() as conn:
            return {(r.user_id, r.thread_id): PushSummary(
                r.room_id, r.thread_id, int(r.start), int(r.thread_start), int(r.notif),
                int(r.thread_notif))
                for r in await conn.execute(select(push_summaries).where(
                    _s.room_id == room_id))}

    async def apply(self, after: int, up_to: int, writes: Sequence[SummaryWrite],
                    departed: Sequence[tuple[str, str]]) -> int:
        """In one transaction: store the summaries, drop those of (room, user) no longer
        joined, delete the non-highlight notifications in ``(after, up_to]`` (a user's own
        verdict stays while the room-wide row it overrides does) and move the position.
        Returns the number of rows deleted.

        Raises:
            RotationConflict: the position was no longer ``after`` (another process).
        """
        def write(conn: Connection) -> int:
            moved = conn.execute(update(push_positions).where(and_(
                push_positions.c.name == PushStore.ROTATED,
                push_positions.c.stream_ordering == after)).values(stream_ordering=up_to))
            if moved.rowcount == 0:
                if after != 0 or conn.execute(select(push_positions.c.name).where(
                        push_positions.c.name == PushStore.ROTATED)).first() is not None:
                    raise RotationConflict(f"rotation is no longer at {after}")
                conn.execute(push_positions.insert().values(name=PushStore.ROTATED,
                                                            stream_ordering=up_to))
            if writes:
                stmt = insert(self._db.is_sqlite, push_summaries)
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=["user_id", "room_id", "thread_id"],
                    set_={k: stmt.excluded[k] for k in
                          ("start", "thread_start", "notif", "thread_notif")}),
                    [{"user_id": w.user_id, "room_id": w.summary.room_id,
                      "thread_id": w.summary.thread_id, "start": w.summary.start,
                      "thread_start": w.summary.thread_start, "notif": w.summary.notif,
                      "thread_notif": w.summary.thread_notif} for w in writes])
            for room_id, user_id in departed:
                conn.execute(delete(push_summaries).where(and_(
                    _s.room_id == room_id, _s.user_id == user_id)))
            in_batch = and_(_e.stream_ordering > after, _e.stream_ordering <= up_to)
            deleted = conn.execute(delete(push_events).where(and_(
                in_batch, _e.highlight.is_(False)))).rowcount
            still_there = select(_e.event_id).where(_e.event_id == _a.event_id).exists()
            deleted += conn.execute(delete(push_actions).where(and_(
                _a.stream_ordering > after, _a.stream_ordering <= up_to,
                _a.highlight.is_(False), ~still_there))).rowcount
            return int(deleted)
        return await self._db.run_write(write)
