"""A worker serves what its roles cover and relays every other request to the main process,
as it came, answering with what the main process answered. A client (or a reverse proxy
configured more simply than ``proxy_config`` prints) may send anything to any worker.

What a worker serves itself (``WorkerRoutes``): with ``client``, syncs (long-poll, SSE,
sliding sync), the event sends that go to the persister (``PUT send``, ``redact``, and
``state`` other than membership) and reads of rooms as they stand (events, context,
members, state, relations, threads, joined rooms); with ``media``, uploads and this server's media
(downloads, thumbnails, the config); others' media is fetched by the main process. The same
tables drive the reverse-proxy configuration.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

_C = r"^/_matrix/client/(?:r0|v3)"
# (methods, path): syncs, sticky per user at the proxy (a sliding-sync connection and the
# SSE stream's buffers live in the process that serves them).
SYNC_ROUTES: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = (
    (frozenset({"GET"}), re.compile(_C + r"/sync$")),
    (frozenset({"GET"}), re.compile(r"^/_matrix/client/unstable/org\.ktchat\.sse/"
                                    r"(?:sync|sliding_sync)$")),
    (frozenset({"POST"}), re.compile(r"^/_matrix/client/unstable/"
                                     r"org\.matrix\.simplified_msc3575/sync$")),
)
# Event sends: any client worker (each reaches the room's persister).
SEND_ROUTES: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = (
    (frozenset({"PUT"}), re.compile(_C + r"/rooms/[^/]+/send/[^/]+/[^/]+$")),
    (frozenset({"PUT"}), re.compile(_C + r"/rooms/[^/]+/redact/[^/]+/[^/]+$")),
    (frozenset({"PUT"}), re.compile(_C + r"/rooms/[^/]+/state/"
                                    r"(?!m\.room\.member(?:/|$))[^/]+(?:/[^/]*)?$")),
)
# Reads of rooms as they stand, answered from this process's (current) caches and the
# database: any client worker. (/messages stays with the main process: reaching the start of
# a room's history here, it asks other servers for more, which only the main process can
# write.)
_GET = frozenset({"GET"})
READ_ROUTES: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = (
    (_GET, re.compile(_C + r"/rooms/[^/]+/(?:event|context)/[^/]+$")),
    (_GET, re.compile(_C + r"/rooms/[^/]+/(?:members|joined_members)$")),
    (_GET, re.compile(_C + r"/rooms/[^/]+/state(?:/[^/]+(?:/[^/]*)?)?$")),
    (_GET, re.compile(r"^/_matrix/client/v1/rooms/[^/]+/(?:relations/.+|threads)$")),
    (_GET, re.compile(_C + r"/joined_rooms$")),
)

Routes = tuple[tuple[frozenset[str], re.Pattern[str]], ...]


def media_routes(server_name: str) -> Routes:
    """Uploads and this server's media (``media`` role)."""
    ours = re.escape(server_name)
    media = r"^/_matrix/(?:client/v1/media|media/(?:v3|r0))"
    get = frozenset({"GET", "HEAD"})
    return (
        (frozenset({"POST"}), re.compile(r"^/_matrix/media/(?:v3|r0)/upload$")),
        (frozenset({"POST"}), re.compile(r"^/_matrix/media/v1/create$")),
        (frozenset({"PUT"}), re.compile(rf"^/_matrix/media/(?:v3|r0)/upload/{ours}/[^/]+$")),
        (get, re.compile(media + rf"/(?:download|thumbnail)/{ours}/")),
        (get, re.compile(media + r"/config$")),
    )


_ANY = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})
# The server-server API (``federation_inbound`` role): reads, and transactions (their PDUs
# checked here, then passed to the persister)...
FEDERATION_ROUTES: Routes = ((_ANY, re.compile(r"^/_matrix/(?:federation|key)/")),)
# ...but not what writes in other ways: joins, leaves, knocks and invites handed to us,
# third-party invites, one-time key claims. These go to the main process as they came.
FEDERATION_WRITES: Routes = (
    (frozenset({"PUT"}), re.compile(r"^/_matrix/federation/(?!v1/send/)")),
    (frozenset({"POST"}), re.compile(r"^/_matrix/federation/v1/user/keys/claim$")),
)


def role_routes(role: str, server_name: str) -> Routes:
    if role == "client":
        return (*SYNC_ROUTES, *SEND_ROUTES, *READ_ROUTES)
    if role == "media":
        return media_routes(server_name)
    if role == "federation_inbound":
        return FEDERATION_ROUTES
    return ()


def _matches(routes: Routes, method: str, path: str) -> bool:
    return any(method in methods and pattern.match(path) for methods, pattern in routes)


# Served by every process (no state): the versions, CORS preflights, health, metrics.
_EVERYWHERE = re.compile(r"^/_matrix/client/versions$|^/health$|^/metrics$")

# Not passed on in either direction (RFC 9110 7.6.1), or set anew by aiohttp.
_HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
    "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length"))
# A relayed request can be a long poll or an upload: no overall limit, the main process
# has its own.
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)


class WorkerRoutes:
    """What a worker with ``roles`` answers itself."""

    def __init__(self, roles: tuple[str, ...], server_name: str) -> None:
        self._routes = tuple(r for role in roles for r in role_routes(role, server_name))

    def served_here(self, method: str, path: str) -> bool:
        if method == "OPTIONS" or _EVERYWHERE.match(path):
            return True
        return _matches(self._routes, method, path) and \
            not _matches(FEDERATION_WRITES, method, path)


def served_here(method: str, path: str) -> bool:
    """Whether a ``client`` worker answers this request itself."""
    return WorkerRoutes(("client",), "").served_here(method, path)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_FEDERATION_PATH = re.compile(r"^/_matrix/(?:federation|key)/")


class Relay:
    """Passes requests to the main process's client listener (``main_url``), or its
    federation listener (``federation_url``) for the server-server API. The federation
    listener's certificate is not checked on that hop: it is for the server's name, and this
    is the operator's own process (the X-Matrix signature, relayed unchanged, is checked
    there as it came)."""

    def __init__(self, main_url: str, routes: WorkerRoutes,
                 federation_url: str | None = None) -> None:
        self._base = main_url.rstrip("/")
        self._federation_base = (federation_url or main_url).rstrip("/")
        self._routes = routes
        self._session: aiohttp.ClientSession | None = None
        self.relayed = 0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._routes.served_here(request.method, request.path):
            return await handler(request)
        return await self.relay(request)

    async def relay(self, request: web.Request) -> web.StreamResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=_TIMEOUT, auto_decompress=False,
                connector=aiohttp.TCPConnector(ssl=False))
        self.relayed += 1
        base = self._federation_base if _FEDERATION_PATH.match(request.path) else self._base
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in _HOP_BY_HOP)
        forwarded = request.headers.get("X-Forwarded-For")
        remote = request.remote or ""
        headers["X-Forwarded-For"] = f"{forwarded}, {remote}" if forwarded else remote
        body = request.content.iter_any() if request.body_exists else None
        try:
            async with self._session.request(
                    request.method, URL(base + request.raw_path, encoded=True),
                    headers=headers, data=body, allow_redirects=False) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP_BY_HOP or key.lower() == "content-length":
                        response.headers.add(key, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError:
            return web.json_response({"errcode": "M_UNKNOWN",
                                      "error": "The main process cannot be reached"},
                                     status=502)
