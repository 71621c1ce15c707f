"""Who is typing in each room: in memory only, each change a position in the typing stream.

Positions start at the clock's milliseconds at start-up, so they keep increasing across
restarts and a client's token never points past what this process will count.

Typing and receipts wake a room's syncs through ``RoomWakes``: at once after a quiet spell,
together while they come in a burst."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterable

from core.clock import Clock
from core.errors import Forbidden
from homeserver.services.changes import ChangeLog
from homeserver.services.member_cache import MembershipCache
from homeserver.services.notifier import Notifier
from homeserver.services.ports import ALONE, LocalEdus, Replication
from roomserver.api import CommittedBatch

DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 120_000


class RoomWakes:
    """Wakes the syncs that follow a room for its typing and receipts, at most once per
    ``INTERVAL_S``: the first change after a quiet interval wakes them at once, the changes
    that follow within the interval wake them together when it is over. A message brings a
    burst (its readers' receipts, the sender's typing ending, the next one's starting), and
    each change would wake every member's sync, most of which would only go back to waiting
    (a device that had a response in the last half second is held anyway, see
    ``SyncService.EPHEMERAL_INTERVAL_S``). Events wake syncs directly, never through here.

    One per notifier (``for_notifier``), shared by typing and receipts."""

    INTERVAL_S = 0.5
    # Rooms whose last wake is remembered (older ones count as quiet; pruned beyond this).
    ROOMS = 10_000

    _shared: weakref.WeakKeyDictionary[Notifier, RoomWakes] = weakref.WeakKeyDictionary()

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._woken_at: dict[str, float] = {}  # room -> when its syncs were last woken
        self._due: dict[str, asyncio.TimerHandle] = {}  # rooms waiting for their interval

    @classmethod
    def for_notifier(cls, notifier: Notifier) -> RoomWakes:
        wakes = cls._shared.get(notifier)
        if wakes is None:
            wakes = cls._shared[notifier] = cls(notifier)
        return wakes

    def wake(self, room_ids: Iterable[str]) -> None:
        now = time.monotonic()
        at_once = []
        for room_id in room_ids:
            if room_id in self._due:
                continue  # already coming with the interval's end
            last = self._woken_at.get(room_id)
            if last is None or now - last >= self.INTERVAL_S:
                self._woken_at[room_id] = now
                at_once.append(room_id)
            else:
                self._due[room_id] = asyncio.get_running_loop().call_later(
                    last + self.INTERVAL_S - now, self._wake_due, room_id)
        if len(self._woken_at) > self.ROOMS:
            self._woken_at = {r: t for r, t in self._woken_at.items()
                              if now - t < self.INTERVAL_S}
        if at_once:
            self._notifier.wake(room_ids=at_once)

    def _wake_due(self, room_id: str) -> None:
        del self._due[room_id]
        self._woken_at[room_id] = time.monotonic()
        self._notifier.wake(room_ids=[room_id])

    def cancel(self) -> None:
        """Shutting down: the pending wakes go now."""
        due, self._due = self._due, {}
        for handle in due.values():
            handle.cancel()
        if due:
            self._notifier.wake(room_ids=list(due))


# Sending one of these ends the sender's typing in the room.
ENDS_TYPING = frozenset({"m.room.message", "m.room.encrypted", "m.sticker"})


class TypingService:
    def __init__(self, notifier: Notifier, members: MembershipCache, clock: Clock,
                 server_name: str, edus: LocalEdus | None = None, *,
                 replication: Replication = ALONE, writer: bool = True) -> None:
        """``writer``: typing is kept here (the main process); a worker (False) mirrors what
        the writer publishes over ``replication``, with the writer's positions."""
        self._notifier = notifier
        self._members = members
        self._clock = clock
        self._replication = replication
        self._position = clock.time_ms() if writer else 0
        # Room -> user -> the timer that ends their typing (None in a worker's mirror).
        self._typing: dict[str, dict[str, asyncio.TimerHandle | None]] = {}
        self._changes = ChangeLog(self._position)
        self._wakes = RoomWakes.for_notifier(notifier)
        notifier.on_left.append(self._left)
        # Told when a user of this server starts or stops typing (None: no federation).
        self._edus = edus
        self._local_suffix = ":" + server_name

    @property
    def position(self) -> int:
        return self._position

    def typing_users(self, room_id: str) -> list[str]:
        return sorted(self._typing.get(room_id, ()))

    def room_changed_since(self, room_id: str, position: int) -> bool:
        if position < self._changes.start:
            return room_id in self._typing  # only rooms where someone types now matter
        return self._changes.changed_since(room_id, position)

    def rooms_changed_since(self, room_ids: list[str], position: int) -> set[str]:
        return {r for r in room_ids if self.room_changed_since(r, position)}

    async def set_typing(self, room_id: str, user_id: str, typing: bool,
                         timeout_ms: int | None, *, local: bool = True) -> None:
        """Start (for ``timeout_ms``, capped) or stop ``user_id`` typing in the room
        (``local``: a user of this server, whose typing other servers hear of)."""
        membership = (await self._members.memberships(user_id)).get(room_id)
        if membership is None or membership[0] != "join":
            raise Forbidden("You are not in this room")
        users = self._typing.setdefault(room_id, {})
        had = user_id in users
        previous = users.pop(user_id, None)
        if previous is not None:
            previous.cancel()
        if typing:
            timeout = min(max(timeout_ms or DEFAULT_TIMEOUT_MS, 1), MAX_TIMEOUT_MS)
            users[user_id] = asyncio.get_running_loop().call_later(
                timeout / 1000, self._expire, room_id, user_id)
        if not users:
            del self._typing[room_id]
        # A renewal (typing again while typing) changes nothing a client sees.
        if (not had) if typing else had:
            self._changed(room_id)
        # Other servers hear of a start, a renewal (it restarts their timeout) and an end
        # that changes something (a message may have ended it already, see below).
        if local and self._edus is not None and (typing or had):
            self._edus.typing_changed(room_id, user_id, typing)

    def stop_all(self) -> None:
        self._wakes.cancel()
        for users in self._typing.values():
            for handle in users.values():
                if handle is not None:
                    handle.cancel()
        self._typing.clear()

    def _left(self, room_id: str, user_id: str) -> None:
        """Someone who left (or was kicked or banned) stops typing there."""
        handle = self._typing.get(room_id, {}).get(user_id)
        if handle is not None:
            handle.cancel()
            self._expire(room_id, user_id)

    def events_committed(self, batch: CommittedBatch) -> None:
        """The roomserver's commit listener: a user who sends a message has stopped typing
        it. The message's commit wakes the room, so the end of their typing reaches the
        members in the same response as the message, and the ``typing: false`` their client
        sends next (or their server, for a remote sender) changes nothing and wakes nobody.
        Other servers are told in the message's own transaction."""
        for event in batch.events:
            if event.type not in ENDS_TYPING or event.stream_ordering is None or \
                    event.stream_ordering < 0:
                continue
            users = self._typing.get(event.room_id)
            if users is None or event.sender not in users:
                continue
            handle = users.pop(event.sender)
            if handle is not None:
                handle.cancel()
            if not users:
                del self._typing[event.room_id]
            self._position += 1
            self._changes.mark(event.room_id, self._position)
            # (The message's own commit wakes the room; a worker wakes it on this.)
            self._publish(event.room_id, wake=True)
            if self._edus is not None and event.sender.endswith(self._local_suffix):
                self._edus.typing_changed(event.room_id, event.sender, False,
                                          event.destinations)

    def _expire(self, room_id: str, user_id: str) -> None:
        users = self._typing.get(room_id)
        if users is None or users.pop(user_id, None) is None:
            return
        if not users:
            del self._typing[room_id]
        self._changed(room_id)

    def _changed(self, room_id: str) -> None:
        self._position += 1
        self._changes.mark(room_id, self._position)
        self._publish(room_id, wake=False)  # (the wake below reaches the workers itself)
        self._wakes.wake([room_id])

    def _publish(self, room_id: str, *, wake: bool) -> None:
        if not self._replication.active:
            return
        self._replication.publish("typing", [room_id, sorted(self._typing.get(room_id, ())),
                                             self._position, wake])

    def publish_all(self) -> None:
        """The writer: tell the workers who types where now (a worker that just started
        knows nothing of typing that began before it)."""
        for room_id in list(self._typing):
            self._publish(room_id, wake=True)

    def apply_replicated(self, change: list[object]) -> None:
        """A worker: the writer says who types in a room now (``_publish``)."""
        room_id, users, position, wake = change
        assert isinstance(room_id, str) and isinstance(users, list) and \
            isinstance(position, int)
        if users:
            self._typing[room_id] = dict.fromkeys(users)
        else:
            self._typing.pop(room_id, None)
        self._position = max(self._position, position)
        self._changes.mark(room_id, position)
        if wake:
            self._notifier.wake(room_ids=[room_id])
