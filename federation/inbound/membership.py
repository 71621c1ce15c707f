"""Membership handshakes, from the resident side (we hold the room), and invites of our
users (https://spec.matrix.org/v1.19/server-server-api/#joining-rooms, #leaving-rooms,
#knocking-upon-a-room, #inviting-to-a-room).

``make_*`` answers a template for the remote user's member event, built on the room's current
state and checked against it; ``send_*`` takes the signed event through the checks every
received event passes, stores it, and sends it on to the other servers in the room.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from signedjson.types import SigningKey

from core.clock import Clock
from core.errors import BadJson, Forbidden, InvalidParam, MatrixError, NotFound
from core.events.builder import event_from_pdu
from core.events.model import Event
from core.events.room_versions import KNOWN_ROOM_VERSIONS
from core.events.signing import sign_event
from core.events.stripped import STRIPPED_STATE_TYPES
from core.rooms.auth import AuthError, auth_types_for_event
from core.types import InvalidIdentifier, parse_user_id
from federation.inbound.pdus import MAX_PDU_NESTING, InvalidPdu, PduHandler
from homeserver.http.json import nesting_exceeds
from homeserver.services.membership import MembershipService
from roomserver.api import MAX_DEPTH, MAX_PREV_EVENTS, FederatedRooms
from storage.stores.rooms import RoomStore
from storage.stores.users import UserStore

logger = logging.getLogger(__name__)

def _server_of(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


class ResidentMembership:
    def __init__(self, rooms: FederatedRooms, membership: MembershipService,
                 users: UserStore, room_store: RoomStore, clock: Clock, pdus: PduHandler,
                 server_name: str, signing_key: SigningKey) -> None:
        self._persister = rooms
        self._membership = membership
        self._users = users
        self._room_store = room_store
        self._clock = clock
        self._pdus = pdus
        self._server_name = server_name
        self._signing_key = signing_key

    async def _resident_head(self, room_id: str, origin: str) -> Any:
        head = await self._persister.room_head(room_id)
        if head is None or ("m.room.create", "") not in head.state or \
                self._server_name not in head.servers():
            raise NotFound("This server is not in that room")
        if not await self._persister.server_allowed(room_id, origin):
            raise Forbidden("Server is banned from this room")
        return head

    async def make(self, membership: str, origin: str, room_id: str, user_id: str,
                   versions: Sequence[str] | None) -> dict[str, Any]:
        """GET /make_join, /make_leave, /make_knock."""
        try:
            parse_user_id(user_id)  # the grammar and 255 bytes, as a client's
        except InvalidIdentifier:
            raise InvalidParam("Invalid user ID") from None
        if _server_of(user_id) != origin:
            raise Forbidden("The user is not on the requesting server")
        if await self._room_store.blocked_by(room_id) is not None:
            raise Forbidden("This room is blocked on this server")
        head = await self._resident_head(room_id, origin)
        version = head.room_version
        if versions is not None and version.identifier not in versions:
            raise MatrixError("Your server does not support this room's version",
                              status=400, errcode="M_INCOMPATIBLE_ROOM_VERSION",
                              room_version=version.identifier)
        content: dict[str, Any] = {"membership": membership}
        if membership == "join":
            authoriser = await self._membership.restricted_join_authoriser(
                room_id, user_id)
            if authoriser is not None:
                content["join_authorised_via_users_server"] = authoriser
        auth_ids = [head.state[k] for k in auth_types_for_event(
            version, "m.room.member", user_id, user_id, content) if k in head.state]
        template = {
            "type": "m.room.member", "room_id": room_id, "sender": user_id,
            "state_key": user_id, "content": content,
            "prev_events": head.extremities[-MAX_PREV_EVENTS:], "auth_events": auth_ids,
            "depth": min(head.depth + 1, MAX_DEPTH),
            "origin_server_ts": self._clock.time_ms(),
            "origin": self._server_name,
        }
        try:
            await self._persister.check_against_current(event_from_pdu(template, version))
        except AuthError as e:
            raise Forbidden(f"You may not {membership} this room: {e}") from None
        return {"room_version": version.identifier, "event": template}

    async def send(self, membership: str, origin: str, room_id: str, event_id: str,
                   pdu: Mapping[str, Any]) -> tuple[Event, list[Event]]:
        """PUT /send_join, /send_leave, /send_knock: store the event; returns it and the
        room's state before it."""
        head = await self._resident_head(room_id, origin)
        try:
            event = await self._pdus.check_pdu(pdu, head.room_version)
        except InvalidPdu as e:
            raise BadJson(f"Invalid event: {e}") from None
        if event.event_id != event_id or event.room_id != room_id:
            raise BadJson("The event is not the one in the path")
        if event.type != "m.room.member" or event.membership != membership or \
                event.state_key != event.sender or _server_of(event.sender) != origin:
            raise BadJson(f"Not a {membership} of a user of the requesting server")
        if membership == "join" and "join_authorised_via_users_server" in event.content:
            # A restricted join: we vouch for it by signing it too.
            event = type(event)(event.event_id, event.room_version, sign_event(
                dict(event.pdu), event.room_version, self._server_name,
                self._signing_key))
        try:
            outcome = await self._pdus.receive(origin, event, relay=True)
        except AuthError as e:
            raise Forbidden(f"The event is not allowed: {e}") from None
        if outcome == "soft_failed":
            raise Forbidden("The event is not allowed by the room's current state")
        state_ids = (await self._persister.state_before([event.event_id])) \
            .get(event.event_id, {})
        state = await self._persister.get_events(list(state_ids.values()))
        return event, list(state.values())

    async def send_join(self, origin: str, room_id: str, event_id: str,
                        pdu: Mapping[str, Any]) -> dict[str, Any]:
        event, state = await self.send("join", origin, room_id, event_id, pdu)
        chain = await self._persister.auth_chain([e.event_id for e in state])
        servers = await self._persister.joined_servers(room_id)
        return {"origin": self._server_name, "members_omitted": False,
                "event": dict(event.pdu), "state": [dict(e.pdu) for e in state],
                "auth_chain": [dict(e.pdu) for e in chain],
                "servers_in_room": sorted(servers)}

    async def send_knock(self, origin: str, room_id: str, event_id: str,
                         pdu: Mapping[str, Any]) -> dict[str, Any]:
        _event, state = await self.send("knock", origin, room_id, event_id, pdu)
        # Whole events in the room version's format, the create event among them (Matrix
        # 1.16); the knocking server strips them for its user.
        return {"knock_room_state": [dict(e.pdu) for e in state
                                     if e.type in STRIPPED_STATE_TYPES and e.state_key == ""]}

    # -- invites of our users --------------------------------------------------------------

    async def invite(self, origin: str, room_id: str, event_id: str, body: Mapping[str, Any]
                     ) -> dict[str, Any]:
        """PUT /v2/invite: sign an invite of one of our users, and show it to them."""
        version = KNOWN_ROOM_VERSIONS.get(str(body.get("room_version")))
        if version is None:
            raise MatrixError("This server does not support that room version", status=400,
                              errcode="M_INCOMPATIBLE_ROOM_VERSION",
                              room_version=str(body.get("room_version")))
        try:
            event = await self._pdus.check_pdu(body.get("event"), version)
        except InvalidPdu as e:
            raise BadJson(f"Invalid event: {e}") from None
        target = event.state_key or ""
        if event.event_id != event_id or event.room_id != room_id:
            raise BadJson("The event is not the one in the path")
        if event.type != "m.room.member" or event.membership != "invite" or \
                _server_of(target) != self._server_name or _server_of(event.sender) != origin:
            raise BadJson("Not an invite of a user of this server by the requesting server")
        user = await self._users.get_user(target)
        if user is None or user.deactivated:
            raise NotFound("Unknown user")
        if await self._room_store.blocked_by(room_id) is not None:
            raise Forbidden("This room is blocked on this server")
        signed = type(event)(event.event_id, version, sign_event(
            dict(event.pdu), version, self._server_name, self._signing_key))
        if self._server_name not in await self._persister.joined_servers(room_id):
            raw_state = body.get("invite_room_state")
            invite_state = [s for s in raw_state if isinstance(s, Mapping)
                            and not nesting_exceeds(s, MAX_PDU_NESTING)][:50] \
                if isinstance(raw_state, list) else []
            await self._persister.store_remote_membership(signed, invite_state)
        # Else we are in the room: the invite arrives with the room's other events.
        return {"event": dict(signed.pdu)}
