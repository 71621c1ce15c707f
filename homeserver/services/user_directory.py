"""The user directory (``POST /user_directory/search``), kept current from commits.

As Synapse: a searcher finds users who share a room with them and users in public rooms (join
rule ``public`` or history ``world_readable``); with ``user_directory.search_all_users`` every
local user too. Local users are found by their profile (kept with it by the profile tables'
own writes); other servers' users by their member events, while they are joined to a room here.

The roomserver tells every commit (``events_committed``, on the event loop): the state deltas
of member events, join rules and history visibility are queued and applied by one task, a
batch of commits at a time, in one transaction (one read of the events it needs, no rescans).
A search waits for what is queued, so it sees the commits that came before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from core.errors import BadJson, MissingParam
from homeserver.config import UserDirectoryConfig
from roomserver.api import CommittedBatch, RoomReader
from storage import user_directory_index
from storage.stores.user_directory import UserDirectoryStore

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 10
MAX_LIMIT = 50  # as Synapse
MAX_SEARCH_TERM_CHARS = 1000
# How long a search waits for queued commits before answering from what is applied.
_CATCH_UP_S = 5.0
_PUBLICITY = ("m.room.join_rules", "m.room.history_visibility")


class UserDirectoryService:
    def __init__(self, store: UserDirectoryStore, rooms: RoomReader,
                 config: UserDirectoryConfig, server_name: str) -> None:
        self._store = store
        self._rooms = rooms
        self._config = config
        self._server_name = server_name
        self._server_suffix = ":" + server_name
        self._pending: list[CommittedBatch] = []
        self._task: asyncio.Task[None] | None = None

    # -- searching -------------------------------------------------------------------------

    async def search(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The answer to ``POST /user_directory/search`` with ``body``."""
        term = body.get("search_term")
        if term is None:
            raise MissingParam("Missing parameter: search_term")
        if not isinstance(term, str):
            raise BadJson("'search_term' must be a string")
        limit = body.get("limit", DEFAULT_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise BadJson("'limit' must be an integer")
        limit = max(0, min(limit, MAX_LIMIT))
        await self.caught_up()
        found, limited = await self._store.search(
            user_id, term[:MAX_SEARCH_TERM_CHARS], limit,
            search_all_users=self._config.search_all_users, server_name=self._server_name)
        results = []
        for entry in found:
            result: dict[str, Any] = {"user_id": entry.user_id}
            if entry.display_name is not None:
                result["display_name"] = entry.display_name
            if entry.avatar_url is not None:
                result["avatar_url"] = entry.avatar_url
            results.append(result)
        return {"results": results, "limited": limited}

    async def caught_up(self) -> None:
        """Wait (a bounded time) until the commits told so far are applied."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), _CATCH_UP_S)

    # -- keeping it current ----------------------------------------------------------------

    def events_committed(self, batch: CommittedBatch) -> None:
        """The roomserver's commit listener: queue the batch if it changed memberships or a
        room's join rule or history visibility."""
        if not any(type_ == "m.room.member" or (type_ in _PUBLICITY and key == "")
                   for event in batch.events for type_, key, _, _ in event.state_delta):
            return
        self._pending.append(batch)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())

    async def start(self) -> None:
        """Apply what commits made while no one listened (a crash between a commit and its
        update here): the rooms changed since the directory's stream position."""
        synced = await self._store.catch_up()
        if synced:
            logger.info("User directory: %d rooms changed while it was not kept; synced",
                        synced)

    async def stop(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), _CATCH_UP_S)
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    async def _drain(self) -> None:
        while self._pending:
            batches, self._pending = self._pending, []
            try:
                await self._apply(batches)
            except Exception:
                logger.exception("Updating the user directory failed")

    def _is_mine(self, user_id: str) -> bool:
        return user_id.endswith(self._server_suffix)

    async def _apply(self, batches: list[CommittedBatch]) -> None:
        memberships: dict[tuple[str, str], bool] = {}
        profile_events: dict[str, str] = {}  # other servers' joined users: member event
        rooms_to_check: set[str] = set()
        local_leaves: set[str] = set()  # rooms a local user left
        for batch in batches:
            for event in batch.events:
                for type_, key, event_id, membership in event.state_delta:
                    if type_ == "m.room.member":
                        joined = membership == "join"
                        memberships[(key, event.room_id)] = joined
                        if joined and not self._is_mine(key):
                            profile_events[key] = event_id
                        elif not joined and self._is_mine(key):
                            local_leaves.add(event.room_id)
                    elif type_ in _PUBLICITY and key == "":
                        rooms_to_check.add(event.room_id)
        loaded = await self._rooms.get_events(list(profile_events.values()))
        remote_profiles = []
        for user_id, event_id in profile_events.items():
            member = loaded.get(event_id)
            name, avatar = user_directory_index.profile_of(
                member.content if member is not None else {})
            remote_profiles.append((user_id, name, avatar))
        public: dict[str, bool] = {}
        for room_id in rooms_to_check:
            join_rules = await self._rooms.state_content(room_id, ("m.room.join_rules", ""))
            visibility = await self._rooms.state_content(
                room_id, ("m.room.history_visibility", ""))
            public[room_id] = user_directory_index.is_public(
                (join_rules or {}).get("join_rule"),
                (visibility or {}).get("history_visibility"))
        # A room none of our users is in any more: this server hears no more of it, so its
        # members are no longer known to be there (as Synapse, the room leaves the directory).
        gone = set()
        for room_id in local_leaves:
            head = await self._rooms.room_head(room_id)
            if head is None or not any(self._is_mine(user) for user in head.joined):
                gone.add(room_id)
        positions = [e.stream_ordering for b in batches for e in b.events
                     if e.stream_ordering is not None and e.stream_ordering > 0]
        await self._store.apply_room_changes(memberships, remote_profiles, public,
                                             rooms_gone=gone,
                                             position=max(positions, default=None))
