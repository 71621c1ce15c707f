"""Account data (global and per room) and room tags."""

from __future__ import annotations

from aiohttp import web

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from client_api.rooms import _room_id
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.services.account_data import require_self

routes = ClientRoutes()


def _type(request: web.Request) -> str:
    return params.account_data_type(request.match_info["type"])


def _tag(request: web.Request) -> str:
    return params.tag(request.match_info["tag"])


@routes.put("/user/{user_id}/account_data/{type}")
async def put_account_data(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/user/{userId}/account_data/{type}"""
    requester = await require_requester(request)
    require_self(requester.user_id, request.match_info["user_id"])
    type_ = _type(request)
    body = await read_json_object(request)
    await request.app[SERVICES].account_data.set(requester.user_id, None, type_, body)
    return json_response({})


@routes.get("/user/{user_id}/account_data/{type}")
async def get_account_data(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/user/{userId}/account_data/{type}"""
    requester = await require_requester(request)
    require_self(requester.user_id, request.match_info["user_id"])
    return json_response(await request.app[SERVICES].account_data.get(
        requester.user_id, None, _type(request)))


@routes.put("/user/{user_id}/rooms/{room_id}/account_data/{type}")
async def put_room_account_data(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}"""
    requester = await require_requester(request)
    require_self(requester.user_id, request.match_info["user_id"])
    room_id, type_ = _room_id(request), _type(request)
    body = await read_json_object(request)
    await request.app[SERVICES].account_data.set(requester.user_id, room_id, type_, body)
    return json_response({})


@routes.get("/user/{user_id}/rooms/{room_id}/account_data/{type}")
async def get_room_account_data(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}"""
    requester = await require_requester(request)
    require_self(requester.user_id, request.match_info["user_id"])
    return json_response(await request.app[SERVICES].account_data.get(
        requester.user_id, _room_id(request), _type(request)))


@routes.get("/user/{user_id}/rooms/{room_id}/tags")
async def get_tags(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags"""
    requester = await require_requester(request)
    require_self(requester.user_id, request.match_info["user_id"])
    return json_response({"tags": await request.app[SERVICES].account_data.tags(
        requester.user_id, _room_id(request))})


@routes.put("/user/{user_id}/rooms/{room_id}/tags/{tag}")
async def put_tag(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}"""
    requester = await require_requester(request)
    require_self(requester.user_id, request.match_info["user_id"])
    room_id, tag = _room_id(request), _tag(request)
    body = await read_json_object(request)
    await request.app[SERVICES].account_data.put_tag(requester.user_id, room_id, tag, body)
    return json_response({})


@routes.delete("/user/{user_id}/rooms/{room_id}/tags/{tag}")
async def delete_tag(request: web.Request) -> web.Response:
    """DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}"""
    requester = await require_requester(request)
    require_self(requester.user_id, request.match_info["user_id"])
    await request.app[SERVICES].account_data.delete_tag(
        requester.user_id, _room_id(request), _tag(request))
    return json_response({})
