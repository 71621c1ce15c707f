"""Reading a room's events and state over federation
(https://spec.matrix.org/v1.16/server-server-api/#retrieving-events,
https://spec.matrix.org/v1.16/server-server-api/#backfilling-and-retrieving-missing-events and
https://spec.matrix.org/v1.16/server-server-api/#get_matrixfederationv1event_authroomideventid).

Only a server with a user joined to the room may read it (``403 M_FORBIDDEN`` otherwise, as
Synapse's ``assert_host_in_room``); an unknown room or an event of another room is
``404 M_NOT_FOUND``. Events go out in their stored federation form; those the server may not
see under the room's history visibility go out redacted (``ServerVisibility``), as Synapse
does, so the requesting server can still verify and link them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from core.errors import BadJson, Forbidden, InvalidParam, MissingParam, NotFound
from federation.routes._base import federation_route
from homeserver.http.json import json_response
from homeserver.http.params import parse_int
from homeserver.services.server_visibility import federation_pdu
from roomserver.api import StoredPdu

if TYPE_CHECKING:
    from federation.container import Federation

routes = web.RouteTableDef()

# /get_missing_events: the spec's default, and Synapse's cap.
MISSING_EVENTS_DEFAULT_LIMIT = 10
MISSING_EVENTS_MAX_LIMIT = 20
# /backfill: Synapse's cap on ``limit``.
BACKFILL_MAX_LIMIT = 100
# At most this many event IDs are read from a /get_missing_events body list.
_MAX_LISTED_EVENTS = 1000


async def require_server_in_room(fed: Federation, origin: str, room_id: str) -> None:
    """404 for a room unknown here, 403 unless ``origin`` has a user joined to it."""
    if await fed.rooms.room_version(room_id) is None:
        raise NotFound("Unknown room")
    if not await fed.served.visibility.server_in_room(origin, room_id):
        raise Forbidden("Host not in room")
    if not await fed.rooms.server_allowed(room_id, origin):
        raise Forbidden("Server is banned from this room")


async def _event_in_room(fed: Federation, room_id: str, event_id: str) -> StoredPdu:
    """The stored event, or 404 if it is unknown or belongs to another room."""
    event = (await fed.rooms.stored_pdus([event_id])).get(event_id)
    if event is None or event.room_id != room_id:
        raise NotFound(f"Unknown event {event_id} in room {room_id}")
    return event


async def _pdus(fed: Federation, event_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Stored events in federation form, oldest first (unknown ones left out)."""
    stored = await fed.rooms.stored_pdus(event_ids)
    return [federation_pdu(e) for e in sorted(stored.values(),
                                               key=lambda e: (e.depth, e.event_id))]


async def _state_before(fed: Federation, origin: str, request: web.Request
                        ) -> tuple[list[str], list[str]]:
    """``(state event IDs, auth chain IDs)`` before the ``event_id`` of a /state request."""
    room_id = request.match_info["room_id"]
    event_id = request.query.get("event_id")
    if not event_id:
        raise MissingParam("Missing query parameter: event_id")
    await require_server_in_room(fed, origin, room_id)
    event = await _event_in_room(fed, room_id, event_id)
    if event.outlier:
        raise NotFound(f"State not known at event {event_id}")
    state = list((await fed.rooms.state_before([event_id])).get(event_id, {}).values())
    chain = await fed.rooms.auth_chain(state)
    return state, [e.event_id for e in chain]


@routes.get("/_matrix/federation/v1/event/{event_id}")
@federation_route
async def get_event(request: web.Request, fed: Federation, origin: str, _body: Any
                    ) -> web.Response:
    """GET /_matrix/federation/v1/event/{eventId}: a transaction holding the one PDU."""
    event_id = request.match_info["event_id"]
    event = (await fed.rooms.stored_pdus([event_id])).get(event_id)
    if event is None:
        raise NotFound(f"Unknown event {event_id}")
    await require_server_in_room(fed, origin, event.room_id)
    pdus = await fed.served.visibility.pdus_for_server(origin, [event])
    return json_response({"origin": fed.server_name,
                          "origin_server_ts": fed.clock.time_ms(), "pdus": pdus})


@routes.get("/_matrix/federation/v1/state/{room_id}")
@federation_route
async def get_state(request: web.Request, fed: Federation, origin: str, _body: Any
                    ) -> web.Response:
    """GET /_matrix/federation/v1/state/{roomId}?event_id=: the state before the event."""
    state, chain = await _state_before(fed, origin, request)
    return json_response({"pdus": await _pdus(fed, state),
                          "auth_chain": await _pdus(fed, chain)})


@routes.get("/_matrix/federation/v1/state_ids/{room_id}")
@federation_route
async def get_state_ids(request: web.Request, fed: Federation, origin: str, _body: Any
                        ) -> web.Response:
    """GET /_matrix/federation/v1/state_ids/{roomId}?event_id=: the same, as event IDs."""
    state, chain = await _state_before(fed, origin, request)
    return json_response({"pdu_ids": state, "auth_chain_ids": chain})


