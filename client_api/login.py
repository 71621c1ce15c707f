"""Logging in and out: /login, /refresh, /logout, /logout/all."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from client_api.models import LoginBody, RefreshBody, parse_body
from core.errors import BadJson, BadRequest, Forbidden, MissingParam
from homeserver.appkeys import SERVICES
from homeserver.http.client_ip import client_ip
from homeserver.http.json import json_response, read_json_object
from homeserver.services.accounts import Session

routes = ClientRoutes()

PASSWORD_LOGIN = "m.login.password"


def session_json(session: Session, server_name: str) -> dict[str, Any]:
    """The body of a successful /login or /register."""
    body: dict[str, Any] = {
        "user_id": session.user_id,
        "access_token": session.tokens.access_token,
        "device_id": session.device_id,
        "home_server": server_name,
    }
    if session.tokens.refresh_token is not None:
        body["refresh_token"] = session.tokens.refresh_token
        body["expires_in_ms"] = session.tokens.expires_in_ms
    return body


@routes.get("/login")
async def get_login_flows(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/login"""
    return json_response({"flows": [{"type": PASSWORD_LOGIN}]})


def _login_identifier(body: LoginBody) -> str:
    if body.identifier is not None:
        if body.identifier.get("type") != "m.id.user":
            raise BadRequest("Unknown login identifier type")
        user = body.identifier.get("user")
        if user is not None and not isinstance(user, str):
            raise BadJson("User identifier 'user' must be a string")
        if not user:
            raise MissingParam("User identifier is missing 'user' key")
        return user
    if body.user:
        return body.user
    raise MissingParam("Missing identifier")


@routes.post("/login")
async def post_login(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/login"""
    services = request.app[SERVICES]
    ip = client_ip(request)
    services.login_ip_limiter.check(ip)
    body = parse_body(LoginBody, await read_json_object(request))
    if body.type != PASSWORD_LOGIN:
        raise BadRequest("Unknown login type")
    identifier = _login_identifier(body)
    if body.password is None:
        raise MissingParam("Missing password")
    if not body.password:
        raise Forbidden("Invalid username or password")
    session = await services.accounts.login_with_password(
        identifier, body.password, device_id=body.device_id,
        display_name=body.initial_device_display_name, with_refresh_token=body.refresh_token,
        ip=ip, user_agent=request.headers.get("User-Agent"))
    return json_response(session_json(session, services.config.server_name))


@routes.post("/refresh", versions=("v3", "v1"))
async def post_refresh(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/refresh"""
    body = parse_body(RefreshBody, await read_json_object(request))
    tokens = await request.app[SERVICES].auth.refresh(body.refresh_token)
    return json_response({
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "expires_in_ms": tokens.expires_in_ms,
    })


@routes.post("/logout")
async def post_logout(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/logout"""
    requester = await require_requester(request)
    await request.app[SERVICES].auth.logout(requester)
    return json_response({})


@routes.post("/logout/all")
async def post_logout_all(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/logout/all"""
    requester = await require_requester(request)
    await request.app[SERVICES].auth.logout_all(requester.user_id)
    return json_response({})
