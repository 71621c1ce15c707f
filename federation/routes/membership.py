"""Membership handshakes on the resident side, and invites of our users
(https://spec.matrix.org/v1.19/server-server-api/#joining-rooms and the sections after it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from federation.routes._base import federation_route
from homeserver.http.json import json_response

if TYPE_CHECKING:
    from federation.container import Federation

routes = web.RouteTableDef()


def _make(membership: str) -> Any:
    @federation_route
    async def make(request: web.Request, fed: Federation, origin: str, _body: Any
                   ) -> web.Response:
        versions = request.query.getall("ver", []) if membership != "leave" else None
        if membership == "join" and not versions:
            versions = ["1"]  # spec: a server that names no versions supports only v1
        return json_response(await fed.resident.make(
            membership, origin, request.match_info["room_id"], request.match_info["user_id"],
            versions))

    return make


routes.get("/_matrix/federation/v1/make_join/{room_id}/{user_id}")(_make("join"))
routes.get("/_matrix/federation/v1/make_leave/{room_id}/{user_id}")(_make("leave"))
routes.get("/_matrix/federation/v1/make_knock/{room_id}/{user_id}")(_make("knock"))


@routes.put("/_matrix/federation/v2/send_join/{room_id}/{event_id}")
@federation_route
async def send_join_v2(request: web.Request, fed: Federation, origin: str, body: Any
                       ) -> web.Response:
    return json_response(await fed.resident.send_join(
        origin, request.match_info["room_id"], request.match_info["event_id"], body))


@routes.put("/_matrix/federation/v1/send_join/{room_id}/{event_id}")
@federation_route
async def send_join_v1(request: web.Request, fed: Federation, origin: str, body: Any
                       ) -> web.Response:
    answer = await fed.resident.send_join(origin, request.match_info["room_id"],
                                          request.match_info["event_id"], body)
    return json_response([200, {k: answer[k] for k in ("origin", "state", "auth_chain")}])


@routes.put("/_matrix/federation/v2/send_leave/{room_id}/{event_id}")
@federation_route
async def send_leave_v2(request: web.Request, fed: Federation, origin: str, body: Any
                        ) -> web.Response:
    await fed.resident.send("leave", origin, request.match_info["room_id"],
                            request.match_info["event_id"], body)
    return json_response({})


@routes.put("/_matrix/federation/v1/send_leave/{room_id}/{event_id}")
@federation_route
async def send_leave_v1(request: web.Request, fed: Federation, origin: str, body: Any
                        ) -> web.Response:
    await fed.resident.send("leave", origin, request.match_info["room_id"],
                            request.match_info["event_id"], body)
    return json_response([200, {}])


@routes.put("/_matrix/federation/v1/send_knock/{room_id}/{event_id}")
@federation_route
async def send_knock(request: web.Request, fed: Federation, origin: str, body: Any
                     ) -> web.Response:
    return json_response(await fed.resident.send_knock(
        origin, request.match_info["room_id"], request.match_info["event_id"], body))


@routes.put("/_matrix/federation/v2/invite/{room_id}/{event_id}")
@federation_route
async def invite_v2(request: web.Request, fed: Federation, origin: str, body: Any
                    ) -> web.Response:
    return json_response(await fed.resident.invite(
        origin, request.match_info["room_id"], request.match_info["event_id"], body))
