"""Room aliases and the public room directory."""

from __future__ import annotations

from aiohttp import web

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from client_api.models import AliasBody, PublicRoomsBody, VisibilityBody, parse_body
from client_api.rooms import _room_id
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.http.params import query_int
from homeserver.services.directory import RoomFilter

routes = ClientRoutes()


@routes.get("/directory/room/{alias}")
async def get_alias(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/directory/room/{roomAlias}"""
    services = request.app[SERVICES]
    room_id, servers = await services.rooms.resolve_alias(
        params.room_alias(request.match_info["alias"]))
    return json_response({"room_id": room_id, "servers": servers})


@routes.put("/directory/room/{alias}")
async def put_alias(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/directory/room/{roomAlias}"""
    requester = await require_requester(request)
    alias = params.new_room_alias(request.match_info["alias"])
    body = parse_body(AliasBody, await read_json_object(request))
    await request.app[SERVICES].rooms.create_alias(alias, params.room_id(body.room_id),
                                                   requester.user_id)
    return json_response({})


@routes.delete("/directory/room/{alias}")
async def delete_alias(request: web.Request) -> web.Response:
    """DELETE /_matrix/client/v3/directory/room/{roomAlias}"""
    requester = await require_requester(request)
    await request.app[SERVICES].rooms.delete_alias(params.room_alias(request.match_info["alias"]),
                                                   requester.user_id, requester.is_admin)
    return json_response({})


@routes.get("/rooms/{room_id}/aliases")
async def get_room_aliases(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/rooms/{roomId}/aliases"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    room_id = _room_id(request)
    await services.messages.access(requester.user_id, room_id)
    return json_response({"aliases": await services.rooms.aliases(room_id)})


@routes.get("/directory/list/room/{room_id}")
async def get_directory_visibility(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/directory/list/room/{roomId}"""
    visibility = await request.app[SERVICES].directory.visibility(_room_id(request))
    return json_response({"visibility": visibility})


@routes.put("/directory/list/room/{room_id}")
async def put_directory_visibility(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/directory/list/room/{roomId}"""
    requester = await require_requester(request)
    body = parse_body(VisibilityBody, await read_json_object(request, allow_empty=True))
    await request.app[SERVICES].directory.set_visibility(
        requester.user_id, _room_id(request), body.visibility, requester.is_admin)
    return json_response({})


@routes.get("/publicRooms")
async def get_public_rooms(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/publicRooms: ours needs no login; another server's (``server``)
    does, as in Synapse: we ask it on the user's behalf."""
    server = request.query.get("server")
    if server:
        await require_requester(request)
    return json_response(await request.app[SERVICES].directory.public_rooms(
        limit=query_int(request, "limit"), since=request.query.get("since"),
        server=server))


@routes.post("/publicRooms")
async def post_public_rooms(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/publicRooms (``server`` in the query string, as the spec has
    it, or in the body)."""
    await require_requester(request)
    body = parse_body(PublicRoomsBody, await read_json_object(request, allow_empty=True))
    return json_response(await request.app[SERVICES].directory.public_rooms(
        limit=body.limit, since=body.since, room_filter=RoomFilter.parse(body.filter),
        server=request.query.get("server") or body.server,
        include_all_networks=body.include_all_networks,
        third_party_instance_id=body.third_party_instance_id))
