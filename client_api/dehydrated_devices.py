"""Dehydrated devices (MSC3814): /_matrix/client/unstable/org.matrix.msc3814.v1/..."""

from __future__ import annotations

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.http.params import query_int
from homeserver.services.dehydrated_devices import DEFAULT_LIMIT

routes = ClientRoutes()
MSC3814 = ("unstable/org.matrix.msc3814.v1",)


@routes.put("/dehydrated_device", versions=MSC3814)
async def put_dehydrated_device(request: web.Request) -> web.Response:
    requester = await require_requester(request)
    body = await read_json_object(request)
    device_id = await request.app[SERVICES].dehydrated_devices.put(requester.user_id, body)
    return json_response({"device_id": device_id})


@routes.get("/dehydrated_device", versions=MSC3814)
async def get_dehydrated_device(request: web.Request) -> web.Response:
    requester = await require_requester(request)
    return json_response(await request.app[SERVICES].dehydrated_devices.get(requester.user_id))


@routes.delete("/dehydrated_device", versions=MSC3814)
async def delete_dehydrated_device(request: web.Request) -> web.Response:
    requester = await require_requester(request)
    device_id = await request.app[SERVICES].dehydrated_devices.delete(requester.user_id)
    return json_response({"device_id": device_id})


@routes.post("/dehydrated_device/{device_id}/events", versions=MSC3814)
async def dehydrated_device_events(request: web.Request) -> web.Response:
    requester = await require_requester(request)
    body = await read_json_object(request)
    limit = query_int(request, "limit", DEFAULT_LIMIT, minimum=1)
    return json_response(await request.app[SERVICES].dehydrated_devices.events(
        requester.user_id, request.match_info["device_id"], body, limit))
