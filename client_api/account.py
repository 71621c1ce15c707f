"""The account itself: /account/whoami, /account/password, /account/deactivate."""

from __future__ import annotations

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from client_api.models import DeactivateBody, PasswordBody, parse_body
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.services.uia import PASSWORD

routes = ClientRoutes()


@routes.get("/account/whoami")
async def get_whoami(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/account/whoami"""
    requester = await require_requester(request)
    return json_response({"user_id": requester.user_id, "device_id": requester.device_id,
                          "is_guest": False})


@routes.post("/account/password")
async def post_password(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/account/password"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    body = parse_body(PasswordBody, await read_json_object(request))
    services.accounts.check_password_strength(body.new_password)
    await services.uia.authenticate([[PASSWORD]], body.auth, method=request.method,
                                    uri=request.path, user_id=requester.user_id)
    await services.accounts.change_password(
        requester.user_id, body.new_password, keep_device_id=requester.device_id,
        logout_devices=body.logout_devices)
    await services.uia.finish(body.auth)
    return json_response({})


@routes.post("/account/deactivate")
async def post_deactivate(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/account/deactivate"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    body = parse_body(DeactivateBody, await read_json_object(request))
    await services.uia.authenticate([[PASSWORD]], body.auth, method=request.method,
                                    uri=request.path, user_id=requester.user_id)
    await services.accounts.deactivate(requester.user_id, erase=body.erase)
    await services.uia.finish(body.auth)
    return json_response({"id_server_unbind_result": "no-support"})
