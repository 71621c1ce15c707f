"""Presence (https://spec.matrix.org/v1.19/client-server-api/#presence).

The state of every user who has one lives in memory, is written behind to the database in
batches (kept across restarts) and reaches exactly the users who share a room with them
through /sync: a change wakes the waiters of the user's rooms, nobody else's. Timers, not
polling, move users on: one per online user to `unavailable` after the idle timeout (re-armed
lazily, so activity costs a timestamp, not a timer), one to `offline` when their last sync
connection has been gone for the offline timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from core.clock import Clock
from core.errors import InvalidParam
from homeserver.config import PresenceConfig
from homeserver.services.member_cache import MembershipCache
from homeserver.services.notifier import Notifier
from homeserver.services.ports import ALONE, LocalEdus, Replication
from storage.stores.presence import PresenceRow, PresenceStore

logger = logging.getLogger(__name__)

STATES = ("online", "unavailable", "offline")
CURRENTLY_ACTIVE_MS = 60_000
# Positions handed out but maybe not written before a crash are skipped after a restart.
_RESTART_MARGIN = 100_000
_FLUSH_DELAY_S = 0.5
_RECENT_CHANGES = 10_000
# A worker says which of its users are syncing this often (and at once when that changes);
# the writer forgets a worker not heard from for _WORKER_SILENCE_S (it died).
WORKER_HEARTBEAT_S = 10.0
_SYNCS_GATHER_S = 0.5
_WORKER_SILENCE_S = 35.0

UNCHANGED: Any = object()


@dataclass(slots=True)
class UserPresence:
    state: str
    status_msg: str | None
    last_active_ts: int
    position: int


class PresenceService:
    def __init__(self, store: PresenceStore, notifier: Notifier, members: MembershipCache,
                 clock: Clock, config: PresenceConfig, server_name: str = "",
                 edus: LocalEdus | None = None, *, replication: Replication = ALONE,
                 writer: bool = True) -> None:
        """``writer``: this process keeps presence (the main process); a worker (False)
        mirrors what the writer publishes over ``replication`` and tells it who syncs."""
        self._store = store
        self._replication = replication
        self._writer = writer
        # Worker origin -> (user -> set_presence of their syncs there, when last heard).
        self._remote_syncs: dict[str, tuple[dict[str, str], float]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._syncs_changed = asyncio.Event()
        # A worker: its users syncing now -> their set_presence.
        self._syncing_wanted: dict[str, str] = {}
        self._local_suffix = ":" + server_name
        self._notifier = notifier
        self._members = members
        self._clock = clock
        self.enabled = config.enabled
        self._idle_s = config.idle_timeout_ms / 1000
        self._offline_s = config.offline_timeout_ms / 1000
        self._states: dict[str, UserPresence] = {}
        self._position = 0
        self._start_position = 0
        # Recent changes as (position, user), oldest first; older ones need a scan.
        self._recent: deque[tuple[int, str]] = deque(maxlen=_RECENT_CHANGES)
        self._connections: dict[str, int] = {}
        self._idle_timers: dict[str, asyncio.TimerHandle] = {}
        self._offline_timers: dict[str, asyncio.TimerHandle] = {}
        self._dirty: dict[str, UserPresence] = {}
        self._flush_wanted = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        # Told whenever a user changes presence (None: no federation).
        self._edus = edus

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        rows = await self._store.all()
        self._position = self._start_position = self._store.position + _RESTART_MARGIN
        self._states = {r.user_id: UserPresence(r.state, r.status_msg, r.last_active_ts,
                                                r.stream_id) for r in rows}
        if not self._writer:
            # Every position the writer hands out from now on is above what it has
            # written (no margin: the writer's numbers, not this process's, are the
            # stream's).
            self._position = self._start_position = self._store.position
            self._heartbeat = asyncio.create_task(self._heartbeat_loop())
            return
        # Nobody is connected to a process that just started: whoever was online goes
        # offline unless they come back within the timeout.
        for user_id, presence in self._states.items():
            # Other servers' users keep what their server last said.
            if presence.state != "offline" and user_id.endswith(self._local_suffix):
                self._arm_offline(user_id)
        self._flusher = asyncio.create_task(self._flush_loop())

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        for timers in (self._idle_timers, self._offline_timers):
            for handle in timers.values():
                handle.cancel()
            timers.clear()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self._flush()

    @property
    def position(self) -> int:
        return self._position

    # -- reading ----------------------------------------------------------------------------

    def get(self, user_id: str) -> UserPresence | None:
        return self._states.get(user_id) if self.enabled else None

    def content(self, user_id: str) -> dict[str, Any]:
        """What GET /presence/{userId}/status and m.presence events carry."""
        presence = self.get(user_id)
        if presence is None:
            return {"presence": "offline"}
        now = self._clock.time_ms()
        out: dict[str, Any] = {"presence": presence.state,
                               "last_active_ago": max(0, now - presence.last_active_ts)}
        if presence.status_msg is not None:
            out["status_msg"] = presence.status_msg
        if presence.state == "online":
            out["currently_active"] = now - presence.last_active_ts < CURRENTLY_ACTIVE_MS
        return out

    def event(self, user_id: str) -> dict[str, Any]:
        return {"type": "m.presence", "sender": user_id, "content": self.content(user_id)}

    def changed_since(self, position: int) -> list[str]:
        """Users whose presence changed after ``position`` (oldest change first)."""
        if not self.enabled or position >= self._position:
            return []
        # The recent changes hold every change after `floor`.
        floor = self._start_position if len(self._recent) < _RECENT_CHANGES \
            else self._recent[0][0] - 1
        if position >= floor:
            # Newest first, back to `position`: the cost is the number of changes since.
            newest_first: dict[str, None] = {}
            for changed_at, user_id in reversed(self._recent):
                if changed_at <= position:
                    break
                newest_first.setdefault(user_id, None)
            return list(reversed(newest_first))
        return [u for u, p in sorted(self._states.items(), key=lambda i: i[1].position)
                if p.position > position]

    def known(self, user_ids: set[str]) -> list[str]:
        """Those of the users who have a presence state."""
        return [u for u in user_ids if u in self._states] if self.enabled else []

    # -- changing ---------------------------------------------------------------------------

    async def set_state(self, user_id: str, state: str, status_msg: Any = UNCHANGED) -> None:
        """PUT /presence/{userId}/status"""
        if state not in STATES:
            raise InvalidParam(f"'presence' must be one of {', '.join(STATES)}")
        if status_msg is not UNCHANGED and status_msg is not None and \
                not isinstance(status_msg, str):
            raise InvalidParam("'status_msg' must be a string")
        if not self.enabled:
            return
        now = self._clock.time_ms()
        current = self._states.get(user_id)
        active = now if state == "online" or current is None else current.last_active_ts
        await self._change(user_id, state,
                           current.status_msg if status_msg is UNCHANGED and current else
                           (None if status_msg is UNCHANGED else status_msg), active)
        if state != "offline" and not self._connections.get(user_id):
            self._arm_offline(user_id)  # online without a sync connection does not last

    async def user_active(self, user_id: str) -> None:
        """The user did something (sent, typed, read): they are active now."""
        if not self.enabled:
            return
        if not self._writer:
            self._replication.publish("presence_active", user_id)
            return
        current = self._states.get(user_id)
        now = self._clock.time_ms()
        if current is not None and current.state == "online":
            current.last_active_ts = now  # no change anyone needs to hear about at once
            self._dirty[user_id] = current
            return
        await self._change(user_id, "online", current.status_msg if current else None, now)
        if not self._connections.get(user_id):
            self._arm_offline(user_id)  # nor does activity without one

    @contextlib.asynccontextmanager
    async def syncing(self, user_id: str, set_presence: str | None) -> AsyncIterator[None]:
        """Around a sync request or stream: the user is connected while it lasts."""
        if set_presence not in (None, *STATES):
            raise InvalidParam(f"'set_presence' must be one of {', '.join(STATES)}")
        if not self.enabled:
            yield
            return
        self._connections[user_id] = self._connections.get(user_id, 0) + 1
        if self._writer:
            await self._connected(user_id, set_presence)
        else:  # a worker: the writer hears who syncs here
            self._syncing_wanted[user_id] = set_presence or "online"
            self._syncs_changed.set()
        try:
            yield
        finally:
            left = self._connections.get(user_id, 1) - 1
            if left > 0:
                self._connections[user_id] = left
            else:
                self._connections.pop(user_id, None)
                if self._writer:
                    self._disconnected(user_id)
                else:
                    self._syncing_wanted.pop(user_id, None)
                    self._syncs_changed.set()

    async def _connected(self, user_id: str, set_presence: str | None) -> None:
        timer = self._offline_timers.pop(user_id, None)
        if timer is not None:
            timer.cancel()
        current = self._states.get(user_id)
        wanted = set_presence or "online"
        if wanted == "online" and (current is None or current.state == "offline"):
            await self._change(user_id, "online", current.status_msg if current else None,
                               self._clock.time_ms())
        elif wanted == "unavailable" and (current is None or current.state != "unavailable"):
            await self._change(user_id, "unavailable", current.status_msg if current else None,
                               current.last_active_ts if current else self._clock.time_ms())

    def _disconnected(self, user_id: str) -> None:
        if self._connected_anywhere(user_id):
            return
        if (self._states.get(user_id) or UserPresence("offline", None, 0, 0)
                ).state != "offline":
            self._arm_offline(user_id)

    def _connected_anywhere(self, user_id: str) -> bool:
        return bool(self._connections.get(user_id)) or any(
            user_id in users for users, _ in self._remote_syncs.values())

    # -- several processes ------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """A worker: tell the writer who syncs here when that changes and every
        ``WORKER_HEARTBEAT_S`` anyway (so it notices when this process is gone). Changes are
        gathered for ``_SYNCS_GATHER_S``: a long poll that answers and comes straight back
        is one connection all along, not a leave and a return."""
        published: dict[str, str] | None = None
        while True:
            try:
                await asyncio.wait_for(self._syncs_changed.wait(), WORKER_HEARTBEAT_S)
                changed = True
            except TimeoutError:
                changed = False
            if changed:
                await asyncio.sleep(_SYNCS_GATHER_S)
            self._syncs_changed.clear()
            now = dict(self._syncing_wanted)
            if now != published or not changed:  # a change, or the heartbeat
                self._replication.publish("presence_syncs", now)
                published = now

    def apply_worker_syncs(self, origin: str, users: dict[str, str]) -> None:
        """The writer: worker ``origin`` says these users are syncing there (user ->
        set_presence). Users who stopped there go offline after the timeout, as for a
        connection here; those who started are connected."""
        now = self._clock.monotonic()
        before = self._remote_syncs.get(origin, ({}, now))[0]
        self._remote_syncs[origin] = (users, now)
        for gone_origin, (_, heard) in list(self._remote_syncs.items()):
            if now - heard > _WORKER_SILENCE_S:  # that worker died: its syncs are over
                gone = self._remote_syncs.pop(gone_origin)[0]
                for user_id in gone:
                    self._disconnected(user_id)
        for user_id, set_presence in users.items():
            if user_id not in before:
                self._spawn(self._connected(user_id, set_presence))
        for user_id in before:
            if user_id not in users:
                self._disconnected(user_id)

    def apply_replicated(self, change: list[Any]) -> None:
        """A worker: the writer changed a user's presence (``_published``)."""
        user_id, state, status_msg, last_active_ts, position = change
        self._states[user_id] = UserPresence(state, status_msg, last_active_ts, position)
        self._position = max(self._position, position)
        self._recent.append((position, user_id))

    def _published(self, user_id: str, presence: UserPresence) -> None:
        if not self._replication.active:
            return
        self._replication.publish("presence", [user_id, presence.state, presence.status_msg,
                                               presence.last_active_ts, presence.position])

    async def _change(self, user_id: str, state: str, status_msg: str | None,
                      last_active_ts: int) -> None:
        self._position += 1
        presence = UserPresence(state, status_msg, last_active_ts, self._position)
        self._states[user_id] = presence
        self._recent.append((self._position, user_id))
        self._published(user_id, presence)
        self._dirty[user_id] = presence
        self._flush_wanted.set()
        idle = self._idle_timers.pop(user_id, None)
        if idle is not None:
            idle.cancel()
        if state == "online":
            self._arm_idle(user_id, self._idle_s)
        if state == "offline":
            offline = self._offline_timers.pop(user_id, None)
            if offline is not None:
                offline.cancel()
        rooms = await self._members.joined_rooms(user_id)
        self._notifier.wake(presence_of_rooms=rooms, user_ids=[user_id])
        if self._edus is not None:
            self._edus.presence_changed(user_id, self.content(user_id))

    async def set_remote(self, user_id: str, state: str, status_msg: str | None,
                         last_active_ago: int) -> None:
        """Presence another server sent for one of its users (no timers: its server tells
        us when it changes)."""
        if not self.enabled or state not in STATES:
            return
        self._position += 1
        presence = UserPresence(state, status_msg,
                                self._clock.time_ms() - max(0, last_active_ago), self._position)
        self._states[user_id] = presence
        self._recent.append((self._position, user_id))
        self._published(user_id, presence)
        self._dirty[user_id] = presence
        self._flush_wanted.set()
        rooms = await self._members.joined_rooms(user_id)
        self._notifier.wake(presence_of_rooms=rooms, user_ids=[user_id])

    # -- timers -----------------------------------------------------------------------------

    def _arm_idle(self, user_id: str, delay_s: float) -> None:
        self._idle_timers[user_id] = asyncio.get_running_loop().call_later(
            max(delay_s, 0.01), self._idle_check, user_id)

    def _idle_check(self, user_id: str) -> None:
        self._idle_timers.pop(user_id, None)
        presence = self._states.get(user_id)
        if presence is None or presence.state != "online":
            return
        idle_for = (self._clock.time_ms() - presence.last_active_ts) / 1000
        if idle_for < self._idle_s:
            self._arm_idle(user_id, self._idle_s - idle_for)  # active meanwhile
            return
        self._spawn(self._change(user_id, "unavailable", presence.status_msg,
                                 presence.last_active_ts))

    def _arm_offline(self, user_id: str) -> None:
        previous = self._offline_timers.pop(user_id, None)
        if previous is not None:
            previous.cancel()
        self._offline_timers[user_id] = asyncio.get_running_loop().call_later(
            self._offline_s, self._offline_check, user_id)

    def _offline_check(self, user_id: str) -> None:
        self._offline_timers.pop(user_id, None)
        presence = self._states.get(user_id)
        if self._connected_anywhere(user_id) or presence is None or \
                presence.state == "offline":
            return
        self._spawn(self._change(user_id, "offline", presence.status_msg,
                                 presence.last_active_ts))

    def _spawn(self, change: Any) -> None:
        task = asyncio.get_running_loop().create_task(change)
        task.add_done_callback(_log_failure)

    # -- writing behind ---------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._flush_wanted.wait()
            await asyncio.sleep(_FLUSH_DELAY_S)  # gather a batch
            self._flush_wanted.clear()
            try:
                await self._flush()
            except Exception:
                logger.exception("Writing presence failed; retrying with the next change")

    async def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        try:
            await self._store.put_many([
                PresenceRow(u, p.state, p.status_msg, p.last_active_ts, p.position)
                for u, p in dirty.items()])
        except (Exception, asyncio.CancelledError):
            # Failed, or cancelled half-way (``stop`` cancels the flusher, then flushes
            # what is dirty): written again with the next flush.
            for user_id, presence in dirty.items():
                self._dirty.setdefault(user_id, presence)
            raise


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Presence change failed", exc_info=task.exception())
