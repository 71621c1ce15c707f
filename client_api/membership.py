"""Membership: join, invite, leave, forget, kick, ban, unban, knock, joined_rooms."""

from __future__ import annotations

from aiohttp import web

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from client_api.models import MembershipBody, TargetBody, parse_body
from client_api.rooms import _room_id
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object

routes = ClientRoutes()


async def _body(request: web.Request, *, allow_empty: bool = True) -> MembershipBody:
    """Joining and leaving take no body as ``{}``: real clients send none, and Synapse
    accepts that though the spec requires one."""
    return parse_body(MembershipBody, await read_json_object(request, allow_empty=allow_empty))


def _servers(request: web.Request) -> list[str]:
    """Servers to join a room through: ``via`` (v1.12+) and the older ``server_name``, each a
    server name (else ``400 M_INVALID_PARAM``), each once."""
    return params.server_names([*request.query.getall("via", []),
                                *request.query.getall("server_name", [])])


@routes.post("/join/{room_id_or_alias}")
async def post_join_by_id_or_alias(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/join/{roomIdOrAlias}"""
    requester = await require_requester(request)
    room_id_or_alias = params.room_id_or_alias(request.match_info["room_id_or_alias"])
    servers = _servers(request)
    body = await _body(request)
    room_id = await request.app[SERVICES].membership.join(
        requester.user_id, room_id_or_alias, reason=body.reason, servers=servers)
    return json_response({"room_id": room_id})


@routes.post("/rooms/{room_id}/join")
async def post_join(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/rooms/{roomId}/join"""
    requester = await require_requester(request)
    body = await _body(request)
    room_id = await request.app[SERVICES].membership.join(
        requester.user_id, _room_id(request), reason=body.reason)
    return json_response({"room_id": room_id})


@routes.post("/knock/{room_id_or_alias}", versions=("v3",))
async def post_knock(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/knock/{roomIdOrAlias}"""
    requester = await require_requester(request)
    room_id_or_alias = params.room_id_or_alias(request.match_info["room_id_or_alias"])
    servers = _servers(request)
    body = await _body(request, allow_empty=False)  # as Synapse: the body is required
    room_id = await request.app[SERVICES].membership.knock(
        requester.user_id, room_id_or_alias, reason=body.reason, servers=servers)
    return json_response({"room_id": room_id})


@routes.post("/rooms/{room_id}/leave")
async def post_leave(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/rooms/{roomId}/leave"""
    requester = await require_requester(request)
    body = await _body(request)
    await request.app[SERVICES].membership.leave(requester.user_id, _room_id(request),
                                                 reason=body.reason)
    return json_response({})


@routes.post("/rooms/{room_id}/forget")
async def post_forget(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/rooms/{roomId}/forget"""
    requester = await require_requester(request)
    await request.app[SERVICES].history.forget(requester.user_id, _room_id(request))
    return json_response({})


@routes.post("/rooms/{room_id}/invite")
async def post_invite(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/rooms/{roomId}/invite"""
    requester = await require_requester(request)
    raw = await read_json_object(request)
    body = parse_body(TargetBody, raw)
    params.user_id(body.user_id)
    is_direct = raw.get("is_direct") is True
    await request.app[SERVICES].membership.invite(
        requester.user_id, _room_id(request), body.user_id, reason=body.reason,
        is_direct=is_direct)
    return json_response({})


async def _targeted(request: web.Request, action: str) -> web.Response:
    requester = await require_requester(request)
    body = parse_body(TargetBody, await read_json_object(request))
    params.user_id(body.user_id)
    membership = request.app[SERVICES].membership
    method = {"kick": membership.kick, "ban": membership.ban, "unban": membership.unban}[action]
    await method(requester.user_id, _room_id(request), body.user_id, reason=body.reason)
    return json_response({})


@routes.post("/rooms/{room_id}/kick")
async def post_kick(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/rooms/{roomId}/kick"""
    return await _targeted(request, "kick")


@routes.post("/rooms/{room_id}/ban")
async def post_ban(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/rooms/{roomId}/ban"""
    return await _targeted(request, "ban")


@routes.post("/rooms/{room_id}/unban")
async def post_unban(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/rooms/{roomId}/unban"""
    return await _targeted(request, "unban")


@routes.get("/joined_rooms")
async def get_joined_rooms(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/joined_rooms"""
    requester = await require_requester(request)
    rooms = await request.app[SERVICES].membership.joined_rooms(requester.user_id)
    return json_response({"joined_rooms": rooms})
