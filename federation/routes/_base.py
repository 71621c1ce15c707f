"""What every federation endpoint shares: the authenticated origin and the services.

A route is ``async def handler(request, fed, origin, body)``; ``federation_route`` reads the
JSON body (for methods that carry one), authenticates the X-Matrix signature, tells the
outbound queue that the origin is up (a server that talks to us is worth retrying at once),
and holds one of the origin's request slots (``inbound/limits.py``) while the route runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import TYPE_CHECKING, Any

from aiohttp import web

from core.errors import MatrixError
from federation.transport.inbound_auth import authenticate
from homeserver.http.json import read_json_object

if TYPE_CHECKING:
    from federation.container import Federation

Handler = Callable[[web.Request, "Federation", str, Any], Awaitable[web.StreamResponse]]

logger = logging.getLogger(__name__)

FEDERATION: web.AppKey[Federation] = web.AppKey("federation")


def federation_route(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    @wraps(handler)
    async def route(request: web.Request) -> web.StreamResponse:
        fed = request.app[FEDERATION]
        body: Any = None
        if request.method in ("PUT", "POST"):
            # The PUT endpoints are those carrying events (send, send_join/leave/knock,
            # invite), whose canonical JSON may hold U+0000 (``homeserver.http.nul``), and
            # whose PDUs are each held to canonical JSON's integers and nesting on their own
            # (``homeserver.http.json``, ``federation.inbound.pdus``).
            carries_pdus = request.method == "PUT"
            body = await read_json_object(request, allow_empty=False, allow_nul=carries_pdus,
                                          carries_pdus=carries_pdus)
        origin = await authenticate(request, fed.keyring, fed.server_name, body)
        fed.sender.peer_is_up(origin)
        started = asyncio.get_running_loop().time()
        status = 500
        try:
            async with fed.limits.slot(origin):
                response = await handler(request, fed, origin, body)
            status = response.status
            return response
        except (MatrixError, web.HTTPException) as e:
            status = e.status
            raise
        finally:
            logger.debug("Received %s %s from %s: %d in %.0f ms", request.method,
                         request.path, origin, status,
                         (asyncio.get_running_loop().time() - started) * 1000)

    return route
