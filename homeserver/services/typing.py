"""Who is typing in each room: in memory only, each change a position in the typing stream.

Positions start at the clock's milliseconds at start-up, so they keep increasing across
restarts and a client's token never points past what this process will count."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from core.clock import Clock
from core.errors import Forbidden
from homeserver.services.changes import ChangeLog
from homeserver.services.member_cache import MembershipCache
from homeserver.services.notifier import Notifier

DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 120_000


class TypingService:
    def __init__(self, notifier: Notifier, members: MembershipCache, clock: Clock) -> None:
        self._notifier = notifier
        self._members = members
        self._clock = clock
        self._position = clock.time_ms()
        # Room -> user -> the timer that ends their typing.
        self._typing: dict[str, dict[str, asyncio.TimerHandle]] = {}
        self._changes = ChangeLog(self._position)
        notifier.on_left.append(self._left)
        # Told (room, user, typing) when a user of this server starts or stops typing, so
        # other servers in the room hear of it.
        self.local_listener: Callable[[str, str, bool], None] | None = None

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
        if (previous is None) if typing else (previous is not None):
            self._changed(room_id)
        if local and self.local_listener is not None:
            self.local_listener(room_id, user_id, typing)

    def stop_all(self) -> None:
        for users in self._typing.values():
            for handle in users.values():
                handle.cancel()
        self._typing.clear()

    def _left(self, room_id: str, user_id: str) -> None:
        """Someone who left (or was kicked or banned) stops typing there."""
        handle = self._typing.get(room_id, {}).get(user_id)
        if handle is not None:
            handle.cancel()
            self._expire(room_id, user_id)

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
        self._notifier.wake(room_ids=[room_id])
