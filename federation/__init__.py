"""The Matrix server-server API and the key server."""

from __future__ import annotations

from aiohttp import web

from federation.keys import server as key_server


def add_federation_routes(app: web.Application) -> None:
    app.router.add_routes(key_server.routes)
