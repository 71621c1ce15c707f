"""The error contract and CORS, for every path of every listener.

Every error leaves as ``{"errcode", "error"}`` with the spec's status; an unexpected exception
is logged with its traceback and answered ``500 M_UNKNOWN`` with nothing internal in the body.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from core.errors import Codes, MatrixError
from homeserver.http.json import json_response

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization, Date",
    "Access-Control-Expose-Headers": "Synapse-Trace-Id, Server",
}

_HTTP_STATUS_CODES = {
    400: Codes.UNKNOWN,
    401: Codes.MISSING_TOKEN,
    403: Codes.FORBIDDEN,
    404: Codes.UNRECOGNIZED,
    405: Codes.UNRECOGNIZED,
    413: Codes.TOO_LARGE,
    429: Codes.LIMIT_EXCEEDED,
}


def error_response(error: MatrixError) -> web.Response:
    return json_response(error.to_json(), status=error.status, headers=error.headers or None)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MatrixError as e:
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        errcode = _HTTP_STATUS_CODES.get(e.status, Codes.UNKNOWN)
        message = {
            404: "Unrecognized request",
            405: "Unrecognized request: method not allowed",
            413: "Request body too large",
        }.get(e.status, e.reason)
        response = json_response({"errcode": str(errcode), "error": message}, status=e.status)
        if e.status == 405 and "Allow" in e.headers:
            response.headers["Allow"] = e.headers["Allow"]
        return response
    except Exception:
        logger.exception("Unexpected error handling %s %s", request.method,
                         request.rel_url.path)
        return json_response(
            {"errcode": str(Codes.UNKNOWN), "error": "Internal server error"}, status=500)


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers CORS preflights; the headers themselves go on in :func:`add_cors_headers`."""
    if request.method == "OPTIONS":
        return web.Response(status=204)
    return await handler(request)


async def add_cors_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """CORS headers on every response as its headers are sent (``on_response_prepare``):
    a streamed response (the SSE sync stream) sends them before its handler returns."""
    response.headers.update(CORS_HEADERS)
