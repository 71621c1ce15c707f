"""Requests counted by route, method and status, with their durations (the metrics).

The route is the pattern that matched (``/_matrix/client/v3/rooms/{room_id}/send/...``),
never the path asked for, so a hundred rooms make one label; an unknown path counts as
``unmatched``. One histogram per (route, method, status), updated with an addition.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from core.stats import Histogram

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNMATCHED = "unmatched"
# Anything else (aiohttp accepts any token as a method) counts as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
# The client went away before the answer (nginx's number for it).
CLIENT_CLOSED = 499


class RequestStats:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], Histogram] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        histogram = self.requests.get(key)
        if histogram is None:
            histogram = self.requests[key] = Histogram()
        histogram.observe(seconds)


def _route_of(request: web.Request) -> str:
    try:
        resource = request.match_info.route.resource
    except (AttributeError, RuntimeError):
        return UNMATCHED
    if resource is None:
        return UNMATCHED
    return resource.canonical


def request_stats_middleware(stats: RequestStats) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Outermost: it sees the status the client gets (errors already turned into answers)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            method = request.method
            stats.observe(_route_of(request), method if method in _METHODS else "other",
                          status, time.perf_counter() - started)

    return middleware
