"""Route registration for the client API: one function, every spec version prefix it has."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Endpoints that existed in r0 are served under both r0 and v3, as Synapse does.
R0_V3 = ("r0", "v3")


class ClientRoutes:
    """Collects ``(method, path, handler)`` for ``/_matrix/client/{version}{path}``."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, Handler]] = []

    def route(self, method: str, path: str, versions: Iterable[str] = R0_V3
              ) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            for version in versions:
                # A version is "v3"-like, "" (no prefix), or a full prefix starting with "/".
                if not version or version.startswith("/"):
                    prefix = version
                else:
                    prefix = f"/_matrix/client/{version}"
                self.entries.append((method, prefix + path, handler))
            return handler

        return decorate

    def get(self, path: str, versions: Iterable[str] = R0_V3) -> Callable[[Handler], Handler]:
        return self.route("GET", path, versions)

    def post(self, path: str, versions: Iterable[str] = R0_V3) -> Callable[[Handler], Handler]:
        return self.route("POST", path, versions)

    def put(self, path: str, versions: Iterable[str] = R0_V3) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, versions)

    def delete(self, path: str, versions: Iterable[str] = R0_V3) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, versions)

    def add_to(self, router: web.UrlDispatcher) -> None:
        for method, path, handler in self.entries:
            router.add_route(method, path, handler)
