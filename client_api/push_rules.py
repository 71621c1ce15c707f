"""Push rules, pushers and notifications
(https://spec.matrix.org/v1.19/client-server-api/#push-notifications)."""

from __future__ import annotations

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from core.errors import InvalidParam
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.http.params import query_int

routes = ClientRoutes()

MAX_NOTIFICATIONS = 1000


def _path(request: web.Request) -> tuple[str, str, str]:
    info = request.match_info
    return info["scope"], info["kind"], info["rule_id"]


@routes.get("/pushrules/")
async def get_push_rules(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/pushrules/"""
    requester = await require_requester(request)
    rules = await request.app[SERVICES].push_rules.ruleset(requester.user_id)
    return json_response({"global": rules})


@routes.get("/pushrules/{scope}/")
async def get_scope_push_rules(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/pushrules/global/"""
    requester = await require_requester(request)
    if request.match_info["scope"] != "global":
        raise InvalidParam("The only push rule scope is 'global'")
    return json_response(await request.app[SERVICES].push_rules.ruleset(requester.user_id))


@routes.get("/pushrules/{scope}/{kind}/")
async def get_kind_push_rules(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/pushrules/global/{kind}/"""
    requester = await require_requester(request)
    if request.match_info["scope"] != "global":
        raise InvalidParam("The only push rule scope is 'global'")
    rules = await request.app[SERVICES].push_rules.ruleset(requester.user_id)
    kind = request.match_info["kind"]
    if kind not in rules:
        raise InvalidParam(f"Unknown push rule kind {kind!r}")
    return json_response(rules[kind])


@routes.get("/pushrules/{scope}/{kind}/{rule_id}")
async def get_push_rule(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
    requester = await require_requester(request)
    return json_response(await request.app[SERVICES].push_rules.rule(
        requester.user_id, *_path(request)))


@routes.put("/pushrules/{scope}/{kind}/{rule_id}")
async def put_push_rule(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
    requester = await require_requester(request)
    body = await read_json_object(request)
    await request.app[SERVICES].push_rules.put_rule(
        requester.user_id, *_path(request), body, request.query.get("before"),
        request.query.get("after"))
    return json_response({})


@routes.delete("/pushrules/{scope}/{kind}/{rule_id}")
async def delete_push_rule(request: web.Request) -> web.Response:
    """DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
    requester = await require_requester(request)
    await request.app[SERVICES].push_rules.delete_rule(requester.user_id, *_path(request))
    return json_response({})


def _attribute(request: web.Request) -> str:
    attr = request.match_info["attr"]
    if attr not in ("enabled", "actions"):
        raise InvalidParam("Unknown push rule attribute")
    return attr


@routes.get("/pushrules/{scope}/{kind}/{rule_id}/{attr}")
async def get_push_rule_attribute(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled|actions"""
    requester = await require_requester(request)
    return json_response(await request.app[SERVICES].push_rules.get_attribute(
        requester.user_id, *_path(request), _attribute(request)))


@routes.put("/pushrules/{scope}/{kind}/{rule_id}/{attr}")
async def put_push_rule_attribute(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled|actions"""
    requester = await require_requester(request)
    attr = _attribute(request)
    body = await read_json_object(request)
    if attr not in body:
        raise InvalidParam(f"'{attr}' is required")
    await request.app[SERVICES].push_rules.set_attribute(
        requester.user_id, *_path(request), attr, body[attr])
    return json_response({})


@routes.get("/pushers")
async def get_pushers(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/pushers"""
    requester = await require_requester(request)
    return json_response({"pushers": request.app[SERVICES].pushers.get_pushers(
        requester.user_id)})


@routes.post("/pushers/set")
async def set_pusher(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/pushers/set"""
    requester = await require_requester(request)
    body = await read_json_object(request)
    await request.app[SERVICES].pushers.set_pusher(requester.user_id, body)
    return json_response({})


@routes.get("/notifications")
async def get_notifications(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/notifications"""
    requester = await require_requester(request)
    only = request.query.get("only")
    if only not in (None, "highlight"):
        raise InvalidParam("'only' must be 'highlight'")
    before = query_int(request, "from")
    limit = query_int(request, "limit", 50, minimum=1)
    return json_response(await request.app[SERVICES].unread.notifications(
        requester.user_id, before, min(limit, MAX_NOTIFICATIONS), only == "highlight"))
