"""Request bodies: refused on their header when announced too large, and read in time.

aiohttp bounds a body's size only as it reads it (``client_max_size``), and it has no read
deadline once a request's head is in: a client announcing a gigabyte was waited for as long
as it kept the connection open, and a body dribbled a byte at a time was accepted however long
it took. (A request's head is bounded by the listener's keep-alive timeout, see ``app.py``.)

So this middleware, before any route runs:

- refuses a ``Content-Length`` over ``http.max_request_body_bytes`` at once with
  ``413 M_TOO_LARGE`` (Synapse drops such connections; a bodiless answer helps nobody);
- reads the whole body (``request.read()`` keeps it, so ``read_json_object`` and every other
  reader get it from memory) under a deadline that follows what arrives, as Apache's
  mod_reqtimeout does (``body=20,MinRate=500``): ``http.request_body_timeout_ms`` of grace,
  plus one second for every ``http.request_body_min_bytes_per_second`` bytes received. A
  client that cannot keep up gets ``408 M_UNKNOWN`` (the spec has no errcode for it). A large
  body on a slow but steady link is read however long it takes; a dribble is not.

Either refusal closes the connection (``Connection: close``): the rest of that body is never
read. Every body here is a JSON document under the size limit, so reading it before the route
costs nothing more than the route's own read would; media uploads (``STREAMED_BODY_PREFIXES``)
are left to their route, which streams them to disk under its own limits.

A client that goes away half-way through its body is what it is, not a server error: the
request ends with the disconnect middleware's 499 access-log line and no traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from core.errors import BadRequest, MatrixError, TooLarge
from homeserver.http.client_ip import client_ip
from homeserver.http.disconnect import CLIENT_CLOSED_REQUEST
from homeserver.http.middleware import error_response

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_TIMEOUT = 408
# Paths whose bodies their routes stream themselves (media uploads).
STREAMED_BODY_PREFIXES = ("/_matrix/media/v3/upload", "/_matrix/media/r0/upload")


class _TooSlow(Exception):
    """The body did not come in time (``args[0]``: the seconds it was waited for)."""


def request_body_middleware(*, max_bytes: int, timeout_s: float,
                            min_bytes_per_second: int) -> Middleware:
    """The middleware of the module docstring. It answers its refusals itself; it goes after
    the checks of a request's path (a request refused on its path needs no body read)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.can_read_body or request.path.startswith(STREAMED_BODY_PREFIXES):
            return await handler(request)
        announced = request.content_length
        if announced is not None and announced > max_bytes:
            logger.info("Refused the body of %s %s from %s: %d bytes announced, over the "
                        "limit of %d", request.method, request.rel_url.path,
                        client_ip(request), announced, max_bytes)
            return _closing(TooLarge(f"Request body over the limit of {max_bytes} bytes"))
        try:
            await _read_in_time(request, timeout_s, min_bytes_per_second)
        except _TooSlow as e:
            logger.info("Gave up on the body of %s %s from %s: %d of %s bytes in %.1fs",
                        request.method, request.rel_url.path, client_ip(request),
                        request.content.total_bytes, announced or "?", e.args[0])
            return _closing(MatrixError("Request body not received in time",
                                        status=REQUEST_TIMEOUT))
        except web.HTTPRequestEntityTooLarge:
            # A chunked body (no Content-Length) past the limit, as it comes.
            return _closing(TooLarge(f"Request body over the limit of {max_bytes} bytes"))
        except web.RequestPayloadError as e:
            # It cannot be decoded (its Content-Encoding lies). One line, as aiohttp's
            # refusals of malformed heads (``logsetup.BadRequestFilter``).
            logger.info("Bad HTTP request from %s: the body of %s %s: %s", client_ip(request),
                        request.method, request.rel_url.path, " ".join(str(e).split())[:300])
            return _closing(BadRequest("Malformed request body"))
        except ConnectionError:
            # The client went away in the middle of its body (the disconnect middleware
            # writes the access-log line, 499): no answer goes anywhere.
            return web.Response(status=CLIENT_CLOSED_REQUEST)
        return await handler(request)

    return middleware


async def _read_in_time(request: web.Request, timeout_s: float, min_bytes_per_second: int
                        ) -> None:
    """``request.read()``, given ``timeout_s`` plus a second per ``min_bytes_per_second``
    bytes received so far (checked only when a deadline passes, never in a polling loop).

    Raises:
        _TooSlow: the deadline passed with the body incomplete.
    """
    content = request.content
    if content.is_eof():
        await request.read()  # all here already (a small body comes with its head)
        return
    loop = asyncio.get_running_loop()
    started = loop.time()
    reading = asyncio.ensure_future(request.read())
    try:
        while True:
            deadline = started + timeout_s + content.total_bytes / min_bytes_per_second
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _TooSlow(loop.time() - started)
            done, _ = await asyncio.wait((reading,), timeout=remaining)
            if done:
                reading.result()
                return
    finally:
        if not reading.done():
            reading.cancel()


def _closing(error: MatrixError) -> web.Response:
    """The answer to a request whose body is left unread: the connection closes after it."""
    response = error_response(error)
    response.force_close()
    return response
