"""Typing notifications, read receipts and read markers."""

from __future__ import annotations

from aiohttp import web

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from client_api.models import ReceiptBody, TypingBody, parse_body
from client_api.rooms import _room_id
from core.errors import Forbidden
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.services.receipts import RECEIPT_TYPES

routes = ClientRoutes()


@routes.put("/rooms/{room_id}/typing/{user_id}")
async def put_typing(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    room_id = _room_id(request)
    if request.match_info["user_id"] != requester.user_id:
        raise Forbidden("Cannot set another user's typing state")
    body = parse_body(TypingBody, await read_json_object(request))
    await services.typing.set_typing(room_id, requester.user_id, body.typing, body.timeout)
    await services.presence.user_active(requester.user_id)
    return json_response({})


@routes.post("/rooms/{room_id}/receipt/{receipt_type}/{event_id}")
async def post_receipt(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    room_id = _room_id(request)
    event_id = params.event_id(request.match_info["event_id"])
    body = parse_body(ReceiptBody, await read_json_object(request))
    if body.thread_id is not None and body.thread_id != "main":
        params.event_id(body.thread_id)  # a thread is named by its root event
    await services.receipts.receipt(requester.user_id, room_id,
                                    request.match_info["receipt_type"], event_id,
                                    body.thread_id)
    await services.presence.user_active(requester.user_id)
    return json_response({})


@routes.post("/rooms/{room_id}/read_markers")
async def post_read_markers(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/rooms/{roomId}/read_markers"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    room_id = _room_id(request)
    body = await read_json_object(request)
    for marker in RECEIPT_TYPES:
        if isinstance(body.get(marker), str):
            params.event_id(body[marker])
    await services.receipts.read_markers(requester.user_id, room_id, body)
    await services.presence.user_active(requester.user_id)
    return json_response({})
