"""Push rule evaluation for every committed event, and the counts it leaves behind
(https://spec.matrix.org/v1.19/client-server-api/#push-notifications).

The roomserver announces each commit (:meth:`PushEvaluator.events_committed`); a background
task evaluates the batch for every local joined member but the sender — rulesets compiled
once per user and cached (:class:`PushRuleService`), each room's members, display names and
power levels read once per room and kept until its state changes — and writes what notifies
whom (``push_actions``), the pushes for http pushers (``push_queue``) and the stream position
it is up to, in one transaction.

Durability: evaluation runs after the event's own commit, so the position written with the
results is the proof of what was evaluated; at start-up the events after it are evaluated
before anything new (a crash between an event's commit and its counts loses nothing). We
chose this over writing counts in the event's transaction to keep the roomserver's write path
free of push work (a 1,000-member room's evaluation does not hold the room's lock).

Events from before push evaluation existed (a database upgraded from schema 12, which had
no push tables) are not evaluated: with no position stored, evaluation starts at the head,
and their rooms count from zero. As in Synapse, which computes push actions when it persists
an event and has never backfilled them when it added push features (its ``unread_count``
migration, schema delta 58/15, left earlier events uncounted too): evaluating history now
would apply today's rules, members and display names rather than those of the time, and
would queue pushes for old messages.

Sync reads counts with :class:`UnreadCounts` after waiting (briefly) until evaluation has
caught up with the position it answers at, so a response never shows an event without its
count.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import astuple, dataclass
from typing import Any, TypeVar

from cachetools import LRUCache

from core.clock import Clock
from core.events.room_versions import KNOWN_ROOM_VERSIONS
from core.push.evaluator import EventFacts, Outcome, Plan, Ruleset, UserFacts
from homeserver.services.ignored_users import IgnoredUsers
from homeserver.services.member_cache import MembershipCache
from homeserver.services.ports import ALONE, Replication
from homeserver.services.push_rules import PushRuleService
from homeserver.services.pushers import PusherService
from homeserver.services.receipts import ReceiptService
from homeserver.services.serialize import EventSerializer
from roomserver.api import CommittedBatch
from storage.stores.events import EventStore, StoredEvent
from storage.stores.push import NotificationRow, PushStore, PushSummary

logger = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)

CATCH_UP_BATCH = 500
# How long a sync waits for evaluation to reach its position before answering anyway.
SYNC_WAIT_S = 2.0
# Notifications remembered per room, for counts (PushEvaluator.notifications_after).
RECENT_PER_ROOM = 64
INFINITE_LEVEL = float("inf")


@dataclass(slots=True)
class _RoomFacts:
    """What evaluation reads of a room, once per room until its state changes."""

    member_count: int
    local_members: list[UserFacts]
    power_levels: dict[str, Any]
    has_power_levels: bool
    creators: frozenset[str]
    privileged_creators: bool
    room_name: str | None
    display_names: dict[str, str]
    room_alias: str | None = None

    def sender_level(self, sender: str) -> float:
        if self.privileged_creators and sender in self.creators:
            return INFINITE_LEVEL
        if not self.has_power_levels:
            return 100 if sender in self.creators else 0
        users = self.power_levels.get("users")
        level = users.get(sender) if isinstance(users, dict) else None
        if not isinstance(level, int) or isinstance(level, bool):
            level = self.power_levels.get("users_default", 0)
        return level if isinstance(level, int) and not isinstance(level, bool) else 0

    def notification_levels(self) -> dict[str, Any]:
        levels = self.power_levels.get("notifications")
        return levels if isinstance(levels, dict) else {}


async def join_positions(events: EventStore, current: Mapping[K, StoredEvent]) -> dict[K, int]:
    """Key -> position of the join that began a membership, from its current join event (a
    new display name or avatar is a join event, not a new join: walked back over)."""
    walking = dict(current)
    out: dict[K, int] = {}
    while walking:
        previous = await events.get_events(
            [e.replaces_state for e in walking.values() if e.replaces_state])
        for key, event in list(walking.items()):
            before = previous.get(event.replaces_state or "")
            if before is not None and (before.pdu.get("content") or {}).get(
                    "membership") == "join":
                walking[key] = before
                continue
            out[key] = event.stream_ordering or 0
            del walking[key]
    return out


def thread_of(pdu: dict[str, Any]) -> str:
    relates = (pdu.get("content") or {}).get("m.relates_to")
    if isinstance(relates, dict) and relates.get("rel_type") == "m.thread" \
            and isinstance(relates.get("event_id"), str):
        return str(relates["event_id"])
    return "main"


@dataclass(frozen=True, slots=True)
class _Known:
    """What notifies a user in a room after ``start`` (``UnreadCounts._known``), as read at
    evaluated position ``read_at`` with ``rotations`` rotations done."""

    start: int
    read_at: int
    rotations: int
    rows: tuple[tuple[int, str, bool], ...]  # (position, thread, highlight), in order
    summaries: tuple[PushSummary, ...]


@dataclass(slots=True)
class _Logged:
    """The notifications recorded for one event (``PushEvaluator._recent``)."""

    position: int
    room_row: NotificationRow | None
    user_rows: dict[str, NotificationRow]


def _time_up(future: asyncio.Future[bool], waiters: list[asyncio.Future[bool]]) -> None:
    """A wait for evaluation ran out of time (``PushEvaluator.wait_for``)."""
    if not future.done():
        future.set_result(False)
        waiters.remove(future)


class PushEvaluator:
    """The commit listener that evaluates push rules (see the module docstring)."""

    ROOM_CACHE = 2_000

    def __init__(self, store: PushStore, events: EventStore, rules: PushRuleService,
                 pushers: PusherService, ignored: IgnoredUsers, clock: Clock,
                 server_name: str, *, replication: Replication = ALONE,
                 writer: bool = True) -> None:
        """``writer``: rules are evaluated here (the main process); a worker (False) keeps
        what the writer publishes over ``replication``: its position and recent results."""
        self._store = store
        self._replication = replication
        self._writer = writer
        self._ignored = ignored
        self._events = events
        self._rules = rules
        self._pushers = pushers
        self._clock = clock
        self._suffix = ":" + server_name
        self._rooms: dict[str, _RoomFacts] = {}
        # Room -> how many state changes it has had (facts loaded across one are not kept).
        self._state_changes: dict[str, int] = {}
        self._pending: list[CommittedBatch] = []
        # Whether what came after ``position`` must be read from the database (at start, and
        # after a failure dropped the pending batches); otherwise the pending batches hold
        # every event committed since (this is their listener).
        self._from_database = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.position = 0
        self._head = 0
        # Position -> the futures of the syncs waiting for evaluation to reach it (True when
        # it does, False when a waiter's time is up).
        self._reached: dict[int, list[asyncio.Future[bool]]] = {}
        # Room -> the newest position of a notification recorded for it by this process:
        # what counted up to a position after it is still the count (UnreadCounts).
        self.notified_at: dict[str, int] = {}
        # Room -> its latest notifications recorded here, oldest first: (position, the row
        # for the room's members, user -> their own row); complete after _logged_after[room]
        # (or after where evaluation started, for a room never cut).
        self._recent: dict[str, deque[_Logged]] = {}
        self._logged_after: dict[str, int] = {}
        self._log_start = 0
        # Rotations of results into summaries so far (what was remembered is stale after).
        self.rotations = 0

    # -- the listener -----------------------------------------------------------------------

    def events_committed(self, batch: CommittedBatch) -> None:
        timeline = [e for e in batch.events
                    if e.stream_ordering is not None and e.stream_ordering > 0]
        if not timeline:
            return
        for event in timeline:
            if event.state_delta:
                self._rooms.pop(event.room_id, None)
                self._state_changes[event.room_id] = \
                    self._state_changes.get(event.room_id, 0) + 1
        self._head = max(self._head, max(e.stream_ordering or 0 for e in timeline))
        self._pending.append(batch)
        self._wake.set()

    async def start(self, head: int) -> None:
        """Start at the position stored (evaluating what came after it first); a database
        that never evaluated starts at the head."""
        stored = await self._store.position()
        self.position = head if stored is None else stored
        self._log_start = self.position
        if not self._writer:
            return
        if stored is None:
            await self._store.record([], [], head, self._clock.time_ms())
        self._head = max(self._head, head)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    @property
    def head(self) -> int:
        """The newest event position committed (evaluated or not)."""
        return self._head

    async def wait_for(self, position: int, timeout_s: float = SYNC_WAIT_S, *,
                       quiet: bool = False) -> None:
        """Until evaluation has reached ``position`` (or the timeout; ``quiet``: a short
        wait that may well time out, not worth a warning). A worker waits for the writer's
        results; a writer whose evaluation is not running does not wait."""
        if self.position >= position or (self._task is None and self._writer):
            return
        loop = asyncio.get_running_loop()
        reached: asyncio.Future[bool] = loop.create_future()
        waiters = self._reached.setdefault(position, [])
        waiters.append(reached)
        timer = loop.call_later(timeout_s, _time_up, reached, waiters)
        try:
            in_time = await reached
        finally:
            timer.cancel()
        if not in_time:
            if not quiet:
                logger.warning("Push rule evaluation is behind (at %d, sync wants %d)",
                               self.position, position)

    async def _run(self) -> None:
        while True:
            try:
                if self._from_database:
                    await self._catch_up()
                    self._from_database = False
                await self._wake.wait()
                self._wake.clear()
                batches, self._pending = self._pending, []
                new = [(e.event_id, e.stream_ordering) for b in batches for e in b.events
                       if e.stream_ordering is not None and e.stream_ordering > self.position]
                if new:
                    await self._evaluate([i for i, _ in new], max(p for _, p in new))
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Push rule evaluation failed; retrying from the database")
                self._pending.clear()
                self._from_database = True
                self._wake.set()
                await asyncio.sleep(1.0)

    async def _catch_up(self) -> None:
        while self.position < self._head:
            found = await self._store.events_after(self.position, self._head, CATCH_UP_BATCH)
            if not found:
                await self._advance(self._head, [], [])
                return
            await self._evaluate([i for i, _ in found], found[-1][1])

    async def _advance(self, position: int, rows: list[NotificationRow],
                       queued: list[tuple[str, str, str, str, str, list[Any]]]) -> None:
        await self._store.record(rows, queued, position, self._clock.time_ms())
        if self._replication.active:
            self._replication.publish("push", [position, [list(astuple(r)) for r in rows]])
        self._advanced_to(position, rows)
        if queued:
            self._pushers.queued()

    def _advanced_to(self, position: int, rows: list[NotificationRow]) -> None:
        # What was recorded, and the position that says so, change together (no await
        # between): UnreadCounts reads both.
        self._log(rows)
        self.position = max(self.position, position)
        if self._reached:
            for waited in [p for p in self._reached if p <= self.position]:
                for future in self._reached.pop(waited):
                    if not future.done():
                        future.set_result(True)

    def apply_replicated(self, advanced: list[Any]) -> None:
        """A worker: the writer evaluated up to a position, with these results."""
        position, rows = advanced
        self._advanced_to(position, [NotificationRow(*r) for r in rows])

    def events_seen(self, batch: CommittedBatch) -> None:
        """A worker: a commit the writer made (evaluation is the writer's; only the head
        moves here, so syncs wait for the writer's results)."""
        self._head = max([self._head, *(e.stream_ordering for e in batch.events
                                        if e.stream_ordering is not None)])

    def _log(self, rows: list[NotificationRow]) -> None:
        for row in rows:
            room_id = row.room_id
            if row.stream_ordering > self.notified_at.get(room_id, 0):
                self.notified_at[room_id] = row.stream_ordering
            log = self._recent.get(room_id)
            if log is None:
                log = self._recent[room_id] = deque()
            if not log or log[-1].position != row.stream_ordering:
                if len(log) >= RECENT_PER_ROOM:
                    self._logged_after[room_id] = log.popleft().position
                log.append(_Logged(row.stream_ordering, None, {}))
            if row.user_id is None:
                log[-1].room_row = row
            else:
                log[-1].user_rows[row.user_id] = row

    def rotated(self) -> None:
        """Results were rotated into summaries and deleted (``PushRotation``)."""
        self._replication.publish("push_rotated", None)
        self.rotations += 1

    def apply_rotated(self) -> None:
        """A worker: the writer rotated results into summaries."""
        self.rotations += 1

    def notifications_after(self, room_id: str, after: int, user_id: str
                            ) -> list[NotificationRow] | None:
        """What notifies ``user_id`` in the room after position ``after`` up to
        ``position``, as the database would answer (``PushStore.unread``): from memory, or
        None when what is remembered does not reach back that far."""
        if after < max(self._log_start, self._logged_after.get(room_id, 0)):
            return None
        out: list[NotificationRow] = []
        for logged in reversed(self._recent.get(room_id, ())):
            if logged.position <= after:
                break
            own = logged.user_rows.get(user_id)
            row = own if own is not None else logged.room_row
            if row is not None and row.notify and (own is not None or row.sender != user_id):
                out.append(row)
        out.reverse()
        return out

    # -- evaluation -------------------------------------------------------------------------

    async def _evaluate(self, event_ids: Sequence[str], up_to: int) -> None:
        """Evaluate these events and record the results with ``up_to`` (the position of the
        newest of them, loaded or not) as the position reached."""
        loaded = await self._events.get_events(event_ids)
        todo = sorted((e for e in loaded.values() if e.stream_ordering is not None
                       and e.stream_ordering > self.position and not e.outlier
                       and e.rejected_reason is None),
                      key=lambda e: e.stream_ordering or 0)
        rows: list[NotificationRow] = []
        queued: list[tuple[str, str, str, str, str, list[Any]]] = []
        now = self._clock.time_ms()
        room_rulesets: dict[str, dict[str, Ruleset]] = {}
        ignorers = await self._ignored.ignorers()
        for event in todo:
            if event.redacted_by is not None:
                continue
            facts = await self._room(event.room_id)
            if facts is None:
                continue
            # State events change what later events of the batch see.
            if "state_key" in event.pdu:
                self._rooms.pop(event.room_id, None)
                room_rulesets.pop(event.room_id, None)
            users = facts.local_members
            invitee = event.pdu.get("state_key")
            if event.pdu.get("type") == "m.room.member" and isinstance(invitee, str) \
                    and invitee.endswith(self._suffix) \
                    and (event.pdu.get("content") or {}).get("membership") == "invite" \
                    and all(u.user_id != invitee for u in users):
                users = [*users, UserFacts(invitee)]  # an invite notifies its invitee
            rulesets = room_rulesets.get(event.room_id)
            if rulesets is None or len(users) != len(facts.local_members):
                # Once per room per batch (and for an invitee), not per event.
                rulesets = await self._rules.compiled([u.user_id for u in users])
                if len(users) == len(facts.local_members):
                    room_rulesets[event.room_id] = rulesets
            self._evaluate_event(event, facts, users, rulesets, rows, queued, now,
                                 ignorers(str(event.pdu.get("sender"))))
        await self._advance(max(up_to, self.position), rows, queued)

    def _evaluate_event(self, event: StoredEvent, facts: _RoomFacts, users: list[UserFacts],
                        rulesets: dict[str, Ruleset], rows: list[NotificationRow],
                        queued: list[tuple[str, str, str, str, str, list[Any]]],
                        now: int, ignoring: frozenset[str] | set[str]) -> None:
        """One row for what the members sharing the default rules get (when it notifies),
        one per user whose verdict differs, and the pushes for those it notifies. Those
        ``ignoring`` the sender get nothing (as in Synapse)."""
        pdu = event.pdu
        sender = str(pdu.get("sender"))
        event_facts = EventFacts(pdu, facts.member_count, facts.sender_level(sender),
                                 facts.notification_levels())
        default = self._rules.default_ruleset
        base_plan = default.plan(event_facts)
        base = base_plan.base
        plans: dict[int, Plan] = {id(default): base_plan}
        thread_id = thread_of(pdu)
        ts = int(pdu.get("origin_server_ts") or now)
        assert event.stream_ordering is not None
        if base is not None and base.notify:
            rows.append(NotificationRow(None, event.event_id, event.room_id,
                                        event.stream_ordering, thread_id, True, base.highlight,
                                        list(base.actions), ts, sender))
        base_actions = list(base.actions) if base is not None else []
        pushers_of = self._pushers.pushers_of
        for user in users:
            if user.user_id == sender:
                continue
            if user.user_id in ignoring:
                if base is not None and base.notify:  # the row for everyone is not theirs
                    rows.append(NotificationRow(
                        user.user_id, event.event_id, event.room_id, event.stream_ordering,
                        thread_id, False, False, [], ts))
                continue
            ruleset = rulesets[user.user_id]
            if ruleset is default:
                plan = base_plan
            else:
                found = plans.get(id(ruleset))
                plan = found if found is not None else \
                    plans.setdefault(id(ruleset), ruleset.plan(event_facts))
            outcome: Outcome | None = plan.pick(user)
            if outcome is not base and outcome != base:
                rows.append(NotificationRow(
                    user.user_id, event.event_id, event.room_id, event.stream_ordering,
                    thread_id, outcome is not None and outcome.notify,
                    outcome is not None and outcome.highlight,
                    list(outcome.actions) if outcome is not None else [], ts))
                actions = list(outcome.actions) if outcome is not None else []
            else:
                actions = base_actions
            if outcome is None or not outcome.notify:
                continue
            for pusher in pushers_of(user.user_id):
                queued.append((user.user_id, pusher.app_id, pusher.pushkey, event.event_id,
                               event.room_id, actions))

    async def _room(self, room_id: str) -> _RoomFacts | None:
        facts = self._rooms.get(room_id)
        if facts is not None:
            return facts
        changes = self._state_changes.get(room_id, 0)
        members, special = await self._store.joined_members(room_id)
        local = [u for u in members if u.endswith(self._suffix)]
        loaded = await self._events.get_events(
            [members[u] for u in local] + list(special.values()))
        create = loaded.get(special.get("m.room.create", ""))
        if create is None:
            return None
        version = KNOWN_ROOM_VERSIONS.get(create.room_version)
        privileged = bool(version is not None and version.privileged_creators)
        content = create.pdu.get("content") or {}
        creators = {str(create.pdu.get("sender"))}
        if privileged:
            extra = content.get("additional_creators")
            creators |= {c for c in extra if isinstance(c, str)} \
                if isinstance(extra, list) else set()
        elif version is not None and not version.implicit_room_creator:
            creators = {content["creator"]} if isinstance(content.get("creator"), str) \
                else set()
        pl = loaded.get(special.get("m.room.power_levels", ""))
        name = loaded.get(special.get("m.room.name", ""))
        alias_event = loaded.get(special.get("m.room.canonical_alias", ""))
        alias = (alias_event.pdu.get("content") or {}).get("alias") if alias_event else None
        display_names: dict[str, str] = {}
        users = []
        for user_id in local:
            member = loaded.get(members[user_id])
            display = (member.pdu.get("content") or {}).get("displayname") if member else None
            display = display if isinstance(display, str) else None
            if display:
                display_names[user_id] = display
            users.append(UserFacts(user_id, display))
        room_name = (name.pdu.get("content") or {}).get("name") if name else None
        facts = _RoomFacts(len(members), users,
                           dict((pl.pdu.get("content") or {}) if pl else {}), pl is not None,
                           frozenset(creators), privileged,
                           room_name if isinstance(room_name, str) else None, display_names,
                           alias if isinstance(alias, str) else None)
        if changes == self._state_changes.get(room_id, 0):  # not stale already
            if len(self._rooms) >= self.ROOM_CACHE:
                self._rooms.pop(next(iter(self._rooms)))
            self._rooms[room_id] = facts
        return facts

    async def room_details(self, room_id: str
                           ) -> tuple[str | None, str | None, dict[str, str]]:
        """(room name, canonical alias, local member -> display name) for pushes."""
        facts = await self._room(room_id)
        return (facts.room_name, facts.room_alias, facts.display_names) if facts \
            else (None, None, {})


class UnreadCounts:
    """``unread_notifications`` (and per thread) for /sync, the badge for pushes, and
    GET /notifications, from ``push_actions`` and the user's read receipts.

    What notifies a user in a room after a start is remembered (``_known``) with the
    evaluated position it was read at: it is still all there is while the evaluator has
    recorded nothing newer for the room, and for a later start (a read receipt) it is the
    part after that start. So a sync asks the database only about rooms with new
    notifications, not about every room it answers for on every response.
    """

    # (user, room) entries remembered, and the most notifying events one may hold.
    KNOWN = 50_000
    KNOWN_ROWS = 1_000

    def __init__(self, store: PushStore, receipts: ReceiptService, members: MembershipCache,
                 evaluator: PushEvaluator, events: EventStore, serializer: EventSerializer,
                 clock: Clock) -> None:
        self._store = store
        self._receipts = receipts
        self._members = members
        self._evaluator = evaluator
        self._events = events
        self._serializer = serializer
        self._clock = clock
        self._known: LRUCache[tuple[str, str], _Known] = LRUCache(self.KNOWN)

    async def counts(self, user_id: str, starts: dict[str, int], *, threads: bool,
                     up_to: int | None = None) -> tuple[dict[str, tuple[int, int]],
                                dict[str, dict[str, tuple[int, int]]]]:
        """(room -> (notifications, highlights), room -> thread -> the same).

        Args:
            starts: room -> position counting starts after (room-wide receipt or join).
            threads: count threads apart (the filter's ``unread_thread_notifications``):
                the room's counts are then the main timeline's, and a thread's own
                receipt counts for it.
            up_to: the stream position the answer is for (waits for evaluation to get
                there).
        """
        if up_to is not None:
            await self._evaluator.wait_for(up_to)
        out = {r: (0, 0) for r in starts}
        by_thread: dict[str, dict[str, tuple[int, int]]] = {}
        if not starts:
            return out, by_thread
        rows, summaries = await self._unread(user_id, starts)
        thread_reads = await self._store.thread_receipts(user_id, list(starts)) \
            if threads and (any(t != "main" for _, _, t, _ in rows)
                            or any(s.thread_id != "main" for s in summaries)) else {}
        for room_id, position, thread_id, highlight in rows:
            start = starts[room_id]
            if threads and thread_id != "main":
                if position <= max(start, thread_reads.get((room_id, thread_id), 0)):
                    continue
                room_threads = by_thread.setdefault(room_id, {})
                n, h = room_threads.get(thread_id, (0, 0))
                room_threads[thread_id] = (n + 1, h + highlight)
                continue
            if position <= start:
                continue
            n, h = out[room_id]
            out[room_id] = (n + 1, h + highlight)
        for summary in summaries:
            # Rotation's counts, while the user's start is still the one they count from.
            room_id, thread_id = summary.room_id, summary.thread_id
            start = starts[room_id]
            if summary.start != start:
                continue
            if threads and thread_id != "main":
                if summary.thread_notif and summary.thread_start == max(
                        start, thread_reads.get((room_id, thread_id), 0)):
                    room_threads = by_thread.setdefault(room_id, {})
                    n, h = room_threads.get(thread_id, (0, 0))
                    room_threads[thread_id] = (n + summary.thread_notif, h)
                continue
            n, h = out[room_id]
            out[room_id] = (n + summary.notif, h)
        return out, by_thread

    async def _unread(self, user_id: str, starts: dict[str, int]
                      ) -> tuple[list[tuple[str, int, str, bool]], list[PushSummary]]:
        """(room, position, thread, highlight) of what notifies the user after each room's
        start, and the user's rotation summaries of those rooms (``PushStore.unread``):
        remembered where nothing newer was recorded nor rotated, read for the other rooms."""
        out: list[tuple[str, int, str, bool]] = []
        summaries: list[PushSummary] = []
        ask: dict[str, int] = {}
        evaluator = self._evaluator
        now, rotations = evaluator.position, evaluator.rotations
        for room_id, start in starts.items():
            key = (user_id, room_id)
            known = self._known.get(key)
            if known is None or start < known.start or known.rotations != rotations:
                ask[room_id] = start
                continue
            rows = known.rows
            if evaluator.notified_at.get(room_id, 0) > known.read_at:
                news = evaluator.notifications_after(room_id, known.read_at, user_id)
                if news is None:
                    ask[room_id] = start
                    continue
                # (a read of the database may have held some of them already)
                seen = rows[-1][0] if rows else 0
                rows = (*rows, *((r.stream_ordering, r.thread_id, r.highlight) for r in news
                                 if r.stream_ordering > seen))
                if len(rows) > self.KNOWN_ROWS:
                    ask[room_id] = start
                    continue
                self._known[key] = _Known(known.start, now, rotations, rows, known.summaries)
            out.extend((room_id, p, t, h) for p, t, h in rows if p > start)
            summaries.extend(known.summaries)
        if not ask:
            return out, summaries
        # (read before the database: what it holds is at least this)
        read_at, rotations = evaluator.position, evaluator.rotations
        found: dict[str, list[tuple[int, str, bool]]] = {r: [] for r in ask}
        rows_read, summaries_read = await self._store.unread(user_id, ask)
        for room_id, position, thread_id, highlight in rows_read:
            found[room_id].append((position, thread_id, highlight))
            out.append((room_id, position, thread_id, highlight))
        summaries.extend(summaries_read)
        by_room: dict[str, list[PushSummary]] = {}
        for summary in summaries_read:
            by_room.setdefault(summary.room_id, []).append(summary)
        for room_id, read in found.items():
            if len(read) <= self.KNOWN_ROWS:
                self._known[(user_id, room_id)] = _Known(
                    ask[room_id], read_at, rotations, tuple(sorted(read)),
                    tuple(by_room.get(room_id, ())))
        return out, summaries

    async def room_starts(self, user_id: str) -> dict[str, int]:
        """Joined room -> its read position (counting starts after it)."""
        joined = sorted(await self._members.joined_rooms(user_id))
        read = await self._receipts.read_positions(user_id, joined)
        return {r: read.get(r, 0) for r in joined}

    async def badge(self, user_id: str) -> int:
        """Unread notifications across the user's rooms (the push gateway's ``unread``)."""
        counts, _ = await self.counts(user_id, await self.room_starts(user_id), threads=False)
        return sum(n for n, _ in counts.values())

    async def _join_starts(self, user_id: str) -> dict[str, int]:
        """Joined room -> position of the join that began the user's membership (a new
        display name or avatar is a join event, not a new join: walked back over)."""
        memberships = await self._members.memberships(user_id)
        current = await self._events.get_events(
            [e for m, e in memberships.values() if m == "join"])
        return await join_positions(self._events, {
            r: current[e] for r, (m, e) in memberships.items() if m == "join" and e in current})

    async def notifications(self, user_id: str, before: int | None, limit: int,
                            only_highlight: bool) -> dict[str, Any]:
        """GET /notifications: the user's notifications, newest first; ``before`` is the
        ``from`` token (a stream position)."""
        await self._evaluator.wait_for(self._evaluator.head)
        joined_since = await self._join_starts(user_id)
        rows = await self._store.notifications(user_id, joined_since, before, limit + 1,
                                               only_highlight)
        more = len(rows) > limit
        rows = rows[:limit]
        read = await self._receipts.read_positions(user_id, sorted({r.room_id for r in rows}))
        loaded = await self._events.get_events([r.event_id for r in rows])
        shown = [loaded[r.event_id] for r in rows if r.event_id in loaded]
        serialized = dict(zip((e.event_id for e in shown), await self._serializer.serialize(
            shown, requester_device=None, requester_user=user_id, now=self._clock.time_ms()),
            strict=True))
        out: dict[str, Any] = {"notifications": [{
            "actions": r.actions, "event": serialized[r.event_id], "read":
                r.stream_ordering <= read.get(r.room_id, 0),
            "room_id": r.room_id, "ts": r.ts} for r in rows if r.event_id in serialized]}
        if more and rows:
            out["next_token"] = str(rows[-1].stream_ordering)
        return out
