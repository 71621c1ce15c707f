"""Finding the requester of a client request from its access token."""

from __future__ import annotations

from aiohttp import web

from core.errors import Forbidden, MissingToken
from homeserver.appkeys import SERVICES
from homeserver.http.access_log import REQUESTER_LOG_KEY
from homeserver.http.client_ip import client_ip
from homeserver.services.auth import Requester


def access_token_of(request: web.Request) -> str | None:
    """The token from ``Authorization: Bearer`` or, failing that, ``?access_token=``."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MissingToken("Invalid Authorization header")
        return token.strip()
    return request.query.get("access_token") or None


async def require_requester(request: web.Request) -> Requester:
    """The authenticated requester; raises 401 ``M_MISSING_TOKEN``/``M_UNKNOWN_TOKEN``."""
    token = access_token_of(request)
    if token is None:
        raise MissingToken("Missing access token")
    requester = await request.app[SERVICES].auth.get_requester(
        token, ip=client_ip(request), user_agent=request.headers.get("User-Agent"))
    request[REQUESTER_LOG_KEY] = requester.user_id
    return requester


async def require_admin(request: web.Request) -> Requester:
    requester = await require_requester(request)
    if not requester.is_admin:
        raise Forbidden("You are not a server admin")
    return requester
