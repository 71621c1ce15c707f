"""Devices: list, get, rename, delete (/devices, /delete_devices)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from client_api.models import AuthOnlyBody, DeleteDevicesBody, DeviceUpdateBody, parse_body
from core.errors import MatrixError
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.services.auth import Requester
from homeserver.services.devices import Device
from homeserver.services.uia import PASSWORD

routes = ClientRoutes()

# Deleting devices takes the user's password (user-interactive auth).
_DELETE_FLOWS = [[PASSWORD]]


def device_json(device: Device) -> dict[str, Any]:
    """A device as Synapse answers it: every key present, null when unknown (the spec's
    schema leaves such keys out, but matrix-nio, and so matrix-commander, requires them)."""
    return {"device_id": device.device_id, "display_name": device.display_name,
            "last_seen_ip": device.last_seen_ip, "last_seen_ts": device.last_seen_ts}


@routes.get("/devices")
async def get_devices(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/devices"""
    requester = await require_requester(request)
    devices = await request.app[SERVICES].devices.list_devices(requester.user_id)
    return json_response({"devices": [device_json(d) for d in devices]})


@routes.get("/devices/{device_id}")
async def get_device(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/devices/{deviceId}"""
    requester = await require_requester(request)
    device = await request.app[SERVICES].devices.get_device(
        requester.user_id, request.match_info["device_id"])
    return json_response(device_json(device))


@routes.put("/devices/{device_id}")
async def put_device(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/devices/{deviceId}"""
    requester = await require_requester(request)
    body = parse_body(DeviceUpdateBody, await read_json_object(request))
    devices = request.app[SERVICES].devices
    if "display_name" not in body.model_fields_set:
        # "If not given, the display name is unchanged."
        await devices.get_device(requester.user_id, request.match_info["device_id"])
        return json_response({})
    await devices.rename(requester.user_id, request.match_info["device_id"], body.display_name)
    return json_response({})


async def _requester_for_uia(request: web.Request) -> Requester:
    """The requester of an endpoint whose only 401 in the spec is the user-interactive auth
    response (``flows`` required): a missing or unknown access token keeps its errcode, which
    is what clients act on (as Synapse sends it), and carries the flows too, so the body fits
    the spec's schema as well. No UIA session is opened for a request without a valid token."""
    try:
        return await require_requester(request)
    except MatrixError as e:
        if e.status != 401:
            raise
        raise MatrixError(e.message, status=401, errcode=e.errcode, headers=e.headers,
                          **{**e.extra, "flows": [{"stages": flow} for flow in _DELETE_FLOWS],
                             "params": {}}) from None


@routes.delete("/devices/{device_id}")
async def delete_device(request: web.Request) -> web.Response:
    """DELETE /_matrix/client/v3/devices/{deviceId}"""
    services = request.app[SERVICES]
    requester = await _requester_for_uia(request)
    # No body is the first step of UIA (as Synapse takes it: older clients send none).
    body = parse_body(AuthOnlyBody, await read_json_object(request, allow_empty=True))
    device_id = request.match_info["device_id"]
    await services.devices.get_device(requester.user_id, device_id)  # 404 before UIA
    await services.uia.authenticate(_DELETE_FLOWS, body.auth, method=request.method,
                                    uri=request.path, user_id=requester.user_id)
    await services.devices.delete(requester.user_id, [device_id])
    await services.uia.finish(body.auth)
    return json_response({})


@routes.post("/delete_devices")
async def post_delete_devices(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/delete_devices"""
    services = request.app[SERVICES]
    requester = await _requester_for_uia(request)
    body = parse_body(DeleteDevicesBody, await read_json_object(request))
    await services.uia.authenticate(_DELETE_FLOWS, body.auth, method=request.method,
                                    uri=request.path, user_id=requester.user_id)
    await services.devices.delete(requester.user_id, body.devices)
    await services.uia.finish(body.auth)
    return json_response({})
