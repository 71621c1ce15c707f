"""Synapse's admin API for federation destinations, and the background-updates status the
synapse-admin UI reads."""

from __future__ import annotations

from aiohttp import web

from client_api import admin_params as q
from client_api._routing import ClientRoutes
from client_api.admin_params import ADMIN_V1
from client_api.auth import require_admin
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.services.admin_federation import DESTINATION_ORDERINGS

routes = ClientRoutes()


@routes.get("/federation/destinations", versions=ADMIN_V1)
async def get_destinations(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/federation/destinations"""
    await require_admin(request)
    offset, limit = q.page(request)
    return json_response(await request.app[SERVICES].admin_federation.list_destinations(
        offset=offset, limit=limit, search=q.string(request, "destination"),
        order_by=q.choice(request, "order_by", DESTINATION_ORDERINGS, "destination"),
        backwards=q.backwards(request)))


@routes.get("/federation/destinations/{destination}", versions=ADMIN_V1)
async def get_destination(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/federation/destinations/{destination}"""
    await require_admin(request)
    return json_response(await request.app[SERVICES].admin_federation.destination(
        request.match_info["destination"]))


@routes.get("/federation/destinations/{destination}/rooms", versions=ADMIN_V1)
async def get_destination_rooms(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/federation/destinations/{destination}/rooms"""
    await require_admin(request)
    offset, limit = q.page(request)
    return json_response(await request.app[SERVICES].admin_federation.rooms(
        request.match_info["destination"], offset=offset, limit=limit,
        backwards=q.backwards(request)))


@routes.post("/federation/destinations/{destination}/reset_connection", versions=ADMIN_V1)
async def post_reset_connection(request: web.Request) -> web.Response:
    """POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection"""
    await require_admin(request)
    await read_json_object(request, allow_empty=True)
    await request.app[SERVICES].admin_federation.reset_connection(
        request.match_info["destination"])
    return json_response({})


@routes.get("/background_updates/status", versions=ADMIN_V1)
async def get_background_updates_status(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/background_updates/status: schema migrations run whole before
    the server answers, so none is ever in progress while it does (Synapse's shape)."""
    await require_admin(request)
    return json_response({"enabled": True, "current_updates": {}})
