"""Which rooms a sliding sync connection sees, and in what order: the user's memberships
(from memory), less rooms they left themselves before the connection's position (kicks
and bans stay, as in Synapse), forgotten rooms and invites from ignored users; filtered per
list (``is_dm``, ``is_invite``, ``is_encrypted``, ``room_types``, ``spaces``, ``tags``...);
sorted by bump stamp (the stream position of the room's latest MSC4186 bump event, kept in
memory by ``SlidingSyncCache``); cut to the lists' ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from homeserver.services.notifier import Notifier
from homeserver.services.sliding_sync.cache import SlidingSyncCache
from homeserver.services.sliding_sync.request import Filters, ListConfig
from storage.stores.events import StoredEvent
from storage.stores.sliding_sync import SlidingSyncStore

ENCRYPTION = ("m.room.encryption", "")
CREATE = ("m.room.create", "")


@dataclass(frozen=True, slots=True)
class Membership:
    """The user's membership in a room the connection sees (``event``: its member event,
    loaded only for the rooms a response carries)."""

    room_id: str
    membership: str
    event_id: str
    position: int
    sender: str
    event: StoredEvent | None = None


@dataclass(slots=True)
class RoomLists:
    """The rooms of every list, and the lists' answers."""

    memberships: dict[str, Membership]
    # List key -> its room IDs, in order, within its ranges.
    in_range: dict[str, list[str]] = field(default_factory=dict)
    # List key -> the wire form ({"count", "ops"}).
    lists: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Every room some list holds, in range or not.
    all_rooms: set[str] = field(default_factory=set)
    bump_stamps: dict[str, int] = field(default_factory=dict)
    dm_rooms: frozenset[str] = frozenset()


def visible_memberships(user_id: str, memberships: dict[str, tuple[str, str, int, str]],
                        since: int | None, forgotten: set[str], ignored: frozenset[str]
                        ) -> dict[str, Membership]:
    """The rooms a connection sees (Synapse's ``filter_membership_for_sync``): every
    membership but a leave, unless the leave came after ``since`` (the client gets its own
    leave) or someone else sent it (a kick)."""
    out: dict[str, Membership] = {}
    for room_id, (membership, event_id, position, sender) in memberships.items():
        if room_id in forgotten:
            continue
        if membership == "invite" and sender in ignored:
            continue
        if membership == "leave" and sender == user_id and (since is None
                                                            or position <= since):
            continue
        out[room_id] = Membership(room_id, membership, event_id, position, sender)
    return out


class MembershipIndex:
    """Each user's memberships with their positions and senders, in memory until a member
    event about the user comes."""

    USERS = 10_000

    def __init__(self, store: SlidingSyncStore, notifier: Notifier) -> None:
        self._store = store
        self._notifier = notifier
        self._users: LRUCache[str, tuple[int, dict[str, tuple[str, str, int, str]]]] = \
            LRUCache(self.USERS)
        # User -> (the memberships, since, forgotten, ignored) -> what ``visible`` gave last.
        self._visible: LRUCache[str, tuple[tuple[object, int | None, frozenset[str],
                                                 frozenset[str]], dict[str, Membership]]] = \
            LRUCache(self.USERS)

    def visible(self, user_id: str, memberships: dict[str, tuple[str, str, int, str]],
                since: int | None, forgotten: set[str], ignored: frozenset[str]
                ) -> dict[str, Membership]:
        """``visible_memberships`` of ``memberships`` (as ``of`` gave them), remembered
        while they stay the same; a new dict each time (callers change it)."""
        if since is not None and not any(m[0] == "leave" and m[3] == user_id
                                         for m in memberships.values()):
            since = None  # it only tells which of the user's own leaves to show
        key = (memberships, since, frozenset(forgotten), ignored)
        cached = self._visible.get(user_id)
        if cached is not None and cached[0][0] is memberships and cached[0][1:] == key[1:]:
            return dict(cached[1])
        found = visible_memberships(user_id, memberships, since, forgotten, ignored)
        self._visible[user_id] = (key, found)
        return dict(found)

    async def of(self, user_id: str) -> dict[str, tuple[str, str, int, str]]:
        cached = self._users.get(user_id)
        if cached is not None and not self._notifier.membership_changed_since(user_id,
                                                                              cached[0]):
            return cached[1]
        position = self._notifier.position
        found = await self._store.memberships(user_id)
        self._users[user_id] = (position, found)
        return found


