"""Profiles: /profile/{userId} and its displayname and avatar_url fields."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from client_api import params
from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from core.errors import InvalidParam, MissingParam, NotFound
from core.types import parse_user_id
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.services.profile import FIELDS

routes = ClientRoutes()


def _user_id(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    try:
        parse_user_id(user_id)
    except ValueError:
        raise InvalidParam("Invalid user ID") from None
    return user_id


async def _profile(request: web.Request) -> dict[str, Any]:
    user_id = _user_id(request)
    services = request.app[SERVICES]
    if not services.accounts.is_mine(user_id):
        return await services.profiles.remote_profile(user_id)
    profile = await services.profiles.get_profile(user_id)
    return {k: v for k, v in (("displayname", profile.displayname),
                              ("avatar_url", profile.avatar_url)) if v is not None}


@routes.get("/profile/{user_id}")
async def get_profile(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/profile/{userId}"""
    profile = await _profile(request)
    if not profile:
        # As Synapse: a profile with nothing in it (e.g. erased) is "no profile information".
        raise NotFound("Profile was not found")
    return json_response(profile)


@routes.get("/profile/{user_id}/{field}")
async def get_profile_field(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/profile/{userId}/{keyName}"""
    field = request.match_info["field"]
    profile = await _profile(request)
    if field not in FIELDS or field not in profile:
        raise NotFound("The requested profile key does not exist.")
    return json_response({field: profile[field]})


@routes.put("/profile/{user_id}/{field}")
async def put_profile_field(request: web.Request) -> web.Response:
    """PUT /_matrix/client/v3/profile/{userId}/{keyName}"""
    requester = await require_requester(request)
    user_id = _user_id(request)
    field = params.profile_key(request.match_info["field"])
    body = await read_json_object(request)
    if field not in body:
        raise MissingParam(f"Missing key '{field}'")
    services = request.app[SERVICES]
    await services.profiles.set_field(
        requester.user_id, user_id, field, body[field], is_admin=requester.is_admin)
    await services.membership.propagate_profile(user_id)
    return json_response({})
