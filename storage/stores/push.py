"""Push: users' push rules, the notifications rule evaluation decided (``push_actions``),
how far evaluation has got in the event stream, pushers and the queue of notifications
waiting for a push gateway."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    union_all,
    update,
)

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.schema import (
    current_state,
    events,
    push_actions,
    push_events,
    push_positions,
    push_queue,
    push_rules,
    push_summaries,
    pushers,
    receipts,
)

_CHUNK = 500
_ROOMS_PER_QUERY = 100
_r = push_rules.c
_a = push_actions.c
_p = pushers.c
_q = push_queue.c


@dataclass(frozen=True, slots=True)
class StoredRule:
    kind: str
    rule_id: str
    is_default: bool
    priority: int
    conditions: list[Any] | None
    pattern: str | None
    actions: list[Any] | None
    enabled: bool | None


@dataclass(frozen=True, slots=True)
class NotificationRow:
    """Push rules' verdict on one event: for its room's members (``user_id`` None: the
    verdict of most members, stored only when it notifies), or for one user whose verdict
    differs."""

    user_id: str | None
    event_id: str
    room_id: str
    stream_ordering: int
    thread_id: str
    notify: bool
    highlight: bool
    actions: list[Any]
    ts: int
    sender: str = ""


@dataclass(frozen=True, slots=True)
class PushSummary:
    """What rotation counted for a user in a room's thread ("main" too) before deleting the
    rows: the non-highlight notifications after ``start`` (the user's read receipt or join
    then) up to the rotation's position, and after ``thread_start`` (``start`` or the
    thread's own receipt, when later) for counts kept per thread. Valid only while the
    user's start is still ``start`` (and ``thread_start``): once they read on, what they
    read up to decides, and for what rotation deleted before it the count is lost (zero,
    as in Synapse, whose summaries are reset by a receipt the same way)."""

    room_id: str
    thread_id: str
    start: int
    thread_start: int
    notif: int
    thread_notif: int


@dataclass(frozen=True, slots=True)
class Pusher:
    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]
    pushkey_ts: int


@dataclass(frozen=True, slots=True)
class QueuedPush:
    id: int
    user_id: str
    app_id: str
    pushkey: str
    event_id: str
    room_id: str
    actions: list[Any]
    attempts: int
    created_ts: int


def _rule(row: Any) -> StoredRule:
    return StoredRule(row.kind, row.rule_id, bool(row.is_default), int(row.priority),
                      json.loads(row.conditions_json) if row.conditions_json else None,
                      row.pattern, json.loads(row.actions_json) if row.actions_json else None,
                      None if row.enabled is None else bool(row.enabled))


def _pusher(row: Any) -> Pusher:
    return Pusher(row.user_id, row.app_id, row.pushkey, row.kind, row.app_display_name,
                  row.device_display_name, row.profile_tag, row.lang, json.loads(row.data_json),
                  int(row.pushkey_ts))


class PushStore:
    POSITION = "events"
    # The rotation's position (rotation.py): the non-highlight notifications up to it are
    # counted in ``push_summaries`` and deleted.
    ROTATED = "rotated"

    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    # -- rules ------------------------------------------------------------------------------

    async def rules_of(self, user_ids: Sequence[str]) -> dict[str, list[StoredRule]]:
        """User -> their stored rules (users without any left out)."""
        out: dict[str, list[StoredRule]] = {}
        async with self._db.read() as conn:
            for i in range(0, len(user_ids), _CHUNK):
                rows = await conn.execute(select(push_rules).where(
                    _r.user_id.in_(list(user_ids[i:i + _CHUNK]))))
                for row in rows:
                    out.setdefault(row.user_id, []).append(_rule(row))
        return out

    async def put_rule(self, user_id: str, rule: StoredRule) -> None:
        values = {"user_id": user_id, "kind": rule.kind, "rule_id": rule.rule_id,
                  "is_default": rule.is_default, "priority": rule.priority,
                  "conditions_json": None if rule.conditions is None
                  else json.dumps(rule.conditions),
                  "pattern": rule.pattern,
                  "actions_json": None if rule.actions is None else json.dumps(rule.actions),
                  "enabled": rule.enabled}

        def put(conn: Connection) -> None:
            stmt = insert(self._db.is_sqlite, push_rules).values(values)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["user_id", "kind", "rule_id"],
                set_={k: stmt.excluded[k] for k in values if k not in
                      ("user_id", "kind", "rule_id")}))
        await self._db.run_write(put)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> bool:
        def remove(conn: Connection) -> bool:
            return conn.execute(delete(push_rules).where(and_(
                _r.user_id == user_id, _r.kind == kind, _r.rule_id == rule_id))).rowcount > 0
        return await self._db.run_write(remove)

    # -- evaluation -------------------------------------------------------------------------

    async def position(self) -> int | None:
        async with self._db.read() as conn:
            found = (await conn.execute(select(push_positions.c.stream_ordering).where(
                push_positions.c.name == self.POSITION))).scalar()
        return None if found is None else int(found)

    async def events_after(self, after: int, up_to: int, limit: int
                           ) -> list[tuple[str, int]]:
        """(ID, stream ordering) of the timeline events in ``(after, up_to]``, in order."""
        async with self._db.read() as conn:
            rows = await conn.execute(select(events.c.event_id, events.c.stream_ordering).where(
                and_(events.c.stream_ordering > after, events.c.stream_ordering <= up_to,
                     events.c.outlier.is_(False))).order_by(events.c.stream_ordering)
                .limit(limit))
            return [(r[0], int(r[1])) for r in rows]

    async def joined_members(self, room_id: str) -> tuple[dict[str, str], dict[str, str]]:
        """(joined user -> member event ID, state type -> event ID of the room's create,
        power levels, name and canonical alias events)."""
        members: dict[str, str] = {}
        special: dict[str, str] = {}
        c = current_state.c
        async with self._db.read() as conn:
            rows = await conn.execute(select(c.type, c.state_key, c.event_id, c.membership).where(
                and_(c.room_id == room_id, or_(
                    and_(c.type == "m.room.member", c.membership == "join"),
                    and_(c.type.in_(("m.room.create", "m.room.power_levels", "m.room.name",
                                     "m.room.canonical_alias")), c.state_key == "")))))
            for type_, state_key, event_id, _ in rows:
                if type_ == "m.room.member":
                    members[state_key] = event_id
                else:
                    special[type_] = event_id
        return members, special

    async def record(self, rows: Sequence[NotificationRow],
                     queued: Sequence[tuple[str, str, str, str, str, list[Any]]],
                     position: int, now: int) -> None:
        """Store what a batch of events notified, the pushes to send for it (user, app ID,
        pushkey, event, room, actions) and the position evaluation is up to: one
        transaction."""
        def write(conn: Connection) -> None:
            dumped: dict[int, str] = {}  # rows share their actions' lists: encoded once

            def encoded(actions: list[Any]) -> str:
                text = dumped.get(id(actions))
                if text is None:
                    text = dumped[id(actions)] = json.dumps(actions)
                return text
            room_rows = [r for r in rows if r.user_id is None]
            user_rows = [r for r in rows if r.user_id is not None]
            if room_rows:
                stmt = insert(self._db.is_sqlite, push_events).on_conflict_do_nothing()
                conn.execute(stmt, [{
                    "event_id": r.event_id, "room_id": r.room_id,
                    "stream_ordering": r.stream_ordering, "sender": r.sender,
                    "thread_id": r.thread_id, "highlight": r.highlight,
                    "actions_json": encoded(r.actions), "ts": r.ts} for r in room_rows])
            if user_rows:
                stmt = insert(self._db.is_sqlite, push_actions).on_conflict_do_nothing()
                conn.execute(stmt, [{
                    "user_id": r.user_id, "event_id": r.event_id, "room_id": r.room_id,
                    "stream_ordering": r.stream_ordering, "thread_id": r.thread_id,
                    "notify": r.notify, "highlight": r.highlight,
                    "actions_json": encoded(r.actions), "ts": r.ts} for r in user_rows])
            if queued:
                conn.execute(push_queue.insert(), [{
                    "user_id": u, "app_id": a, "pushkey": k, "event_id": e, "room_id": r,
                    "actions_json": json.dumps(actions), "attempts": 0, "next_try_ts": now,
                    "created_ts": now} for u, a, k, e, r, actions in queued])
            stmt = insert(self._db.is_sqlite, push_positions).values(
                name=self.POSITION, stream_ordering=position)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["name"], set_={"stream_ordering": position}))
        await self._db.run_write(write)

    # -- counts and /notifications ----------------------------------------------------------

    async def unread(self, user_id: str, starts: Mapping[str, int]
                     ) -> tuple[list[tuple[str, int, str, bool]], list[PushSummary]]:
        """What notifies the user in each room after its start (read receipt or join; the
        user was joined since): (room, stream ordering, thread, highlight) of the rooms'
        notifying events, the user's own verdicts overriding, less the non-highlights that
        rotation summarised; and the user's summaries of those rooms (what they count is
        the caller's to check: see :class:`PushSummary`). One query per 100 rooms, and two
        more."""
        found: dict[str, tuple[str, int, str, bool, bool]] = {}
        e = push_events.c
        room_ids = list(starts)
        after = min(starts.values(), default=0)
        summaries: list[PushSummary] = []
        async with self._db.read() as conn:
            rotated = int((await conn.execute(select(push_positions.c.stream_ordering).where(
                push_positions.c.name == self.ROTATED))).scalar() or 0)
            for i in range(0, len(room_ids), _ROOMS_PER_QUERY):
                chunk = room_ids[i:i + _ROOMS_PER_QUERY]
                events_query = select(e.event_id, e.room_id, e.stream_ordering, e.thread_id,
                                      e.highlight).where(and_(
                    or_(*(and_(e.room_id == r, e.stream_ordering > starts[r]) for r in chunk)),
                    e.sender != user_id))
                if rotated:
                    events_query = events_query.where(or_(e.stream_ordering > rotated,
                                                          e.highlight.is_(True)))
                for r in await conn.execute(events_query):
                    found[r.event_id] = (r.room_id, int(r.stream_ordering), r.thread_id,
                                         bool(r.highlight), True)
            query = select(_a.event_id, _a.room_id, _a.stream_ordering, _a.thread_id,
                           _a.highlight, _a.notify).where(and_(
                               _a.user_id == user_id, _a.stream_ordering > after,
                               _a.room_id.in_(room_ids)))
            for v in await conn.execute(query):
                if v.stream_ordering <= starts[v.room_id]:
                    continue
                found[v.event_id] = (v.room_id, int(v.stream_ordering), v.thread_id,
                                     bool(v.highlight), bool(v.notify))
            if rotated:
                s = push_summaries.c
                for i in range(0, len(room_ids), _CHUNK):
                    rows = await conn.execute(select(push_summaries).where(and_(
                        s.user_id == user_id, s.room_id.in_(room_ids[i:i + _CHUNK]))))
                    summaries.extend(PushSummary(
                        r.room_id, r.thread_id, int(r.start), int(r.thread_start),
                        int(r.notif), int(r.thread_notif)) for r in rows)
        # A verdict of the user's own on a room-wide highlight outlives rotation; counted
        # here only when it is a highlight or newer than the rotation.
        return [(room, position, thread, highlight)
                for room, position, thread, highlight, notify in found.values()
                if notify and (highlight or position > rotated)], summaries

    async def thread_receipts(self, user_id: str, room_ids: Sequence[str]
                              ) -> dict[tuple[str, str], int]:
        """(room, thread root) -> stream ordering of the user's latest read receipt in that
        thread (threaded receipts only)."""
        c = receipts.c
        out: dict[tuple[str, str], int] = {}
        async with self._db.read() as conn:
            for i in range(0, len(room_ids), _CHUNK):
                rows = await conn.execute(select(
                    c.room_id, c.thread_id, c.event_stream_ordering).where(and_(
                        c.user_id == user_id, c.room_id.in_(list(room_ids[i:i + _CHUNK])),
                        c.receipt_type.in_(("m.read", "m.read.private")),
                        c.thread_id.not_in(("", "main")))))
                for room_id, thread_id, position in rows:
                    key = (room_id, thread_id)
                    out[key] = max(out.get(key, 0), int(position))
        return out

    async def notifications(self, user_id: str, joined_since: Mapping[str, int],
                            before: int | None, limit: int, only_highlight: bool
                            ) -> list[NotificationRow]:
        """The user's notifications, newest first: in the rooms they are joined to (room ->
        the position of their join), and their own verdicts anywhere (invites). One query
        per page: the rooms' notifying events the user did not send and has no verdict of
        their own on (index ``push_events_room``), with the user's notifying verdicts
        (index ``push_actions_user_stream``), merged and cut by the database."""
        e, rooms = push_events.c, list(joined_since)
        queries = []
        if rooms:
            # The position each room's notifications start after, by room.
            start = case(dict(joined_since), value=e.room_id, else_=-1)
            verdict = select(_a.event_id).where(and_(_a.user_id == user_id,
                                                     _a.event_id == e.event_id))
            room_wide = select(
                literal(None).label("user_id"), e.event_id, e.room_id, e.stream_ordering,
                e.thread_id, e.highlight, e.actions_json, e.ts).where(and_(
                    e.room_id.in_(rooms), e.stream_ordering > start, e.sender != user_id,
                    ~verdict.exists()))
            if before is not None:
                room_wide = room_wide.where(e.stream_ordering < before)
            if only_highlight:
                room_wide = room_wide.where(e.highlight.is_(True))
            queries.append(room_wide)
        own = select(_a.user_id, _a.event_id, _a.room_id, _a.stream_ordering, _a.thread_id,
                     _a.highlight, _a.actions_json, _a.ts).where(and_(
                         _a.user_id == user_id, _a.notify.is_(True)))
        if rooms:
            own = own.where(_a.stream_ordering > case(dict(joined_since), value=_a.room_id,
                                                      else_=-1))
        if before is not None:
            own = own.where(_a.stream_ordering < before)
        if only_highlight:
            own = own.where(_a.highlight.is_(True))
        queries.append(own)
        page = union_all(*queries).subquery()
        async with self._db.read() as conn:
            rows = await conn.execute(select(page).order_by(
                page.c.stream_ordering.desc()).limit(limit))
            return [NotificationRow(r.user_id, r.event_id, r.room_id, int(r.stream_ordering),
                                    r.thread_id, True, bool(r.highlight),
                                    json.loads(r.actions_json), int(r.ts)) for r in rows]

    # -- pushers ----------------------------------------------------------------------------

    async def all_pushers(self) -> list[Pusher]:
        async with self._db.read() as conn:
            return [_pusher(r) for r in await conn.execute(select(pushers))]

    async def set_pusher(self, pusher: Pusher, *, append: bool) -> list[Pusher]:
        """Create or replace the user's pusher (app ID, pushkey); without ``append`` other
        users' pushers with the same app ID and pushkey go. Returns those removed."""
        values = {"user_id": pusher.user_id, "app_id": pusher.app_id,
                  "pushkey": pusher.pushkey, "kind": pusher.kind,
                  "app_display_name": pusher.app_display_name,
                  "device_display_name": pusher.device_display_name,
                  "profile_tag": pusher.profile_tag, "lang": pusher.lang,
                  "data_json": json.dumps(pusher.data), "pushkey_ts": pusher.pushkey_ts}

        def put(conn: Connection) -> list[Pusher]:
            removed: list[Pusher] = []
            if not append:
                others = and_(_p.app_id == pusher.app_id, _p.pushkey == pusher.pushkey,
                              _p.user_id != pusher.user_id)
                removed = [_pusher(r) for r in conn.execute(select(pushers).where(others))]
                conn.execute(delete(pushers).where(others))
            stmt = insert(self._db.is_sqlite, pushers).values(values)
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["app_id", "pushkey", "user_id"],
                set_={k: stmt.excluded[k] for k in values
                      if k not in ("app_id", "pushkey", "user_id")}))
            return removed
        return await self._db.run_write(put)

    async def delete_pushers(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """Delete pushers by (user, app ID, pushkey), and what is queued for them."""
        keys = list(keys)

        def remove(conn: Connection) -> None:
            for user_id, app_id, pushkey in keys:
                conn.execute(delete(pushers).where(and_(
                    _p.user_id == user_id, _p.app_id == app_id, _p.pushkey == pushkey)))
                conn.execute(delete(push_queue).where(and_(
                    _q.user_id == user_id, _q.app_id == app_id, _q.pushkey == pushkey)))
        if keys:
            await self._db.run_write(remove)

    # -- the queue --------------------------------------------------------------------------

    async def due(self, now: int, limit: int) -> list[QueuedPush]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(push_queue).where(_q.next_try_ts <= now)
                                      .order_by(_q.id).limit(limit))
            return [QueuedPush(int(r.id), r.user_id, r.app_id, r.pushkey, r.event_id,
                               r.room_id, json.loads(r.actions_json), int(r.attempts),
                               int(r.created_ts)) for r in rows]

    async def next_due(self) -> int | None:
        async with self._db.read() as conn:
            found = (await conn.execute(select(func.min(_q.next_try_ts)))).scalar()
        return None if found is None else int(found)

    async def done(self, ids: Sequence[int]) -> None:
        def remove(conn: Connection) -> None:
            conn.execute(delete(push_queue).where(_q.id.in_(list(ids))))
        if ids:
            await self._db.run_write(remove)

    async def retry_later(self, ids: Sequence[int], attempts: int, next_try_ts: int) -> None:
        def later(conn: Connection) -> None:
            conn.execute(update(push_queue).where(_q.id.in_(list(ids))).values(
                attempts=attempts, next_try_ts=next_try_ts))
        if ids:
            await self._db.run_write(later)
