"""Joining, inviting, leaving, kicking, banning, knocking and forgetting rooms.

Every change is an ``m.room.member`` event through the persister, so the room's authorization
rules decide; this module only shapes the event and answers the cases the rules cannot see
(unknown users and rooms, forgetting).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.errors import BadJson, BadRequest, Forbidden, InvalidParam, MatrixError, NotFound
from core.events.model import Event
from core.rooms.power_levels import PowerLevels
from core.types import parse_user_id
from homeserver.ratelimit import RateLimiter
from homeserver.services.ports import RemoteRooms
from homeserver.services.remote_invites import RemoteInvites
from homeserver.services.rooms import RoomService
from roomserver.api import LocalRooms, NewEvent
from storage.stores.rooms import RoomStore
from storage.stores.state import StateStore
from storage.stores.users import UserStore

JOINED_OR_INVITED = ("join", "invite")
MEMBERSHIPS = ("invite", "join", "knock", "leave", "ban")


class MembershipService:
    def __init__(self, persister: LocalRooms, rooms: RoomService, room_store: RoomStore,
                 state: StateStore, users: UserStore, server_name: str,
                 join_limiter: RateLimiter, invite_limiter: RateLimiter, *,
                 remote: RemoteRooms | None = None) -> None:
        self._persister = persister
        self._rooms = rooms
        self._room_store = room_store
        self._state = state
        self._users = users
        self._server_name = server_name
        self._join_limiter = join_limiter
        self._invite_limiter = invite_limiter
        # Rooms on other servers (None: federation is off).
        self.remote = remote
        self._remote_invites = RemoteInvites(persister, remote) if remote is not None else None

    async def _resolve(self, room_id_or_alias: str) -> tuple[str, list[str]]:
        """The room ID, and servers that may know the room (from a remote alias)."""
        if room_id_or_alias.startswith("#"):
            return await self._rooms.resolve_alias(room_id_or_alias)
        if not room_id_or_alias.startswith("!"):
            raise InvalidParam("Expected a room ID or alias")
        return room_id_or_alias, []

    async def _require_room(self, room_id: str) -> None:
        if await self._persister.room_version(room_id) is None:
            raise NotFound("No known servers for this room" if room_id.startswith("!")
                           else "Unknown room")

    async def _is_resident(self, room_id: str) -> bool:
        """Whether this server is in the room (a user of ours is joined), so it can build
        the room's events itself."""
        return self._server_name in await self._persister.joined_servers(room_id)

    async def _remote_servers(self, room_id: str, user_id: str, given: Sequence[str]
                              ) -> list[str]:
        """Servers to ask about a room we are not in: those given, the server of the
        user's pending invite, servers we last knew in the room, the room ID's server."""
        servers = list(given)
        current = await self._state.membership(room_id, user_id)
        if current is not None:
            event = (await self._persister.get_events([current[1]])).get(current[1])
            if event is not None:
                servers.append(event.sender.split(":", 1)[1])
        servers.extend(sorted(await self._persister.joined_servers(room_id)))
        if ":" in room_id:
            servers.append(room_id.split(":", 1)[1])
        return servers

    async def _require_not_blocked(self, room_id: str) -> None:
        if await self._room_store.blocked_by(room_id) is not None:
            raise Forbidden("This room has been blocked on this server")

    async def _member_event(self, room_id: str, sender: str, target: str, membership: str,
                            reason: str | None, **extra: object) -> Event:
        content = await self._rooms.member_content(target, membership, reason=reason, **extra)
        return await self._persister.send(room_id, NewEvent("m.room.member", sender, content,
                                                            target))

    async def join(self, user_id: str, room_id_or_alias: str, *, reason: str | None = None,
                   servers: Sequence[str] = ()) -> str:
        room_id, alias_servers = await self._resolve(room_id_or_alias)
        await self._require_not_blocked(room_id)
        current = await self._state.membership(room_id, user_id)
        if current is not None and current[0] == "join":
            return room_id
        if self.remote is not None and not await self._is_resident(room_id):
            self._join_limiter.check(user_id)
            content = await self._rooms.member_content(user_id, "join", reason=reason)
            await self.remote.join(user_id, room_id, await self._remote_servers(
                room_id, user_id, [*servers, *alias_servers]), content)
            await self._room_store.unforget(user_id, room_id)
            return room_id
        await self._require_room(room_id)
        self._join_limiter.check(user_id)
        extra: dict[str, object] = {}
        authoriser = await self._restricted_join_authoriser(room_id, user_id, current)
        if authoriser is not None:
            extra["join_authorised_via_users_server"] = authoriser
        await self._member_event(room_id, user_id, user_id, "join", reason, **extra)
        await self._room_store.unforget(user_id, room_id)
        return room_id

    async def restricted_join_authoriser(self, room_id: str, user_id: str) -> str | None:
        """A local member who vouches for ``user_id`` joining a restricted room, if the
        user needs one and may join through another room (None otherwise)."""
        return await self._restricted_join_authoriser(
            room_id, user_id, await self._state.membership(room_id, user_id))

    async def _restricted_join_authoriser(self, room_id: str, user_id: str,
                                          current: tuple[str, str] | None) -> str | None:
        """For a restricted room the user may join through another room's membership: a
        local member with the power to invite vouches for the join."""
        if current is not None and current[0] == "invite":
            return None
        state = await self._persister.current_state(room_id) or {}
        join_rules_id = state.get(("m.room.join_rules", ""))
        if join_rules_id is None:
            return None
        events = await self._persister.get_events([join_rules_id])
        join_rules = events[join_rules_id].content if join_rules_id in events else {}
        if join_rules.get("join_rule") not in ("restricted", "knock_restricted"):
            return None
        allowed = False
        for entry in join_rules.get("allow") or []:
            if isinstance(entry, dict) and entry.get("type") == "m.room_membership":
                other = await self._state.membership(str(entry.get("room_id")), user_id)
                if other is not None and other[0] == "join":
                    allowed = True
                    break
        if not allowed:
            return None
        create = state.get(("m.room.create", ""))
        power = state.get(("m.room.power_levels", ""))
        loaded = await self._persister.get_events([e for e in (create, power) if e])
        if create not in loaded:
            return None
        levels = PowerLevels.from_events(loaded[create], loaded.get(power) if power else None)
        members = [m.state_key for m in await self._state.current_state(
            room_id, types=["m.room.member"]) if m.membership == "join"]
        local = [m for m in members if m.endswith(f":{self._server_name}")]
        local.sort(key=lambda m: -levels.user_level(m))
        for member in local:
            if levels.user_level(member) >= levels.invite_level:
                return member
        return None

    async def invite(self, inviter: str, room_id: str, target: str, *,
                     reason: str | None = None, is_direct: bool = False) -> str:
        """Invite ``target``; returns the invite's event ID (the pending one if the user is
        invited already)."""
        try:
            server = parse_user_id(target).server_name
        except ValueError:
            raise InvalidParam("Invalid user ID") from None
        await self._require_not_blocked(room_id)
        await self._require_room(room_id)
        if server == self._server_name:
            user = await self._users.get_user(target)
            if user is None or user.deactivated:
                raise NotFound("Unknown user")
        elif self.remote is None:
            raise BadRequest("Federation is disabled on this server")
        current = await self._state.membership(room_id, target)
        if current is not None and current[0] == "invite":
            return current[1]  # already invited: nothing new
        self._invite_limiter.check(inviter)
        if server == self._server_name:
            return (await self._member_event(room_id, inviter, target, "invite", reason,
                                             is_direct=True if is_direct else None)).event_id
        assert self._remote_invites is not None
        content = await self._rooms.member_content(target, "invite", reason=reason,
                                                    is_direct=True if is_direct else None)
        return await self._remote_invites.invite(room_id, inviter, target, content)

    async def leave(self, user_id: str, room_id: str, *, reason: str | None = None) -> None:
        await self._require_room(room_id)
        current = await self._state.membership(room_id, user_id)
        if current is None or current[0] in ("leave", "ban"):
            if current is not None and current[0] == "leave":
                return
            raise Forbidden("You are not in this room")
        if self.remote is not None and current[0] in ("invite", "knock") and \
                not await self._is_resident(room_id):
            # Rejecting an invite (or taking back a knock) to a room we are not in.
            content = await self._rooms.member_content(user_id, "leave", reason=reason)
            await self.remote.leave(user_id, room_id,
                                    await self._remote_servers(room_id, user_id, []), content)
            return
        await self._member_event(room_id, user_id, user_id, "leave", reason)

    async def kick(self, sender: str, room_id: str, target: str, *, reason: str | None = None
                   ) -> str:
        await self._require_room(room_id)
        current = await self._state.membership(room_id, target)
        if current is None or current[0] not in ("join", "invite", "knock"):
            raise Forbidden("The user is not in the room")
        return (await self._member_event(room_id, sender, target, "leave", reason)).event_id

    async def ban(self, sender: str, room_id: str, target: str, *, reason: str | None = None
                  ) -> str:
        try:
            parse_user_id(target)
        except ValueError:
            raise InvalidParam("Invalid user ID") from None
        await self._require_room(room_id)
        return (await self._member_event(room_id, sender, target, "ban", reason)).event_id

    async def unban(self, sender: str, room_id: str, target: str, *, reason: str | None = None
                    ) -> str:
        await self._require_room(room_id)
        current = await self._state.membership(room_id, target)
        if current is None or current[0] != "ban":
            raise Forbidden("The user is not banned")
        return (await self._member_event(room_id, sender, target, "leave", reason)).event_id

    async def set_member_state(self, sender: str, room_id: str, target: str,
                               content: Mapping[str, Any]) -> str:
        """PUT /rooms/{roomId}/state/m.room.member/{userId}; returns the event ID.

        As Synapse answers it: one's own member event goes in as given (a new display name,
        say); another user's membership changes only as the membership endpoints change it
        (an invite, a kick — or an unban when the user is banned — for ``leave``, a ban), with
        the same checks, so without the power to do so it is ``403 M_FORBIDDEN``. Nobody
        joins or knocks on someone else's behalf (403 too).
        """
        membership = content.get("membership")
        if membership not in MEMBERSHIPS:
            raise BadJson(f"'membership' must be one of {', '.join(MEMBERSHIPS)}")
        if target == sender:
            return await self._rooms.set_state(room_id, NewEvent("m.room.member", sender,
                                                                 content, target))
        try:
            parse_user_id(target)
        except ValueError:
            raise InvalidParam("Invalid user ID") from None
        raw_reason = content.get("reason")
        reason = raw_reason if isinstance(raw_reason, str) else None
        if membership == "invite":
            return await self.invite(sender, room_id, target, reason=reason,
                                     is_direct=content.get("is_direct") is True)
        if membership == "ban":
            return await self.ban(sender, room_id, target, reason=reason)
        if membership == "leave":
            current = await self._state.membership(room_id, target)
            if current is not None and current[0] == "ban":
                return await self.unban(sender, room_id, target, reason=reason)
            return await self.kick(sender, room_id, target, reason=reason)
        raise Forbidden(f"You cannot {membership} on behalf of another user")

    async def knock(self, user_id: str, room_id_or_alias: str, *, reason: str | None = None,
                    servers: Sequence[str] = ()) -> str:
        room_id, alias_servers = await self._resolve(room_id_or_alias)
        await self._require_not_blocked(room_id)
        if self.remote is not None and not await self._is_resident(room_id):
            self._join_limiter.check(user_id)
            content = await self._rooms.member_content(user_id, "knock", reason=reason)
            await self.remote.knock(user_id, room_id, await self._remote_servers(
                room_id, user_id, [*servers, *alias_servers]), content)
            return room_id
        await self._require_room(room_id)
        self._join_limiter.check(user_id)
        await self._member_event(room_id, user_id, user_id, "knock", reason)
        return room_id

    async def forget(self, user_id: str, room_id: str) -> None:
        current = await self._state.membership(room_id, user_id)
        if current is None:
            raise NotFound("You have never been in this room")
        if current[0] in JOINED_OR_INVITED:
            raise MatrixError("You must leave the room before forgetting it", status=400)
        await self._room_store.forget(user_id, room_id)

    async def propagate_profile(self, user_id: str) -> None:
        """After a profile change: a new join event with the new name and avatar in every
        room the user is in, as Synapse does, so members see it."""
        for room_id in await self._state.rooms_for_user(user_id, ("join",)):
            content = await self._rooms.member_content(user_id, "join")
            try:
                await self._persister.send(room_id, NewEvent("m.room.member", user_id,
                                                             content, user_id))
            except MatrixError:
                continue  # e.g. the room forbids it now; the profile itself has changed

    async def joined_rooms(self, user_id: str) -> list[str]:
        return await self._state.rooms_for_user(user_id, ("join",))
