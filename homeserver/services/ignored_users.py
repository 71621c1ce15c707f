"""Ignored users (``m.ignored_user_list`` account data): whom each user ignores, in memory.

A user's list is read from the database once, then kept current by the account data service
(every write of the type goes through it), so the readers (sync, /messages) ask memory once
per request, never the database per event.
"""

from __future__ import annotations

from typing import Any

from cachetools import LRUCache

from core.errors import BadJson
from storage.stores.account_data import GLOBAL, AccountDataStore

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
    USERS = 100_000

    def __init__(self, store: AccountDataStore) -> None:
        self._store = store
        self._lists: LRUCache[str, frozenset[str]] = LRUCache(self.USERS)

    async def of(self, user_id: str) -> frozenset[str]:
        """Whom ``user_id`` ignores."""
        ignored = self._lists.get(user_id)
        if ignored is None:
            ignored = ignored_in(await self._store.get(user_id, GLOBAL, IGNORED_USER_LIST))
            self._lists[user_id] = ignored
        return ignored

    def changed(self, user_id: str, content: dict[str, Any]) -> None:
        """The user's list was written (after the write is committed)."""
        self._lists[user_id] = ignored_in(content)


def hidden_by(ignored: frozenset[str], pdu: dict[str, Any]) -> bool:
    """Whether an event is hidden from someone ignoring ``ignored``: their messages and other
    non-state events are (as in Synapse), the room's state is never."""
    return bool(ignored) and "state_key" not in pdu and pdu.get("sender") in ignored
