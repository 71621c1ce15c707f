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


def _send(membership: str, *, v1: bool) -> Any:
    """``send_join``/``send_leave``/``send_knock``; the v1 join and leave answer
    ``[200, body]`` (a join only the v1 keys)."""
    @federation_route
    async def send(request: web.Request, fed: Federation, origin: str, body: Any
                   ) -> web.Response:
        room_id, event_id = request.match_info["room_id"], request.match_info["event_id"]
        answer: dict[str, Any] = {}
        if membership == "join":
            answer = await fed.resident.send_join(origin, room_id, event_id, body)
        elif membership == "knock":
            answer = await fed.resident.send_knock(origin, room_id, event_id, body)
        else:
            await fed.resident.send(membership, origin, room_id, event_id, body)
        if not v1:
            return json_response(answer)
        if membership == "join":
            answer = {k: answer[k] for k in ("origin", "state", "auth_chain")}
        return json_response([200, answer])

    return send


for _path, _membership, _v1 in (("v2/send_join", "join", False), ("v1/send_join", "join", True),
                                ("v2/send_leave", "leave", False),
                                ("v1/send_leave", "leave", True),
                                ("v1/send_knock", "knock", False)):
    routes.put(f"/_matrix/federation/{_path}/{{room_id}}/{{event_id}}")(
        _send(_membership, v1=_v1))


@routes.put("/_matrix/federation/v2/invite/{room_id}/{event_id}")
@federation_route
async def invite_v2(request: web.Request, fed: Federation, origin: str, body: Any
                    ) -> web.Response:
    return json_response(await fed.resident.invite(
        origin, request.match_info["room_id"], request.match_info["event_id"], body))
