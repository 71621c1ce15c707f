"""Synapse's admin API for rooms, as the synapse-admin UI and operators' scripts call it: the
room list (search, ordering, paging), one room's details, members, state, messages and media.
Deleting and blocking rooms are in ``client_api.admin``."""

from __future__ import annotations

from aiohttp import web

from client_api import admin_params as q
from client_api import params
from client_api._routing import ClientRoutes
from client_api.admin_params import ADMIN_V1
from client_api.auth import require_admin
from core.errors import InvalidParam
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response
from homeserver.services.admin_rooms import ROOM_ORDERINGS, RoomFilter
from homeserver.services.filtering import RoomEventFilter

routes = ClientRoutes()


def _room_id(request: web.Request) -> str:
    return params.room_id(request.match_info["room_id"])


@routes.get("/rooms", versions=ADMIN_V1)
async def get_rooms(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/rooms"""
    await require_admin(request)
    offset, limit = q.page(request)
    search_term = q.string(request, "search_term")
    if search_term == "":
        raise InvalidParam("search_term cannot be an empty string")
    room_filter = RoomFilter(search_term=search_term,
                             public=q.boolean(request, "public_rooms"),
                             empty=q.boolean(request, "empty_rooms"))
    return json_response(await request.app[SERVICES].admin_rooms.list_rooms(
        room_filter, offset=offset, limit=limit,
        order_by=q.choice(request, "order_by", ROOM_ORDERINGS, "name"),
        backwards=q.backwards(request)))


@routes.get("/rooms/{room_id}", versions=ADMIN_V1)
async def get_room(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/rooms/{roomId}"""
    await require_admin(request)
    return json_response(await request.app[SERVICES].admin_rooms.room(_room_id(request)))


@routes.get("/rooms/{room_id}/members", versions=ADMIN_V1)
async def get_room_members(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/rooms/{roomId}/members"""
    await require_admin(request)
    return json_response(await request.app[SERVICES].admin_rooms.members(_room_id(request)))


@routes.get("/rooms/{room_id}/state", versions=ADMIN_V1)
async def get_room_state(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/rooms/{roomId}/state"""
    requester = await require_admin(request)
    return json_response(await request.app[SERVICES].admin_rooms.state(
        requester.user_id, _room_id(request)))


@routes.get("/rooms/{room_id}/messages", versions=ADMIN_V1)
async def get_room_messages(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/rooms/{roomId}/messages: /messages for an admin, who reads
    every event of the room, member or not."""
    requester = await require_admin(request)
    room_id = _room_id(request)
    event_filter = RoomEventFilter.from_query(request.query.get("filter"))
    limit = min(q.integer(request, "limit", event_filter.limit or 10), q.MAX_LIMIT)
    return json_response(await request.app[SERVICES].admin_rooms.messages(
        requester.user_id, room_id, from_token=request.query.get("from"),
        to_token=request.query.get("to"), backwards=q.backwards(request, "b"), limit=limit,
        event_filter=event_filter))


@routes.get("/room/{room_id}/media", versions=ADMIN_V1)
async def get_room_media(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/room/{roomId}/media: ``{"local": [mxc...], "remote": [...]}``"""
    await require_admin(request)
    return json_response(await request.app[SERVICES].admin_rooms.media(_room_id(request)))
