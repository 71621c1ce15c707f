"""Clients that go away: every request finishes what it started; waits end at once.

The listeners run with aiohttp's ``handler_cancellation``: when a client closes its
connection, aiohttp cancels the task serving it. A write cut off half-way would leave
half-done work behind (a room with half its initial state), so this middleware, the outermost,
runs every handler in a task of its own that the cancellation does not reach: what was
started completes (its answer goes nowhere). What a handler *waits* for (a long-polling
/sync, an SSE stream) ends as soon as :func:`disconnected` fires, so a dead connection holds
nothing. A request that ends this way still gets its access-log line (status 499, as nginx
writes "client closed request", unless a streamed response had already begun).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from homeserver.http.access_log import AccessLogger

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Done when the client of a request has gone away.
_DISCONNECTED: web.RequestKey[asyncio.Future[None]] = web.RequestKey("disconnected",
                                                                     asyncio.Future)
# A status for the log when a request's client left before it was answered.
CLIENT_CLOSED_REQUEST = 499


def disconnected(request: web.Request) -> asyncio.Future[None]:
    """A future done when the request's client goes away (for waits that should end then;
    never done where the listener does not cancel handlers, as in tests' clients)."""
    future = request.get(_DISCONNECTED)
    if future is None:
        future = request[_DISCONNECTED] = asyncio.get_running_loop().create_future()
    return future


def disconnect_middleware(access_logger: logging.Logger) -> Middleware:
    """The outermost middleware (see the module docstring); ``access_logger`` writes the
    line of a request whose client left."""
    log = AccessLogger(access_logger, "")
    # Handlers still finishing for clients that left (kept referenced until they end).
    orphans: set[asyncio.Task[web.StreamResponse]] = set()

    def finished(request: web.Request, task: asyncio.Task[web.StreamResponse],
                 started: float) -> None:
        orphans.discard(task)
        response: web.StreamResponse | None = None
        if task.cancelled():
            pass
        elif (error := task.exception()) is not None:
            if not isinstance(error, ConnectionError):
                logger.error("Request failed after its client left", exc_info=error)
        else:
            response = task.result()
        if response is None or not response.prepared:
            response = web.Response(status=CLIENT_CLOSED_REQUEST)
        if log.logger.isEnabledFor(logging.INFO):
            log.log(request, response, time.perf_counter() - started)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        gone = disconnected(request)
        task = asyncio.ensure_future(handler(request))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done() or not _client_gone(request):
                raise  # the server is shutting down, not the client leaving
            gone.set_result(None)
            orphans.add(task)
            task.add_done_callback(lambda t: finished(request, t, started))
            raise

    return middleware


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()
