"""The Matrix server-server API and the key server."""

from __future__ import annotations

from aiohttp import web

from federation.container import (
    Federation,
    Served,
    build_federation,
    build_outbound,
    build_sender_worker,
)
from federation.keys import notary
from federation.keys import server as key_server
from federation.routes import devices, events, media, membership, query, spaces, transactions
from federation.routes._base import FEDERATION
from federation.sender.relayed import apply_relayed

__all__ = [
    "Federation",
    "Served",
    "add_federation_routes",
    "apply_relayed",
    "build_federation",
    "build_outbound",
    "build_sender_worker",
]


def add_federation_routes(app: web.Application, federation: Federation | None) -> None:
    """Our keys always; the rest of the server-server API when federation runs."""
    app.router.add_routes(key_server.routes)
    if federation is None:
        return
    app[FEDERATION] = federation
    app[notary.KEYRING] = federation.keyring
    for module in (notary, transactions, membership, events, query, devices, media, spaces):
        app.router.add_routes(module.routes)
