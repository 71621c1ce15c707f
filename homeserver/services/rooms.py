"""Creating rooms, sending events into them, and their aliases and directory entries."""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import BadJson, BadRequest, Forbidden, InvalidParam, MatrixError, NotFound
from core.events.model import Event
from core.events.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS, RoomVersion
from core.rooms.power_levels import PowerLevels
from core.types import is_valid_server_name, parse_user_id
from homeserver.ratelimit import RateLimiter
from homeserver.services.ports import RemoteRooms
from homeserver.services.profile import ProfileService
from homeserver.services.remote_invites import RemoteInvites
from homeserver.services.serialize import REDACT_TXN_SCOPE
from roomserver.api import LocalRooms, NewEvent
from storage.stores.rooms import RoomStore

logger = logging.getLogger(__name__)

# Presets as Synapse applies them (createRoom `preset`).
PRESETS: dict[str, dict[str, Any]] = {
    "private_chat": {"join_rule": "invite", "history_visibility": "shared",
                     "guest_access": "can_join", "invitees_are_admins": False,
                     "power_overrides": {"invite": 0}},
    "trusted_private_chat": {"join_rule": "invite", "history_visibility": "shared",
                             "guest_access": "can_join", "invitees_are_admins": True,
                             "power_overrides": {"invite": 0}},
    "public_chat": {"join_rule": "public", "history_visibility": "shared",
                    "guest_access": None, "invitees_are_admins": False,
                    "power_overrides": {}},
}


@dataclass(frozen=True, slots=True)
class CreateRoomRequest:
    creator: str
    preset: str | None = None
    visibility: str = "private"
    room_version: str | None = None
    name: str | None = None
    topic: str | None = None
    room_alias_name: str | None = None
    invite: Sequence[str] = field(default_factory=list)
    is_direct: bool = False
    creation_content: Mapping[str, Any] = field(default_factory=dict)
    initial_state: Sequence[Mapping[str, Any]] = field(default_factory=list)
    power_level_content_override: Mapping[str, Any] | None = None


