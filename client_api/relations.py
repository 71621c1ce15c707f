"""Relations between events: ``/relations`` and ``/threads`` (client-server API v1)."""

from __future__ import annotations

from aiohttp import web

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from core.errors import InvalidParam
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response
from homeserver.http.params import query_int
from homeserver.services.messages import Reader

routes = ClientRoutes()
V1 = ("v1",)
_DEFAULT_LIMIT = 5  # as Synapse
_MAX_REL_TYPE_BYTES = 255


def _boolean(request: web.Request, name: str) -> bool | None:
    value = request.query.get(name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise InvalidParam(f"'{name}' must be true or false")
    return value == "true"


def _rel_type(value: str) -> str:
    if not value or len(value.encode("utf-8")) > _MAX_REL_TYPE_BYTES:
        raise InvalidParam("Invalid relation type")
    return value


async def _relations(request: web.Request, rel_type: str | None = None,
                     event_type: str | None = None) -> web.Response:
    requester = await require_requester(request)
    direction = request.query.get("dir", "b")
    if direction not in ("b", "f"):
        raise InvalidParam("'dir' must be b or f")
    return json_response(await request.app[SERVICES].relations.relations(
        Reader(requester.user_id, requester.device_id),
        params.room_id(request.match_info["room_id"]),
        params.event_id(request.match_info["event_id"]),
        rel_type=rel_type, event_type=event_type, from_token=request.query.get("from"),
        to_token=request.query.get("to"), backwards=direction == "b",
        limit=query_int(request, "limit", _DEFAULT_LIMIT, minimum=1),
        recurse=_boolean(request, "recurse")))


@routes.get("/rooms/{room_id}/relations/{event_id}", V1)
async def get_relations(request: web.Request) -> web.Response:
    """GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}"""
    return await _relations(request)


@routes.get("/rooms/{room_id}/relations/{event_id}/{rel_type}", V1)
async def get_relations_of_type(request: web.Request) -> web.Response:
    """GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}"""
    return await _relations(request, _rel_type(request.match_info["rel_type"]))


@routes.get("/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}", V1)
async def get_relations_of_type_and_event_type(request: web.Request) -> web.Response:
    """GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}"""
    return await _relations(request, _rel_type(request.match_info["rel_type"]),
                            params.event_type(request.match_info["event_type"]))


@routes.get("/rooms/{room_id}/threads", V1)
async def get_threads(request: web.Request) -> web.Response:
    """GET /_matrix/client/v1/rooms/{roomId}/threads"""
    requester = await require_requester(request)
    include = request.query.get("include", "all")
    if include not in ("all", "participated"):
        raise InvalidParam("'include' must be all or participated")
    return json_response(await request.app[SERVICES].relations.threads(
        Reader(requester.user_id, requester.device_id),
        params.room_id(request.match_info["room_id"]), participated=include == "participated",
        from_token=request.query.get("from"),
        limit=query_int(request, "limit", _DEFAULT_LIMIT, minimum=1)))
