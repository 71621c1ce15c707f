"""Membership handshakes with rooms that live on other servers, from the joining side.

Joining (https://spec.matrix.org/v1.19/server-server-api/#joining-rooms): ``make_join`` on a
resident server gives a template, we sign it, ``send_join`` (v2) gives the room's state and
auth chain, which are checked like any received event before the room is stored here.
Leaving a room we are not in (rejecting an invite) is ``make_leave``/``send_leave``; knocking
is ``make_knock``/``send_knock``; inviting a user of another server is ``invite`` (v2).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from signedjson.types import SigningKey

from core.clock import Clock
from core.errors import Forbidden, MatrixError, NotFound
from core.events.builder import event_from_pdu
from core.events.hashing import add_content_hash
from core.events.model import Event
from core.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from core.events.signing import sign_event
from core.rooms.auth import AuthError, check_auth_rules
from core.types import is_valid_server_name
from federation.inbound.pdus import InvalidPdu, PduHandler
from federation.transport.client import (
    FederationClient,
    FederationClientError,
    FederationRequestError,
)
from roomserver.api import FederatedRooms

logger = logging.getLogger(__name__)

SUPPORTED_VERSIONS = sorted(KNOWN_ROOM_VERSIONS)

# Servers asked to help one join, knock or leave of a room this server is not in: the first
# of the candidates (the client's ``via``/``server_name``, an alias's servers, the inviter's,
# those last known in the room, the room ID's), each once, at most this many. A client may
# name a thousand and an alias's answer more; every try can cost a connection, a TLS
# handshake and a minute's wait. Synapse tries every one in turn; ten is more than a client's
# ``via`` list (three, from a matrix.to link) and an alias's best servers need.
MAX_SERVERS_TRIED = 10
# No further server is tried once this long has passed since the first was: servers that
# do not answer cannot hold one request for ten times their timeouts.
TRY_FOR_S = 120.0


def _q(value: str) -> str:
    return quote(value, safe="")


class RemoteRoomsClient:
    def __init__(self, rooms: FederatedRooms, client: FederationClient, pdus: PduHandler,
                 clock: Clock, server_name: str, signing_key: SigningKey) -> None:
        self._rooms = rooms
        self._client = client
        self._pdus = pdus
        self._clock = clock
        self._server_name = server_name
        self._signing_key = signing_key

    def _candidates(self, servers: Sequence[str]) -> list[str]:
        """The servers to try, in order: valid names, not ours, each once, at most
        ``MAX_SERVERS_TRIED``."""
        out: dict[str, None] = {}
        for server in servers:
            if len(out) >= MAX_SERVERS_TRIED:
                break
            if server != self._server_name and is_valid_server_name(server):
                out[server] = None
        return list(out)

    async def _try_servers(self, what: str, room_id: str, servers: Sequence[str],
                           attempt: Callable[[str], Awaitable[None]],
                           retry_on: tuple[type[Exception], ...]) -> Exception | None:
        """``attempt(server)`` for each of ``_candidates(servers)`` until one succeeds, for at
        most ``TRY_FOR_S``; a failure in ``retry_on`` moves on to the next server, any other
        exception is raised. Logs one line, whatever the number of servers.

        Returns:
            None when a server did it; else the last failure (a ``LookupError`` when there
            was no server to try).
        """
        candidates = self._candidates(servers)
        clock = self._clock
        deadline = clock.monotonic() + TRY_FOR_S
        failures: list[tuple[str, Exception]] = []
        for server in candidates:
            if failures and clock.monotonic() >= deadline:
                break
            try:
                await attempt(server)
            except retry_on as e:
                failures.append((server, e))
                logger.debug("%s %s through %s failed: %s", what, room_id, server, e)
                continue
            if failures:
                logger.info("%s %s through %s, after %d other servers failed (first: %s: %s)",
                            what, room_id, server, len(failures), *failures[0])
            return None
        if not failures:
            logger.info("%s %s failed: no server to ask", what, room_id)
            return LookupError("no server to ask")
        logger.info("%s %s failed through %d servers (%d named, %d valid and not tried): "
                    "first %s: %s; last %s: %s", what, room_id, len(failures), len(servers),
                    len(candidates) - len(failures), *failures[0], *failures[-1])
        return failures[-1][1]

    async def _make(self, kind: str, server: str, room_id: str, user_id: str
                    ) -> tuple[RoomVersion, dict[str, Any]]:
        """``make_join``/``make_leave``/``make_knock``: a template event to sign."""
        query = {"ver": SUPPORTED_VERSIONS} if kind in ("join", "knock") else None
        answer = await self._client.get_json(
            server, f"/_matrix/federation/v1/make_{kind}/{_q(room_id)}/{_q(user_id)}",
            query=query)
        if not isinstance(answer, Mapping) or not isinstance(answer.get("event"), Mapping):
            raise InvalidPdu(f"{server} answered make_{kind} without an event")
        version = KNOWN_ROOM_VERSIONS.get(str(answer.get("room_version", "1")))
        if version is None:
            raise MatrixError(f"The room's version {answer.get('room_version')} is not "
                              "supported here", status=400,
                              errcode="M_UNSUPPORTED_ROOM_VERSION")
        template = dict(answer["event"])
        content = template.get("content")
        if template.get("type") != "m.room.member" or template.get("state_key") != user_id \
                or template.get("sender") != user_id or template.get("room_id") != room_id \
                or not isinstance(content, Mapping) or content.get("membership") != kind:
            raise InvalidPdu(f"{server} answered make_{kind} with an unexpected template")
        return version, template

    def _sign(self, template: dict[str, Any], version: RoomVersion,
              content: Mapping[str, Any]) -> Event:
        pdu = copy.deepcopy(template)
        for key in ("hashes", "signatures", "unsigned", "event_id"):
            pdu.pop(key, None)
        merged = dict(content)
        merged.update(template["content"])  # the resident's fields win (membership, authoriser)
        pdu["content"] = merged
        pdu["origin_server_ts"] = self._clock.time_ms()
        pdu = sign_event(add_content_hash(pdu), version, self._server_name, self._signing_key)
        return event_from_pdu(pdu, version)

    # -- joining ---------------------------------------------------------------------------

    async def join(self, user_id: str, room_id: str, servers: Sequence[str],
                   content: Mapping[str, Any]) -> None:
        """Join ``user_id`` to a room this server is not in, through the first of
        ``servers`` that can do it (``_try_servers``)."""
        async def attempt(server: str) -> None:
            try:
                await self._join_via(server, user_id, room_id, content)
            except FederationRequestError as e:
                if e.status == 403:
                    raise Forbidden(e.error or "You are not allowed to join this room") from None
                raise

        last = await self._try_servers("Joining", room_id, servers, attempt,
                                       (FederationClientError, InvalidPdu, AuthError))
        if last is not None:
            raise NotFound(f"No server could help join {room_id}: {last}")

    async def _join_via(self, server: str, user_id: str, room_id: str,
                        content: Mapping[str, Any]) -> None:
        version, template = await self._make("join", server, room_id, user_id)
        event = self._sign(template, version, content)
        answer = await self._client.put_json(
            server, f"/_matrix/federation/v2/send_join/{_q(room_id)}/{_q(event.event_id)}",
            dict(event.pdu), timeout_s=120, max_response_bytes=256 * 1024 * 1024)
        if not isinstance(answer, Mapping):
            raise InvalidPdu("send_join answered something other than an object")
        signed = answer.get("event")
        if isinstance(signed, Mapping):  # a restricted join: the resident signed it too
            resigned = await self._pdus.check_pdu(signed, version)
            if resigned.event_id == event.event_id:
                event = resigned
        state_pdus = answer.get("state")
        chain_pdus = answer.get("auth_chain")
        if not isinstance(state_pdus, list) or not isinstance(chain_pdus, list):
            raise InvalidPdu("send_join answered without state or auth_chain")
        checked = await self._pdus.check_chain([*chain_pdus, *state_pdus], version)
        by_id = {e.event_id: e for e in checked}
        state = [by_id[e.event_id] for e in
                 (event_from_pdu(p, version) for p in state_pdus if isinstance(p, Mapping))
                 if e.event_id in by_id]
        create = next((e for e in state if e.state_tuple == ("m.room.create", "")), None)
        if create is None or create.content.get("room_version", "1") != version.identifier \
                or create.room_id != room_id:
            raise InvalidPdu("the room's state has no create event of its version")
        state_map = {e.state_tuple: e for e in state if e.state_tuple is not None}
        check_auth_rules(event, state_map, create_event=create)
        chain_ids = {e.event_id for e in state}
        auth_chain = [e for e in checked if e.event_id not in chain_ids]
        await self._rooms.join_remote_room(event, state, auth_chain)

    # -- leaving and knocking --------------------------------------------------------------

    async def leave(self, user_id: str, room_id: str, servers: Sequence[str],
                    content: Mapping[str, Any]) -> None:
        """Leave (or reject an invite to) a room this server is not in."""
        async def attempt(server: str) -> None:
            version, template = await self._make("leave", server, room_id, user_id)
            event = self._sign(template, version, content)
            await self._client.put_json(
                server, f"/_matrix/federation/v2/send_leave/{_q(room_id)}/{_q(event.event_id)}",
                dict(event.pdu))
            await self._rooms.store_remote_membership(event, None)

        last = await self._try_servers("Leaving", room_id, servers, attempt,
                                       (FederationClientError, InvalidPdu))
        if last is not None:
            raise MatrixError(f"Could not leave {room_id} through its servers: {last}",
                              status=502, errcode="M_UNKNOWN")

    async def knock(self, user_id: str, room_id: str, servers: Sequence[str],
                    content: Mapping[str, Any]) -> None:
        async def attempt(server: str) -> None:
            try:
                version, template = await self._make("knock", server, room_id, user_id)
                event = self._sign(template, version, content)
                answer = await self._client.put_json(
                    server,
                    f"/_matrix/federation/v1/send_knock/{_q(room_id)}/{_q(event.event_id)}",
                    dict(event.pdu))
            except FederationRequestError as e:
                if e.status == 403:
                    raise Forbidden(e.error or "You may not knock on this room") from None
                raise
            stripped = answer.get("knock_room_state") if isinstance(answer, Mapping) else None
            await self._rooms.store_remote_membership(
                event, stripped if isinstance(stripped, list) else [])

        last = await self._try_servers("Knocking on", room_id, servers, attempt,
                                       (FederationClientError, InvalidPdu))
        if last is not None:
            raise NotFound(f"No server could take a knock on {room_id}: {last}")

    # -- inviting --------------------------------------------------------------------------

    async def invite(self, event: Event, invite_room_state: list[dict[str, Any]]) -> Event:
        """Ask the invitee's server to sign an invite (``PUT /v2/invite``); returns the event
        with both signatures."""
        assert event.state_key is not None
        server = event.state_key.split(":", 1)[1]
        try:
            answer = await self._client.put_json(
                server,
                f"/_matrix/federation/v2/invite/{_q(event.room_id)}/{_q(event.event_id)}",
                {"event": dict(event.pdu), "room_version": event.room_version.identifier,
                 "invite_room_state": invite_room_state})
        except FederationRequestError as e:
            raise MatrixError(e.error or f"{server} refused the invite", status=e.status
                              if 400 <= e.status < 500 else 502,
                              errcode=e.errcode or "M_FORBIDDEN") from None
        except FederationClientError as e:
            raise MatrixError(f"Could not reach {server}: {e}", status=502,
                              errcode="M_UNKNOWN") from None
        signed = answer.get("event") if isinstance(answer, Mapping) else None
        if not isinstance(signed, Mapping):
            raise MatrixError(f"{server} answered the invite without an event", status=502)
        try:
            checked = await self._pdus.check_pdu(signed, event.room_version)
            if checked.event_id != event.event_id:
                raise InvalidPdu("the signed invite is another event")
            key_ids = list((checked.pdu.get("signatures") or {}).get(server) or {})
            if not key_ids:
                raise InvalidPdu(f"the invite is not signed by {server}")
            await self._pdus.check_signatures_of(checked, server)
        except InvalidPdu as e:
            raise MatrixError(f"{server} answered the invite wrongly: {e}",
                              status=502) from None
        return checked

    # -- queries ---------------------------------------------------------------------------

    async def _query(self, server: str, query_type: str, args: dict[str, str],
                     not_found: str) -> Any:
        """GET /query/{queryType} on ``server``; its 404 is ours, other failures a 502."""
        try:
            return await self._client.get_json(
                server, f"/_matrix/federation/v1/query/{query_type}", query=args)
        except FederationRequestError as e:
            if e.status == 404:
                raise NotFound(not_found) from None
            raise MatrixError(f"{server} could not answer", status=502) from None
        except FederationClientError:
            raise MatrixError(f"Could not reach {server}", status=502) from None

    async def query_alias(self, alias: str) -> tuple[str, list[str]]:
        answer = await self._query(alias.split(":", 1)[1], "directory", {"room_alias": alias},
                                   "Room alias not found")
        room_id = answer.get("room_id") if isinstance(answer, Mapping) else None
        servers = answer.get("servers") if isinstance(answer, Mapping) else None
        if not isinstance(room_id, str):
            raise NotFound("Room alias not found")
        return room_id, [s for s in (servers or []) if isinstance(s, str)]

    async def query_profile(self, user_id: str) -> dict[str, Any]:
        answer = await self._query(user_id.split(":", 1)[1], "profile", {"user_id": user_id},
                                   "Profile not found")
        if not isinstance(answer, Mapping):
            return {}
        return {k: v for k, v in answer.items() if k in ("displayname", "avatar_url")
                and isinstance(v, str)}
