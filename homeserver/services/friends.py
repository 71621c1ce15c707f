"""Friends (DESIGN.md "Extension: friends").

A friendship is a direct-message room whose create event carries who it is between
(``org.ktchat.friendship``: ``{"users": [requester, recipient]}``), listed in both users'
``m.direct``. Everything else is read from the room's membership, so it travels over
federation unchanged and both sides always agree: both joined — friends; one joined, the other
invited — a request; anyone gone — over. The bookkeeping here only finds those rooms and keeps
``m.direct`` in step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

from core.errors import InvalidParam, NotFound
from core.types import parse_user_id
from homeserver.services.account_data import AccountDataService
from homeserver.services.member_cache import MembershipCache
from homeserver.services.membership import MembershipService
from homeserver.services.presence import PresenceService
from homeserver.services.profile import ProfileService
from homeserver.services.rooms import CreateRoomRequest, RoomService
from storage.stores.events import EventStore
from storage.stores.state import StateStore
from storage.stores.sync import SyncStore

FRIENDSHIP_KEY = "org.ktchat.friendship"
FRIENDS, OUTGOING, INCOMING = "friends", "outgoing", "incoming"


@dataclass(frozen=True, slots=True)
class Relation:
    peer: str
    room_id: str
    status: str  # friends, outgoing, incoming
    stream_ordering: int  # of my member event: the newest relation with a peer wins


class FriendsService:
    ROOM_CACHE = 50_000

    def __init__(self, rooms: RoomService, membership: MembershipService,
                 members: MembershipCache, state: StateStore, events: EventStore,
                 account_data: AccountDataService, profiles: ProfileService,
                 presence: PresenceService, sync: SyncStore, server_name: str) -> None:
        self._rooms = rooms
        self._sync = sync
        self._membership = membership
        self._members = members
        self._state = state
        self._events = events
        self._account_data = account_data
        self._profiles = profiles
        self._presence = presence
        self._server_name = server_name
        # Room -> the two users of a friendship room, or None for any other room. A create
        # event never changes, so neither does this.
        self._pairs: LRUCache[str, tuple[str, str] | None] = LRUCache(self.ROOM_CACHE)
        self._direct_locks: dict[str, asyncio.Lock] = {}

    # -- reading ----------------------------------------------------------------------------

    async def relations(self, user_id: str) -> dict[str, Relation]:
        """Peer -> the user's live relation with them (newest room wins)."""
        out: dict[str, Relation] = {}
        memberships = await self._members.memberships(user_id)
        mine = {r: e for r, (m, e) in memberships.items() if m in ("join", "invite")}
        peers: dict[str, str] = {}
        for room_id in mine:
            pair = await self._pair(room_id, mine[room_id])
            if pair is not None and user_id in pair:
                peers[room_id] = pair[1] if pair[0] == user_id else pair[0]
        events = await self._events.get_events(mine[r] for r in peers)
        # The peers' memberships as this server's copy of each room has them (a remote
        # peer's too), in one query.
        their = await self._state.memberships_of(list(peers.items()))
        for room_id, peer in peers.items():
            event_id = mine[room_id]
            theirs = their.get((room_id, peer))
            my_membership = memberships[room_id][0]
            if my_membership == "join" and theirs and theirs[0] == "join":
                status = FRIENDS
            elif my_membership == "join" and theirs and theirs[0] == "invite":
                status = OUTGOING
            elif my_membership == "invite" and theirs and theirs[0] == "join":
                status = INCOMING
            elif my_membership == "invite" and theirs is None and events.get(event_id) \
                    and events[event_id].pdu.get("sender") == peer:
                status = INCOMING  # an invite to a room on the peer's server
            else:
                continue
            event = events.get(event_id)
            relation = Relation(peer, room_id, status,
                                event.stream_ordering or 0 if event else 0)
            current = out.get(peer)
            if current is None or _rank(relation) > _rank(current):
                out[peer] = relation
        return out

    async def friends(self, user_id: str) -> list[dict[str, Any]]:
        """GET /friends"""
        out = []
        for relation in (await self.relations(user_id)).values():
            if relation.status != FRIENDS:
                continue
            entry: dict[str, Any] = {"user_id": relation.peer, "room_id": relation.room_id}
            entry.update(await self._profile_in_room(relation.room_id, relation.peer))
            entry.update(self._presence.content(relation.peer))
            out.append(entry)
        return sorted(out, key=lambda e: e["user_id"])

    async def requests(self, user_id: str) -> dict[str, list[dict[str, str]]]:
        """GET /requests"""
        relations = sorted((await self.relations(user_id)).values(), key=lambda r: r.peer)
        return {kind: [{"user_id": r.peer, "room_id": r.room_id} for r in relations
                       if r.status == kind] for kind in (INCOMING, OUTGOING)}

    # -- changing ---------------------------------------------------------------------------

    async def request(self, user_id: str, target: str) -> str:
        """POST /requests: a friend request (an invite to a new DM room); repeating it, or
        requesting someone who already asked you, answers with the existing room."""
        try:
            server = parse_user_id(target).server_name
        except ValueError:
            raise InvalidParam("Invalid user ID") from None
        if target == user_id:
            raise InvalidParam("You cannot befriend yourself")
        if server == self._server_name:
            await self._profiles.get_profile(target)  # 404 for an unknown user
        existing = (await self.relations(user_id)).get(target)
        if existing is not None and existing.status == INCOMING:
            return await self.accept(user_id, target)
        if existing is not None:
            return existing.room_id
        room_id, _ = await self._rooms.create_room(CreateRoomRequest(
            creator=user_id, preset="trusted_private_chat", invite=[target], is_direct=True,
            creation_content={FRIENDSHIP_KEY: {"users": [user_id, target]}}))
        await self._set_direct(user_id, target, room_id, present=True)
        return room_id

    async def accept(self, user_id: str, requester: str) -> str:
        """POST /requests/{userId}/accept"""
        relation = (await self.relations(user_id)).get(requester)
        if relation is None or relation.status == OUTGOING:
            raise NotFound("No friend request from that user")
        if relation.status == INCOMING:
            await self._membership.join(user_id, relation.room_id)
        await self._set_direct(user_id, requester, relation.room_id, present=True)
        return relation.room_id

    async def reject(self, user_id: str, requester: str) -> None:
        """POST /requests/{userId}/reject"""
        relation = (await self.relations(user_id)).get(requester)
        if relation is None or relation.status != INCOMING:
            raise NotFound("No friend request from that user")
        await self._membership.leave(user_id, relation.room_id)

    async def remove(self, user_id: str, friend: str) -> None:
        """DELETE /friends/{userId}: both leave the room (a remote friend's server sees us
        go) and it leaves both ``m.direct`` lists."""
        relation = (await self.relations(user_id)).get(friend)
        if relation is None or relation.status != FRIENDS:
            raise NotFound("That user is not your friend")
        await self._membership.leave(user_id, relation.room_id)
        await self._set_direct(user_id, friend, relation.room_id, present=False)
        if self._is_local(friend):
            await self._membership.leave(friend, relation.room_id)
            await self._set_direct(friend, user_id, relation.room_id, present=False)

    # -- helpers ----------------------------------------------------------------------------

    def _is_local(self, user_id: str) -> bool:
        return user_id.endswith(":" + self._server_name)

    async def _pair(self, room_id: str, member_event_id: str) -> tuple[str, str] | None:
        """The two users of a friendship room, from its create event: the one here, or for
        an invite to a room on another server the stripped one the invite came with."""
        if room_id in self._pairs:
            return self._pairs[room_id]
        state = await self._state.current_state(room_id, types=["m.room.create"])
        if state:
            create = await self._events.get_event(state[0].event_id)
            pair = _friendship(create.pdu if create is not None else {})
            self._pairs[room_id] = pair
            return pair
        invite_state = await self._sync.invite_state(member_event_id) or []
        create_pdu = next((e for e in invite_state if isinstance(e, dict)
                           and e.get("type") == "m.room.create"), None)
        return _friendship(create_pdu) if create_pdu is not None else None  # not remembered

    async def _profile_in_room(self, room_id: str, user_id: str) -> dict[str, Any]:
        member = await self._state.membership(room_id, user_id)
        event = await self._events.get_event(member[1]) if member else None
        content = (event.pdu.get("content") or {}) if event else {}
        return {k: content[k] for k in ("displayname", "avatar_url")
                if isinstance(content.get(k), str)}

    async def _set_direct(self, user_id: str, peer: str, room_id: str, *, present: bool
                          ) -> None:
        lock = self._direct_locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            try:
                direct = await self._account_data.get(user_id, None, "m.direct")
            except NotFound:
                direct = {}
            rooms = [r for r in direct.get(peer, []) if isinstance(r, str) and r != room_id]
            if present:
                rooms.append(room_id)
            updated = {k: v for k, v in direct.items() if k != peer}
            if rooms:
                updated[peer] = rooms
            if updated != direct:
                await self._account_data.set(user_id, None, "m.direct", updated)
        if not lock.locked():
            self._direct_locks.pop(user_id, None)


def _rank(relation: Relation) -> tuple[int, int]:
    return (relation.status == FRIENDS, relation.stream_ordering)


def _friendship(create: Mapping[str, Any]) -> tuple[str, str] | None:
    """(requester, requested) from a friendship room's create event, else None."""
    content = create.get("content")
    marker = content.get(FRIENDSHIP_KEY) if isinstance(content, Mapping) else None
    users = marker.get("users") if isinstance(marker, Mapping) else None
    if isinstance(users, list) and len(users) == 2 and all(isinstance(u, str) for u in users) \
            and users[0] != users[1] and create.get("sender") == users[0]:
        return (users[0], users[1])
    return None
