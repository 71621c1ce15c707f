"""The parts of Synapse's admin API that operators' tools call: shared-secret registration
(``register_new_matrix_user``) and registration tokens."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_admin
from client_api.models import NewRegistrationTokenBody, parse_body
from homeserver.appkeys import SERVICES
from homeserver.errors import NotFound
from homeserver.http.json import json_response, read_json_object
from storage.stores.auth_sessions import RegistrationToken

routes = ClientRoutes()
ADMIN_V1 = ("/_synapse/admin/v1",)


def _token_json(token: RegistrationToken) -> dict[str, Any]:
    return {"token": token.token, "uses_allowed": token.uses_allowed, "pending": token.pending,
            "completed": token.completed, "expiry_time": token.expiry_time}


@routes.get("/register", versions=ADMIN_V1)
async def get_register_nonce(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/register"""
    return json_response({"nonce": await request.app[SERVICES].accounts.new_registration_nonce()})


@routes.post("/register", versions=ADMIN_V1)
async def post_register_shared_secret(request: web.Request) -> web.Response:
    """POST /_synapse/admin/v1/register"""
    services = request.app[SERVICES]
    body = await read_json_object(request)
    user_id = await services.accounts.register_with_shared_secret(body)
    device_id, tokens = await services.auth.create_session(
        user_id, device_id=None, display_name=None, with_refresh_token=False,
        ip=request.remote, user_agent=request.headers.get("User-Agent"))
    return json_response({"user_id": user_id, "access_token": tokens.access_token,
                          "device_id": device_id, "home_server": services.config.server_name})


@routes.get("/registration_tokens", versions=ADMIN_V1)
async def get_registration_tokens(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/registration_tokens"""
    await require_admin(request)
    tokens = await request.app[SERVICES].accounts.list_registration_tokens()
    return json_response({"registration_tokens": [_token_json(t) for t in tokens]})


@routes.post("/registration_tokens/new", versions=ADMIN_V1)
async def post_registration_token(request: web.Request) -> web.Response:
    """POST /_synapse/admin/v1/registration_tokens/new"""
    await require_admin(request)
    body = parse_body(NewRegistrationTokenBody, await read_json_object(request, allow_empty=True))
    token = await request.app[SERVICES].accounts.create_registration_token(
        body.token, length=body.length, uses_allowed=body.uses_allowed,
        expiry_time=body.expiry_time)
    return json_response(_token_json(token))


@routes.get("/registration_tokens/{token}", versions=ADMIN_V1)
async def get_registration_token(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/registration_tokens/{token}"""
    await require_admin(request)
    token = await request.app[SERVICES].accounts.get_registration_token(
        request.match_info["token"])
    if token is None:
        raise NotFound("No such registration token")
    return json_response(_token_json(token))


@routes.delete("/registration_tokens/{token}", versions=ADMIN_V1)
async def delete_registration_token(request: web.Request) -> web.Response:
    """DELETE /_synapse/admin/v1/registration_tokens/{token}"""
    await require_admin(request)
    if not await request.app[SERVICES].accounts.delete_registration_token(
            request.match_info["token"]):
        raise NotFound("No such registration token")
    return json_response({})
