"""Federation reads: /event, /state, /state_ids, /event_auth, /get_missing_events, the
profile and directory queries, /publicRooms, devices and keys, /version; and the
``ServerVisibility`` service behind them.

In process, on SQLite and PostgreSQL: the homeserver's ``Services``, an aiohttp app with just
these routes and a stand-in for ``Federation``. Authentication is real: requests are signed
(X-Matrix) by fake remote servers whose keys the real ``Keyring`` fetches over TLS on
loopback. Remote users join rooms as events received through the persister.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from signedjson.types import SigningKey
from yarl import URL

from core.clock import Clock
from core.crypto.tls import generate_self_signed
from core.events.hashing import compute_event_id
from core.events.room_versions import KNOWN_ROOM_VERSIONS
from federation.container import Federation, Served
from federation.inbound.limits import OriginLimiter
from federation.inbound.transaction import InboundEdus
from federation.keys.keyring import Keyring
from federation.keys.server import signed_key_response
from federation.routes import devices, events, query, spaces
from federation.routes._base import FEDERATION
from federation.transport.client import FederationClient
from federation.transport.x_matrix import sign_request
from homeserver.http.json import encode_json
from homeserver.http.middleware import error_middleware
from homeserver.services.container import Services, build_services
from homeserver.services.rooms import CreateRoomRequest
from homeserver.services.server_visibility import ServerVisibility
from roomserver.api import FederatedRooms, NewEvent
from storage import Database
from storage.stores.users import UserStore
from tests.conftest import SERVER_NAME, PostgresSchema, make_config, postgres_url
from tests.helpers.processes import free_port
from tests.helpers.spec import SPEC_DIR, _load, _registry

V1 = "/_matrix/federation/v1"


def q(value: str) -> str:
    return quote(value, safe="")


# -- the spec ----------------------------------------------------------------------------


def assert_spec(method: str, template: str, status: int, body: Any) -> None:
    """``body`` fits the server-server spec's schema for exactly this path template (the
    shared helper matches ``/query/directory`` to the generic ``/query/{queryType}``)."""
    for file in sorted((SPEC_DIR / "server-server").glob("*.yaml")):
        op = ((_load(file).get("paths") or {}).get(template) or {}).get(method.lower())
        if op is not None:
            break
    else:
        raise LookupError(f"no {method} {template} in the spec")
    schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
    root = {"$id": f"file://{file}", "components": _load(file).get("components") or {},
            "allOf": [schema]}
    errors = list(Draft202012Validator(root, registry=_registry()).iter_errors(body))
    assert not errors, f"{method} {template}: " + "; ".join(
        f"{list(e.path)}: {e.message}" for e in errors[:5])


def assert_pdus(pdus: list[dict[str, Any]]) -> None:
    """Each PDU is a v12 PDU in federation form: no event ID, no local fields."""
    pdu_file = SPEC_DIR / "server-server" / "definitions" / "pdu_v12.yaml"
    validator = Draft202012Validator({"$ref": f"file://{pdu_file}"}, registry=_registry())
    allowed = {"auth_events", "content", "depth", "hashes", "origin_server_ts", "prev_events",
               "room_id", "sender", "signatures", "state_key", "type", "unsigned"}
    for pdu in pdus:
        errors = list(validator.iter_errors(pdu))
        if (pdu.get("type"), pdu.get("state_key")) == ("m.room.create", ""):
            # The schema requires it, but its description (and the v12 format) leave it out.
            errors = [e for e in errors if e.message != "'room_id' is a required property"]
        assert not errors, f"{pdu}: {errors[0].message}"
        assert set(pdu) <= allowed, set(pdu) - allowed


def event_id_of(pdu: dict[str, Any]) -> str:
    return compute_event_id(pdu, KNOWN_ROOM_VERSIONS["12"])


# -- fake remote servers, the app --------------------------------------------------------


class FakeRemote:
    """A server that only serves its signing key (over TLS), and signs requests."""

    def __init__(self, tmp_path: Path, label: str) -> None:
        self.port = free_port()
        self.server_name = f"127.0.0.1:{self.port}"
        self.signing_key: SigningKey = generate_signing_key(label)
        self._cert = (tmp_path / f"{label}.crt", tmp_path / f"{label}.key")
        generate_self_signed(self.server_name, *self._cert)
        self._runner: web.AppRunner | None = None

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    async def start(self) -> None:
        async def keys(_request: web.Request) -> web.Response:
            return web.json_response(signed_key_response(self.server_name, self.signing_key,
                                                         _now_ms()))

        app = web.Application()
        app.router.add_get("/_matrix/key/v2/server", keys)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*self._cert)
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def authorization(self, method: str, uri: str, content: Any | None) -> str:
        return sign_request(self.server_name, self.signing_key, method, uri, SERVER_NAME,
                            content)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class StubSender:
    up: list[str] = field(default_factory=list)

    def peer_is_up(self, origin: str) -> None:
        self.up.append(origin)


@dataclass
class StubFederation:
    """What the routes use of ``Federation``."""

    server_name: str
    users: UserStore
    clock: Clock
    rooms: FederatedRooms
    served: Served
    keyring: Keyring
    sender: StubSender
    limits: OriginLimiter = field(default_factory=OriginLimiter)


class Fed:
    """Signed requests to the app under test."""

    def __init__(self, client: TestClient[web.Request, web.Application],
                 stub: StubFederation) -> None:
        self.client = client
        self.stub = stub

    async def request(self, method: str, path: str, *, origin: FakeRemote | None,
                      params: dict[str, str] | list[tuple[str, str]] | None = None,
                      body: Any = None,
                      raw: bytes | None = None) -> tuple[int, Any]:
        uri = path + ("?" + urlencode(params, quote_via=quote) if params else "")
        headers = {"Content-Type": "application/json"}
        if origin is not None:
            headers["Authorization"] = origin.authorization(method, uri, body)
        data = raw if raw is not None else (encode_json(body) if body is not None else None)
        async with self.client.request(method, URL(uri, encoded=True), data=data,
                                       headers=headers) as resp:
            return resp.status, await resp.json()


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def hs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Services]:
    overrides: dict[str, Any] = {"federation": {"verify_tls": False,
                                                "ip_range_allowlist": ["127.0.0.0/8"]}}
    schema = None
    if request.param == "postgres":
        url = postgres_url()
        assert url is not None
        schema = PostgresSchema(url)
        await schema.create()
        services = build_services(
            make_config(tmp_path, database={"url": url}, **overrides),
            db=Database(url, postgres_search_path=schema.name))
    else:
        services = build_services(make_config(tmp_path, **overrides))
    await services.start()
    try:
        yield services
    finally:
        await services.stop()
        if schema is not None:
            await schema.drop()


@pytest.fixture
async def remote(tmp_path: Path) -> AsyncIterator[FakeRemote]:
    server = FakeRemote(tmp_path, "remote")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def stranger(tmp_path: Path) -> AsyncIterator[FakeRemote]:
    """A server with no user in any room."""
    server = FakeRemote(tmp_path, "stranger")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def fed(hs: Services, aiohttp_client: Callable[..., Any]) -> AsyncIterator[Fed]:
    config = hs.config
    client = FederationClient(config.server_name, hs.signing_key, config.federation)
    await client.start()
    keyring = Keyring(hs.db.server_keys, client, hs.clock, config.server_name, hs.signing_key,
                      ())
    served = Served(hs.profiles, hs.rooms, hs.directory, hs.devices, hs.membership,
                    InboundEdus(hs.typing, hs.receipts, hs.presence, hs.to_device, hs.keys),
                    ServerVisibility(hs.roomserver), hs.keys, spaces=hs.spaces)
    stub = StubFederation(config.server_name, hs.db.users, hs.clock, hs.roomserver, served, keyring,
                          StubSender())
    app = web.Application(middlewares=[error_middleware])
    app[FEDERATION] = cast(Federation, stub)
    for module in (events, query, devices, spaces):
        app.router.add_routes(module.routes)
    try:
        yield Fed(await aiohttp_client(app), stub)
    finally:
        await keyring.close()
        await client.close()


# -- rooms -------------------------------------------------------------------------------


ALICE = f"@alice:{SERVER_NAME}"


async def make_room(hs: Services, history: str = "shared", **extra: Any) -> str:
    if await hs.db.users.get_user(ALICE) is None:
        await hs.accounts.register("alice", None)
    room_id, _ = await hs.rooms.create_room(CreateRoomRequest(
        creator=ALICE, preset="public_chat", initial_state=[{
            "type": "m.room.history_visibility", "state_key": "",
            "content": {"history_visibility": history}}], **extra))
    return room_id


async def send(hs: Services, room_id: str, body: str, sender: str = ALICE) -> str:
    event = await hs.roomserver.send(room_id, NewEvent(
        "m.room.message", sender, {"msgtype": "m.text", "body": body}))
    return event.event_id


async def remote_member(hs: Services, room_id: str, user_id: str, membership: str = "join",
                        sender: str | None = None) -> str:
    """A member event of a remote user, received as if its server had sent it."""
    event = await hs.roomserver.build(room_id, NewEvent(
        "m.room.member", sender or user_id, {"membership": membership}, state_key=user_id))
    assert await hs.roomserver.receive(event) == "accepted"
    return event.event_id


# -- /event --------------------------------------------------------------------------------


async def test_event(hs: Services, fed: Fed, remote: FakeRemote, stranger: FakeRemote
                     ) -> None:
    room_id = await make_room(hs)
    await remote_member(hs, room_id, remote.user("bob"))
    event_id = await send(hs, room_id, "hello")

    status, body = await fed.request("GET", f"{V1}/event/{q(event_id)}", origin=remote)
    assert status == 200, body
    assert_spec("GET", "/event/{eventId}", 200, body)
    assert_pdus(body["pdus"])
    assert body["origin"] == SERVER_NAME
    [pdu] = body["pdus"]
    assert event_id_of(pdu) == event_id
    assert pdu == (await hs.db.events.get_event(event_id)).pdu  # type: ignore[union-attr]
    assert fed.stub.sender.up == [remote.server_name]

    status, body = await fed.request("GET", f"{V1}/event/{q(event_id)}", origin=stranger)
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await fed.request("GET", f"{V1}/event/{q('$unknown')}", origin=remote)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await fed.request("GET", f"{V1}/event/{q(event_id)}", origin=None)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")

    # A redacted event goes out pruned, with the same ID (its stored JSON is not pruned yet).
    await hs.rooms.redact(room_id, event_id, ALICE, {}, device_id="DEV", txn_id="t1")
    status, body = await fed.request("GET", f"{V1}/event/{q(event_id)}", origin=remote)
    assert status == 200, body
    assert body["pdus"][0]["content"] == {} and event_id_of(body["pdus"][0]) == event_id


async def test_event_history_visibility(hs: Services, fed: Fed, remote: FakeRemote) -> None:
    """In a joined-only room a server gets what came before its users joined redacted
    (as Synapse does); in a shared room it gets it whole."""
    joined_room = await make_room(hs, "joined")
    shared_room = await make_room(hs, "shared")
    before = {r: await send(hs, r, "secret") for r in (joined_room, shared_room)}
    for room_id in (joined_room, shared_room):
        await remote_member(hs, room_id, remote.user("bob"))
    after = await send(hs, joined_room, "welcome")

    async def content(event_id: str) -> Any:
        status, body = await fed.request("GET", f"{V1}/event/{q(event_id)}", origin=remote)
        assert status == 200, body
        assert event_id_of(body["pdus"][0]) == event_id  # a redacted copy keeps its ID
        assert_pdus(body["pdus"])
        return body["pdus"][0]["content"]

    assert await content(before[joined_room]) == {}
    assert await content(before[shared_room]) == {"msgtype": "m.text", "body": "secret"}
    assert await content(after) == {"msgtype": "m.text", "body": "welcome"}


# -- /state, /state_ids, /event_auth -------------------------------------------------------


async def test_state_and_state_ids(hs: Services, fed: Fed, remote: FakeRemote,
                                   stranger: FakeRemote) -> None:
    room_id = await make_room(hs)
    join_id = await remote_member(hs, room_id, remote.user("bob"))
    name_id = (await hs.roomserver.send(room_id, NewEvent(
        "m.room.name", ALICE, {"name": "Tea"}, state_key=""))).event_id
    current = await hs.roomserver.current_state(room_id)
    assert current is not None
    path = f"{V1}/state_ids/{q(room_id)}"

    # The state before the name event: everything current but the name itself.
    status, body = await fed.request("GET", path, origin=remote, params={"event_id": name_id})
    assert status == 200, body
    assert_spec("GET", "/state_ids/{roomId}", 200, body)
    assert set(body["pdu_ids"]) == set(current.values()) - {name_id}
    assert join_id in body["pdu_ids"]
    chain = set(body["auth_chain_ids"])
    assert current[("m.room.create", "")] in chain
    assert current[("m.room.power_levels", "")] in chain

    status, full = await fed.request("GET", f"{V1}/state/{q(room_id)}", origin=remote,
                                     params={"event_id": name_id})
    assert status == 200, full
    assert_spec("GET", "/state/{roomId}", 200, full)
    assert_pdus(full["pdus"] + full["auth_chain"])
    assert {event_id_of(p) for p in full["pdus"]} == set(body["pdu_ids"])
    assert {event_id_of(p) for p in full["auth_chain"]} == chain

    other_room = await make_room(hs)
    other_event = await send(hs, other_room, "elsewhere")
    for origin, params, url, expected in [
        (remote, {}, path, (400, "M_MISSING_PARAM")),
        (remote, {"event_id": other_event}, path, (404, "M_NOT_FOUND")),
        (remote, {"event_id": "$unknown"}, path, (404, "M_NOT_FOUND")),
        (remote, {"event_id": name_id}, f"{V1}/state_ids/{q('!nowhere:x')}",
         (404, "M_NOT_FOUND")),
        (stranger, {"event_id": name_id}, path, (403, "M_FORBIDDEN")),
        (stranger, {"event_id": name_id}, f"{V1}/state/{q(room_id)}", (403, "M_FORBIDDEN")),
    ]:
        status, body = await fed.request("GET", url, origin=origin, params=params)
        assert (status, body["errcode"]) == expected, (url, params, body)


async def test_event_auth(hs: Services, fed: Fed, remote: FakeRemote, stranger: FakeRemote
                          ) -> None:
    room_id = await make_room(hs)
    await remote_member(hs, room_id, remote.user("bob"))
    event_id = await send(hs, room_id, "hello")
    current = await hs.roomserver.current_state(room_id)
    assert current is not None

    status, body = await fed.request(
        "GET", f"{V1}/event_auth/{q(room_id)}/{q(event_id)}", origin=remote)
    assert status == 200, body
    assert_spec("GET", "/event_auth/{roomId}/{eventId}", 200, body)
    assert_pdus(body["auth_chain"])
    chain = {event_id_of(p) for p in body["auth_chain"]}
    # Its auth events (power levels, alice's join), theirs, and the v12 create event.
    assert {current[("m.room.create", "")], current[("m.room.power_levels", "")],
            current[("m.room.member", ALICE)]} <= chain
    assert event_id not in chain

    other_room = await make_room(hs)
    other_event = await send(hs, other_room, "elsewhere")
    for origin, url, expected in [
        (remote, f"{V1}/event_auth/{q(room_id)}/{q(other_event)}", (404, "M_NOT_FOUND")),
        (remote, f"{V1}/event_auth/{q(room_id)}/{q('$unknown')}", (404, "M_NOT_FOUND")),
        (stranger, f"{V1}/event_auth/{q(room_id)}/{q(event_id)}", (403, "M_FORBIDDEN")),
    ]:
        status, body = await fed.request("GET", url, origin=origin)
        assert (status, body["errcode"]) == expected, (url, body)


# -- /get_missing_events -------------------------------------------------------------------


async def test_get_missing_events(hs: Services, fed: Fed, remote: FakeRemote,
                                  stranger: FakeRemote) -> None:
    room_id = await make_room(hs)
    await remote_member(hs, room_id, remote.user("bob"))
    sent = [await send(hs, room_id, f"m{i}") for i in range(5)]
    other_room = await make_room(hs)
    elsewhere = [await send(hs, other_room, f"o{i}") for i in range(3)]
    path = f"{V1}/get_missing_events/{q(room_id)}"

    async def missing(earliest: list[str], latest: list[str], **extra: Any) -> list[str]:
        body = {"earliest_events": earliest, "latest_events": latest, **extra}
        status, answer = await fed.request("POST", path, origin=remote, body=body)
        assert status == 200, answer
        assert_spec("POST", "/get_missing_events/{roomId}", 200, answer)
        assert_pdus(answer["events"])
        return [event_id_of(p) for p in answer["events"]]

    assert await missing([sent[1]], [sent[4]]) == sent[2:4]  # oldest first
    assert await missing([sent[1]], [sent[4]], limit=1) == [sent[3]]
    assert await missing([sent[3]], [sent[4]], min_depth=10**6) == []
    everything = await missing([], [sent[4]], limit=100)  # capped at 20
    assert everything[-4:] == sent[:4] and len(everything) <= 20
    assert await missing(["$unknown"], ["$unknown2"]) == []
    # IDs of another room are unknown here: no walking into it, no stopping on it.
    assert await missing([elsewhere[0]], [elsewhere[-1]]) == []
    assert (await missing([elsewhere[1]], [sent[4]]))[-4:] == sent[:4]

    status, body = await fed.request("POST", path, origin=stranger,
                                     body={"earliest_events": [], "latest_events": [sent[4]]})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    for bad, errcode in [
        ({"earliest_events": []}, "M_MISSING_PARAM"),
        ({"earliest_events": [], "latest_events": sent[4]}, "M_BAD_JSON"),
        ({"earliest_events": [1], "latest_events": []}, "M_BAD_JSON"),
        ({"earliest_events": [], "latest_events": [], "limit": "5"}, "M_BAD_JSON"),
        ({"earliest_events": [], "latest_events": [], "limit": -1}, "M_INVALID_PARAM"),
    ]:
        status, body = await fed.request("POST", path, origin=remote, body=bad)
        assert (status, body["errcode"]) == (400, errcode), bad
    status, body = await fed.request("POST", path, origin=remote, raw=b"{not json")
    assert (status, body["errcode"]) == (400, "M_NOT_JSON")


async def test_get_missing_events_redacts_what_the_server_may_not_see(
        hs: Services, fed: Fed, remote: FakeRemote) -> None:
    room_id = await make_room(hs, "joined")
    secret = await send(hs, room_id, "secret")
    join = await remote_member(hs, room_id, remote.user("bob"))
    latest = await send(hs, room_id, "welcome")
    status, body = await fed.request(
        "POST", f"{V1}/get_missing_events/{q(room_id)}", origin=remote,
        body={"earliest_events": [], "latest_events": [latest]})
    assert status == 200, body
    by_id = {event_id_of(p): p for p in body["events"]}
    assert by_id[secret]["content"] == {}
    assert "hashes" in by_id[secret] and "signatures" in by_id[secret]
    assert by_id[join]["content"]["membership"] == "join"


# -- /backfill ----------------------------------------------------------------------------


async def test_backfill(hs: Services, fed: Fed, remote: FakeRemote, stranger: FakeRemote
                        ) -> None:
    room_id = await make_room(hs)
    await remote_member(hs, room_id, remote.user("bob"))
    sent = [await send(hs, room_id, f"m{i}") for i in range(6)]
    path = f"{V1}/backfill/{q(room_id)}"

    async def backfill(*v: str, limit: int) -> list[str]:
        params = [("v", e) for e in v] + [("limit", str(limit))]
        status, body = await fed.request("GET", path, origin=remote, params=params)
        assert status == 200, body
        assert_spec("GET", "/backfill/{roomId}", 200, body)
        assert_pdus(body["pdus"])
        assert body["origin"] == SERVER_NAME
        return [event_id_of(p) for p in body["pdus"]]

    # The named event and what came before it, newest first, up to the limit.
    assert await backfill(sent[4], limit=3) == [sent[4], sent[3], sent[2]]
    assert await backfill(sent[5], sent[4], limit=2) == [sent[5], sent[4]]
    everything = await backfill(sent[5], limit=1000)  # capped at 100
    assert everything[:6] == sent[::-1]
    create_id = (await hs.roomserver.current_state(room_id) or {})[("m.room.create", "")]
    assert everything[-1] == create_id and len(everything) == len(set(everything))
    assert await backfill(sent[0], limit=0) == []
    assert await backfill("$unknown", limit=5) == []

    other_room = await make_room(hs)
    elsewhere = await send(hs, other_room, "elsewhere")
    assert await backfill(elsewhere, limit=5) == []
    for origin, params, expected in [
        (stranger, [("v", sent[5]), ("limit", "5")], (403, "M_FORBIDDEN")),
        (remote, [("limit", "5")], (400, "M_MISSING_PARAM")),
        (remote, [("v", sent[5])], (400, "M_MISSING_PARAM")),
        (remote, [("v", sent[5]), ("limit", "many")], (400, "M_INVALID_PARAM")),
        (remote, [("v", sent[5]), ("limit", "-1")], (400, "M_INVALID_PARAM")),
    ]:
        status, body = await fed.request("GET", path, origin=origin, params=params)
        assert (status, body["errcode"]) == expected, (params, body)


async def test_backfill_redacts_what_the_server_may_not_see(
        hs: Services, fed: Fed, remote: FakeRemote) -> None:
    room_id = await make_room(hs, "joined")
    secret = await send(hs, room_id, "secret")
    await remote_member(hs, room_id, remote.user("bob"))
    latest = await send(hs, room_id, "welcome")
    status, body = await fed.request("GET", f"{V1}/backfill/{q(room_id)}", origin=remote,
                                     params=[("v", latest), ("limit", "10")])
    assert status == 200, body
    by_id = {event_id_of(p): p for p in body["pdus"]}
    assert by_id[secret]["content"] == {}
    assert by_id[latest]["content"]["body"] == "welcome"


# -- queries -------------------------------------------------------------------------------


async def test_query_profile(hs: Services, fed: Fed, remote: FakeRemote) -> None:
    await hs.accounts.register("alice", None)
    await hs.profiles.set_field(ALICE, ALICE, "displayname", "Alice")
    path = f"{V1}/query/profile"

    status, body = await fed.request("GET", path, origin=remote, params={"user_id": ALICE})
    assert (status, body) == (200, {"displayname": "Alice"})  # no avatar set: left out
    assert_spec("GET", "/query/profile", 200, body)
    status, body = await fed.request("GET", path, origin=remote,
                                     params={"user_id": ALICE, "field": "avatar_url"})
    assert (status, body) == (200, {})
    for params, expected in [
        ({}, (400, "M_MISSING_PARAM")),
        ({"user_id": f"@nobody:{SERVER_NAME}"}, (404, "M_NOT_FOUND")),
        ({"user_id": ALICE, "field": "email"}, (404, "M_NOT_FOUND")),
        ({"user_id": remote.user("bob")}, (400, "M_INVALID_PARAM")),
        ({"user_id": "not a user"}, (400, "M_INVALID_PARAM")),
    ]:
        status, body = await fed.request("GET", path, origin=remote, params=params)
        assert (status, body["errcode"]) == expected, params


async def test_query_directory(hs: Services, fed: Fed, remote: FakeRemote) -> None:
    room_id = await make_room(hs)
    await remote_member(hs, room_id, remote.user("bob"))
    alias = f"#tea:{SERVER_NAME}"
    await hs.rooms.create_alias(alias, room_id, ALICE)
    path = f"{V1}/query/directory"

    status, body = await fed.request("GET", path, origin=remote, params={"room_alias": alias})
    assert status == 200, body
    assert_spec("GET", "/query/directory", 200, body)
    assert body == {"room_id": room_id, "servers": [SERVER_NAME, remote.server_name]}
    for params, expected in [
        ({}, (400, "M_MISSING_PARAM")),
        ({"room_alias": f"#nope:{SERVER_NAME}"}, (404, "M_NOT_FOUND")),
        ({"room_alias": "not-an-alias"}, (400, "M_INVALID_PARAM")),
        ({"room_alias": f"#tea:{remote.server_name}"}, (400, "M_INVALID_PARAM")),
    ]:
        status, body = await fed.request("GET", path, origin=remote, params=params)
        assert (status, body["errcode"]) == expected, params


async def test_public_rooms(hs: Services, fed: Fed, stranger: FakeRemote) -> None:
    """Any server may list our published rooms (the spec asks for a signed request)."""
    public = await make_room(hs, name="Tea room", visibility="public")
    await make_room(hs, name="Hidden")
    path = f"{V1}/publicRooms"

    status, body = await fed.request("GET", path, origin=stranger)
    assert status == 200, body
    assert_spec("GET", "/publicRooms", 200, body)
    assert [r["room_id"] for r in body["chunk"]] == [public]
    assert body["chunk"][0]["name"] == "Tea room"

    status, body = await fed.request("POST", path, origin=stranger,
                                     body={"limit": 5, "filter": {"generic_search_term": "tea"}})
    assert status == 200, body
    assert_spec("POST", "/publicRooms", 200, body)
    assert [r["room_id"] for r in body["chunk"]] == [public]
    status, body = await fed.request("POST", path, origin=stranger,
                                     body={"filter": {"generic_search_term": "coffee"}})
    assert (status, body["chunk"]) == (200, [])
    status, body = await fed.request("POST", path, origin=stranger,
                                     body={"third_party_instance_id": "irc"})
    assert (status, body["chunk"]) == (200, [])

    bad: list[tuple[str, dict[str, str] | None, Any, str]] = [
        ("GET", {"limit": "many"}, None, "M_INVALID_PARAM"),
        ("POST", None, {"limit": "many"}, "M_INVALID_PARAM"),
        ("POST", None, {"filter": []}, "M_BAD_JSON"),
        ("POST", None, {"filter": {"generic_search_term": 5}}, "M_INVALID_PARAM"),
    ]
    for method, params, payload, errcode in bad:
        status, body = await fed.request(method, path, origin=stranger, params=params,
                                         body=payload)
        assert (status, body["errcode"]) == (400, errcode), (method, params, payload)


# -- devices and keys ----------------------------------------------------------------------


async def test_user_devices(hs: Services, fed: Fed, remote: FakeRemote) -> None:
    await hs.accounts.register("alice", None)
    await hs.accounts.register("carol", None)
    await hs.auth.create_session(ALICE, device_id="PHONE", display_name="Alice's phone",
                                 with_refresh_token=False)

    status, body = await fed.request("GET", f"{V1}/user/devices/{q(ALICE)}", origin=remote)
    assert status == 200, body
    # No end-to-end keys yet, so no `keys` (the spec requires them; Synapse leaves them out
    # for a device without any), and no display names (Synapse's default).
    assert body == {"user_id": ALICE, "stream_id": 0, "devices": [{"device_id": "PHONE"}]}

    carol = f"@carol:{SERVER_NAME}"
    status, body = await fed.request("GET", f"{V1}/user/devices/{q(carol)}", origin=remote)
    assert (status, body) == (200, {"user_id": carol, "stream_id": 0, "devices": []})
    assert_spec("GET", "/user/devices/{userId}", 200, body)

    for user_id, expected in [(f"@nobody:{SERVER_NAME}", (404, "M_NOT_FOUND")),
                              (remote.user("bob"), (400, "M_INVALID_PARAM"))]:
        status, body = await fed.request("GET", f"{V1}/user/devices/{q(user_id)}",
                                         origin=remote)
        assert (status, body["errcode"]) == expected, user_id


def _signed(obj: dict[str, Any], user_id: str, key: SigningKey) -> dict[str, Any]:
    return sign_json(obj, user_id, key)


def _xkey() -> SigningKey:
    """A cross-signing key: its key ID is its public key."""
    key = generate_signing_key("x")
    key.version = encode_verify_key_base64(get_verify_key(key))
    return key


def _cross_signing(user_id: str, usage: str, key: SigningKey,
                   signer: SigningKey) -> dict[str, Any]:
    public = encode_verify_key_base64(get_verify_key(key))
    return _signed({"user_id": user_id, "usage": [usage],
                    "keys": {f"ed25519:{public}": public}}, user_id, signer)


async def _alice_with_keys(hs: Services) -> dict[str, Any]:
    """alice with a device PHONE (device keys, two one-time keys, a fallback key) and
    master, self-signing and user-signing keys: what was uploaded."""
    await hs.accounts.register("alice", None)
    await hs.auth.create_session(ALICE, device_id="PHONE", display_name="Alice's phone",
                                 with_refresh_token=False)
    device_key = generate_signing_key("PHONE")
    device = _signed({"user_id": ALICE, "device_id": "PHONE",
                      "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                      "keys": {"ed25519:PHONE": encode_verify_key_base64(
                          get_verify_key(device_key)), "curve25519:PHONE": "curvekey"}},
                     ALICE, device_key)
    otks = {f"signed_curve25519:K{n}": _signed({"key": f"otk{n}"}, ALICE, device_key)
            for n in range(2)}
    fallback = {"signed_curve25519:FB": _signed({"key": "fb", "fallback": True}, ALICE,
                                                device_key)}
    await hs.keys.upload(ALICE, "PHONE", {"device_keys": device, "one_time_keys": otks,
                                          "fallback_keys": fallback})
    master_key = _xkey()
    master = _cross_signing(ALICE, "master", master_key, device_key)
    self_signing = _cross_signing(ALICE, "self_signing", _xkey(), master_key)
    user_signing = _cross_signing(ALICE, "user_signing", _xkey(), master_key)
    await hs.keys.upload_cross_signing(ALICE, {"master_key": master,
                                               "self_signing_key": self_signing,
                                               "user_signing_key": user_signing})
    return {"device": device, "otks": otks, "fallback": fallback, "master": master,
            "self_signing": self_signing}


async def test_user_devices_with_keys(hs: Services, fed: Fed, remote: FakeRemote) -> None:
    uploaded = await _alice_with_keys(hs)
    await hs.auth.create_session(ALICE, device_id="LAPTOP", display_name=None,
                                 with_refresh_token=False)
    status, body = await fed.request("GET", f"{V1}/user/devices/{q(ALICE)}", origin=remote)
    assert status == 200, body
    # (A device without keys is listed without, as Synapse does: the spec wants them.)
    assert_spec("GET", "/user/devices/{userId}", 200,
                {**body, "devices": [d for d in body["devices"] if "keys" in d]})
    assert body["stream_id"] == await hs.db.e2e_keys.latest_device_change(ALICE) > 0
    assert sorted(body["devices"], key=lambda d: d["device_id"]) == [
        {"device_id": "LAPTOP"}, {"device_id": "PHONE", "keys": uploaded["device"]}]
    assert body["master_key"] == uploaded["master"]
    assert body["self_signing_key"] == uploaded["self_signing"]
    assert "user_signing_key" not in body


async def test_user_keys_query_and_claim(hs: Services, fed: Fed, remote: FakeRemote) -> None:
    uploaded = await _alice_with_keys(hs)
    bo = f"@bo:{SERVER_NAME}"
    for wanted in ([], ["PHONE"]):
        status, body = await fed.request("POST", f"{V1}/user/keys/query", origin=remote,
                                         body={"device_keys": {ALICE: wanted, bo: ["DEV"]}})
        assert status == 200, body
        assert_spec("POST", "/user/keys/query", 200, body)
        # No display name over federation, no user-signing key.
        assert body == {"device_keys": {ALICE: {"PHONE": uploaded["device"]}, bo: {}},
                        "master_keys": {ALICE: uploaded["master"]},
                        "self_signing_keys": {ALICE: uploaded["self_signing"]}}
    status, body = await fed.request("POST", f"{V1}/user/keys/query", origin=remote,
                                     body={"device_keys": {ALICE: ["OTHER"]}})
    assert body["device_keys"] == {ALICE: {}}

    claimed = []
    for _ in range(4):
        status, body = await fed.request(
            "POST", f"{V1}/user/keys/claim", origin=remote,
            body={"one_time_keys": {ALICE: {"PHONE": "signed_curve25519", "NONE": "x"}}})
        assert status == 200, body
        assert_spec("POST", "/user/keys/claim", 200, body)
        assert list(body["one_time_keys"]) == [ALICE]
        assert list(body["one_time_keys"][ALICE]) == ["PHONE"]
        claimed.append(body["one_time_keys"][ALICE]["PHONE"])
    # Each one-time key once, then the fallback key (marked as one).
    assert sorted(claimed[:2], key=str) == sorted(
        [{k: v} for k, v in uploaded["otks"].items()], key=str)
    assert claimed[2] == claimed[3] == uploaded["fallback"]


async def test_user_keys(fed: Fed, remote: FakeRemote) -> None:
    status, body = await fed.request("POST", f"{V1}/user/keys/query", origin=remote,
                                     body={"device_keys": {ALICE: [], f"@bo:{SERVER_NAME}":
                                                           ["DEV"]}})
    assert (status, body) == (200, {"device_keys": {ALICE: {}, f"@bo:{SERVER_NAME}": {}},
                                    "master_keys": {}, "self_signing_keys": {}})
    assert_spec("POST", "/user/keys/query", 200, body)
    status, body = await fed.request("POST", f"{V1}/user/keys/claim", origin=remote,
                                     body={"one_time_keys": {ALICE: {"DEV": "signed_curve25519"}}})
    assert (status, body) == (200, {"one_time_keys": {}})
    assert_spec("POST", "/user/keys/claim", 200, body)

    for path, payload, errcode in [
        ("query", {}, "M_BAD_JSON"),
        ("query", {"device_keys": {ALICE: "DEV"}}, "M_BAD_JSON"),
        ("query", {"device_keys": {remote.user("bob"): []}}, "M_INVALID_PARAM"),
        ("claim", {"one_time_keys": []}, "M_BAD_JSON"),
        ("claim", {"one_time_keys": {ALICE: {"DEV": 1}}}, "M_BAD_JSON"),
    ]:
        status, body = await fed.request("POST", f"{V1}/user/keys/{path}", origin=remote,
                                         body=payload)
        assert (status, body["errcode"]) == (400, errcode), (path, payload)
    status, body = await fed.request("POST", f"{V1}/user/keys/query", origin=None,
                                     body={"device_keys": {}})
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")


async def test_version(fed: Fed) -> None:
    status, body = await fed.request("GET", f"{V1}/version", origin=None)
    assert (status, body) == (200, {"server": {"name": "KT-Chat", "version": "0.1.0"}})
    assert_spec("GET", "/version", 200, body)


# -- the service ---------------------------------------------------------------------------


async def test_server_visibility_invited(hs: Services, remote: FakeRemote) -> None:
    """``invited``: a server sees events from its users' invite on (the invite included),
    ``joined``: from their join on (the join included); ``server_in_room`` is about joined
    users only."""
    visibility = ServerVisibility(hs.roomserver)
    carol = remote.user("carol")
    seen: dict[str, set[str]] = {}
    for history in ("invited", "joined"):
        room_id = await make_room(hs, history)
        before = await send(hs, room_id, "before")
        invite = (await hs.roomserver.send(room_id, NewEvent(
            "m.room.member", ALICE, {"membership": "invite"}, state_key=carol))).event_id
        while_invited = await send(hs, room_id, "while invited")
        assert not await visibility.server_in_room(remote.server_name, room_id)
        join = await remote_member(hs, room_id, carol)
        after = await send(hs, room_id, "after")
        assert await visibility.server_in_room(remote.server_name, room_id)
        assert not await visibility.server_in_room("elsewhere.example", room_id)
        stored = await hs.roomserver.stored_pdus([before, invite, while_invited, join, after])
        ids = await visibility.visible_ids(remote.server_name, list(stored.values()))
        names = {before: "before", invite: "invite", while_invited: "while invited",
                 join: "join", after: "after"}
        seen[history] = {names[e] for e in ids}
    assert seen["invited"] == {"invite", "while invited", "join", "after"}
    assert seen["joined"] == {"join", "after"}


async def test_server_visibility_history_visibility_change(hs: Services,
                                                           remote: FakeRemote) -> None:
    """A change of history visibility is judged by the more open of its old and new
    values; later events by the new one."""
    visibility = ServerVisibility(hs.roomserver)
    room_id = await make_room(hs, "joined")
    await remote_member(hs, room_id, remote.user("bob"))
    await remote_member(hs, room_id, remote.user("bob"), "leave")
    hidden = await send(hs, room_id, "hidden")
    change = (await hs.roomserver.send(room_id, NewEvent(
        "m.room.history_visibility", ALICE, {"history_visibility": "shared"},
        state_key=""))).event_id
    shared = await send(hs, room_id, "shared")
    stored = await hs.roomserver.stored_pdus([hidden, change, shared])
    assert await visibility.visible_ids(remote.server_name, list(stored.values())) \
        == {change, shared}
