"""Each user's memberships (room -> membership and member event), cached between changes.

Sync reads a user's memberships on every request and presence asks who shares a room with
whom; both come here. An entry stays valid until a member event about that user commits after
the position it was read at (the notifier records those positions)."""

from __future__ import annotations

from collections import OrderedDict

from homeserver.services.notifier import Notifier
from storage.stores.sync import SyncStore


class MembershipCache:
    SIZE = 10_000

    def __init__(self, store: SyncStore, notifier: Notifier) -> None:
        self._store = store
        self._notifier = notifier
        # User -> (position read at, memberships, joined rooms).
        self._entries: OrderedDict[
            str, tuple[int, dict[str, tuple[str, str]], frozenset[str]]] = OrderedDict()

    async def memberships(self, user_id: str) -> dict[str, tuple[str, str]]:
        """Room -> (membership, member event ID) for every room the user has a member
        event in."""
        return (await self._entry(user_id))[1]

    async def joined_rooms(self, user_id: str) -> frozenset[str]:
        return (await self._entry(user_id))[2]

    async def share_a_room(self, user_id: str, other_id: str) -> bool:
        if user_id == other_id:
            return True
        return not (await self.joined_rooms(user_id)).isdisjoint(
            await self.joined_rooms(other_id))

    async def _entry(self, user_id: str
                     ) -> tuple[int, dict[str, tuple[str, str]], frozenset[str]]:
        cached = self._entries.get(user_id)
        if cached is not None and cached[0] >= self._notifier.membership_position(user_id):
            self._entries.move_to_end(user_id)
            return cached
        at = self._notifier.position
        found = await self._store.memberships(user_id)
        entry = (at, found, frozenset(r for r, (m, _) in found.items() if m == "join"))
        self._entries[user_id] = entry
        self._entries.move_to_end(user_id)
        while len(self._entries) > self.SIZE:
            self._entries.popitem(last=False)
        return entry
