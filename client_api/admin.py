"""The parts of Synapse's admin API that operators' tools call: shared-secret registration
(``register_new_matrix_user``), registration tokens, purging history, deleting and blocking
rooms."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_admin
from client_api.models import (
    BlockRoomBody,
    DeleteRoomBody,
    NewRegistrationTokenBody,
    PurgeHistoryBody,
    parse_body,
)
from core.errors import NotFound
from homeserver.appkeys import SERVICES
from homeserver.http.client_ip import client_ip
from homeserver.http.json import json_response, read_json_object
from homeserver.services.accounts import RegistrationToken
from homeserver.services.purge import DeleteRoomRequest, DeleteTask

routes = ClientRoutes()
ADMIN_V1 = ("/_synapse/admin/v1",)


def _token_json(token: RegistrationToken) -> dict[str, Any]:
    return {"token": token.token, "uses_allowed": token.uses_allowed, "pending": token.pending,
            "completed": token.completed, "expiry_time": token.expiry_time}


@routes.get("/register", versions=ADMIN_V1)
async def get_register_nonce(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/register"""
    return json_response({"nonce": await request.app[SERVICES].accounts.new_registration_nonce()})


@routes.post("/register", versions=ADMIN_V1)
async def post_register_shared_secret(request: web.Request) -> web.Response:
    """POST /_synapse/admin/v1/register"""
    services = request.app[SERVICES]
    body = await read_json_object(request)
    user_id = await services.accounts.register_with_shared_secret(body)
    device_id, tokens = await services.auth.create_session(
        user_id, device_id=None, display_name=None, with_refresh_token=False,
        ip=client_ip(request), user_agent=request.headers.get("User-Agent"))
    return json_response({"user_id": user_id, "access_token": tokens.access_token,
                          "device_id": device_id, "home_server": services.config.server_name})


