"""Purging history and deleting rooms (admin API), and the retention job.

Every purge goes through ``purge_history``: it deletes the room's non-state events before a
point (storage keeps the state and the newest events), drops them from every cache, and gives
the space back. Admin purges and room deletions run in the background; their status is kept
in memory for the admin API to poll, as Synapse does.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from core.clock import Clock
from core.errors import InvalidParam, MatrixError, NotFound
from homeserver.config import RetentionConfig
from homeserver.services.member_cache import MembershipCache
from homeserver.services.membership import MembershipService
from homeserver.services.notifier import Notifier
from homeserver.services.rooms import CreateRoomRequest, RoomService
from homeserver.services.serialize import EventSerializer
from roomserver.api import EventErasure, LocalRooms, NewEvent
from storage.stores.events import EventStore
from storage.stores.purge import PurgePoint, PurgeStore
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore
from storage.stores.users import UserStore

logger = logging.getLogger(__name__)

DEFAULT_ROOM_NAME = "Content Violation Notification"
DEFAULT_MESSAGE = ("Sharing illegal content on this server is not permitted and rooms in "
                   "violation will be blocked.")


@dataclass(slots=True)
class PurgeTask:
    room_id: str
    status: str  # active | complete | failed
    error: str | None = None


@dataclass(slots=True)
class DeleteTask:
    delete_id: str
    room_id: str
    status: str  # shutting_down | purging | complete | failed
    error: str | None = None
    kicked_users: list[str] = field(default_factory=list)
    failed_to_kick_users: list[str] = field(default_factory=list)
    local_aliases: list[str] = field(default_factory=list)
    new_room_id: str | None = None

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "delete_id": self.delete_id, "room_id": self.room_id, "status": self.status,
            "shutdown_room": {"kicked_users": self.kicked_users,
                              "failed_to_kick_users": self.failed_to_kick_users,
                              "local_aliases": self.local_aliases,
                              "new_room_id": self.new_room_id}}
        if self.error is not None:
            body["error"] = self.error
        return body


@dataclass(frozen=True, slots=True)
class DeleteRoomRequest:
    room_id: str
    requester: str
    block: bool = False
    purge: bool = True
    new_room_user_id: str | None = None
    room_name: str | None = None
    message: str | None = None


class PurgeService:
    def __init__(self, store: PurgeStore, events: EventStore, state: StateStore,
                 rooms: RoomStore, users: UserStore, persister: LocalRooms,
                 erasure: EventErasure, room_service: RoomService, membership: MembershipService,
                 members: MembershipCache, serializer: EventSerializer, notifier: Notifier,
                 clock: Clock, server_name: str, retention: RetentionConfig) -> None:
        self._store = store
        self._events = events
        self._state = state
        self._rooms = rooms
        self._users = users
        self._persister = persister
        self._erasure = erasure
        self._room_service = room_service
        self._membership = membership
        self._members = members
        self._serializer = serializer
        self._notifier = notifier
        self._clock = clock
        self._server_name = server_name
        self.retention = retention
        self._purges: LRUCache[str, PurgeTask] = LRUCache(1000)
        self._deletes: LRUCache[str, DeleteTask] = LRUCache(1000)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- history ----------------------------------------------------------------------------

    async def purge_history(self, room_id: str, point: PurgePoint, *,
                            delete_local_events: bool) -> int:
        """Delete the room's non-state events before ``point``; returns how many."""
        local = None if delete_local_events else ":" + self._server_name
        doomed = await self._store.history_to_purge(room_id, point, local_suffix=local)
        if not doomed:
            return 0
        await self._erasure.purge_events(doomed)
        self._forget({e for _, e in doomed}, room_id)
        await self._store.reclaim_space()
        logger.info("Purged %d events from %s", len(doomed), room_id)
        return len(doomed)

    def _forget(self, event_ids: set[str], room_id: str, users: Sequence[str] = ()) -> None:
        """Deleted events leave the services' caches (the roomserver forgets its own, and
        storage's), and ``users``' memberships the membership cache; the workers are told."""
        self._serializer.forget(event_ids)
        self._notifier.recent.discard(room_id, event_ids)
        self._members.invalidate(users)
        self._notifier.room_purged(room_id, event_ids, users)

    def deleted_elsewhere(self, room_id: str, event_ids: set[str], users: Sequence[str]
                          ) -> None:
        """A worker: the writer deleted these events (a purge, the room's removal); what this
        process cached of them, of the room and of ``users``' memberships goes."""
        self._erasure.deleted_elsewhere(room_id, event_ids)
        self._serializer.forget(event_ids)
        self._notifier.recent.discard(room_id, event_ids)
        self._members.invalidate(users)
        self._notifier.apply_room_purged(room_id)

    async def purge_point(self, room_id: str, *, event_id: str | None, ts: int | None
                          ) -> PurgePoint:
        """Where an admin purge stops: before an event's depth (the event stays), or before
        a time.

        Raises:
            NotFound: unknown room or event.
            InvalidParam: neither given, or the event is in another room.
        """
        if await self._events.room_info(room_id) is None:
            raise NotFound("Unknown room")
        if event_id is not None:
            event = await self._events.get_event(event_id)
            if event is None:
                raise NotFound(f"Unknown event {event_id}")
            if event.room_id != room_id:
                raise InvalidParam("Event is for wrong room.")
            return PurgePoint(depth=event.depth)
        if ts is not None:
            return PurgePoint(ts=ts)
        raise MatrixError("Must specify purge_up_to_event_id or purge_up_to_ts", status=400,
                          errcode="M_UNKNOWN")

    def start_purge(self, room_id: str, point: PurgePoint, *, delete_local_events: bool
                    ) -> str:
        """Start an admin purge in the background; returns its ID."""
        if any(t.room_id == room_id and t.status == "active" for t in self._purges.values()):
            raise MatrixError(f"History purge already in progress for {room_id}", status=400,
                              errcode="M_UNKNOWN")
        purge_id = secrets.token_urlsafe(12)
        task = PurgeTask(room_id, "active")
        self._purges[purge_id] = task

        async def run() -> None:
            try:
                await self.purge_history(room_id, point,
                                         delete_local_events=delete_local_events)
                task.status = "complete"
            except Exception as e:
                logger.exception("Purging history of %s failed", room_id)
                task.status, task.error = "failed", f"{type(e).__name__}"

        self._spawn(run)
        return purge_id

    def purge_status(self, purge_id: str) -> PurgeTask | None:
        return self._purges.get(purge_id)

    # -- deleting rooms ---------------------------------------------------------------------

    async def _check_delete_request(self, req: DeleteRoomRequest) -> None:
        if req.new_room_user_id is not None:
            user = await self._users.get_user(req.new_room_user_id)
            if user is None or not req.new_room_user_id.endswith(":" + self._server_name):
                raise InvalidParam("new_room_user_id must be a local user")

    async def start_delete(self, req: DeleteRoomRequest) -> DeleteTask:
        """Start deleting a room (kick local users, optionally block and purge it)."""
        await self._check_delete_request(req)
        if any(t.room_id == req.room_id and t.status in ("shutting_down", "purging")
               for t in self._deletes.values()):
            raise MatrixError(f"Room {req.room_id} is already being deleted", status=400,
                              errcode="M_UNKNOWN")
        task = DeleteTask(secrets.token_urlsafe(12), req.room_id, "shutting_down")
        self._deletes[task.delete_id] = task

        async def run() -> None:
            try:
                await self._delete_room(req, task)
                task.status = "complete"
            except Exception as e:
                logger.exception("Deleting room %s failed", req.room_id)
                task.status, task.error = "failed", f"{type(e).__name__}"

        self._spawn(run)
        return task

    async def delete_room(self, req: DeleteRoomRequest) -> DeleteTask:
        """Delete a room and wait for it (the v1 API)."""
        await self._check_delete_request(req)
        task = DeleteTask(secrets.token_urlsafe(12), req.room_id, "shutting_down")
        self._deletes[task.delete_id] = task
        try:
            await self._delete_room(req, task)
        except Exception as e:
            task.status, task.error = "failed", f"{type(e).__name__}"
            raise
        task.status = "complete"
        return task

    async def _delete_room(self, req: DeleteRoomRequest, task: DeleteTask) -> None:
        room_id = req.room_id
        if req.block:
            await self._rooms.block(room_id, req.requester, self._clock.time_ms())
        known = await self._events.room_info(room_id) is not None
        if not known:
            return
        local = ":" + self._server_name
        member_events = await self._state.current_state(room_id, types=["m.room.member"])
        # Local users in the room, or invited or knocking: they are made to leave.
        members = sorted(e.state_key for e in member_events if e.state_key.endswith(local)
                         and e.membership in ("join", "invite", "knock"))
        if req.new_room_user_id is not None:
            task.new_room_id, _ = await self._room_service.create_room(CreateRoomRequest(
                creator=req.new_room_user_id, preset="public_chat",
                name=req.room_name or DEFAULT_ROOM_NAME,
                power_level_content_override={"users_default": -10}))
            await self._room_service.send_message(task.new_room_id, NewEvent(
                "m.room.message", req.new_room_user_id,
                {"msgtype": "m.text", "body": req.message or DEFAULT_MESSAGE}))
        for user_id in members:
            try:
                await self._membership.leave(user_id, room_id)
                await self._membership.forget(user_id, room_id)
                if task.new_room_id is not None and user_id != req.new_room_user_id:
                    await self._membership.join(user_id, task.new_room_id)
                task.kicked_users.append(user_id)
            except MatrixError as e:
                logger.warning("Could not remove %s from %s: %s", user_id, room_id, e)
                task.failed_to_kick_users.append(user_id)
        task.local_aliases = await self._rooms.aliases_for_room(room_id)
        for alias in task.local_aliases:
            await self._rooms.delete_alias(alias)
        await self._rooms.set_public(room_id, False)
        if not req.purge:
            return
        task.status = "purging"
        # Everyone with a member event here (those who left or were banned too) loses it.
        with_membership = [e.state_key for e in member_events]
        deleted = await self._persister.remove_room(
            room_id, lambda: self._store.delete_room(room_id))
        # (remove_room forgot the roomserver's cached events of the room)
        self._events.forget_cached(deleted)
        self._forget(set(deleted), room_id, with_membership)
        await self._store.reclaim_space()
        logger.info("Deleted room %s (%d events)", room_id, len(deleted))

    async def set_blocked(self, room_id: str, admin: str, block: bool) -> None:
        if block:
            await self._rooms.block(room_id, admin, self._clock.time_ms())
        else:
            await self._rooms.unblock(room_id)

    async def blocked_by(self, room_id: str) -> str | None:
        return await self._rooms.blocked_by(room_id)

    def delete_status(self, delete_id: str) -> DeleteTask | None:
        return self._deletes.get(delete_id)

    def delete_statuses(self, room_id: str) -> list[DeleteTask]:
        return [t for t in self._deletes.values() if t.room_id == room_id]

    # -- retention --------------------------------------------------------------------------

    def max_lifetime(self, policy: dict[str, object] | None) -> int | None:
        """A room's effective max_lifetime (ms) under the server's config."""
        config = self.retention
        value = policy.get("max_lifetime") if policy is not None else None
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            value = config.default_max_lifetime_ms
            if value is None:
                return None
        if config.allowed_lifetime_min_ms is not None:
            value = max(value, config.allowed_lifetime_min_ms)
        if config.allowed_lifetime_max_ms is not None:
            value = min(value, config.allowed_lifetime_max_ms)
        return value

    async def run_retention(self, now_ms: int | None = None) -> int:
        """Purge every room's messages older than its max_lifetime; returns how many."""
        if not self.retention.enabled:
            return 0
        now = self._clock.time_ms() if now_ms is None else now_ms
        room_ids, policies = await self._store.retention_policies()
        purged = 0
        for room_id in room_ids:
            lifetime = self.max_lifetime(policies.get(room_id))
            if lifetime is None:
                continue
            purged += await self.purge_history(room_id, PurgePoint(ts=now - lifetime),
                                               delete_local_events=True)
        return purged

    async def retention_loop(self) -> None:
        while True:
            try:
                await self.run_retention()
            except Exception:
                logger.exception("The retention job failed; it runs again at its next time")
            await self._clock.sleep(self.retention.purge_interval_ms / 1000)

    # -- tasks ------------------------------------------------------------------------------

    def _spawn(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
