"""Spaces for other servers: a space and its children
(https://spec.matrix.org/v1.16/server-server-api/#get_matrixfederationv1hierarchyroomid)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from core.errors import InvalidParam, NotFound
from core.types import InvalidIdentifier, check_room_id
from federation.routes._base import federation_route
from homeserver.http.json import json_response

if TYPE_CHECKING:
    from federation.container import Federation

routes = web.RouteTableDef()


@routes.get("/_matrix/federation/v1/hierarchy/{room_id}")
@federation_route
async def get_hierarchy(request: web.Request, fed: Federation, origin: str, _body: Any
                        ) -> web.Response:
    """GET /_matrix/federation/v1/hierarchy/{roomId}: the room and the children the origin's
    users could peek or join; 404 when the room is unknown here or hidden from it."""
    room_id = request.match_info["room_id"]
    try:
        check_room_id(room_id)
    except InvalidIdentifier as e:
        raise InvalidParam(str(e)) from None
    suggested_only = request.query.get("suggested_only", "false")
    if suggested_only not in ("true", "false"):
        raise InvalidParam("'suggested_only' must be true or false")
    if fed.served.spaces is None:
        raise NotFound(f"Unknown room: {room_id}")
    return json_response(await fed.served.spaces.federation_hierarchy(
        origin, room_id, suggested_only=suggested_only == "true"))
