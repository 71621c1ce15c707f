"""Stream positions, and the waiters woken when they move.

A waiter (a long-polling /sync, an SSE stream) registers for its user and that user's rooms.
A new event wakes the waiters of its room (and of the user a membership event is about); new
account data wakes its user's waiters. Nothing polls: an idle connection is one future in two
dictionaries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from homeserver.services.changes import ChangeLog
from homeserver.services.ports import ALONE, Replication
from homeserver.services.recent_events import RecentRoomEvents
from roomserver.api import CommittedBatch, CommittedEvent


def batch_json(batch: CommittedBatch) -> list[list[object]]:
    """A batch as JSON, for the other processes (``batch_from_json``)."""
    return [[e.room_id, e.event_id, e.type, e.sender, e.stream_ordering, e.redacts,
             [list(d) for d in e.state_delta], list(e.destinations),
             [list(k) for k in e.state_removed]] for e in batch.events]


def batch_from_json(data: Any) -> CommittedBatch:
    """The batch another process published (``batch_json``)."""
    events = []
    for (room_id, event_id, type_, sender, ordering, redacts, delta, destinations,
         removed) in data:
        events.append(CommittedEvent(
            room_id, event_id, type_, sender, ordering, redacts,
            tuple((t, k, i, m) for t, k, i, m in delta), tuple(destinations),
            tuple((t, k) for t, k in removed)))
    return CommittedBatch(tuple(events))

# A waiting sync: done with the (monotonic) time a change woke it, or None when its time is
# up or its client left.
Waiter = asyncio.Future[float | None]


class Notifier:
    """``replication``: other processes of this server hear of every commit, wake and account
    data change (``homeserver.replication.worker`` applies them to their notifier), with the
    stream positions ``positions`` gives at that moment (committed before the change was
    announced)."""

    def __init__(self, replication: Replication = ALONE,
                 positions: Callable[[], dict[str, int]] | None = None) -> None:
        self._replication = replication
        self._positions = positions or dict
        self._position = 0
        self._account_data_position = 0
        # A waiter is a future whose result is the (monotonic) time it was woken.
        self._by_room: dict[str, set[Waiter]] = {}
        # Waiters that want the rooms' events but not their typing and receipts.
        self._by_room_events: dict[str, set[Waiter]] = {}
        self._by_user: dict[str, set[Waiter]] = {}
        # Waiters that want the presence of the members of these rooms (whatever their room
        # filter lets through).
        self._by_presence_room: dict[str, set[Waiter]] = {}
        # Since start-up: each room's latest event, the latest member event about each user
        # (event stream positions) and each user's latest account data change.
        self._rooms = ChangeLog()
        self._memberships = ChangeLog()
        # Each room's latest member event (device lists: who came and went).
        self._room_members = ChangeLog()
        self._account_data = ChangeLog()
        self._any: set[Waiter] = set()
        self.recent = RecentRoomEvents()
        # Called with (room, user) when a user stops being joined to a room (typing ends).
        self.on_left: list[Callable[[str, str], None]] = []
        # Called with the IDs of events that new redactions redact.
        self.on_redacted: list[Callable[[list[str]], None]] = []
        # Called with a room's ID when stored events of it were deleted (its history
        # purged, or the whole room): what is cached of the room goes.
        self.on_room_purged: list[Callable[[str], None]] = []
        # Set when the process shuts down: long polls answer at once instead of holding the
        # shutdown for their whole timeout.
        self.closing = False
        # Metrics: requests waiting now (long polls, SSE streams between messages), waiters
        # woken by a change since start-up, SSE streams open.
        self.waiting = 0
        self.wakeups = 0
        self.streams_open = 0

    def close(self) -> None:
        """Shutting down: wake every waiter, and wait no more."""
        self.closing = True
        for index in (self._by_room, self._by_room_events, self._by_user,
                      self._by_presence_room):
            for futures in index.values():
                self._wake(futures)
            index.clear()
        self._wake(self._any)

    @property
    def position(self) -> int:
        """The highest stream ordering whose events, and all before them, are committed."""
        return self._position

    @property
    def account_data_position(self) -> int:
        return self._account_data_position

    def set_initial_position(self, position: int) -> None:
        self._position = position
        self._rooms.reset(position)
        self._memberships.reset(position)
        self._room_members.reset(position)
        self.recent.reset(position)

    def wake_all(self) -> None:
        """Every waiter answers now (a worker that may have missed changes)."""
        for index in (self._by_room, self._by_user, self._by_presence_room):
            for futures in index.values():
                self._wake(futures)
            index.clear()
        self._wake(self._any)
        self._any = set()

    def set_initial_account_data_position(self, position: int) -> None:
        self._account_data_position = position
        self._account_data.reset(position)

    def room_changed_since(self, room_id: str, position: int) -> bool:
        """Whether the room may have events after ``position`` (exact for events since
        start-up; before that, conservatively true)."""
        return self._rooms.changed_since(room_id, position)

    def membership_changed_since(self, user_id: str, position: int) -> bool:
        """Whether a member event about the user may have come after ``position``."""
        return self._memberships.changed_since(user_id, position)

    def members_changed_since(self, room_id: str, position: int) -> bool:
        """Whether a member event of the room came after ``position`` (since start-up; for
        earlier positions, maybe)."""
        return self._room_members.changed_since(room_id, position)

    def membership_position(self, user_id: str) -> int:
        """Stream position of the latest member event about the user since start-up."""
        return self._memberships.last(user_id)

    def account_data_changed_since(self, user_id: str, position: int) -> bool:
        return self._account_data.changed_since(user_id, position)

    def events_committed(self, batch: CommittedBatch) -> None:
        """The roomserver's commit listener: events in the timeline (positive positions; an
        outlier or backfilled history is nothing new for syncs) wake their rooms' and members'
        waiters."""
        if self._replication.active:
            self._replication.publish("events", {"batch": batch_json(batch),
                                                 "pos": self._positions()})
        timeline = [e for e in batch.events
                    if e.stream_ordering is not None and e.stream_ordering > 0]
        if not timeline:
            return
        self.on_new_events(
            max(e.stream_ordering for e in timeline if e.stream_ordering is not None),
            {e.room_id for e in timeline},
            # Every user whose membership changed (a remote join brings a whole room's).
            {key for e in timeline for type_, key, _, _ in e.state_delta
             if type_ == "m.room.member"},
            [(e.room_id, e.stream_ordering, e.event_id) for e in timeline
             if e.stream_ordering is not None],
            [(e.room_id, key) for e in timeline for type_, key, _, membership in e.state_delta
             if type_ == "m.room.member" and membership != "join"],
            [e.redacts for e in timeline if e.redacts is not None],
            {e.room_id for e in timeline
             if any(type_ == "m.room.member" for type_, _, _, _ in e.state_delta)})

    def on_new_events(self, position: int, room_ids: Iterable[str],
                      user_ids: Iterable[str] = (),
                      events: Iterable[tuple[str, int, str]] = (),
                      left: Iterable[tuple[str, str]] = (),
                      redacted: list[str] | None = None,
                      member_rooms: Iterable[str] = ()) -> None:
        """Events up to ``position`` are committed; ``user_ids`` are the users member events
        among them are about; ``events`` are the new events as (room, stream ordering, event
        ID), in stream order; ``left`` are the (room, user) memberships that ended;
        ``redacted`` the events that redactions among them redact; ``member_rooms`` the
        rooms of the member events among them."""
        if position > self._position:
            self._position = position
        for room_id, stream_ordering, event_id in events:
            self.recent.add(room_id, stream_ordering, event_id)
        for room_id, user_id in left:
            for listener in self.on_left:
                listener(room_id, user_id)
        if redacted:
            for on_redacted in self.on_redacted:
                on_redacted(redacted)
        for room_id in room_ids:
            self._rooms.mark(room_id, position)
            self._wake(self._by_room.pop(room_id, ()))
            if self._by_room_events:
                self._wake(self._by_room_events.pop(room_id, ()))
        for room_id in member_rooms:
            self._room_members.mark(room_id, position)
        for user_id in user_ids:
            self._memberships.mark(user_id, position)
            self._wake(self._by_user.pop(user_id, ()))
        self._wake(self._any)
        self._any = set()

    def wake(self, room_ids: Iterable[str] = (), user_ids: Iterable[str] = (),
             presence_of_rooms: Iterable[str] = ()) -> None:
        """Something other than events changed (typing, receipts, presence): wake the
        waiters of those rooms, of those users, and those following the presence of those
        rooms' members; the streams keep their own positions."""
        if self._replication.active:
            room_ids, user_ids, presence_of_rooms = \
                list(room_ids), list(user_ids), list(presence_of_rooms)
            self._replication.publish("wake", {"rooms": room_ids, "users": user_ids,
                                               "presence": presence_of_rooms,
                                               "pos": self._positions()})
        for room_id in room_ids:
            self._wake(self._by_room.pop(room_id, ()))
        for user_id in user_ids:
            self._wake(self._by_user.pop(user_id, ()))
        for room_id in presence_of_rooms:
            self._wake(self._by_presence_room.pop(room_id, ()))

    def room_purged(self, room_id: str, event_ids: Iterable[str] = (),
                    users: Iterable[str] = ()) -> None:
        """Stored events of the room were deleted (not news: no waiter wakes); ``users``
        lost their memberships of it (a removed room)."""
        if self._replication.active:
            self._replication.publish("room_purged", {
                "room": room_id, "events": sorted(event_ids), "users": sorted(users)})
        self.apply_room_purged(room_id)

    def apply_room_purged(self, room_id: str) -> None:
        for listener in self.on_room_purged:
            listener(room_id)

    def on_account_data(self, user_id: str, position: int) -> None:
        if self._replication.active:
            self._replication.publish("account_data", {"user": user_id, "position": position,
                                                       "pos": self._positions()})
        if position > self._account_data_position:
            self._account_data_position = position
        self._account_data.mark(user_id, position)
        self._wake(self._by_user.pop(user_id, ()))

    def _wake(self, futures: Iterable[Waiter]) -> None:
        now = time.monotonic()
        woken = 0
        for future in futures:
            if not future.done():
                future.set_result(now)
                woken += 1
        self.wakeups += woken

    async def wait_for_change(self, wait_s: float) -> bool:
        """Wait for the next new events anywhere (tests, tools); True if woken."""
        if self.closing:
            return False
        future: Waiter = asyncio.get_running_loop().create_future()
        self._any.add(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), wait_s)
            return True
        except TimeoutError:
            return False
        finally:
            self._any.discard(future)

    async def wait(self, user_id: str, room_ids: Iterable[str], wait_s: float,
                   presence_room_ids: Iterable[str] = (),
                   until: asyncio.Future[None] | None = None, *, events_only: bool = False
                   ) -> float | None:
        """Wait until something for ``user_id`` or one of ``room_ids`` happens (or the
        presence of a member of ``presence_room_ids`` changes), ``wait_s`` seconds pass, or
        ``until`` is done (the client went away); the (monotonic) time it was woken by a
        change, or None. ``events_only``: the rooms' events wake it, their typing and
        receipts (``wake``) do not."""
        if self.closing or (until is not None and until.done()):
            return None
        loop = asyncio.get_running_loop()
        future: Waiter = loop.create_future()
        # Plain lists of keys (not (key, index) pairs): an idle waiter of a user in many
        # rooms stays a few bytes per room.
        registered = [(list(room_ids), self._by_room_events if events_only else self._by_room),
                      ([user_id], self._by_user),
                      (list(presence_room_ids), self._by_presence_room)]
        for keys, index in registered:
            for key in keys:
                index.setdefault(key, set()).add(future)
        # Ended with None, not cancelled: most waits of a held device end so, and a
        # cancellation costs an exception.
        timer = loop.call_later(wait_s, _end_wait, future)

        def gone(_: asyncio.Future[None]) -> None:
            _end_wait(future)

        if until is not None:
            until.add_done_callback(gone)
        self.waiting += 1
        try:
            return await future
        finally:
            self.waiting -= 1
            timer.cancel()
            if until is not None:
                until.remove_done_callback(gone)
            for keys, index in registered:
                for key in keys:
                    waiters = index.get(key)
                    if waiters is not None:
                        waiters.discard(future)
                        if not waiters:
                            del index[key]


def _end_wait(future: Waiter) -> None:
    if not future.done():
        future.set_result(None)
