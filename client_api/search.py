"""Server-side search: POST /search."""

from __future__ import annotations

from aiohttp import web

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from client_api.models import SearchBody, parse_body
from core.errors import InvalidParam
from homeserver.appkeys import SERVICES
from homeserver.http.json import json_response, read_json_object
from homeserver.services.filtering import RoomEventFilter
from homeserver.services.messages import Reader
from homeserver.services.search import KEY_TYPES, RoomEventsSearch

routes = ClientRoutes()


@routes.post("/search")
async def post_search(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/search"""
    services = request.app[SERVICES]
    requester = await require_requester(request)
    body = parse_body(SearchBody, await read_json_object(request))
    criteria = body.search_categories.room_events
    if criteria is None:
        return json_response({"search_categories": {}})
    group_by = tuple(dict.fromkeys(g.key for g in criteria.groupings.group_by)) \
        if criteria.groupings else ()
    if any(key not in ("room_id", "sender") for key in group_by):
        raise InvalidParam("groupings may group by 'room_id' or 'sender'")
    context = criteria.event_context
    result = await services.search.search(
        Reader(requester.user_id, requester.device_id),
        RoomEventsSearch(
            search_term=criteria.search_term,
            keys=tuple(criteria.keys) if criteria.keys is not None else tuple(KEY_TYPES),
            event_filter=RoomEventFilter.from_json(criteria.filter),
            order_by=criteria.order_by,
            before_limit=context.before_limit if context else None,
            after_limit=context.after_limit if context else 5,
            include_profile=context.include_profile if context else False,
            include_state=criteria.include_state,
            group_by=group_by),
        request.query.get("next_batch"))
    return json_response({"search_categories": {"room_events": result}})