def default_power_levels(creator: str, privileged_creators: bool) -> dict[str, Any]:
    return {
        "users": {} if privileged_creators else {creator: 100},
        "users_default": 0,
        "events": {
            "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
            "m.room.server_acl": 100, "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 50,
        "historical": 100,
        "notifications": {"room": 50},
    }


class RoomService:
    def __init__(self, persister: LocalRooms, rooms: RoomStore, profiles: ProfileService,
                 server_name: str, message_limiter: RateLimiter, *,
                 default_room_version: RoomVersion = DEFAULT_ROOM_VERSION,
                 remote: RemoteRooms | None = None) -> None:
        self._persister = persister
        self._rooms = rooms
        self._profiles = profiles
        self._server_name = server_name
        self._message_limiter = message_limiter
        # Rooms created without a room_version get this one (config default_room_version).
        self.default_room_version = default_room_version
        # Rooms on other servers (None: federation is off), and inviting their users.
        self.remote = remote
        self._remote_invites = RemoteInvites(persister, remote) if remote is not None else None

    async def member_content(self, user_id: str, membership: str, **extra: Any
                             ) -> dict[str, Any]:
        """A member event's content, with the user's display name and avatar when local."""
        content: dict[str, Any] = {"membership": membership}
        try:
            if parse_user_id(user_id).server_name == self._server_name:
                profile = await self._profiles.get_profile(user_id)
                if profile.displayname is not None:
                    content["displayname"] = profile.displayname
                if profile.avatar_url is not None:
                    content["avatar_url"] = profile.avatar_url
        except (ValueError, NotFound):
            pass
        content.update({k: v for k, v in extra.items() if v is not None})
        return content

    async def create_room(self, req: CreateRoomRequest) -> tuple[str, str | None]:
        """POST /createRoom; returns ``(room_id, room_alias)``."""
        version_id = req.room_version or self.default_room_version.identifier
        version = KNOWN_ROOM_VERSIONS.get(version_id)
        if version is None:
            raise MatrixError(f"Your homeserver does not support room version {version_id}",
                              status=400, errcode="M_UNSUPPORTED_ROOM_VERSION")
        preset_name = req.preset or ("public_chat" if req.visibility == "public"
                                     else "private_chat")
        preset = PRESETS.get(preset_name)
        if preset is None:
            raise InvalidParam(f"Unknown preset {preset_name!r}")
        if req.visibility not in ("public", "private"):
            raise InvalidParam("visibility must be public or private")
        invitees = []
        for user_id in req.invite:
            try:
                parse_user_id(user_id)
            except ValueError:
                raise InvalidParam(f"Invalid user ID in invite: {user_id!r}") from None
            invitees.append(user_id)
        alias = None
        if req.room_alias_name is not None:
            if not req.room_alias_name or ":" in req.room_alias_name or any(
                    c.isspace() for c in req.room_alias_name):
                raise InvalidParam("Invalid characters in room alias")
            alias = f"#{req.room_alias_name}:{self._server_name}"
            if await self._rooms.get_alias(alias) is not None:
                raise MatrixError("Room alias already taken", status=400,
                                  errcode="M_ROOM_IN_USE")
        creation_content = dict(req.creation_content)
        creation_content.pop("room_version", None)
        if version.privileged_creators:
            extra_creators = creation_content.get("additional_creators", [])
            if not isinstance(extra_creators, list) or not all(
                    isinstance(u, str) for u in extra_creators):
                raise BadJson("additional_creators must be a list of user IDs")
            if preset["invitees_are_admins"] and invitees:
                # The spec (v1.16): trusted_private_chat's invitees join additional_creators.
                creation_content["additional_creators"] = list(dict.fromkeys(
                    u for u in [*extra_creators, *invitees] if u != req.creator))
        else:
            creation_content.pop("additional_creators", None)

        for item in req.initial_state:
            if not isinstance(item.get("type"), str) or not isinstance(item.get("content"),
                                                                         dict):
                raise BadJson("initial_state entries need a type and a content object")
        creators = {req.creator}
        if version.privileged_creators:
            creators |= set(creation_content.get("additional_creators", []))

        news: list[NewEvent] = [NewEvent("m.room.member", req.creator,
                                         await self.member_content(req.creator, "join"),
                                         req.creator)]
        power = default_power_levels(req.creator, version.privileged_creators)
        power.update(preset["power_overrides"])
        if preset["invitees_are_admins"]:
            for user_id in invitees:
                if user_id not in creators:
                    power["users"][user_id] = 100
        if req.power_level_content_override:
            power.update(dict(req.power_level_content_override))
        news.append(NewEvent("m.room.power_levels", req.creator, power, ""))
        if alias is not None:
            news.append(NewEvent("m.room.canonical_alias", req.creator, {"alias": alias}, ""))
        preset_state: dict[tuple[str, str], Mapping[str, Any]] = {
            ("m.room.join_rules", ""): {"join_rule": preset["join_rule"]},
            ("m.room.history_visibility", ""): {
                "history_visibility": preset["history_visibility"]},
        }
        if preset["guest_access"]:
            preset_state[("m.room.guest_access", "")] = {"guest_access": preset["guest_access"]}
        for item in req.initial_state:
            key = (str(item.get("type")), str(item.get("state_key", "")))
            preset_state.pop(key, None)
        news += [NewEvent(t, req.creator, c, k) for (t, k), c in preset_state.items()]
        for item in req.initial_state:
            news.append(NewEvent(item["type"], req.creator, item["content"],
                                 str(item.get("state_key", ""))))
        if req.name is not None:
            news.append(NewEvent("m.room.name", req.creator, {"name": req.name}, ""))
        if req.topic is not None:
            news.append(NewEvent("m.room.topic", req.creator, {
                "topic": req.topic,
                "m.topic": {"m.text": [{"mimetype": "text/plain", "body": req.topic}]}}, ""))
        remote_invitees = [u for u in invitees if not u.endswith(":" + self._server_name)]
        if remote_invitees and self._remote_invites is None:
            raise BadRequest("Federation is disabled on this server")
        for user_id in invitees:
            if user_id in remote_invitees:
                continue
            extra = {"is_direct": True} if req.is_direct else {}
            news.append(NewEvent("m.room.member", req.creator,
                                 await self.member_content(user_id, "invite", **extra), user_id))

        # Before v12 the room ID is ours to choose: random, on this server.
        chosen_id = None if version.room_id_is_create_event_hash else "!" + "".join(
            secrets.choice(string.ascii_letters) for _ in range(18)) + f":{self._server_name}"
        # All or nothing: an initial event that fails leaves no room behind.
        create = await self._persister.create_room(version, req.creator, creation_content,
                                                   room_id=chosen_id, initial=news)
        room_id = create.room_id
        for user_id in remote_invitees:
            assert self._remote_invites is not None
            extra = {"is_direct": True} if req.is_direct else {}
            await self._remote_invites.invite(room_id, req.creator, user_id,
                                              await self.member_content(user_id, "invite",
                                                                        **extra))
        if alias is not None:
            await self._rooms.create_alias(alias, room_id, req.creator)
        if req.visibility == "public":
            await self._rooms.set_public(room_id, True)
        logger.info("%s created room %s (v%s)", req.creator, room_id, version.identifier)
        return room_id, alias

    async def send_message(self, room_id: str, new: NewEvent) -> Event:
        """PUT /send: a message event (idempotent per device and transaction ID)."""
        if new.type == "m.room.redaction":
            raise MatrixError("Use /redact to redact events", status=400,
                              errcode="M_BAD_JSON")
        if await self._persister.room_version(room_id) is None:
            raise Forbidden("Unknown room")  # as Synapse: 403, the sender is not in it
        self._message_limiter.check(new.sender)
        return await self._persister.send(room_id, new)

    async def set_state(self, room_id: str, new: NewEvent) -> str:
        """PUT /state: a state event; setting what is already there creates nothing new."""
        if new.type == "m.room.member" and new.state_key != new.sender:
            # Others' membership goes through ``MembershipService.set_member_state``.
            raise Forbidden("Use the membership endpoints to change others' membership")
        if new.type in ("m.room.create", "m.room.redaction"):
            raise Forbidden(f"Cannot send {new.type} as state")
        state = await self._persister.current_state(room_id)
        if state is None:
            raise Forbidden("Unknown room")  # as Synapse: 403, the sender is not in it
        existing_id = state.get((new.type, new.state_key or ""))
        if existing_id is not None:
            existing = (await self._persister.get_events([existing_id])).get(existing_id)
            if existing is not None and existing.sender == new.sender and \
                    dict(existing.content) == dict(new.content):
                return existing_id
        self._message_limiter.check(new.sender)
        return (await self._persister.send(room_id, new)).event_id

    async def redact(self, room_id: str, event_id: str, sender: str, content: dict[str, Any],
                     *, device_id: str, txn_id: str, is_admin: bool = False) -> Event:
        """PUT /redact: allowed for the event's sender and for those with the redact level."""
        target = (await self._persister.get_events([event_id])).get(event_id)
        if target is None or target.room_id != room_id:
            raise NotFound("Event not found")
        if target.sender != sender:
            state = await self._persister.current_state(room_id) or {}
            create_id = state.get(("m.room.create", ""))
            power_id = state.get(("m.room.power_levels", ""))
            loaded = await self._persister.get_events([e for e in (create_id, power_id) if e])
            if create_id not in loaded:
                raise NotFound("Unknown room")
            levels = PowerLevels.from_events(loaded[create_id],
                                             loaded.get(power_id) if power_id else None)
            if levels.user_level(sender) < levels.redact_level:
                raise Forbidden("You don't have permission to redact this event")
        self._message_limiter.check(sender)
        return await self._persister.send(room_id, NewEvent(
            "m.room.redaction", sender, content, redacts=event_id, device_id=device_id,
            txn_id=REDACT_TXN_SCOPE + txn_id))

    # -- aliases ----------------------------------------------------------------------------

    def check_alias(self, alias: str) -> str:
        if not alias.startswith("#") or ":" not in alias:
            raise InvalidParam("Room alias must look like #name:server")
        server = alias.split(":", 1)[1]
        if not is_valid_server_name(server):
            raise InvalidParam("Invalid server name in room alias")
        return server

    async def resolve_alias(self, alias: str) -> tuple[str, list[str]]:
        """The room an alias names, and servers in it (asking the alias's server for a
        remote alias)."""
        server = self.check_alias(alias)
        if server != self._server_name:
            if self.remote is None:
                raise NotFound("Room alias not found (federation is disabled)")
            return await self.remote.query_alias(alias)
        found = await self._rooms.get_alias(alias)
        if found is None:
            raise NotFound(f"Room alias {alias} not found")
        others = sorted(await self._persister.joined_servers(found[0]) - {self._server_name})
        return found[0], [self._server_name, *others]

    async def create_alias(self, alias: str, room_id: str, creator: str) -> None:
        if self.check_alias(alias) != self._server_name:
            raise InvalidParam("Room alias must be on this server")
        if await self._persister.room_version(room_id) is None:
            raise NotFound("Unknown room")
        if not await self._rooms.create_alias(alias, room_id, creator):
            raise MatrixError(f"Room alias {alias} already exists", status=409,
                              errcode="M_UNKNOWN")

    async def delete_alias(self, alias: str, requester: str, is_admin: bool) -> None:
        if self.check_alias(alias) != self._server_name:
            raise InvalidParam("Room alias must be on this server")
        found = await self._rooms.get_alias(alias)
        if found is None:
            raise NotFound(f"Room alias {alias} not found")
        if found[1] != requester and not is_admin:
            raise Forbidden("You may only delete aliases you created")
        await self._rooms.delete_alias(alias)

    async def aliases(self, room_id: str) -> list[str]:
        return await self._rooms.aliases_for_room(room_id)
