"""End-to-end encryption keys (https://spec.matrix.org/v1.19/client-server-api/#end-to-end-encryption):
/keys/upload, /keys/query, /keys/claim, /keys/changes, and cross-signing
(/keys/device_signing/upload, /keys/signatures/upload)."""

from __future__ import annotations

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from core.errors import MissingParam
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.services.uia import PASSWORD

routes = ClientRoutes()

# Replacing cross-signing keys takes the user's password (user-interactive auth).
_CROSS_SIGNING_FLOWS = [[PASSWORD]]


@routes.post("/keys/upload")
async def post_keys_upload(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/keys/upload"""
    requester = await require_requester(request)
    body = await read_json_object(request)
    counts = await request.app[SERVICES].keys.upload(requester.user_id, requester.device_id,
                                                     body)
    return json_response({"one_time_key_counts": counts})


@routes.post("/keys/query")
async def post_keys_query(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/keys/query"""
    requester = await require_requester(request)
    body = await read_json_object(request)
    return json_response(await request.app[SERVICES].keys.query(requester.user_id, body))


@routes.post("/keys/claim")
async def post_keys_claim(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/keys/claim"""
    await require_requester(request)
    body = await read_json_object(request)
    return json_response(await request.app[SERVICES].keys.claim(body))


@routes.get("/keys/changes")
async def get_keys_changes(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/keys/changes"""
    requester = await require_requester(request)
    from_token, to_token = request.query.get("from"), request.query.get("to")
    if from_token is None or to_token is None:
        raise MissingParam("'from' and 'to' are required")
    return json_response(await request.app[SERVICES].keys.changes(
        requester.user_id, from_token, to_token))


@routes.post("/keys/device_signing/upload")
async def post_device_signing_upload(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/keys/device_signing/upload"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    body = await read_json_object(request)
    auth = body.get("auth")
    needs_auth = await services.keys.cross_signing_upload_needs_auth(requester.user_id, body)
    if needs_auth:
        await services.uia.authenticate(_CROSS_SIGNING_FLOWS, auth, method=request.method,
                                        uri=request.path, user_id=requester.user_id)
    await services.keys.upload_cross_signing(requester.user_id, body)
    if needs_auth:
        await services.uia.finish(auth)
    return json_response({})


@routes.post("/keys/signatures/upload")
async def post_signatures_upload(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/keys/signatures/upload"""
    requester = await require_requester(request)
    body = await read_json_object(request)
    return json_response(await request.app[SERVICES].keys.upload_signatures(
        requester.user_id, body))
