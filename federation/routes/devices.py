"""Our users' devices and end-to-end keys, as other servers ask for them
(https://spec.matrix.org/v1.16/server-server-api/#device-management and
https://spec.matrix.org/v1.16/server-server-api/#end-to-end-encryption).

This server stores no end-to-end keys yet: devices are listed without ``keys`` (as Synapse
lists a device that has not uploaded any), ``/user/keys/query`` answers an empty map for each
local user asked about and ``/user/keys/claim`` claims nothing. Device display names are not
shared over federation (Synapse's default, ``allow_device_name_lookup_over_federation:
false``): they often say more about a person than they meant to publish.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from core.errors import BadJson, NotFound
from federation.routes._base import federation_route
from federation.routes.query import local_user
from homeserver.http.json import json_response

if TYPE_CHECKING:
    from federation.container import Federation

routes = web.RouteTableDef()

# Device lists have no stream of changes yet (m.device_list_update EDUs come with E2EE).
DEVICE_LIST_STREAM_ID = 0


def _user_map(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if not isinstance(value, dict):
        raise BadJson(f"'{key}' must be an object of user IDs")
    return value


@routes.get("/_matrix/federation/v1/user/devices/{user_id}")
@federation_route
async def get_user_devices(request: web.Request, fed: Federation, _origin: str, _body: Any
                           ) -> web.Response:
    """GET /_matrix/federation/v1/user/devices/{userId}: a local user's devices."""
    user_id = local_user(fed, request.match_info["user_id"])
    if await fed.users.get_user(user_id) is None:
        raise NotFound("Unknown user")
    devices = await fed.served.devices.list_devices(user_id)
    return json_response({
        "user_id": user_id,
        "stream_id": DEVICE_LIST_STREAM_ID,
        "devices": [{"device_id": d.device_id} for d in devices],
    })


@routes.post("/_matrix/federation/v1/user/keys/query")
@federation_route
async def query_keys(_request: web.Request, fed: Federation, _origin: str,
                     body: dict[str, Any]) -> web.Response:
    """POST /_matrix/federation/v1/user/keys/query: identity keys of local users' devices
    (none stored yet); every user asked about is in the answer, as Synapse does."""
    wanted = _user_map(body, "device_keys")
    for user_id, device_ids in wanted.items():
        local_user(fed, user_id)
        if not isinstance(device_ids, list) or not all(isinstance(d, str) for d in device_ids):
            raise BadJson("'device_keys' must map user IDs to lists of device IDs")
    return json_response({"device_keys": {user_id: {} for user_id in wanted}})


@routes.post("/_matrix/federation/v1/user/keys/claim")
@federation_route
async def claim_keys(_request: web.Request, _fed: Federation, _origin: str,
                     body: dict[str, Any]) -> web.Response:
    """POST /_matrix/federation/v1/user/keys/claim: one-time keys (none stored yet)."""
    for devices in _user_map(body, "one_time_keys").values():
        if not isinstance(devices, dict) or not all(isinstance(a, str)
                                                    for a in devices.values()):
            raise BadJson("'one_time_keys' must map user IDs to device IDs to algorithms")
    return json_response({"one_time_keys": {}})
