"""Presence: /presence/{userId}/status."""

from __future__ import annotations

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from client_api.models import PresenceBody, parse_body
from client_api.profile import _user_id
from core.errors import Forbidden
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.services.presence import UNCHANGED

routes = ClientRoutes()


@routes.put("/presence/{user_id}/status")
async def put_presence(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/presence/{userId}/status"""
    requester = await require_requester(request)
    if _user_id(request) != requester.user_id:
        raise Forbidden("Cannot set another user's presence")
    raw = await read_json_object(request)
    body = parse_body(PresenceBody, raw)
    await request.app[SERVICES].presence.set_state(
        requester.user_id, body.presence,
        body.status_msg if "status_msg" in raw else UNCHANGED)
    return json_response({})


@routes.get("/presence/{user_id}/status")
async def get_presence(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/presence/{userId}/status"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    user_id = _user_id(request)
    if not await services.members.share_a_room(requester.user_id, user_id):
        await services.profiles.get_profile(user_id)  # 404 for a user nobody knows
        raise Forbidden("You are not allowed to see their presence")
    return json_response(services.presence.content(user_id))
