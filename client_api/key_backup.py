"""Server-side key backup: /room_keys/version and /room_keys/keys."""

from __future__ import annotations

from aiohttp import web

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from core.errors import MissingParam
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object

routes = ClientRoutes()


def _query_version(request: web.Request) -> str:
    version = request.query.get("version")
    if version is None:
        raise MissingParam("Missing string query parameter 'version'")
    return version


def _room_and_session(request: web.Request) -> tuple[str | None, str | None]:
    room_id = request.match_info.get("room_id")
    return (params.room_id(room_id) if room_id is not None else None,
            request.match_info.get("session_id"))


@routes.post("/room_keys/version")
async def create_version(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/room_keys/version"""
    requester = await require_requester(request)
    body = await read_json_object(request)
    version = await request.app[SERVICES].key_backup.create_version(requester.user_id, body)
    return json_response({"version": version})


@routes.get("/room_keys/version")
async def get_current_version(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/room_keys/version"""
    requester = await require_requester(request)
    return json_response(await request.app[SERVICES].key_backup.get_version(
        requester.user_id, None))


@routes.get("/room_keys/version/{version}")
async def get_version(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/room_keys/version/{version}"""
    requester = await require_requester(request)
    return json_response(await request.app[SERVICES].key_backup.get_version(
        requester.user_id, request.match_info["version"]))


@routes.put("/room_keys/version/{version}")
async def update_version(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/room_keys/version/{version}"""
    requester = await require_requester(request)
    body = await read_json_object(request)
    await request.app[SERVICES].key_backup.update_version(
        requester.user_id, request.match_info["version"], body)
    return json_response({})


@routes.delete("/room_keys/version/{version}")
async def delete_version(request: web.Request) -> web.Response:
    """DELETE /_matrix/client/v3/room_keys/version/{version}"""
    requester = await require_requester(request)
    await request.app[SERVICES].key_backup.delete_version(
        requester.user_id, request.match_info["version"])
    return json_response({})


@routes.put("/room_keys/keys")
@routes.put("/room_keys/keys/{room_id}")
@routes.put("/room_keys/keys/{room_id}/{session_id}")
async def put_keys(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]"""
    requester = await require_requester(request)
    version = _query_version(request)
    room_id, session_id = _room_and_session(request)
    body = await read_json_object(request)
    return json_response(await request.app[SERVICES].key_backup.put_keys(
        requester.user_id, version, room_id, session_id, body))


@routes.get("/room_keys/keys")
@routes.get("/room_keys/keys/{room_id}")
@routes.get("/room_keys/keys/{room_id}/{session_id}")
async def get_keys(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]"""
    requester = await require_requester(request)
    version = _query_version(request)
    room_id, session_id = _room_and_session(request)
    return json_response(await request.app[SERVICES].key_backup.get_keys(
        requester.user_id, version, room_id, session_id))


@routes.delete("/room_keys/keys")
@routes.delete("/room_keys/keys/{room_id}")
@routes.delete("/room_keys/keys/{room_id}/{session_id}")
async def delete_keys(request: web.Request) -> web.Response:
    """DELETE /_matrix/client/v3/room_keys/keys[/{roomId}[/{sessionId}]]"""
    requester = await require_requester(request)
    version = _query_version(request)
    room_id, session_id = _room_and_session(request)
    return json_response(await request.app[SERVICES].key_backup.delete_keys(
        requester.user_id, version, room_id, session_id))
