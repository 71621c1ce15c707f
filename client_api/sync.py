"""/sync, the server-sent-events sync stream (DESIGN.md), and filters."""

from __future__ import annotations

from aiohttp import web
from aiohttp_sse import sse_response

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from core.errors import Forbidden, InvalidParam
from homeserver.appkeys import SERVICES
from homeserver.http.disconnect import disconnected
from homeserver.http.json import encode_json, json_response, read_json_object
from homeserver.services.auth import Requester
from homeserver.services.filtering import SyncFilter
from homeserver.services.sync import is_empty

routes = ClientRoutes()

MAX_TIMEOUT_MS = 5 * 60 * 1000
SSE_WAIT_MS = 25_000  # below the contract's 30 s keep-alive


def _timeout(request: web.Request) -> int:
    value = request.query.get("timeout", "0")
    try:
        return max(0, min(int(value), MAX_TIMEOUT_MS))
    except ValueError:
        raise InvalidParam("'timeout' must be an integer") from None


def _full_state(request: web.Request) -> bool:
    value = request.query.get("full_state", "false")
    if value not in ("true", "false"):
        raise InvalidParam("'full_state' must be true or false")
    return value == "true"


@routes.get("/sync")
async def get_sync(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/sync"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    sync_filter = await services.filters.resolve(requester.user_id,
                                                 request.query.get("filter"))
    async with services.presence.syncing(requester.user_id,
                                         request.query.get("set_presence")):
        body = await services.sync.sync(
            requester.user_id, requester.device_id, since=request.query.get("since"),
            timeout_ms=_timeout(request), full_state=_full_state(request),
            sync_filter=sync_filter, until=disconnected(request))
    return json_response(body)


@routes.get("/org.ktchat.sse/sync", versions=("unstable",))
async def get_sse_sync(request: web.Request) -> web.StreamResponse:
    """GET /_matrix/client/unstable/org.ktchat.sse/sync (docs/extensions.md, "SSE sync")

    One ``sync`` message per batch, ``id`` = next_batch; resumable with ``Last-Event-ID``
    or ``since``; a ``: ping`` comment whenever nothing happened for a while. After the first
    message no event is left out: a burst larger than the timeline limit goes out as several
    messages. A client that goes away ends the stream at once, quietly.
    """
    services = request.app[SERVICES]
    requester = await require_requester(request)
    sync_filter = await services.filters.resolve(requester.user_id,
                                                 request.query.get("filter"))
    full_state = _full_state(request)
    since = request.headers.get("Last-Event-ID") or request.query.get("since")
    async with services.presence.syncing(requester.user_id, request.query.get("set_presence")):
        return await _stream(request, requester, since, full_state, sync_filter)


async def _stream(request: web.Request, requester: Requester, since: str | None,
                  full_state: bool, sync_filter: SyncFilter) -> web.StreamResponse:
    services = request.app[SERVICES]
    gone = disconnected(request)
    first = await services.sync.sync(requester.user_id, requester.device_id, since=since,
                                     timeout_ms=0, full_state=full_state,
                                     sync_filter=sync_filter)
    # aiohttp-sse writes the ": ping" comment every 15 s on its own.
    stream = sse_response(request, headers={"X-Accel-Buffering": "no"})
    notifier = services.notifier
    async with stream as response:
        notifier.streams_open += 1  # (metrics)
        try:
            await response.send(encode_json(first).decode(), id=first["next_batch"],
                                event="sync")
            since = first["next_batch"]
            while not gone.done() and response.is_connected() \
                    and not services.notifier.closing:
                body = await services.sync.sync(
                    requester.user_id, requester.device_id, since=since,
                    timeout_ms=SSE_WAIT_MS, full_state=False, sync_filter=sync_filter,
                    complete=True, until=gone)
                since = body["next_batch"]
                if not is_empty(body) and not gone.done():
                    await response.send(encode_json(body).decode(), id=since, event="sync")
        except ConnectionError:
            pass  # the client went away while we wrote: the stream just ends
        finally:
            notifier.streams_open -= 1
    return response


@routes.post("/user/{user_id}/filter")
async def post_filter(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/user/{userId}/filter"""
    requester = await require_requester(request)
    if request.match_info["user_id"] != requester.user_id:
        raise Forbidden("Cannot create filters for other users")
    body = await read_json_object(request)
    filter_id = await request.app[SERVICES].filters.upload(requester.user_id, body)
    return json_response({"filter_id": filter_id})


@routes.get("/user/{user_id}/filter/{filter_id}")
async def get_filter(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/user/{userId}/filter/{filterId}"""
    requester = await require_requester(request)
    if request.match_info["user_id"] != requester.user_id:
        raise Forbidden("Cannot read other users' filters")
    return json_response(await request.app[SERVICES].filters.get(
        requester.user_id, request.match_info["filter_id"]))

