"""Synapse's admin API for users, as the synapse-admin UI and operators' scripts call it:
the server version, listing and querying users, creating and changing them, deactivation,
password resets, whois, devices, joined rooms, the admin flag and a user's media."""

from __future__ import annotations

from aiohttp import web

from client_api import admin_params as q
from client_api import params
from client_api._routing import ClientRoutes
from client_api.admin_params import ADMIN_V1, ADMIN_V2
from client_api.auth import require_admin
from core.errors import BadJson, MissingParam
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.services.admin_users import MEDIA_ORDERINGS, USER_ORDERINGS, UserFilter

routes = ClientRoutes()
SERVER_VERSION = "KT-Chat 0.1"


def _user_id(request: web.Request) -> str:
    return params.user_id(request.match_info["user_id"])


@routes.get("/server_version", versions=ADMIN_V1)
async def get_server_version(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/server_version: no token needed (the admin UI's login page
    calls it)."""
    return json_response({"server_version": SERVER_VERSION})


@routes.get("/users", versions=ADMIN_V2)
async def get_users(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v2/users: deactivated=true lists them too; absent or false leaves
    them out."""
    return await _list_users(request, None if q.boolean(request, "deactivated") else False)


@routes.get("/users", versions=("/_synapse/admin/v3",))
async def get_users_v3(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v3/users: deactivated=true lists only them, false only the
    others, absent both."""
    return await _list_users(request, q.boolean(request, "deactivated"))


async def _list_users(request: web.Request, deactivated: bool | None) -> web.Response:
    await require_admin(request)
    offset, limit = q.page(request)
    user_filter = UserFilter(
        user_id=q.string(request, "user_id"), name=q.string(request, "name"),
        guests=bool(q.boolean(request, "guests", True)), deactivated=deactivated,
        admins=q.boolean(request, "admins"),
        not_user_types=request.query.getall("not_user_type", []))
    return json_response(await request.app[SERVICES].admin_users.list_users(
        user_filter, offset=offset, limit=limit,
        order_by=q.choice(request, "order_by", USER_ORDERINGS, "name"),
        backwards=q.backwards(request)))


@routes.get("/users/{user_id}", versions=ADMIN_V2)
async def get_user(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v2/users/{userId}"""
    await require_admin(request)
    return json_response(await request.app[SERVICES].admin_users.get_user(_user_id(request)))


@routes.put("/users/{user_id}", versions=ADMIN_V2)
async def put_user(request: web.Request) -> web.Response:
    """PUT /_synapse/admin/v2/users/{userId}: 201 with the new user, or 200 changed."""
    requester = await require_admin(request)
    body = await read_json_object(request)
    created, user = await request.app[SERVICES].admin_users.upsert_user(
        requester.user_id, _user_id(request), body)
    return json_response(user, status=201 if created else 200)


@routes.post("/deactivate/{user_id}", versions=ADMIN_V1)
async def post_deactivate(request: web.Request) -> web.Response:
    """POST /_synapse/admin/v1/deactivate/{userId} {"erase": bool}"""
    await require_admin(request)
    user_id = _user_id(request)
    body = await read_json_object(request, allow_empty=True)
    erase = body.get("erase", False)
    if not isinstance(erase, bool):
        raise BadJson("Param 'erase' must be a boolean, if given")
    await request.app[SERVICES].admin_users.deactivate(user_id, erase=erase)
    return json_response({"id_server_unbind_result": "success"})


@routes.post("/reset_password/{user_id}", versions=ADMIN_V1)
async def post_reset_password(request: web.Request) -> web.Response:
    """POST /_synapse/admin/v1/reset_password/{userId} {"new_password", "logout_devices"}"""
    await require_admin(request)
    user_id = _user_id(request)
    await request.app[SERVICES].admin_users.reset_password(
        user_id, await read_json_object(request))
    return json_response({})


@routes.get("/whois/{user_id}", versions=ADMIN_V1)
async def get_whois(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/whois/{userId}"""
    await require_admin(request)
    return json_response(await request.app[SERVICES].admin_users.whois(_user_id(request)))


@routes.get("/users/{user_id}/joined_rooms", versions=ADMIN_V1)
async def get_joined_rooms(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/users/{userId}/joined_rooms"""
    await require_admin(request)
    return json_response(await request.app[SERVICES].admin_users.joined_rooms(
        _user_id(request)))


@routes.get("/users/{user_id}/admin", versions=ADMIN_V1)
async def get_user_admin(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/users/{userId}/admin"""
    await require_admin(request)
    admin = await request.app[SERVICES].admin_users.is_admin(_user_id(request))
    return json_response({"admin": admin})


@routes.put("/users/{user_id}/admin", versions=ADMIN_V1)
async def put_user_admin(request: web.Request) -> web.Response:
    """PUT /_synapse/admin/v1/users/{userId}/admin {"admin": bool}"""
    requester = await require_admin(request)
    user_id = _user_id(request)
    body = await read_json_object(request)
    if "admin" not in body:
        raise MissingParam("Missing params: ['admin']")
    if not isinstance(body["admin"], bool):
        raise BadJson("Param 'admin' must be a boolean")
    await request.app[SERVICES].admin_users.set_admin(requester.user_id, user_id,
                                                      body["admin"])
    return json_response({})


# -- devices --------------------------------------------------------------------------------


@routes.get("/users/{user_id}/devices", versions=ADMIN_V2)
async def get_devices(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v2/users/{userId}/devices"""
    await require_admin(request)
    return json_response(await request.app[SERVICES].admin_users.devices(_user_id(request)))


@routes.get("/users/{user_id}/devices/{device_id}", versions=ADMIN_V2)
async def get_device(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}"""
    await require_admin(request)
    return json_response(await request.app[SERVICES].admin_users.device(
        _user_id(request), request.match_info["device_id"]))


@routes.put("/users/{user_id}/devices/{device_id}", versions=ADMIN_V2)
async def put_device(request: web.Request) -> web.Response:
    """PUT /_synapse/admin/v2/users/{userId}/devices/{deviceId} {"display_name"}"""
    await require_admin(request)
    user_id = _user_id(request)
    await request.app[SERVICES].admin_users.rename_device(
        user_id, request.match_info["device_id"], await read_json_object(request))
    return json_response({})


@routes.delete("/users/{user_id}/devices/{device_id}", versions=ADMIN_V2)
async def delete_device(request: web.Request) -> web.Response:
    """DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}"""
    await require_admin(request)
    await request.app[SERVICES].admin_users.delete_devices(
        _user_id(request), [request.match_info["device_id"]])
    return json_response({})


@routes.post("/users/{user_id}/delete_devices", versions=ADMIN_V2)
async def post_delete_devices(request: web.Request) -> web.Response:
    """POST /_synapse/admin/v2/users/{userId}/delete_devices {"devices": [...]}"""
    await require_admin(request)
    user_id = _user_id(request)
    body = await read_json_object(request)
    devices = body.get("devices")
    if devices is None:
        raise MissingParam("Missing params: ['devices']")
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise BadJson("'devices' must be a list of device IDs")
    await request.app[SERVICES].admin_users.delete_devices(user_id, devices)
    return json_response({})


# -- media ----------------------------------------------------------------------------------


@routes.get("/users/{user_id}/media", versions=ADMIN_V1)
async def get_user_media(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/users/{userId}/media"""
    await require_admin(request)
    user_id = _user_id(request)
    offset, limit = q.page(request)
    return json_response(await request.app[SERVICES].admin_users.media(
        user_id, offset=offset, limit=limit,
        order_by=q.choice(request, "order_by", tuple(MEDIA_ORDERINGS), "created_ts"),
        backwards=q.backwards(request)))
