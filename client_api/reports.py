"""Reporting content to the server's admins, and the admin API listing the reports
(Synapse's paths, which synapse-admin calls)."""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_admin, require_requester
from client_api.models import Body, parse_body
from core.errors import InvalidParam
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.http.params import parse_int, query_int
from homeserver.services.messages import Reader

routes = ClientRoutes()
ADMIN_V1 = ("/_synapse/admin/v1",)
MAX_REASON = 65536
MAX_PAGE = 1000


class _EventReportBody(Body):
    reason: str | None = Field(default=None, max_length=MAX_REASON)
    score: int | None = None


class _RoomReportBody(Body):
    reason: str = Field(max_length=MAX_REASON)


@routes.post("/rooms/{room_id}/report/{event_id}")
async def post_report_event(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}"""
    requester = await require_requester(request)
    room_id = params.room_id(request.match_info["room_id"])
    event_id = params.event_id(request.match_info["event_id"])
    body = parse_body(_EventReportBody, await read_json_object(request, allow_empty=True))
    await request.app[SERVICES].reports.report_event(
        Reader(requester.user_id, requester.device_id), room_id, event_id, body.reason,
        body.score)
    return json_response({})


@routes.post("/rooms/{room_id}/report", versions=("v3",))
async def post_report_room(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/rooms/{roomId}/report (Matrix 1.13)"""
    requester = await require_requester(request)
    room_id = params.room_id(request.match_info["room_id"])
    body = parse_body(_RoomReportBody, await read_json_object(request))
    await request.app[SERVICES].reports.report_room(requester.user_id, room_id, body.reason)
    return json_response({})


# -- admin ----------------------------------------------------------------------------------


def _report_id(request: web.Request) -> int:
    try:
        return parse_int(request.match_info["report_id"], "report_id")
    except InvalidParam:
        raise InvalidParam("The report_id parameter must be a string representing a "
                           "positive integer.") from None


async def _list(request: web.Request, *, events: bool) -> web.Response:
    await require_admin(request)
    direction = request.query.get("dir", "b")
    if direction not in ("b", "f"):
        raise InvalidParam("Unknown direction: 'dir' must be b or f")
    return json_response(await request.app[SERVICES].reports.list_reports(
        events=events, offset=query_int(request, "from", 0),
        limit=min(query_int(request, "limit", 100), MAX_PAGE), newest_first=direction == "b",
        room_id=request.query.get("room_id"), user_id=request.query.get("user_id"),
        event_sender=request.query.get("event_sender_user_id") if events else None))


@routes.get("/event_reports", versions=ADMIN_V1)
async def get_event_reports(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/event_reports"""
    return await _list(request, events=True)


@routes.get("/event_reports/{report_id}", versions=ADMIN_V1)
async def get_event_report(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/event_reports/{reportId}"""
    await require_admin(request)
    return json_response(await request.app[SERVICES].reports.get_report(_report_id(request)))


@routes.delete("/event_reports/{report_id}", versions=ADMIN_V1)
async def delete_event_report(request: web.Request) -> web.Response:
    """DELETE /_synapse/admin/v1/event_reports/{reportId}"""
    await require_admin(request)
    await request.app[SERVICES].reports.delete_report(_report_id(request))
    return json_response({})


@routes.get("/room_reports", versions=ADMIN_V1)
async def get_room_reports(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/room_reports"""
    return await _list(request, events=False)


@routes.get("/room_reports/{report_id}", versions=ADMIN_V1)
async def get_room_report(request: web.Request) -> web.Response:
    """GET /_synapse/admin/v1/room_reports/{reportId}"""
    await require_admin(request)
    return json_response(await request.app[SERVICES].reports.get_report(
        _report_id(request), events=False))


@routes.delete("/room_reports/{report_id}", versions=ADMIN_V1)
async def delete_room_report(request: web.Request) -> web.Response:
    """DELETE /_synapse/admin/v1/room_reports/{reportId}"""
    await require_admin(request)
    await request.app[SERVICES].reports.delete_report(_report_id(request), events=False)
    return json_response({})
