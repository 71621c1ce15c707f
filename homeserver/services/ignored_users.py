"""Ignored users (``m.ignored_user_list`` account data): whom each user ignores, in memory.

Every list is read from the database once, then kept current by the account data service
(every write of the type goes through it), so the readers (sync, /messages, push-rule
evaluation) ask memory, never the database per event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from core.errors import BadJson
from storage.stores.account_data import AccountDataStore

IGNORED_USER_LIST = "m.ignored_user_list"
NOBODY: frozenset[str] = frozenset()
# Changes remembered per user (whom each write started or stopped ignoring), for sync.
HISTORY = 20


def check_content(content: dict[str, Any]) -> None:
    """Raises: BadJson: ``ignored_users`` is there and no object (the spec's shape)."""
    if "ignored_users" in content and not isinstance(content["ignored_users"], dict):
        raise BadJson("'ignored_users' must be an object")


def ignored_in(content: dict[str, Any] | None) -> frozenset[str]:
    """The user IDs an ``m.ignored_user_list`` content ignores (nobody when malformed)."""
    users = (content or {}).get("ignored_users")
    return frozenset(u for u in users if isinstance(u, str)) if isinstance(users, dict) \
        else NOBODY


class IgnoredUsers:
    """Every user's list, loaded whole on first use (few users ignore anyone), and who
    ignores each sender (push-rule evaluation asks that of every event)."""

    def __init__(self, store: AccountDataStore) -> None:
        self._store = store
        self._lists: dict[str, frozenset[str]] = {}
        self._ignorers: dict[str, set[str]] = {}
        self._loaded = False
        self._loading: asyncio.Lock = asyncio.Lock()
        # Users whose list was written while the lists were being loaded.
        self._written: set[str] = set()
        # User -> (account data position, whom that write started or stopped ignoring);
        # nothing before ``_known_from`` (this process's start), nor before ``_floor[user]``.
        self._changes: dict[str, list[tuple[int, frozenset[str]]]] = {}
        self._known_from: int | None = None
        self._floor: dict[str, int] = {}

    async def _load(self) -> None:
        if self._loaded:
            return
        async with self._loading:
            if not self.loaded:  # (another caller may have loaded them meanwhile)
                for user_id, content in await self._store.of_type(IGNORED_USER_LIST):
                    if user_id not in self._written:  # a write during the read is newer
                        self._set(user_id, ignored_in(content))
                self._loaded = True
                self._written.clear()
                # Writes before this point (or during the load) were not compared with the
                # list before them: their changes are unknown.
                self._known_from = max(self._known_from or 0, self._store.position)

    @property
    def loaded(self) -> bool:
        return self._loaded

    async def of(self, user_id: str) -> frozenset[str]:
        """Whom ``user_id`` ignores."""
        await self._load()
        return self._lists.get(user_id, NOBODY)

    async def ignorers(self) -> Callable[[str], frozenset[str] | set[str]]:
        """A lookup of who ignores a sender (memory only, once loaded)."""
        await self._load()
        return lambda sender: self._ignorers.get(sender, NOBODY)

    def changed(self, user_id: str, content: dict[str, Any], position: int) -> None:
        """The user's list was written (after the write is committed, at ``position`` in
        the account data stream)."""
        ignored = ignored_in(content)
        if not self._loaded:
            self._written.add(user_id)
            self._known_from = max(self._known_from or 0, position)
        else:
            changes = self._changes.setdefault(user_id, [])
            changes.append((position, ignored ^ self._lists.get(user_id, NOBODY)))
            if len(changes) > HISTORY:
                self._floor[user_id] = changes.pop(0)[0]
        self._set(user_id, ignored)

    async def changed_since(self, user_id: str, position: int) -> frozenset[str] | None:
        """Whom the user started or stopped ignoring after ``position`` in the account
        data stream, or None when that is not known (an older position than this process
        remembers)."""
        await self._load()
        assert self._known_from is not None
        if position < max(self._known_from, self._floor.get(user_id, 0)):
            return None
        return frozenset().union(*(users for at, users in self._changes.get(user_id, ())
                                   if at > position))

    def _set(self, user_id: str, ignored: frozenset[str]) -> None:
        for sender in self._lists.get(user_id, NOBODY) - ignored:
            found = self._ignorers.get(sender)
            if found is not None:
                found.discard(user_id)
                if not found:
                    del self._ignorers[sender]
        for sender in ignored:
            self._ignorers.setdefault(sender, set()).add(user_id)
        if ignored:
            self._lists[user_id] = ignored
        else:
            self._lists.pop(user_id, None)


def hidden_by(ignored: frozenset[str], pdu: dict[str, Any]) -> bool:
    """Whether an event is hidden from someone ignoring ``ignored``: their messages and other
    non-state events are (as in Synapse), the room's state is never."""
    return bool(ignored) and "state_key" not in pdu and pdu.get("sender") in ignored