@routes.get("/_matrix/federation/v1/event_auth/{room_id}/{event_id}")
@federation_route
async def get_event_auth(request: web.Request, fed: Federation, origin: str, _body: Any
                         ) -> web.Response:
    """GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}: the event's full auth
    chain (its auth events, theirs, and so on)."""
    room_id = request.match_info["room_id"]
    await require_server_in_room(fed, origin, room_id)
    event = await _event_in_room(fed, room_id, request.match_info["event_id"])
    chain = await fed.rooms.auth_chain([event.event_id])
    return json_response({"auth_chain": await _pdus(fed, [e.event_id for e in chain])})


def _event_id_list(body: dict[str, Any], key: str) -> list[str]:
    if key not in body:
        raise MissingParam(f"Missing '{key}'")
    value = body[key]
    if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
        raise BadJson(f"'{key}' must be a list of event IDs")
    return value[:_MAX_LISTED_EVENTS]


def _int_field(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadJson(f"'{key}' must be an integer")
    return value


async def _walk_back(fed: Federation, room_id: str, start: Iterable[StoredPdu],
                     seen: set[str], limit: int, min_depth: int = 0) -> list[StoredPdu]:
    """Up to ``limit`` events of the room reached by walking back along ``prev_events``
    from ``start`` (not included), deepest first level by level, never entering ``seen``,
    rejected events or events below ``min_depth``. One read per level of the walk."""
    front = {p for e in start for p in e.pdu.get("prev_events", [])} - seen
    found: list[StoredPdu] = []
    while front and len(found) < limit:
        seen |= front
        loaded = await fed.rooms.stored_pdus(front)
        level = sorted((e for e in loaded.values() if e.room_id == room_id
                        and not e.rejected and e.depth >= min_depth),
                       key=lambda e: (-e.depth, e.event_id))[:limit - len(found)]
        found.extend(level)
        front = {p for e in level for p in e.pdu.get("prev_events", [])} - seen
    return found


@routes.post("/_matrix/federation/v1/get_missing_events/{room_id}")
@federation_route
async def get_missing_events(request: web.Request, fed: Federation, origin: str,
                             body: dict[str, Any]) -> web.Response:
    """POST /_matrix/federation/v1/get_missing_events/{roomId}.

    A breadth-first walk back along ``prev_events`` from ``latest_events`` (themselves not
    returned), not entering ``earliest_events`` nor events of another room, nor going below
    ``min_depth``, until ``limit`` events (at most 20, as Synapse); answered oldest first.
    Unknown IDs and IDs of other rooms are ignored (Synapse's behaviour since
    GHSA-27p5-4f45-gx76).
    """
    room_id = request.match_info["room_id"]
    earliest = _event_id_list(body, "earliest_events")
    latest = _event_id_list(body, "latest_events")
    limit = _int_field(body, "limit", MISSING_EVENTS_DEFAULT_LIMIT)
    min_depth = _int_field(body, "min_depth", 0)
    if limit < 0:
        raise InvalidParam("'limit' must not be negative")
    limit = min(limit, MISSING_EVENTS_MAX_LIMIT)
    await require_server_in_room(fed, origin, room_id)

    start = [e for e in (await fed.rooms.stored_pdus(latest)).values()
             if e.room_id == room_id]
    found = await _walk_back(fed, room_id, start, set(earliest) | set(latest), limit,
                             min_depth)
    found.sort(key=lambda e: (e.depth, e.stream_ordering or 0, e.event_id))
    pdus = await fed.served.visibility.pdus_for_server(origin, found)
    return json_response({"events": pdus})


@routes.get("/_matrix/federation/v1/backfill/{room_id}")
@federation_route
async def backfill(request: web.Request, fed: Federation, origin: str, _body: Any
                   ) -> web.Response:
    """GET /_matrix/federation/v1/backfill/{roomId}?v=...&limit=: the events ``v`` (those
    known in the room) and, walking back along ``prev_events`` from them, earlier ones, at
    most ``limit`` (capped at 100, as Synapse) in all, newest first as Synapse answers.
    Events the asking server may not see go out redacted."""
    room_id = request.match_info["room_id"]
    wanted = request.query.getall("v", [])[:_MAX_LISTED_EVENTS]
    if not wanted:
        raise MissingParam("Missing query parameter: v")
    raw_limit = request.query.get("limit")
    if raw_limit is None:
        raise MissingParam("Missing query parameter: limit")
    limit = min(parse_int(raw_limit, "limit"), BACKFILL_MAX_LIMIT)
    await require_server_in_room(fed, origin, room_id)

    start = sorted((e for e in (await fed.rooms.stored_pdus(wanted)).values()
                    if e.room_id == room_id and not e.rejected),
                   key=lambda e: (-e.depth, e.event_id))[:limit]
    found = start + await _walk_back(fed, room_id, start, {e.event_id for e in start},
                                     limit - len(start))
    found.sort(key=lambda e: (-e.depth, -(e.stream_ordering or 0), e.event_id))
    pdus = await fed.served.visibility.pdus_for_server(origin, found)
    return json_response({"origin": fed.server_name,
                          "origin_server_ts": fed.clock.time_ms(), "pdus": pdus})