def dm_rooms(direct: dict[str, Any] | None) -> frozenset[str]:
    """The rooms ``m.direct`` account data names."""
    rooms: set[str] = set()
    for value in (direct or {}).values():
        if isinstance(value, list):
            rooms.update(r for r in value if isinstance(r, str))
    return frozenset(rooms)


class ListBuilder:
    """Filters, sorts and cuts the lists of one request."""

    def __init__(self, store: SlidingSyncStore, cache: SlidingSyncCache, user_id: str,
                 up_to: int) -> None:
        self._store = store
        self._cache = cache
        self._user_id = user_id
        self._up_to = up_to

    async def build(self, lists: dict[str, ListConfig], memberships: dict[str, Membership],
                    dms: frozenset[str]) -> RoomLists:
        out = RoomLists(memberships, dm_rooms=dms)
        if not lists:
            return out
        facts = await self._facts(lists, memberships)
        tags = await self._store.room_account_data_of_type(self._user_id, "m.tag") if any(
            c.filters and (c.filters.tags is not None or c.filters.not_tags is not None)
            for c in lists.values()) else {}
        stamps: dict[str, int] | None = None
        for key, config in lists.items():
            rooms = [r for r in memberships if config.filters is None
                     or self._matches(r, memberships[r], config.filters, dms, facts, tags)]
            out.all_rooms.update(rooms)
            entry: dict[str, Any] = {"count": len(rooms), "ops": []}
            out.lists[key] = entry
            if not config.ranges:
                continue
            if stamps is None:
                stamps = await self.stamps(memberships)
                out.bump_stamps = stamps
            ordered = sorted(rooms, key=lambda r: (stamps[r], r), reverse=True)
            in_range: list[str] = []
            for start, end in config.ranges:
                chosen = ordered[start:end + 1] if start <= end else []
                entry["ops"].append({"op": "SYNC", "range": [start, end],
                                     "room_ids": chosen})
                in_range.extend(r for r in chosen if r not in in_range)
            out.in_range[key] = in_range
        return out

    async def stamps(self, memberships: dict[str, Membership]) -> dict[str, int]:
        """Joined rooms' latest bump event position; other rooms' membership position."""
        joined = [r for r, m in memberships.items() if m.membership == "join"]
        stamps = await self._cache.bump_stamps(joined, self._up_to)
        return {r: stamps.get(r) or m.position for r, m in memberships.items()}

    async def _facts(self, lists: dict[str, ListConfig], memberships: dict[str, Membership]
                     ) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
        """Current state the filters need: create and encryption events of every room,
        space children of the spaces filtered on."""
        wanted: set[str] = set()
        spaces: set[str] = set()
        for config in lists.values():
            f = config.filters
            if f is None:
                continue
            if f.is_encrypted is not None:
                wanted.add(ENCRYPTION[0])
            if f.room_types is not None or f.not_room_types is not None:
                wanted.add(CREATE[0])
            if f.spaces is not None:
                spaces.update(s for s in f.spaces if s in memberships
                              and memberships[s].membership == "join")
        facts: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        if wanted:
            facts = await self._store.state_contents(sorted(memberships), sorted(wanted))
        if spaces:
            children = await self._store.state_contents(sorted(spaces), ["m.space.child"])
            for space, state in children.items():
                facts.setdefault(space, {}).update(state)
        return facts

    @staticmethod
    def _matches(room_id: str, membership: Membership, f: Filters, dms: frozenset[str],
                 facts: dict[str, dict[tuple[str, str], dict[str, Any]]],
                 tags: dict[str, dict[str, Any]]) -> bool:
        state = facts.get(room_id, {})
        if f.is_dm is not None and (room_id in dms) != f.is_dm:
            return False
        if f.is_invite is not None and (membership.membership == "invite") != f.is_invite:
            return False
        if f.is_encrypted is not None and (ENCRYPTION in state) != f.is_encrypted:
            return False
        room_type = state.get(CREATE, {}).get("type")
        room_type = room_type if isinstance(room_type, str) else None
        if f.room_types is not None and room_type not in f.room_types:
            return False
        if f.not_room_types is not None and room_type in f.not_room_types:
            return False
        if f.spaces is not None and not any(
                facts.get(space, {}).get(("m.space.child", room_id)) for space in f.spaces):
            return False
        if f.tags is not None or f.not_tags is not None:
            room_tags = tags.get(room_id, {}).get("tags")
            names = set(room_tags) if isinstance(room_tags, dict) else set()
            if f.not_tags is not None and names & set(f.not_tags):
                return False
            if f.tags is not None and not names & set(f.tags):
                return False
        return True
