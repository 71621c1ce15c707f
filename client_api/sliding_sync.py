"""Simplified sliding sync (MSC4186) as Synapse serves it, and its server-sent-events
variant (docs/extensions.md, "SSE sliding sync")."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp_sse import sse_response

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from core.errors import BadJson, InvalidParam, NotJson
from homeserver.appkeys import SERVICES
from homeserver.http.disconnect import disconnected
from homeserver.http.json import encode_json, json_response, read_json_object
from homeserver.services.sliding_sync import (
    SlidingSyncRequest,
    is_empty,
    parse_request,
)

routes = ClientRoutes()

MAX_TIMEOUT_MS = 5 * 60 * 1000
SSE_WAIT_MS = 25_000  # below the SSE contract's 30 s keep-alive


def _timeout(request: web.Request) -> int:
    value = request.query.get("timeout", "0")
    try:
        return max(0, min(int(value), MAX_TIMEOUT_MS))
    except ValueError:
        raise InvalidParam("'timeout' must be an integer") from None


@routes.post("/org.matrix.simplified_msc3575/sync", versions=("unstable",))
async def post_sliding_sync(request: web.Request) -> web.Response:
    """POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync?pos=&timeout="""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    timeout = _timeout(request)
    body = parse_request(await read_json_object(request))
    response = await services.sliding_sync.sync(
        requester.user_id, requester.device_id, body, pos=request.query.get("pos"),
        timeout_ms=timeout, until=disconnected(request))
    return json_response(response)


def _sse_body(request: web.Request) -> SlidingSyncRequest:
    raw = request.query.get("request", "{}")
    try:
        body = json.loads(raw)
    except ValueError:
        raise NotJson("'request' must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadJson("'request' must be a JSON object")
    return parse_request(body)


@routes.get("/org.ktchat.sse/sliding_sync", versions=("unstable",))
async def get_sse_sliding_sync(request: web.Request) -> web.StreamResponse:
    """GET /_matrix/client/unstable/org.ktchat.sse/sliding_sync?request=JSON

    One ``sync`` message per sliding sync response, ``id`` = its ``pos``; resumable with
    ``Last-Event-ID`` (or ``pos``). Errors before the stream starts (a bad body, an unknown
    ``pos``) are ordinary Matrix errors.
    """
    services = request.app[SERVICES]
    requester = await require_requester(request)
    body = _sse_body(request)
    pos = request.headers.get("Last-Event-ID") or request.query.get("pos")
    sliding = services.sliding_sync
    gone = disconnected(request)
    first = await sliding.sync(requester.user_id, requester.device_id, body, pos=pos,
                               timeout_ms=0)
    # aiohttp-sse writes the ": ping" comment every 15 s on its own.
    stream = sse_response(request, headers={"X-Accel-Buffering": "no"})
    async with stream as response:
        try:
            await response.send(encode_json(first).decode(), id=first["pos"], event="sync")
            pos = first["pos"]
            while not gone.done() and response.is_connected() \
                    and not services.notifier.closing:
                update = await sliding.sync(requester.user_id, requester.device_id, body,
                                            pos=pos, timeout_ms=SSE_WAIT_MS, until=gone)
                if gone.done():
                    break
                pos = update["pos"]
                if not is_empty(update):
                    await response.send(encode_json(update).decode(), id=pos, event="sync")
        except ConnectionError:
            pass  # the client went away while we wrote: the stream just ends
    return response
