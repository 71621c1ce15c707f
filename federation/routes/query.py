"""Queries other servers make of ours: profiles, room aliases, the published room directory,
and our implementation's name (https://spec.matrix.org/v1.16/server-server-api/#querying-for-information,
https://spec.matrix.org/v1.16/server-server-api/#public-room-directory and
https://spec.matrix.org/v1.16/server-server-api/#get_matrixfederationv1version)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from core.errors import InvalidParam, MissingParam, NotFound
from core.types import parse_user_id
from federation.routes._base import federation_route
from homeserver.http.json import json_response
from homeserver.http.params import query_int
from homeserver.services.directory import RoomFilter

if TYPE_CHECKING:
    from federation.container import Federation

routes = web.RouteTableDef()

SERVER_VERSION = {"server": {"name": "KT-Chat", "version": "0.1.0"}}
_PROFILE_FIELDS = ("displayname", "avatar_url")


def local_user(fed: Federation, user_id: str) -> str:
    """``user_id`` if it is a well-formed ID of a user of this server, else 400."""
    try:
        parsed = parse_user_id(user_id)
    except ValueError as e:
        raise InvalidParam(f"Invalid user ID: {e}") from None
    if parsed.server_name != fed.server_name:
        raise InvalidParam("User is not hosted on this homeserver")
    return user_id


@routes.get("/_matrix/federation/v1/query/profile")
@federation_route
async def query_profile(request: web.Request, fed: Federation, _origin: str, _body: Any
                        ) -> web.Response:
    """GET /_matrix/federation/v1/query/profile?user_id=&field=: a local user's profile; a
    field that is not set is left out (the spec allows leaving it out or ``null``)."""
    user_id = request.query.get("user_id")
    if not user_id:
        raise MissingParam("Missing query parameter: user_id")
    field = request.query.get("field")
    if field is not None and field not in _PROFILE_FIELDS:
        raise NotFound(f"Unknown profile field {field!r}")
    profile = await fed.served.profiles.get_profile(local_user(fed, user_id))
    values = {"displayname": profile.displayname, "avatar_url": profile.avatar_url}
    return json_response({k: v for k, v in values.items()
                          if v is not None and (field is None or k == field)})


@routes.get("/_matrix/federation/v1/query/directory")
@federation_route
async def query_directory(request: web.Request, fed: Federation, _origin: str, _body: Any
                          ) -> web.Response:
    """GET /_matrix/federation/v1/query/directory?room_alias=: the room of one of our
    aliases, and the servers in it (ours first)."""
    alias = request.query.get("room_alias")
    if not alias:
        raise MissingParam("Missing query parameter: room_alias")
    if fed.served.aliases.check_alias(alias) != fed.server_name:
        # Never ask on: the requesting server should ask the alias's own server.
        raise InvalidParam("Room alias is not hosted on this homeserver")
    room_id, servers = await fed.served.aliases.resolve_alias(alias)
    return json_response({"room_id": room_id, "servers": servers})


def _public_rooms_args(limit: object, since: object, third_party: object
                       ) -> tuple[int | None, str | None, str | None]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 0):
        raise InvalidParam("'limit' must be a non-negative integer")
    if since is not None and not isinstance(since, str):
        raise InvalidParam("'since' must be a string")
    if third_party is not None and not isinstance(third_party, str):
        raise InvalidParam("'third_party_instance_id' must be a string")
    return limit, since, third_party


@routes.get("/_matrix/federation/v1/publicRooms")
@federation_route
async def get_public_rooms(request: web.Request, fed: Federation, _origin: str, _body: Any
                           ) -> web.Response:
    """GET /_matrix/federation/v1/publicRooms: our published rooms (0 or no limit: all)."""
    query = request.query
    limit, since, third_party = _public_rooms_args(
        query_int(request, "limit"), query.get("since"),
        query.get("third_party_instance_id"))
    return json_response(await fed.served.directory.public_rooms(
        limit=limit, since=since, third_party_instance_id=third_party,
        include_all_networks=query.get("include_all_networks", "false").lower() == "true"))


@routes.post("/_matrix/federation/v1/publicRooms")
@federation_route
async def post_public_rooms(_request: web.Request, fed: Federation, _origin: str,
                            body: dict[str, Any]) -> web.Response:
    """POST /_matrix/federation/v1/publicRooms: the same, with ``filter`` and the
    parameters in the body."""
    limit, since, third_party = _public_rooms_args(
        body.get("limit"), body.get("since"), body.get("third_party_instance_id"))
    return json_response(await fed.served.directory.public_rooms(
        limit=limit, since=since, room_filter=RoomFilter.parse(body.get("filter")),
        third_party_instance_id=third_party,
        include_all_networks=body.get("include_all_networks") is True))


@routes.get("/_matrix/federation/v1/version")
async def get_version(_request: web.Request) -> web.Response:
    """GET /_matrix/federation/v1/version (no authentication)."""
    return json_response(SERVER_VERSION)
