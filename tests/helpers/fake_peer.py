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
recorded in ``received``.
"""

from __future__ import annotations

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

from federation.keys.server import signed_key_response
from federation.transport.x_matrix import sign_request
from homeserver.crypto.tls import generate_self_signed
from homeserver.events.builder import build_event, event_from_pdu
from homeserver.events.hashing import add_content_hash
from homeserver.events.model import Event
from homeserver.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from homeserver.events.signing import sign_event
from homeserver.rooms.auth import auth_types_for_event
from tests.helpers.federation import FedServer
from tests.helpers.processes import free_port

JsonDict = dict[str, Any]
SUPPORTED_VERSIONS = ("10", "11", "12")


def q(value: str) -> str:
    return quote(value, safe="")


@dataclass
class RoomTrack:
    """What the fake knows of one room: its version, current state and forward extremity."""

    room_id: str
    version: RoomVersion
    state: dict[tuple[str, str], str] = field(default_factory=dict)
    events: dict[str, JsonDict] = field(default_factory=dict)
    extremities: list[str] = field(default_factory=list)
    depth: int = 0

    def accept(self, event: Event) -> None:
        """Take ``event`` as the new head of the room (as if our server accepted it)."""
        self.events[event.event_id] = dict(event.pdu)
        if event.state_tuple is not None:
            self.state[event.state_tuple] = event.event_id
        self.extremities = [event.event_id]
        self.depth = max(self.depth, event.pdu["depth"])


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

    async def _transaction(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append((request.method, request.path, body))
        pdus = body.get("pdus", []) if isinstance(body, dict) else []
        return web.json_response({"pdus": {}}) if isinstance(pdus, list) else \
            web.json_response({})

    async def _anything(self, request: web.Request) -> web.Response:
        self.received.append((request.method, request.path, None))
        return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "fake peer"},
                                 status=404)

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
