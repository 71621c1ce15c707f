"""Push rules (read-only for now: every account has the spec's default rules)."""

from __future__ import annotations

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from core.errors import NotFound
from homeserver.http.json import json_response
from homeserver.services.push_rules import default_push_rules

routes = ClientRoutes()


@routes.get("/pushrules/")
async def get_push_rules(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/pushrules/"""
    requester = await require_requester(request)
    return json_response(default_push_rules(requester.user_id))


@routes.get("/pushrules/global/")
async def get_global_push_rules(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/pushrules/global/"""
    requester = await require_requester(request)
    return json_response(default_push_rules(requester.user_id)["global"])


@routes.get("/pushrules/global/{kind}/{rule_id}")
async def get_push_rule(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}"""
    requester = await require_requester(request)
    rules = default_push_rules(requester.user_id)["global"].get(request.match_info["kind"])
    for rule in rules or []:
        if rule["rule_id"] == request.match_info["rule_id"]:
            return json_response(rule)
    raise NotFound("Unknown push rule")
