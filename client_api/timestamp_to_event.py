"""Jumping to a date: the event closest to a timestamp (Matrix 1.6, MSC3030)."""

from __future__ import annotations

from aiohttp import web

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from core.errors import InvalidParam, MissingParam
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response
from homeserver.http.params import query_int
from homeserver.services.messages import Reader

routes = ClientRoutes()


@routes.get("/rooms/{room_id}/timestamp_to_event",
            versions=("v1", "unstable/org.matrix.msc3030"))
async def get_timestamp_to_event(request: web.Request) -> web.Response:
    """GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event?ts=&dir=f|b"""
    requester = await require_requester(request)
    room_id = params.room_id(request.match_info["room_id"])
    ts = query_int(request, "ts")
    if ts is None:
        raise MissingParam("Missing integer query parameter 'ts'")
    direction = request.query.get("dir")
    if direction is None:
        raise MissingParam("Missing query parameter 'dir'")
    if direction not in ("f", "b"):
        raise InvalidParam("'dir' must be f or b")
    return json_response(await request.app[SERVICES].messages.timestamp_to_event(
        Reader(requester.user_id, requester.device_id), room_id, ts, direction == "f"))
