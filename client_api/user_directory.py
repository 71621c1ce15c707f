"""The user directory: /user_directory/search."""

from __future__ import annotations

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object

routes = ClientRoutes()


@routes.post("/user_directory/search")
async def search_user_directory(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/user_directory/search"""
    requester = await require_requester(request)
    body = await read_json_object(request)
    return json_response(
        await request.app[SERVICES].user_directory.search(requester.user_id, body))
