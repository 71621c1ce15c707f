"""Spaces: /rooms/{roomId}/hierarchy."""

from __future__ import annotations

from aiohttp import web

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from core.errors import InvalidParam
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response
from homeserver.http.params import query_int

routes = ClientRoutes()

MAX_TOKEN_CHARS = 256


def _bool(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false")
    if value not in ("true", "false"):
        raise InvalidParam(f"'{name}' must be true or false")
    return value == "true"


@routes.get("/rooms/{room_id}/hierarchy", versions=("v1",))
async def get_hierarchy(request: web.Request) -> web.Response:
    """GET /_matrix/client/v1/rooms/{roomId}/hierarchy"""
    requester = await require_requester(request)
    room_id = params.room_id(request.match_info["room_id"])
    from_token = request.query.get("from")
    if from_token is not None and not 0 < len(from_token) <= MAX_TOKEN_CHARS:
        raise InvalidParam("Unknown pagination token")
    body = await request.app[SERVICES].spaces.hierarchy(
        requester.user_id, room_id, suggested_only=_bool(request, "suggested_only"),
        max_depth=query_int(request, "max_depth"),
        limit=query_int(request, "limit", minimum=1), from_token=from_token)
    return json_response(body)
