"""Authenticating requests from other servers (the ``X-Matrix`` Authorization scheme).

Spec: https://spec.matrix.org/v1.16/server-server-api/#request-authentication. Synapse's
``Authenticator`` (``synapse/federation/transport/server/_base.py``) is the model.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from core.errors import Codes, MatrixError
from federation.keys.keyring import KeyNotFound, Keyring
from federation.transport.x_matrix import parse_authorization, verify_request

logger = logging.getLogger(__name__)


async def authenticate(request: web.Request, keyring: Keyring, our_server_name: str,
                       body: Any) -> str:
    """The server that signed ``request``.

    A request may carry several ``Authorization`` headers; one valid ``X-Matrix`` header is
    enough. It must name us as destination (or none, as older servers do) and be signed by
    a key of its origin that is valid now, over the method, the request target as sent
    (path and query string), both server names and the JSON body.

    Args:
        request: the incoming request.
        keyring: where the origin's key comes from.
        our_server_name: the destination the request must be for.
        body: the parsed JSON body, or None for a request without one.

    Raises:
        MatrixError: 401 ``M_UNAUTHORIZED`` if no header authenticates the request.
    """
    headers = request.headers.getall("Authorization", [])
    if not headers:
        raise _unauthorized("Missing Authorization headers")
    now = keyring.clock.time_ms()
    reason = "No X-Matrix Authorization header"
    for header in headers:
        try:
            auth = parse_authorization(header)
        except ValueError as e:
            reason = f"Malformed Authorization header: {e}"
            continue
        if auth.destination is not None and auth.destination != our_server_name:
            reason = "Destination mismatch in Authorization header"
            continue
        try:
            verify_key = await keyring.verify_key_for(auth.origin, auth.key_id,
                                                      min_valid_until_ts=now)
        except KeyNotFound:
            reason = f"Unknown key {auth.key_id} of {auth.origin}"
            continue
        try:
            verify_request(auth, verify_key, request.method, request.raw_path, our_server_name,
                           body)
        except ValueError:
            reason = f"Invalid signature by {auth.origin} {auth.key_id}"
            continue
        return auth.origin
    logger.info("Refused federation request %s %s: %s", request.method, request.path, reason)
    raise _unauthorized(reason)


def _unauthorized(message: str) -> MatrixError:
    return MatrixError(message, status=401, errcode=Codes.UNAUTHORIZED)
