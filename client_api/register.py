"""Registration: /register, /register/available, registration-token validity."""

from __future__ import annotations

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.login import session_json
from client_api.models import RegisterBody, parse_body
from core.errors import BadRequest, Forbidden, MatrixError, MissingParam
from homeserver.appkeys import SERVICES
from homeserver.http.client_ip import client_ip
from homeserver.http.json import json_response, read_json_object
from homeserver.services.accounts import Session
from homeserver.services.uia import DUMMY, REGISTRATION_TOKEN

routes = ClientRoutes()


@routes.post("/register")
async def post_register(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/register"""
    services = request.app[SERVICES]
    config = services.config
    kind = request.query.get("kind", "user")
    if kind == "guest":
        raise MatrixError("Guest access is not allowed", status=403,
                          errcode="M_GUEST_ACCESS_FORBIDDEN")
    if kind != "user":
        raise BadRequest("Invalid kind", errcode="M_INVALID_PARAM")
    if not config.registration.enabled:
        raise Forbidden("Registration has been disabled")
    body = parse_body(RegisterBody, await read_json_object(request))

    # Say early what would fail anyway, before the client walks through auth stages.
    if body.username is not None:
        await services.accounts.check_username(body.username.lower())
    if body.password is not None:
        services.accounts.check_password_strength(body.password)

    flows = [[REGISTRATION_TOKEN]] if config.registration.require_token else [[DUMMY]]
    if body.auth is None or "session" not in body.auth:
        services.registration_ip_limiter.check(client_ip(request))
    completed = await services.uia.authenticate(
        flows, body.auth, method=request.method, uri=request.path)

    if body.password is None:
        raise MissingParam("Missing password")
    user_id = await services.accounts.register(
        body.username, body.password, registration_token=completed.get(REGISTRATION_TOKEN))
    await services.uia.finish(body.auth)

    if body.inhibit_login:
        return json_response({"user_id": user_id, "home_server": config.server_name})
    device_id, tokens = await services.auth.create_session(
        user_id, device_id=body.device_id, display_name=body.initial_device_display_name,
        with_refresh_token=body.refresh_token, ip=client_ip(request),
        user_agent=request.headers.get("User-Agent"))
    return json_response(session_json(Session(user_id, device_id, tokens), config.server_name))


@routes.get("/register/available")
async def get_register_available(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/register/available"""
    services = request.app[SERVICES]
    if not services.config.registration.enabled:
        raise Forbidden("Registration has been disabled")
    services.registration_ip_limiter.check(client_ip(request))
    username = request.query.get("username")
    if not username:
        raise MissingParam("Missing username")
    await services.accounts.check_username(username.lower())
    return json_response({"available": True})


@routes.get("/register/m.login.registration_token/validity", versions=("v1",))
async def get_registration_token_validity(request: web.Request) -> web.Response:
    """GET /_matrix/client/v1/register/m.login.registration_token/validity"""
    services = request.app[SERVICES]
    if not services.config.registration.enabled:
        raise Forbidden("Registration has been disabled")
    services.registration_ip_limiter.check(client_ip(request))
    token = request.query.get("token")
    if token is None:
        raise MissingParam("Missing token")
    return json_response({"valid": await services.accounts.registration_token_valid(token)})
