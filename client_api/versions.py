"""Discovery: /versions, /.well-known/matrix/client and /capabilities."""

from __future__ import annotations

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from core.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response

routes = ClientRoutes()

SPEC_VERSIONS = [
    "r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1",
    "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11",
    "v1.12",
]

# Our extensions (DESIGN.md). Each turns true when its issue lands.
UNSTABLE_FEATURES = {
    "org.ktchat.sse": True,
    "org.ktchat.friends": True,
    "org.ktchat.history": True,
    # Dehydrated devices (client_api/dehydrated_devices.py).
    "org.matrix.msc3814": True,
    # Simplified sliding sync (client_api/sliding_sync.py), and its SSE variant.
    "org.matrix.simplified_msc3575": True,
    "org.ktchat.sse.sliding": True,
}

ROOM_VERSIONS = {version: "stable" for version in KNOWN_ROOM_VERSIONS}


@routes.get("/_matrix/client/versions", versions=("",))
async def get_versions(request: web.Request) -> web.Response:
    """GET /_matrix/client/versions"""
    return json_response({"versions": SPEC_VERSIONS, "unstable_features": UNSTABLE_FEATURES})


@routes.get("/.well-known/matrix/client", versions=("",))
async def get_well_known_client(request: web.Request) -> web.Response:
    """GET /.well-known/matrix/client"""
    base_url = request.app[SERVICES].config.public_baseurl
    return json_response({"m.homeserver": {"base_url": base_url}})


@routes.get("/capabilities")
async def get_capabilities(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/capabilities"""
    await require_requester(request)
    default_version = request.app[SERVICES].rooms.default_room_version
    return json_response({"capabilities": {
        "m.change_password": {"enabled": True},
        "m.room_versions": {"default": default_version.identifier,
                            "available": ROOM_VERSIONS},
        "m.set_displayname": {"enabled": True},
        "m.set_avatar_url": {"enabled": True},
        "m.3pid_changes": {"enabled": False},
        "m.get_login_token": {"enabled": False},
    }})