@routes.get("/registration_tokens", versions=ADMIN_V1)
async def get_registration_tokens(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/registration_tokens"""
    await require_admin(request)
    tokens = await request.app[SERVICES].accounts.list_registration_tokens()
    return json_response({"registration_tokens": [_token_json(t) for t in tokens]})


@routes.post("/registration_tokens/new", versions=ADMIN_V1)
async def post_registration_token(request: web.Request) -> web.Response:
    """POST /_synapse/admin/v1/registration_tokens/new"""
    await require_admin(request)
    body = parse_body(NewRegistrationTokenBody, await read_json_object(request, allow_empty=True))
    token = await request.app[SERVICES].accounts.create_registration_token(
        body.token, length=body.length, uses_allowed=body.uses_allowed,
        expiry_time=body.expiry_time)
    return json_response(_token_json(token))


@routes.get("/registration_tokens/{token}", versions=ADMIN_V1)
async def get_registration_token(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/registration_tokens/{token}"""
    await require_admin(request)
    token = await request.app[SERVICES].accounts.get_registration_token(
        request.match_info["token"])
    if token is None:
        raise NotFound("No such registration token")
    return json_response(_token_json(token))


@routes.delete("/registration_tokens/{token}", versions=ADMIN_V1)
async def delete_registration_token(request: web.Request) -> web.Response:
    """DELETE /_synapse/admin/v1/registration_tokens/{token}"""
    await require_admin(request)
    if not await request.app[SERVICES].accounts.delete_registration_token(
            request.match_info["token"]):
        raise NotFound("No such registration token")
    return json_response({})


# -- history and rooms ----------------------------------------------------------------------


def _admin_room_id(request: web.Request) -> str:
    return params.room_id(request.match_info["room_id"])


@routes.post("/purge_history/{room_id}", versions=ADMIN_V1)
@routes.post("/purge_history/{room_id}/{event_id}", versions=ADMIN_V1)
async def post_purge_history(request: web.Request) -> web.Response:
    """POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]"""
    await require_admin(request)
    purge = request.app[SERVICES].purge
    room_id = _admin_room_id(request)
    body = parse_body(PurgeHistoryBody, await read_json_object(request, allow_empty=True))
    event_id = request.match_info.get("event_id") or body.purge_up_to_event_id
    point = await purge.purge_point(
        room_id, event_id=params.event_id(event_id) if event_id is not None else None,
        ts=body.purge_up_to_ts)
    purge_id = purge.start_purge(room_id, point, delete_local_events=body.delete_local_events)
    return json_response({"purge_id": purge_id})


@routes.get("/purge_history_status/{purge_id}", versions=ADMIN_V1)
async def get_purge_status(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/purge_history_status/{purgeId}"""
    await require_admin(request)
    task = request.app[SERVICES].purge.purge_status(request.match_info["purge_id"])
    if task is None:
        raise NotFound("No such purge")
    body: dict[str, Any] = {"status": task.status}
    if task.error is not None:
        body["error"] = task.error
    return json_response(body)


async def _delete_request(request: web.Request) -> DeleteRoomRequest:
    requester = await require_admin(request)
    room_id = _admin_room_id(request)
    body = parse_body(DeleteRoomBody, await read_json_object(request, allow_empty=True))
    return DeleteRoomRequest(room_id, requester.user_id, block=body.block, purge=body.purge,
                             new_room_user_id=body.new_room_user_id, room_name=body.room_name,
                             message=body.message)


@routes.delete("/rooms/{room_id}", versions=("/_synapse/admin/v2",))
async def delete_room_v2(request: web.Request) -> web.Response:
    """DELETE /_synapse/admin/v2/rooms/{roomId}: starts it; poll the status endpoints."""
    task = await request.app[SERVICES].purge.start_delete(await _delete_request(request))
    return json_response({"delete_id": task.delete_id})


@routes.delete("/rooms/{room_id}", versions=ADMIN_V1)
async def delete_room_v1(request: web.Request) -> web.Response:
    """DELETE /_synapse/admin/v1/rooms/{roomId}: deletes and answers when done."""
    task = await request.app[SERVICES].purge.delete_room(await _delete_request(request))
    return json_response(task.json()["shutdown_room"])


@routes.get("/rooms/{room_id}/delete_status", versions=("/_synapse/admin/v2",))
async def get_room_delete_statuses(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v2/rooms/{roomId}/delete_status"""
    await require_admin(request)
    tasks = request.app[SERVICES].purge.delete_statuses(_admin_room_id(request))
    if not tasks:
        raise NotFound("No delete task for room")
    return json_response({"results": [_status_json(t) for t in tasks]})


@routes.get("/rooms/delete_status/{delete_id}", versions=("/_synapse/admin/v2",))
async def get_delete_status(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v2/rooms/delete_status/{deleteId}"""
    await require_admin(request)
    task = request.app[SERVICES].purge.delete_status(request.match_info["delete_id"])
    if task is None:
        raise NotFound("delete id not found")
    body = _status_json(task)
    del body["delete_id"]
    return json_response(body)


def _status_json(task: DeleteTask) -> dict[str, Any]:
    body = task.json()
    del body["room_id"]
    return body


@routes.put("/rooms/{room_id}/block", versions=ADMIN_V1)
async def put_room_block(request: web.Request) -> web.Response:
    """PUT /_synapse/admin/v1/rooms/{roomId}/block"""
    requester = await require_admin(request)
    room_id = _admin_room_id(request)
    body = parse_body(BlockRoomBody, await read_json_object(request))
    await request.app[SERVICES].purge.set_blocked(room_id, requester.user_id, body.block)
    return json_response({"block": body.block})


@routes.get("/rooms/{room_id}/block", versions=ADMIN_V1)
async def get_room_block(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/rooms/{roomId}/block"""
    await require_admin(request)
    by = await request.app[SERVICES].purge.blocked_by(_admin_room_id(request))
    return json_response({"block": True, "user_id": by} if by else {"block": False})
