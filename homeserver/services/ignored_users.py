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

    def changed(self, user_id: str, content: dict[str, Any]) -> None:
        """The user's list was written (after the write is committed)."""
        if not self._loaded:
            self._written.add(user_id)
        self._set(user_id, ignored_in(content))

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
