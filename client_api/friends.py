"""The friends extension (DESIGN.md): /_matrix/client/unstable/org.ktchat.friends/..."""

from __future__ import annotations

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from core.errors import InvalidParam, MissingParam
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object

routes = ClientRoutes()
PREFIX = "/org.ktchat.friends"
UNSTABLE = ("unstable",)


@routes.get(f"{PREFIX}/friends", versions=UNSTABLE)
async def get_friends(request: web.Request) -> web.Response:
    requester = await require_requester(request)
    friends = await request.app[SERVICES].friends.friends(requester.user_id)
    return json_response({"friends": friends})


@routes.delete(f"{PREFIX}/friends/{{user_id}}", versions=UNSTABLE)
async def delete_friend(request: web.Request) -> web.Response:
    requester = await require_requester(request)
    await request.app[SERVICES].friends.remove(requester.user_id, request.match_info["user_id"])
    return json_response({})


@routes.post(f"{PREFIX}/requests", versions=UNSTABLE)
async def post_request(request: web.Request) -> web.Response:
    requester = await require_requester(request)
    body = await read_json_object(request)
    if "user_id" not in body:
        raise MissingParam("Missing parameter: user_id")
    if not isinstance(body["user_id"], str):
        raise InvalidParam("'user_id' must be a user ID")
    room_id = await request.app[SERVICES].friends.request(requester.user_id, body["user_id"])
    return json_response({"room_id": room_id})


@routes.get(f"{PREFIX}/requests", versions=UNSTABLE)
async def get_requests(request: web.Request) -> web.Response:
    requester = await require_requester(request)
    return json_response(await request.app[SERVICES].friends.requests(requester.user_id))


@routes.post(f"{PREFIX}/requests/{{user_id}}/accept", versions=UNSTABLE)
async def accept_request(request: web.Request) -> web.Response:
    requester = await require_requester(request)
    room_id = await request.app[SERVICES].friends.accept(requester.user_id,
                                                         request.match_info["user_id"])
    return json_response({"room_id": room_id})


@routes.post(f"{PREFIX}/requests/{{user_id}}/reject", versions=UNSTABLE)
async def reject_request(request: web.Request) -> web.Response:
    requester = await require_requester(request)
    await request.app[SERVICES].friends.reject(requester.user_id, request.match_info["user_id"])
    return json_response({})
