"""Our users' devices and end-to-end keys, as other servers ask for them
(https://spec.matrix.org/v1.16/server-server-api/#device-management and
https://spec.matrix.org/v1.16/server-server-api/#end-to-end-encryption).

Answered from the end-to-end keys our users uploaded (``E2EKeyService``): ``/user/devices``
lists a user's devices with their ``keys`` (a device that uploaded none is listed without,
as Synapse does), the ``stream_id`` of the user's latest device-list change (0 for none) and
their master and self-signing keys; ``/user/keys/query`` gives device keys and master and
self-signing keys (never user-signing keys: those are their owner's alone);
``/user/keys/claim`` hands out one-time keys exactly as a client's ``/keys/claim`` does (each
once, then the fallback key). Only this server's users may be asked about. Device display
names are not shared over federation (Synapse's default,
``allow_device_name_lookup_over_federation: false``): they often say more about a person
than they meant to publish.

Not yet: ``m.device_list_update`` / ``m.signing_key_update`` EDUs, so ``stream_id`` has no
``prev_id`` chain behind it for other servers to follow.
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


def _local_users(fed: Federation, body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if not isinstance(value, dict):
        raise BadJson(f"'{key}' must be an object of user IDs")
    for user_id in value:
        local_user(fed, user_id)


@routes.get("/_matrix/federation/v1/user/devices/{user_id}")
@federation_route
async def get_user_devices(request: web.Request, fed: Federation, _origin: str, _body: Any
                           ) -> web.Response:
    """GET /_matrix/federation/v1/user/devices/{userId}: a local user's devices, with their
    keys, and the user's master and self-signing keys."""
    user_id = local_user(fed, request.match_info["user_id"])
    if await fed.users.get_user(user_id) is None:
        raise NotFound("Unknown user")
    devices = await fed.served.devices.list_devices(user_id)
    keys = await fed.served.keys.user_devices(user_id)
    out: dict[str, Any] = {
        "user_id": user_id,
        "stream_id": keys["stream_id"],
        "devices": [{"device_id": d.device_id, **({"keys": keys["keys"][d.device_id]}
                                                  if d.device_id in keys["keys"] else {})}
                    for d in devices],
    }
    for field in ("master_key", "self_signing_key"):
        if field in keys:
            out[field] = keys[field]
    return json_response(out)


@routes.post("/_matrix/federation/v1/user/keys/query")
@federation_route
async def query_keys(_request: web.Request, fed: Federation, _origin: str,
                     body: dict[str, Any]) -> web.Response:
    """POST /_matrix/federation/v1/user/keys/query: identity keys of local users' devices
    (an empty list: all of them) and their master and self-signing keys; every user asked
    about is in ``device_keys``, as Synapse does."""
    _local_users(fed, body, "device_keys")
    return json_response(await fed.served.keys.query_for_server(body))


@routes.post("/_matrix/federation/v1/user/keys/claim")
@federation_route
async def claim_keys(_request: web.Request, fed: Federation, _origin: str,
                     body: dict[str, Any]) -> web.Response:
    """POST /_matrix/federation/v1/user/keys/claim: one-time keys of local users' devices
    (each handed out once), else their fallback keys."""
    _local_users(fed, body, "one_time_keys")
    return json_response(await fed.served.keys.claim_for_server(body))
