"""Each user's memberships (room -> membership and member event), cached between changes.

Sync reads a user's memberships on every request and presence asks who shares a room with
whom; both come here. An entry stays valid until a member event about that user commits after
the position it was read at (the notifier records those positions)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from cachetools import LRUCache

from core.stats import HitCounter
from homeserver.services.notifier import Notifier
from storage.stores.sync import SyncStore

# (stream position read at, room -> (membership, member event ID), joined rooms)
_Entry = tuple[int, dict[str, tuple[str, str]], frozenset[str]]


class MembershipCache:
    SIZE = 10_000

    def __init__(self, store: SyncStore, notifier: Notifier) -> None:
        self._store = store
        self._notifier = notifier
        # User -> (position read at, memberships, joined rooms).
        self._entries: LRUCache[str, _Entry] = LRUCache(self.SIZE)
        self.cache_stats = HitCounter()  # lookups (metrics)
        # Loads in flight: concurrent misses for one user share one query.
        self._loading: dict[str, asyncio.Future[_Entry]] = {}

    async def memberships(self, user_id: str) -> dict[str, tuple[str, str]]:
        """Room -> (membership, member event ID) for every room the user has a member
        event in."""
        return (await self._entry(user_id))[1]

    def invalidate(self, user_ids: Iterable[str]) -> None:
        """Memberships changed outside the event stream (a room was deleted)."""
        for user_id in user_ids:
            self._entries.pop(user_id, None)

    async def joined_rooms(self, user_id: str) -> frozenset[str]:
        return (await self._entry(user_id))[2]

    async def joined_rooms_of(self, user_ids: Iterable[str]) -> dict[str, frozenset[str]]:
        """``joined_rooms`` of many users: those not cached read in one query."""
        out: dict[str, frozenset[str]] = {}
        missing = []
        for user_id in user_ids:
            cached = self._entries.get(user_id)
            if cached is not None and \
                    cached[0] >= self._notifier.membership_position(user_id):
                out[user_id] = cached[2]
            else:
                missing.append(user_id)
        self.cache_stats.hits += len(out)
        if missing:
            self.cache_stats.misses += len(missing)
            at = self._notifier.position
            for user_id, found in (await self._store.memberships_of(missing)).items():
                entry = (at, found, frozenset(r for r, (m, _) in found.items() if m == "join"))
                self._entries[user_id] = entry
                out[user_id] = entry[2]
        return out

    async def share_a_room(self, user_id: str, other_id: str) -> bool:
        if user_id == other_id:
            return True
        return not (await self.joined_rooms(user_id)).isdisjoint(
            await self.joined_rooms(other_id))

    async def _entry(self, user_id: str) -> _Entry:
        cached = self._entries.get(user_id)
        if cached is not None and cached[0] >= self._notifier.membership_position(user_id):
            self.cache_stats.hits += 1
            return cached
        self.cache_stats.misses += 1
        loading = self._loading.get(user_id)
        if loading is not None:
            try:
                shared = await asyncio.shield(loading)
            except asyncio.CancelledError:
                if not loading.cancelled():
                    raise  # we were cancelled, not the load
            except Exception:  # noqa: S110 (the load failed: try again below)
                pass
            else:
                if shared[0] >= self._notifier.membership_position(user_id):
                    return shared
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._loading[user_id] = future
        try:
            at = self._notifier.position
            found = await self._store.memberships(user_id)
            entry = (at, found, frozenset(r for r, (m, _) in found.items() if m == "join"))
            future.set_result(entry)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as e:
            future.set_exception(e)
            future.exception()  # marked retrieved: the waiters handle it
            raise
        finally:
            if self._loading.get(user_id) is future:
                del self._loading[user_id]
        self._entries[user_id] = entry
        return entry
