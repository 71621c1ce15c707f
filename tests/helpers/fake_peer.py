"""A fake remote homeserver for adversarial federation tests.

``FakePeer`` has its own ed25519 signing key and serves ``GET /_matrix/key/v2/server`` over
TLS (a self-signed certificate) on ``127.0.0.1``, under the server name ``127.0.0.1:<port>``,
so a real ``ktchat`` process (``verify_tls: false``, loopback allowlisted) can fetch its key.
It signs requests (``X-Matrix``) and sends them to a ``FedServer``'s federation port, builds
hashed and signed PDUs, and joins rooms with the real ``make_join``/``send_join`` handshake,
keeping the room's state so later PDUs name correct ``auth_events``/``prev_events``/``depth``.

Everything it does can be bent: a request unsigned, signed for the wrong destination or by
the wrong key; a PDU tampered after signing, sent by someone else's user, or not JSON at all.
What our server sends it (transactions, key queries, anything) is answered ``200 {}``-ish and
recorded in ``received`` (and, with the request's headers, in ``requests``).

It can also host rooms of its own (``create_room``), as a resident server: it answers
``make_join``/``send_join`` (v1 and v2), ``state_ids``, ``state``, ``event``, ``event_auth``,
``get_missing_events``, ``backfill`` and ``query/directory`` for them, takes the PDUs our
server sends into them, answers ``publicRooms`` with whatever ``public_rooms`` holds (any
status, any body), and can be told to misbehave (``RoomTrack.send_join_extra_state``:
PDUs slipped into the ``send_join`` answer's state; ``make_join_error``: answer every
``make_join`` with an error, as a server that cannot help).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yarl
from aiohttp import web
from signedjson.key import generate_signing_key
from signedjson.types import SigningKey

from core.crypto.tls import generate_self_signed
from core.events.builder import build_event, event_from_pdu
from core.events.hashing import add_content_hash
from core.events.model import Event
from core.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from core.events.signing import sign_event
from core.rooms.auth import auth_types_for_event
from federation.keys.server import signed_key_response
from federation.transport.x_matrix import sign_request
from tests.helpers.federation import FedServer
from tests.helpers.processes import free_port

JsonDict = dict[str, Any]
SUPPORTED_VERSIONS = ("10", "11", "12")


def q(value: str) -> str:
    return quote(value, safe="")


@dataclass
class RoomTrack:
    """What the fake knows of one room: its version, current state and forward extremity.

    ``hosted``: the fake is the room's resident server (it made the room); ``state_after``
    holds the state after each event the fake took in (a hosted room does not fork)."""

    room_id: str
    version: RoomVersion
    state: dict[tuple[str, str], str] = field(default_factory=dict)
    events: dict[str, JsonDict] = field(default_factory=dict)
    extremities: list[str] = field(default_factory=list)
    depth: int = 0
    hosted: bool = False
    state_after: dict[str, dict[tuple[str, str], str]] = field(default_factory=dict)
    send_join_extra_state: list[JsonDict] = field(default_factory=list)
    send_join_extra_auth_chain: list[JsonDict] = field(default_factory=list)

    def accept(self, event: Event) -> None:
        """Take ``event`` as the new head of the room (as if our server accepted it)."""
        self.events[event.event_id] = dict(event.pdu)
        if event.state_tuple is not None:
            self.state[event.state_tuple] = event.event_id
        self.state_after[event.event_id] = dict(self.state)
        self.extremities = [event.event_id]
        self.depth = max(self.depth, event.pdu["depth"])

    def state_before(self, event_id: str) -> dict[tuple[str, str], str] | None:
        """The state before a known event: the state after its (first) prev event."""
        pdu = self.events.get(event_id)
        if pdu is None:
            return None
        prevs = pdu.get("prev_events") or []
        if not prevs:
            return {}
        return self.state_after.get(prevs[0])

    def walk_back(self, frontier: list[str], seen: set[str], limit: int) -> list[JsonDict]:
        """Up to ``limit`` known events from ``frontier`` back along ``prev_events``,
        breadth first, never entering ``seen``."""
        found: list[JsonDict] = []
        while frontier and len(found) < limit:
            next_frontier: list[str] = []
            for event_id in frontier:
                if event_id in seen or event_id not in self.events or len(found) >= limit:
                    continue
                seen.add(event_id)
                found.append(self.events[event_id])
                next_frontier.extend(self.events[event_id].get("prev_events", []))
            frontier = next_frontier
        return found

    def auth_chain(self, event_ids: list[str]) -> list[JsonDict]:
        """The auth chain of known events (not including them unless reached), oldest first."""
        seen: dict[str, JsonDict] = {}
        frontier = [a for e in event_ids for a in self.events.get(e, {}).get("auth_events", [])]
        while frontier:
            next_frontier: list[str] = []
            for event_id in frontier:
                if event_id in seen or event_id not in self.events:
                    continue
                seen[event_id] = self.events[event_id]
                next_frontier.extend(self.events[event_id].get("auth_events", []))
            frontier = next_frontier
        return sorted(seen.values(), key=lambda p: int(p.get("depth", 0)))


@dataclass
class ReceivedRequest:
    """A request our server made of the fake, with its headers."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class FakePeer:
    """A fake homeserver. ``await start()``, then use; ``await close()`` at the end."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.signing_key: SigningKey = generate_signing_key("fake1")
        self.port = free_port()
        self.server_name = f"127.0.0.1:{self.port}"
        self.rooms: dict[str, RoomTrack] = {}
        self.received: list[tuple[str, str, Any]] = []
        self.requests: list[ReceivedRequest] = []
        self.aliases: dict[str, tuple[str, list[str]]] = {}
        self.profiles: dict[str, JsonDict] = {}
        # (status, body) answered to every make_join, when set: a server that cannot help.
        self.make_join_error: tuple[int, JsonDict] | None = None
        # (status, body) answered to ``GET``/``POST /publicRooms`` by method; a method not
        # here is unknown (404 M_UNRECOGNIZED). A ``bytes`` body is sent as it is.
        self.public_rooms: dict[str, tuple[int, Any]] = {}
        # Its users' device lists: ``GET /user/devices/{userId}`` answers the entry as it is;
        # ``POST /user/keys/query`` answers ``keys_query`` (unknown: 404 for both).
        self.user_devices: dict[str, JsonDict] = {}
        self.keys_query: JsonDict | None = None
        # Seconds ``/user/devices`` waits before answering what it held when asked.
        self.devices_delay = 0.0
        # More routes (method, path, handler) a test adds before ``start()``.
        self.extra_routes: list[tuple[str, str, Any]] = []
        self._runner: web.AppRunner | None = None

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    @property
    def key_id(self) -> str:
        return f"{self.signing_key.alg}:{self.signing_key.version}"

    # -- the HTTPS server ------------------------------------------------------------------

    async def start(self) -> FakePeer:
        cert, key = self.dir / "tls.crt", self.dir / "tls.key"
        generate_self_signed("127.0.0.1", cert, key)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_get("/_matrix/key/v2/server", self._keys)
        app.router.add_get("/_matrix/key/v2/server/{key_id}", self._keys)
        app.router.add_get("/_matrix/federation/v1/version", self._version)
        app.router.add_put("/_matrix/federation/v1/send/{txn_id}", self._transaction)
        fed = "/_matrix/federation"
        app.router.add_get(fed + "/v1/make_join/{room_id}/{user_id}", self._make_join)
        app.router.add_put(fed + "/v1/send_join/{room_id}/{event_id}", self._send_join_v1)
        app.router.add_put(fed + "/v2/send_join/{room_id}/{event_id}", self._send_join_v2)
        app.router.add_get(fed + "/v1/make_leave/{room_id}/{user_id}", self._make_leave)
        app.router.add_put(fed + "/v2/send_leave/{room_id}/{event_id}", self._send_leave)
        app.router.add_get(fed + "/v1/state_ids/{room_id}", self._state_ids)
        app.router.add_get(fed + "/v1/state/{room_id}", self._state)
        app.router.add_get(fed + "/v1/event/{event_id}", self._event)
        app.router.add_get(fed + "/v1/event_auth/{room_id}/{event_id}", self._event_auth)
        app.router.add_post(fed + "/v1/get_missing_events/{room_id}",
                            self._get_missing_events)
        app.router.add_get(fed + "/v1/backfill/{room_id}", self._backfill)
        app.router.add_get(fed + "/v1/query/directory", self._query_directory)
        app.router.add_get(fed + "/v1/query/profile", self._query_profile)
        app.router.add_put(fed + "/v2/invite/{room_id}/{event_id}", self._invite)
        app.router.add_route("*", fed + "/v1/publicRooms", self._public_rooms)
        app.router.add_get(fed + "/v1/user/devices/{user_id}", self._devices)
        app.router.add_post(fed + "/v1/user/keys/query", self._query_keys)
        for method, path, handler in self.extra_routes:
            app.router.add_route(method, path, handler)
        app.router.add_route("*", "/{tail:.*}", self._anything)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=tls).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _keys(self, request: web.Request) -> web.Response:
        return web.json_response(signed_key_response(self.server_name, self.signing_key,
                                                     int(time.time() * 1000)))

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"server": {"name": "fake-peer", "version": "0"}})

    async def _record(self, request: web.Request) -> Any:
        """Keep the request in ``requests``; returns its JSON body (None if none)."""
        body: Any = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                body = None
        query: dict[str, list[str]] = {}
        for key, value in request.query.items():
            query.setdefault(key, []).append(value)
        self.requests.append(ReceivedRequest(request.method, request.path_qs, query,
                                             dict(request.headers), body))
        return body

    async def _transaction(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        self.received.append((request.method, request.path, body))
        pdus = body.get("pdus", []) if isinstance(body, dict) else []
        if not isinstance(pdus, list):
            return web.json_response({})
        for pdu in pdus:
            # PDUs of the rooms the fake hosts become part of them (our server's events).
            room = self.rooms.get(str(pdu.get("room_id"))) if isinstance(pdu, dict) \
                else None
            if room is not None and room.hosted:
                event = event_from_pdu(pdu, room.version)
                if event.event_id not in room.events:
                    room.accept(event)
        return web.json_response({"pdus": {}})

    async def _devices(self, request: web.Request) -> web.Response:
        await self._record(request)
        answer = self.user_devices.get(request.match_info["user_id"])
        if self.devices_delay:
            await asyncio.sleep(self.devices_delay)
        if answer is None:
            return self._error(404, "M_NOT_FOUND", "fake peer: unknown user")
        return web.json_response(answer)

    async def _query_keys(self, request: web.Request) -> web.Response:
        await self._record(request)
        if self.keys_query is None:
            return self._error(404, "M_UNRECOGNIZED", "fake peer")
        return web.json_response(self.keys_query)

    async def _anything(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.received.append((request.method, request.path, None))
        return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "fake peer"},
                                 status=404)

    # -- hosting rooms: the resident server's side -----------------------------------------

    @staticmethod
    def _error(status: int, errcode: str, error: str, **extra: Any) -> web.Response:
        return web.json_response({"errcode": errcode, "error": error, **extra}, status=status)

    def _known(self, room_id: str) -> RoomTrack | None:
        return self.rooms.get(room_id)

    async def _make_join(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.received.append((request.method, request.path, None))
        if self.make_join_error is not None:
            status, body = self.make_join_error
            return web.json_response(body, status=status)
        room = self.rooms.get(request.match_info["room_id"])
        if room is None or not room.hosted:
            return self._error(404, "M_NOT_FOUND", "Unknown room")
        versions = request.query.getall("ver", ["1"])
        if room.version.identifier not in versions:
            return self._error(400, "M_INCOMPATIBLE_ROOM_VERSION", "Incompatible version",
                               room_version=room.version.identifier)
        return web.json_response({"room_version": room.version.identifier,
                                  "event": self._template(room, request, "join")})

    def _template(self, room: RoomTrack, request: web.Request, membership: str) -> JsonDict:
        user_id = request.match_info["user_id"]
        content = {"membership": membership}
        types = auth_types_for_event(room.version, "m.room.member", user_id, user_id, content)
        return {
            "type": "m.room.member", "room_id": room.room_id, "sender": user_id,
            "state_key": user_id, "content": content, "prev_events": list(room.extremities),
            "auth_events": [room.state[t] for t in sorted(types) if t in room.state],
            "depth": room.depth + 1, "origin_server_ts": int(time.time() * 1000),
            "origin": self.server_name,
        }

    async def _make_leave(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.received.append((request.method, request.path, None))
        room = self.rooms.get(request.match_info["room_id"])
        if room is None or not room.hosted:
            return self._error(404, "M_NOT_FOUND", "Unknown room")
        return web.json_response({"room_version": room.version.identifier,
                                  "event": self._template(room, request, "leave")})

    async def _send_leave(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        self.received.append((request.method, request.path, body))
        room = self.rooms.get(request.match_info["room_id"])
        if room is None or not room.hosted:
            return self._error(404, "M_NOT_FOUND", "Unknown room")
        if not isinstance(body, dict):
            return self._error(400, "M_BAD_JSON", "Not an event")
        event = event_from_pdu(body, room.version)
        if event.event_id != request.match_info["event_id"] or event.membership != "leave":
            return self._error(400, "M_BAD_JSON", "Not the leave in the path")
        room.accept(event)
        return web.json_response({})

    async def _take_join(self, request: web.Request) -> tuple[JsonDict | None,
                                                              web.Response | None]:
        """The send_join answer (v2 form), or an error response."""
        body = await self._record(request)
        self.received.append((request.method, request.path, body))
        room = self.rooms.get(request.match_info["room_id"])
        if room is None or not room.hosted:
            return None, self._error(404, "M_NOT_FOUND", "Unknown room")
        if not isinstance(body, dict):
            return None, self._error(400, "M_BAD_JSON", "Not an event")
        event = event_from_pdu(body, room.version)
        if event.event_id != request.match_info["event_id"] or event.membership != "join":
            return None, self._error(400, "M_BAD_JSON", "Not the join in the path")
        state_before = dict(room.state)
        room.accept(event)
        state = [room.events[e] for e in state_before.values()]
        chain = room.auth_chain(list(state_before.values()))
        servers = sorted({self.server_name, *(k[1].split(":", 1)[1] for k, v in
                                               room.state.items() if k[0] == "m.room.member"
                                               and room.events[v]["content"].get("membership")
                                               == "join")})
        return {"origin": self.server_name, "members_omitted": False,
                "event": dict(event.pdu),
                "state": [*state, *room.send_join_extra_state],
                "auth_chain": [*chain, *room.send_join_extra_auth_chain],
                "servers_in_room": servers}, None

    async def _send_join_v2(self, request: web.Request) -> web.Response:
        answer, error = await self._take_join(request)
        return error if error is not None else web.json_response(answer)

    async def _send_join_v1(self, request: web.Request) -> web.Response:
        answer, error = await self._take_join(request)
        if error is not None or answer is None:
            return error or self._error(500, "M_UNKNOWN", "no answer")
        return web.json_response([200, {k: answer[k] for k in ("origin", "state",
                                                               "auth_chain")}])

    def _state_at(self, request: web.Request) -> tuple[RoomTrack | None, list[str] | None]:
        room = self.rooms.get(request.match_info["room_id"])
        event_id = request.query.get("event_id", "")
        if room is None:
            return None, None
        state = room.state_before(event_id)
        return room, list(state.values()) if state is not None else None

    async def _state_ids(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.received.append((request.method, request.path, None))
        room, state = self._state_at(request)
        if room is None or state is None:
            return self._error(404, "M_NOT_FOUND", "Unknown room or event")
        return web.json_response({"pdu_ids": state, "auth_chain_ids": [
            p_id for p_id in (self._id_of(room, p) for p in room.auth_chain(state))]})

    async def _state(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.received.append((request.method, request.path, None))
        room, state = self._state_at(request)
        if room is None or state is None:
            return self._error(404, "M_NOT_FOUND", "Unknown room or event")
        return web.json_response({"pdus": [room.events[e] for e in state],
                                  "auth_chain": room.auth_chain(state)})

    @staticmethod
    def _id_of(room: RoomTrack, pdu: JsonDict) -> str:
        return event_from_pdu(pdu, room.version).event_id

    async def _event(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.received.append((request.method, request.path, None))
        event_id = request.match_info["event_id"]
        for room in self.rooms.values():
            if event_id in room.events:
                return web.json_response({"origin": self.server_name,
                                          "origin_server_ts": int(time.time() * 1000),
                                          "pdus": [room.events[event_id]]})
        return self._error(404, "M_NOT_FOUND", "Unknown event")

    async def _event_auth(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.received.append((request.method, request.path, None))
        room = self.rooms.get(request.match_info["room_id"])
        event_id = request.match_info["event_id"]
        if room is None or event_id not in room.events:
            return self._error(404, "M_NOT_FOUND", "Unknown event")
        return web.json_response({"auth_chain": room.auth_chain([event_id])})

    async def _get_missing_events(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        self.received.append((request.method, request.path, body))
        room = self.rooms.get(request.match_info["room_id"])
        if room is None or not isinstance(body, dict):
            return self._error(404, "M_NOT_FOUND", "Unknown room")
        limit = int(body.get("limit", 10))
        earliest = set(body.get("earliest_events", []))
        latest = list(body.get("latest_events", []))
        found = room.walk_back(
            [p for e in latest for p in room.events.get(e, {}).get("prev_events", [])],
            set(earliest) | set(latest), limit)
        found.sort(key=lambda p: int(p.get("depth", 0)))
        return web.json_response({"events": found})

    async def _backfill(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.received.append((request.method, request.path, None))
        room = self.rooms.get(request.match_info["room_id"])
        if room is None:
            return self._error(404, "M_NOT_FOUND", "Unknown room")
        limit = int(request.query.get("limit", "10"))
        found = room.walk_back(request.query.getall("v", []), set(), limit)
        found.sort(key=lambda p: -int(p.get("depth", 0)))
        return web.json_response({"origin": self.server_name,
                                  "origin_server_ts": int(time.time() * 1000), "pdus": found})

    async def _query_directory(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.received.append((request.method, request.path, None))
        alias = request.query.get("room_alias", "")
        if alias not in self.aliases:
            return self._error(404, "M_NOT_FOUND", "Unknown alias")
        room_id, servers = self.aliases[alias]
        return web.json_response({"room_id": room_id, "servers": servers})

    async def _public_rooms(self, request: web.Request) -> web.Response:
        if request.method not in self.public_rooms:
            return await self._anything(request)
        await self._record(request)
        self.received.append((request.method, request.path, None))
        status, body = self.public_rooms[request.method]
        if isinstance(body, bytes):
            return web.Response(body=body, status=status, content_type="application/json")
        return web.json_response(body, status=status)

    async def _invite(self, request: web.Request) -> web.Response:
        """An invite of one of the fake's users: countersigned and accepted (recorded)."""
        body = await self._record(request)
        self.received.append((request.method, request.path, body))
        if not isinstance(body, dict) or not isinstance(body.get("event"), dict):
            return self._error(400, "M_BAD_JSON", "No event")
        version = KNOWN_ROOM_VERSIONS.get(str(body.get("room_version")))
        if version is None:
            return self._error(400, "M_INCOMPATIBLE_ROOM_VERSION", "Unknown version",
                               room_version=str(body.get("room_version")))
        signed = sign_event(dict(body["event"]), version, self.server_name, self.signing_key)
        return web.json_response({"event": signed})

    async def _query_profile(self, request: web.Request) -> web.Response:
        await self._record(request)
        self.received.append((request.method, request.path, None))
        profile = self.profiles.get(request.query.get("user_id", ""))
        if profile is None:
            return self._error(404, "M_NOT_FOUND", "Profile was not found")
        field_name = request.query.get("field")
        if field_name is not None:
            profile = {k: v for k, v in profile.items() if k == field_name}
        return web.json_response(profile)

    def create_room(self, *, version: str = "10", creator: str = "creator",
                    name: str | None = None, join_rule: str = "public",
                    alias: str | None = None) -> str:
        """A room hosted by the fake, made by ``@creator`` (power 100): create, the creator's
        join, power levels, join rules, history visibility and, if given, a name. Room
        versions up to 11 (the room ID names the fake)."""
        room_version = KNOWN_ROOM_VERSIONS[version]
        assert not room_version.room_id_is_create_event_hash, "hosting v12 is not supported"
        room_id = f"!{uuid.uuid4().hex[:18]}:{self.server_name}"
        sender = self.user_id(creator)
        room = RoomTrack(room_id, room_version, hosted=True)
        self.rooms[room_id] = room
        create: JsonDict = {"room_version": version}
        if version in ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10"):
            create["creator"] = sender
        steps: list[tuple[str, JsonDict, str]] = [
            ("m.room.create", create, ""),
            ("m.room.member", {"membership": "join"}, sender),
            ("m.room.power_levels", {"users": {sender: 100}, "users_default": 0,
                                     "events_default": 0, "state_default": 50, "ban": 50,
                                     "kick": 50, "redact": 50, "invite": 0}, ""),
            ("m.room.join_rules", {"join_rule": join_rule}, ""),
            ("m.room.history_visibility", {"history_visibility": "shared"}, ""),
        ]
        if name is not None:
            steps.append(("m.room.name", {"name": name}, ""))
        for event_type, content, state_key in steps:
            room.accept(self.build(room_id, event_type, content, sender=sender,
                                   state_key=state_key))
        if alias is not None:
            self.aliases[alias] = (room_id, [self.server_name])
        return room_id

    def send_local(self, room_id: str, event: Event) -> Event:
        """Take an event the fake built into its room (no one is told: see
        ``send_transaction``)."""
        self.rooms[room_id].accept(event)
        return event

    # -- signed requests -------------------------------------------------------------------

    def authorization(self, method: str, uri: str, destination: str, content: Any,
                      *, origin: str | None = None, key: SigningKey | None = None) -> str:
        """An ``X-Matrix`` header; ``origin``/``key`` override who claims to sign it."""
        return sign_request(origin or self.server_name, key or self.signing_key, method, uri,
                            destination, content)

    async def request(self, server: FedServer, method: str, uri: str, body: Any = None, *,
                      sign: bool = True, raw_body: bytes | None = None,
                      authorization: str | None = None, destination: str | None = None,
                      request_timeout: float = 60) -> tuple[int, Any]:
        """Send ``method uri`` (already percent-encoded; sent exactly) to ``server``'s
        federation listener. ``body`` is signed and sent as JSON unless ``raw_body`` is given
        (then nothing is signed over a body unless ``body`` is also given). ``authorization``
        replaces the computed header; ``sign=False`` sends none. Returns (status, JSON or
        text)."""
        headers: dict[str, str] = {}
        if authorization is not None:
            headers["Authorization"] = authorization
        elif sign:
            headers["Authorization"] = self.authorization(
                method, uri, destination or server.server_name, body)
        data: bytes | None = raw_body
        if data is None and body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = yarl.URL(server.federation_url + uri, encoded=True)
        connector = aiohttp.TCPConnector(ssl=False, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session, session.request(
                method, url, data=data, headers=headers,
                timeout=aiohttp.ClientTimeout(total=request_timeout)) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def send_transaction(self, server: FedServer, pdus: list[Any],
                               edus: list[Any] | None = None, *, txn_id: str | None = None,
                               origin: str | None = None, **request_kwargs: Any
                               ) -> tuple[int, Any]:
        """``PUT /_matrix/federation/v1/send/{txn_id}``; ``origin`` is the body's claim."""
        body: JsonDict = {"origin": origin or self.server_name,
                          "origin_server_ts": int(time.time() * 1000), "pdus": pdus,
                          "edus": edus or []}
        txn_id = txn_id or uuid.uuid4().hex
        return await self.request(server, "PUT", f"/_matrix/federation/v1/send/{q(txn_id)}",
                                  body, **request_kwargs)

    # -- PDUs ------------------------------------------------------------------------------

    def build(self, room_id: str, event_type: str, content: JsonDict, *,
              sender: str | None = None, state_key: str | None = None,
              prev_events: list[str] | None = None, auth_events: list[str] | None = None,
              depth: int | None = None, server_name: str | None = None,
              key: SigningKey | None = None) -> Event:
        """A hashed, signed event of a room the fake has joined; by default sent by
        ``@mallory`` with auth events chosen from the known state and following the head."""
        room = self.rooms[room_id]
        sender = sender or self.user_id("mallory")
        if auth_events is None:
            types = auth_types_for_event(room.version, event_type, state_key, sender, content)
            auth_events = [room.state[t] for t in sorted(types) if t in room.state]
        return build_event(
            room.version, type=event_type, sender=sender, content=content, room_id=room_id,
            state_key=state_key,
            prev_events=room.extremities if prev_events is None else prev_events,
            auth_events=auth_events, depth=room.depth + 1 if depth is None else depth,
            origin_server_ts=int(time.time() * 1000),
            server_name=server_name or self.server_name, signing_key=key or self.signing_key)

    def message(self, room_id: str, body: str, **kwargs: Any) -> Event:
        return self.build(room_id, "m.room.message", {"msgtype": "m.text", "body": body},
                          **kwargs)

    # -- joining ---------------------------------------------------------------------------

    async def make_join(self, server: FedServer, room_id: str, user_id: str
                        ) -> tuple[int, Any]:
        vers = "&".join(f"ver={v}" for v in SUPPORTED_VERSIONS)
        return await self.request(
            server, "GET",
            f"/_matrix/federation/v1/make_join/{q(room_id)}/{q(user_id)}?{vers}")

    def sign_template(self, template: JsonDict, version: RoomVersion) -> Event:
        """Fill a make_* template as the joining server does: timestamp, hash, signature."""
        pdu = {k: v for k, v in template.items() if k not in ("signatures", "hashes")}
        pdu.pop("origin", None)
        pdu["origin_server_ts"] = int(time.time() * 1000)
        pdu = sign_event(add_content_hash(pdu), version, self.server_name, self.signing_key)
        return event_from_pdu(pdu, version)

    async def send_join(self, server: FedServer, event: Event) -> tuple[int, Any]:
        return await self.request(
            server, "PUT",
            f"/_matrix/federation/v2/send_join/{q(event.room_id)}/{q(event.event_id)}",
            dict(event.pdu))

    async def join(self, server: FedServer, room_id: str, user_id: str) -> Event:
        """The whole handshake; afterwards ``rooms[room_id]`` holds the room's state."""
        status, answer = await self.make_join(server, room_id, user_id)
        assert status == 200, f"make_join -> {status}: {answer}"
        version = KNOWN_ROOM_VERSIONS[answer["room_version"]]
        event = self.sign_template(answer["event"], version)
        status, joined = await self.send_join(server, event)
        assert status == 200, f"send_join -> {status}: {joined}"
        room = RoomTrack(room_id, version)
        for pdu in [*joined.get("auth_chain", []), *joined["state"]]:
            ev = event_from_pdu(pdu, version)
            room.events[ev.event_id] = dict(ev.pdu)
            if ev.state_tuple is not None:
                room.state[ev.state_tuple] = ev.event_id
            room.depth = max(room.depth, ev.pdu["depth"])
        room.accept(event)
        self.rooms[room_id] = room
        return event
