"""Rooms: create, send, state, history, context, members, redaction."""

from __future__ import annotations

import urllib.parse
from typing import Any

from aiohttp import web

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from client_api.models import CreateRoomBody, RedactBody, parse_body
from core.errors import BadJson, InvalidParam, MatrixError
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.http.params import query_int
from homeserver.services.auth import Requester
from homeserver.services.filtering import RoomEventFilter
from homeserver.services.messages import Reader
from homeserver.services.rooms import CreateRoomRequest
from roomserver.api import NewEvent

routes = ClientRoutes()


def _reader(requester: Requester) -> Reader:
    return Reader(requester.user_id, requester.device_id)


def _room_id(request: web.Request) -> str:
    return params.room_id(request.match_info["room_id"])


def _check_initial_state(body: CreateRoomBody) -> None:
    """createRoom's ``initial_state`` entries: a type and a state key (a string, ``""`` when
    left out) as any state event's, and a content object."""
    for item in body.initial_state:
        if not isinstance(item.get("type"), str) or not isinstance(item.get("content"), dict):
            raise BadJson("initial_state entries need a type and a content object")
        if not isinstance(item.get("state_key", ""), str):
            raise BadJson("initial_state entries' state_key must be a string")
        params.event_type(item["type"])
        params.state_key(item.get("state_key", ""))


@routes.post("/createRoom")
async def post_create_room(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/createRoom"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    body = parse_body(CreateRoomBody, await read_json_object(request))
    if body.room_alias_name is not None:
        params.new_room_alias(f"#{body.room_alias_name}:{services.config.server_name}")
    _check_initial_state(body)
    if body.invite_3pid:
        raise MatrixError("Third-party invites are not supported", status=400,
                          errcode="M_UNKNOWN")
    room_id, alias = await services.rooms.create_room(CreateRoomRequest(
        creator=requester.user_id, preset=body.preset, visibility=body.visibility,
        room_version=body.room_version, name=body.name, topic=body.topic,
        room_alias_name=body.room_alias_name, invite=body.invite, is_direct=body.is_direct,
        creation_content=body.creation_content, initial_state=body.initial_state,
        power_level_content_override=body.power_level_content_override))
    response: dict[str, Any] = {"room_id": room_id}
    if alias is not None:
        response["room_alias"] = alias
    return json_response(response)


@routes.put("/rooms/{room_id}/send/{event_type}/{txn_id}")
async def put_send(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    room_id = _room_id(request)
    event_type = params.event_type(request.match_info["event_type"])
    txn_id = params.transaction_id(request.match_info["txn_id"])
    content = await read_json_object(request)
    event = await services.rooms.send_message(
        room_id, NewEvent(event_type, requester.user_id, content,
                          device_id=requester.device_id, txn_id=txn_id))
    await services.presence.user_active(requester.user_id)
    return json_response({"event_id": event.event_id})


async def _put_state(request: web.Request, state_key: str) -> web.Response:
    services = request.app[SERVICES]
    requester = await require_requester(request)
    room_id = _room_id(request)
    event_type = params.event_type(request.match_info["event_type"])
    params.state_key(state_key)
    content = await read_json_object(request)
    if event_type == "m.room.member":
        # Membership has rules of its own (someone else's is a kick, ban or invite).
        event_id = await services.membership.set_member_state(requester.user_id, room_id,
                                                              state_key, content)
    else:
        event_id = await services.rooms.set_state(
            room_id, NewEvent(event_type, requester.user_id, content, state_key))
    return json_response({"event_id": event_id})


@routes.put("/rooms/{room_id}/state/{event_type}")
@routes.put("/rooms/{room_id}/state/{event_type}/")  # the spec: the slash is optional
async def put_state_empty_key(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}"""
    return await _put_state(request, "")


@routes.put("/rooms/{room_id}/state/{event_type}/{state_key}")
async def put_state(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"""
    return await _put_state(request, request.match_info["state_key"])


async def _get_state(request: web.Request, state_key: str) -> web.Response:
    services = request.app[SERVICES]
    requester = await require_requester(request)
    event = await services.messages.state_event(
        _reader(requester), _room_id(request),
        (params.event_type(request.match_info["event_type"]), params.state_key(state_key)))
    if request.query.get("format") == "event":
        return json_response(event)
    return json_response(event["content"])


@routes.get("/rooms/{room_id}/state/{event_type}")
@routes.get("/rooms/{room_id}/state/{event_type}/")  # the spec: the slash is optional
async def get_state_empty_key(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}"""
    return await _get_state(request, "")


@routes.get("/rooms/{room_id}/state/{event_type}/{state_key}")
async def get_state_event(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}"""
    return await _get_state(request, request.match_info["state_key"])


@routes.get("/rooms/{room_id}/state")
async def get_room_state(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/rooms/{roomId}/state"""
    requester = await require_requester(request)
    return json_response(await request.app[SERVICES].messages.room_state(
        _reader(requester), _room_id(request)))


@routes.get("/rooms/{room_id}/event/{event_id}")
async def get_event(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}"""
    requester = await require_requester(request)
    return json_response(await request.app[SERVICES].messages.get_event(
        _reader(requester), _room_id(request), params.event_id(request.match_info["event_id"])))


@routes.get("/rooms/{room_id}/messages")
async def get_messages(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/rooms/{roomId}/messages"""
    requester = await require_requester(request)
    direction = request.query.get("dir", "b")
    if direction not in ("b", "f"):
        raise InvalidParam("'dir' must be b or f")
    event_filter = RoomEventFilter.from_query(request.query.get("filter"))
    limit = query_int(request, "limit", event_filter.limit or 10)
    return json_response(await request.app[SERVICES].messages.messages(
        _reader(requester), _room_id(request), from_token=request.query.get("from"),
        to_token=request.query.get("to"), backwards=direction == "b", limit=limit,
        event_filter=event_filter))


@routes.get("/rooms/{room_id}/context/{event_id}")
async def get_context(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}"""
    requester = await require_requester(request)
    event_filter = RoomEventFilter.from_query(request.query.get("filter"))
    return json_response(await request.app[SERVICES].messages.context(
        _reader(requester), _room_id(request), params.event_id(request.match_info["event_id"]),
        query_int(request, "limit", 10), event_filter))


@routes.get("/rooms/{room_id}/members")
async def get_members(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/rooms/{roomId}/members"""
    requester = await require_requester(request)
    chunk = await request.app[SERVICES].messages.members(
        _reader(requester), _room_id(request), at=request.query.get("at"),
        membership=request.query.get("membership"),
        not_membership=request.query.get("not_membership"))
    return json_response({"chunk": chunk})


@routes.get("/rooms/{room_id}/joined_members")
async def get_joined_members(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/rooms/{roomId}/joined_members"""
    requester = await require_requester(request)
    return json_response(await request.app[SERVICES].messages.joined_members(
        _reader(requester), _room_id(request)))


@routes.put("/rooms/{room_id}/redact/{event_id}/{txn_id}")
async def put_redact(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    room_id = _room_id(request)
    event_id = params.event_id(urllib.parse.unquote(request.match_info["event_id"]))
    txn_id = params.transaction_id(request.match_info["txn_id"])
    body = parse_body(RedactBody, await read_json_object(request))
    content: dict[str, Any] = {"reason": body.reason} if body.reason is not None else {}
    event = await services.rooms.redact(
        room_id, event_id, requester.user_id, content, device_id=requester.device_id,
        txn_id=txn_id, is_admin=requester.is_admin)
    return json_response({"event_id": event.event_id})
