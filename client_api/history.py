"""Clearing my history (the org.ktchat.history extension, DESIGN.md)."""

from __future__ import annotations

from aiohttp import web

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from client_api.models import ClearHistoryBody, parse_body
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object

routes = ClientRoutes()
HISTORY = ("/_matrix/client/unstable/org.ktchat.history",)


@routes.post("/rooms/{room_id}/clear", versions=HISTORY)
async def post_clear_history(request: web.Request) -> web.Response:
    """POST /_matrix/client/unstable/org.ktchat.history/rooms/{roomId}/clear"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    room_id = params.room_id(request.match_info["room_id"])
    body = parse_body(ClearHistoryBody, await read_json_object(request, allow_empty=True))
    if body.up_to_event_id is not None:
        params.event_id(body.up_to_event_id)
    await services.history.clear(requester.user_id, room_id, body.up_to_event_id)
    return json_response({})
