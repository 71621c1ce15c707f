"""Serving our own signing keys: GET /_matrix/key/v2/server
(https://spec.matrix.org/v1.19/server-server-api/#get_matrixkeyv2server)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from signedjson.sign import sign_json

from core.crypto.signing_keys import key_id, verify_key_base64
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response

routes = web.RouteTableDef()

# How long other servers may cache our key response.
KEY_VALIDITY_MS = 24 * 60 * 60 * 1000


def signed_key_response(server_name: str, signing_key: Any, now_ms: int) -> dict[str, Any]:
    body = {
        "server_name": server_name,
        "valid_until_ts": now_ms + KEY_VALIDITY_MS,
        "verify_keys": {key_id(signing_key): {"key": verify_key_base64(signing_key)}},
        "old_verify_keys": {},
    }
    return sign_json(body, server_name, signing_key)


@routes.get("/_matrix/key/v2/server")
async def get_server_keys(request: web.Request) -> web.Response:
    """GET /_matrix/key/v2/server"""
    services = request.app[SERVICES]
    return json_response(signed_key_response(services.config.server_name, services.signing_key,
                                             services.clock.time_ms()))


@routes.get("/_matrix/key/v2/server/{key_id}")
async def get_server_keys_legacy(request: web.Request) -> web.StreamResponse:
    """GET /_matrix/key/v2/server/{keyId} (deprecated; the key ID is ignored)."""
    return await get_server_keys(request)
