"""The IP address of a request's client: the peer of its connection or, on a listener behind a
reverse proxy (``listeners[].x_forwarded: true``), the address the proxy forwarded.

Rate limits per IP, the devices' ``last_seen_ip`` and the access log all take it from
``client_ip``. Like Synapse (``XForwardedForRequest``), a trusted listener takes the first
(left-most) address of the first ``X-Forwarded-For`` header, so the proxy must set that header
itself (nginx: ``proxy_set_header X-Forwarded-For $remote_addr;``) rather than append to what
the client sent. Elsewhere the header is ignored: a client cannot choose its own address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

_FORWARDED_IP: web.RequestKey[str] = web.RequestKey("forwarded_client_ip", str)


def client_ip(request: web.BaseRequest) -> str | None:
    """The client's address (None only where the transport has none, as a Unix socket)."""
    return request.get(_FORWARDED_IP) or request.remote


@web.middleware
async def x_forwarded_middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """For listeners with ``x_forwarded: true`` only: trust the proxy's ``X-Forwarded-For``
    (an entry that is no IP address is ignored: the proxy's own address stands)."""
    header = request.headers.get(hdrs.X_FORWARDED_FOR)
    if header:
        first = header.split(",", 1)[0].strip()
        try:
            request[_FORWARDED_IP] = str(ipaddress.ip_address(first))
        except ValueError:
            pass
    return await handler(request)
