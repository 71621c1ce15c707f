"""VoIP: the TURN servers clients may use for calls."""

from __future__ import annotations

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response

routes = ClientRoutes()


@routes.get("/voip/turnServer")
async def get_turn_server(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/voip/turnServer: ``{}`` when no TURN server is configured."""
    requester = await require_requester(request)
    return json_response(request.app[SERVICES].turn.credentials(requester.user_id))
