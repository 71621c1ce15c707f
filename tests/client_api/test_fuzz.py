"""Fuzzing the client API with requests built from the spec's request schemas.

Every request gets a well-formed answer: never a 5xx, and every error is a Matrix error; and
a successful one's body is what the spec says. Hand-picked bodies and queries first, then
(``test_spec_generated_requests``) every implemented operation with requests Hypothesis
generates from the spec's OpenAPI schemas. Random but seeded, so a failure reproduces.

The module shares one server (SQLite), built once. Each test fuzzes as users of its own, in
rooms of its own, under names no other test uses (``fresh``), so that what one test's requests
change is nothing another test's requests name; only the GET operations, which read what they
name (a /sync may set the user's presence), share one such world.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from tests.conftest import SERVER_NAME, bearer, register_user
from tests.helpers.harness import SharedServer, shared_server
from tests.helpers.openapi_fuzz import (
    GeneratedRequest,
    Known,
    Operation,
    implemented_operations,
    request_strategy,
)
from tests.helpers.spec import assert_matches_operation, request_properties

pytestmark = pytest.mark.asyncio(loop_scope="module")


# The module's server (SQLite, as the ``services`` fixture).
server = shared_server("fuzz", kinds=("sqlite",))


@pytest.fixture(scope="module")
def client(server: SharedServer) -> TestClient:
    return server[1]


def fresh(prefix: str) -> str:
    """A user name or alias no other test uses (the server is the module's)."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


ENDPOINTS = [
    ("POST", "/login"),
    ("POST", "/register"),
    ("POST", "/refresh"),
    ("POST", "/account/password"),
    ("POST", "/account/deactivate"),
    ("POST", "/delete_devices"),
    ("PUT", "/devices/{deviceId}"),
    ("DELETE", "/devices/{deviceId}"),
    ("PUT", "/profile/{userId}/displayname"),
    ("PUT", "/profile/{userId}/avatar_url"),
]

_SCALARS: list[Any] = [None, True, False, 0, -1, 2**53, 2**64, 1.5, "", "x", "@a:b", "\u0000",
                       "é" * 300, "m.login.password", "m.login.dummy", "m.id.user"]


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 2 and roll < 0.15:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 2 and roll < 0.3:
        keys = ["type", "user", "password", "session", "identifier", "token", "x"]
        return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return rng.choice(_SCALARS)


def _body(rng: random.Random, properties: list[str]) -> Any:
    roll = rng.random()
    if roll < 0.05:
        return rng.choice([[], "string", 5, None])
    return {name: _value(rng) for name in properties if rng.random() < 0.7}


@pytest.mark.parametrize(("method", "template"), ENDPOINTS)
async def test_random_bodies_get_matrix_errors_never_500(
        client: TestClient, method: str, template: str) -> None:
    alice = await register_user(client, fresh("fuzzer"))
    path = template.replace("{deviceId}", alice["device_id"]).replace(
        "{userId}", alice["user_id"])
    properties = request_properties("client-server", method, template)
    rng = random.Random(f"{method} {template}")
    for _ in range(40):
        body = _body(rng, properties)
        resp = await client.request(method, f"/_matrix/client/v3{path}",
                                    data=json.dumps(body), headers=bearer(alice["access_token"]))
        text = await resp.text()
        assert resp.status < 500, (body, text)
        if resp.status == 401 and "flows" in json.loads(text):
            continue  # user-interactive auth asks for a stage; errcode is optional then
        if resp.status >= 400:
            error = json.loads(text)
            assert isinstance(error.get("errcode"), str) and error["errcode"].startswith("M_"), text
            assert isinstance(error.get("error"), str), text
        if resp.status == 200 and template in ("/account/deactivate", "/account/password"):
            break  # the account changed under us; the rest would only test 401s


ROOM_ENDPOINTS = [
    ("POST", "/createRoom"),
    ("PUT", "/rooms/{roomId}/send/{eventType}/{txnId}"),
    ("PUT", "/rooms/{roomId}/state/{eventType}/{stateKey}"),
    ("PUT", "/rooms/{roomId}/redact/{eventId}/{txnId}"),
    ("POST", "/rooms/{roomId}/invite"),
    ("POST", "/rooms/{roomId}/kick"),
    ("POST", "/rooms/{roomId}/ban"),
    ("POST", "/rooms/{roomId}/unban"),
    ("POST", "/rooms/{roomId}/leave"),
    ("POST", "/join/{roomIdOrAlias}"),
    ("PUT", "/directory/room/{roomAlias}"),
    ("PUT", "/directory/list/room/{roomId}"),
    ("POST", "/publicRooms"),
    ("POST", "/user/{userId}/filter"),
    ("PUT", "/user/{userId}/account_data/{type}"),
    ("PUT", "/user/{userId}/rooms/{roomId}/tags/{tag}"),
    ("PUT", "/rooms/{roomId}/typing/{userId}"),
    ("POST", "/rooms/{roomId}/receipt/{receiptType}/{eventId}"),
    ("POST", "/rooms/{roomId}/read_markers"),
    ("PUT", "/presence/{userId}/status"),
    ("POST", "/search"),
]


@pytest.mark.parametrize(("method", "template"), ROOM_ENDPOINTS)
async def test_random_room_bodies_get_matrix_errors_never_500(
        client: TestClient, method: str, template: str) -> None:
    alice = await register_user(client, fresh("fuzzer"))
    aliases = fresh("fuzz")
    headers = bearer(alice["access_token"])
    resp = await client.post("/_matrix/client/v3/createRoom", json={"name": "fuzz"},
                             headers=headers)
    room_id = (await resp.json())["room_id"]
    resp = await client.put(f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/seed",
                            json={"msgtype": "m.text", "body": "seed"}, headers=headers)
    event_id = (await resp.json())["event_id"]
    properties = request_properties("client-server", method, template)
    rng = random.Random(f"{method} {template}")
    for i in range(30):
        path = (template.replace("{roomId}", room_id).replace("{eventType}", "m.room.topic")
                .replace("{txnId}", f"t{i}").replace("{stateKey}", "")
                .replace("{eventId}", event_id).replace("{roomIdOrAlias}", room_id)
                .replace("{roomAlias}", f"%23{aliases}{i}:test.local")
                .replace("{userId}", alice["user_id"]).replace("{type}", "org.example.fuzz")
                .replace("{tag}", "u.fuzz")
                .replace("{receiptType}", rng.choice(["m.read", "m.read.private",
                                                      "m.fully_read", "m.bogus"])))
        body = _body(rng, properties or ["msgtype", "body", "user_id", "reason", "room_id"])
        resp = await client.request(method, f"/_matrix/client/v3{path}",
                                    data=json.dumps(body), headers=headers)
        text = await resp.text()
        assert resp.status < 500, (path, body, text)
        if resp.status >= 400:
            error = json.loads(text)
            assert isinstance(error.get("errcode"), str) and error["errcode"].startswith("M_"), text
            assert isinstance(error.get("error"), str), text
    # The room still works after all that.
    resp = await client.get(f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=5",
                            headers=headers)
    assert resp.status == 200


_SEARCH_FIELDS: dict[str, list[Any]] = {
    "search_term": ["hello", "", "   ", '"unclosed', "-x", "OR", "a OR OR b", "中文", "*", "\u0000",
                    "x" * 5000, 5, None, ["hello"]],
    "keys": [["content.body"], ["content.bogus"], [], "content.body", [5], None],
    "filter": [{"limit": 3}, {"limit": -1}, {"limit": "x"}, {"rooms": "!r"}, {"types": [5]},
               {"senders": ["@a:b"]}, {"not_rooms": [None]}, {"contains_url": "yes"}, [], 5],
    "order_by": ["rank", "recent", "bogus", 5, None],
    "event_context": [{"before_limit": 2, "after_limit": 2, "include_profile": True},
                      {"before_limit": -1}, {"after_limit": "x"}, {"before_limit": 10**9}, "x"],
    "include_state": [True, False, "yes"],
    "groupings": [{"group_by": [{"key": "room_id"}, {"key": "sender"}]},
                  {"group_by": [{"key": "bogus"}]}, {"group_by": "x"}, {"group_by": [{}]}, 5],
}


async def test_random_search_criteria_get_matrix_errors_never_500(client: TestClient) -> None:
    alice = await register_user(client, fresh("fuzzer"))
    headers = bearer(alice["access_token"])
    resp = await client.post("/_matrix/client/v3/createRoom", json={"name": "hello"},
                             headers=headers)
    room_id = (await resp.json())["room_id"]
    for i in range(3):
        await client.put(f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/s{i}",
                         json={"msgtype": "m.text", "body": f"hello 中文 {i}"}, headers=headers)
    rng = random.Random("search")
    for _ in range(150):
        criteria = {name: rng.choice(values) for name, values in _SEARCH_FIELDS.items()
                    if rng.random() < 0.6}
        query = rng.choice(["", "?next_batch=rank_1", "?next_batch=recent_5",
                            "?next_batch=bogus", "?next_batch=rank_-1"])
        resp = await client.post(f"/_matrix/client/v3/search{query}", headers=headers,
                                 json={"search_categories": {"room_events": criteria}})
        text = await resp.text()
        assert resp.status < 500, (criteria, query, text)
        if resp.status >= 400:
            error = json.loads(text)
            assert isinstance(error.get("errcode"), str) and error["errcode"].startswith("M_"), text


BAD_QUERIES = [
    "/rooms/{room}/messages?dir=x",
    "/rooms/{room}/messages?dir=b&limit=abc",
    "/rooms/{room}/messages?dir=b&limit=-5",
    "/rooms/{room}/messages?dir=b&limit=99999999999999999999",
    "/rooms/{room}/messages?dir=b&from=nonsense",
    "/rooms/{room}/messages?dir=f&from=t1-1&to=garbage",
    "/rooms/{room}/messages?dir=b&filter=%7Bbad",
    "/rooms/{room}/messages?dir=b&filter=%5B1%2C2%5D",
    "/rooms/{room}/messages?dir=b&filter=%7B%22types%22%3A5%7D",
    "/rooms/{room}/messages?dir=b&filter=%7B%22limit%22%3A-1%7D",
    "/rooms/{room}/context/$nope?limit=x",
    "/rooms/{room}/context/{event}?limit=-3",
    "/rooms/{room}/members?at=zzz",
    "/rooms/{room}/members?membership=join&not_membership=join",
    "/rooms/{room}/event/not-an-id",
    "/rooms/!unknown:test.local/messages?dir=b",
    "/rooms/not-a-room/state",
    "/sync?since=s-1_x",
    "/sync?timeout=soon",
    "/sync?full_state=maybe",
    "/sync?filter=abc",
    "/sync?filter=%7B%22room%22%3A5%7D",
    "/sync?filter=%7B%22event_format%22%3A%22xml%22%7D",
    "/publicRooms?limit=-1",
    "/publicRooms?since=garbage",
    "/profile/not-a-user",
    "/directory/room/not-an-alias",
    "/sync?set_presence=busy",
    "/presence/not-a-user/status",
    "/presence/@nobody:test.local/status",
]


@pytest.mark.parametrize("template", BAD_QUERIES)
async def test_bad_query_parameters_get_matrix_errors(client: TestClient, template: str) -> None:
    alice = await register_user(client, fresh("querier"))
    headers = bearer(alice["access_token"])
    resp = await client.post("/_matrix/client/v3/createRoom", json={}, headers=headers)
    room_id = (await resp.json())["room_id"]
    resp = await client.put(f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/q",
                            json={"msgtype": "m.text", "body": "q"}, headers=headers)
    event_id = (await resp.json())["event_id"]
    path = template.replace("{room}", room_id).replace("{event}", event_id)
    resp = await client.get(f"/_matrix/client/v3{path}", headers=headers)
    text = await resp.text()
    assert resp.status < 500, (path, text)
    if resp.status >= 400:
        error = json.loads(text)
        assert error["errcode"].startswith("M_") and isinstance(error["error"], str), text


# -- every implemented operation, with requests generated from the spec's schemas ---------------
#
# Each operation of the spec's client-server API that the server has a route for gets
# SPEC_EXAMPLES requests from Hypothesis (hypothesis-jsonschema): path and query parameters
# and a JSON body drawn from the operation's schemas, identifiers half from what exists on the
# server (tests/helpers/openapi_fuzz.py), as a registered user. Whatever comes in: never a
# 5xx, every error a Matrix error, and a 2xx response valid against the spec's schema for it.
# Derandomized, so a failure reproduces; about a minute in all on a 2-core machine. For a
# deeper search locally: KTCHAT_FUZZ_EXAMPLES=500 KTCHAT_FUZZ_RANDOM=1 (a failure prints the
# request, and Hypothesis the seed to reproduce it).

SPEC_EXAMPLES = int(os.environ.get("KTCHAT_FUZZ_EXAMPLES", "40"))

# Requests after which the fuzzing user may be gone (logged out, deactivated): a fresh one
# takes over.
_ENDS_SESSIONS = {"/account/deactivate", "/logout", "/logout/all", "/devices/{deviceId}",
                  "/delete_devices", "/account/password"}


class FuzzWorld:
    """The server under fuzzing: a user with a room (aliased, with a second member and an
    event), a filter and a sync token, all of which the generated requests can name."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.known: Known | None = None
        self.token = ""
        self._strategies: dict[tuple[str, int], st.SearchStrategy[GeneratedRequest]] = {}

    async def set_up(self) -> None:
        me = await register_user(self.client, fresh("fuzzer"))
        other = await register_user(self.client, fresh("other"))
        self.token = me["access_token"]
        headers = bearer(self.token)
        alias = fresh("fuzz")
        resp = await self.client.post("/_matrix/client/v3/createRoom", headers=headers, json={
            "preset": "public_chat", "name": "fuzz", "room_alias_name": alias})
        room_id = (await resp.json())["room_id"]
        await self.client.post(f"/_matrix/client/v3/join/{room_id}",
                               headers=bearer(other["access_token"]), json={})
        resp = await self.client.put(
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/seed",
            json={"msgtype": "m.text", "body": "seed"}, headers=headers)
        event_id = (await resp.json())["event_id"]
        resp = await self.client.post(f"/_matrix/client/v3/user/{me['user_id']}/filter",
                                      json={"room": {"timeline": {"limit": 5}}},
                                      headers=headers)
        filter_id = (await resp.json())["filter_id"]
        resp = await self.client.get("/_matrix/client/v3/sync", headers=headers)
        since = (await resp.json())["next_batch"]
        self.known = Known(server_name=SERVER_NAME, user_id=me["user_id"],
                           other_user_id=other["user_id"], device_id=me["device_id"],
                           room_id=room_id, room_alias=f"#{alias}:{SERVER_NAME}",
                           event_id=event_id, filter_id=filter_id, since=since,
                           fresh_alias=f"#{fresh('fresh')}:{SERVER_NAME}")

    def strategy(self, operation: Operation) -> st.SearchStrategy[GeneratedRequest]:
        assert self.known is not None
        key = (str(operation), id(self.known))
        if key not in self._strategies:
            self._strategies[key] = request_strategy(operation, self.known)
        return self._strategies[key]

    async def still_signed_in(self) -> None:
        resp = await self.client.get("/_matrix/client/v3/account/whoami",
                                     headers=bearer(self.token))
        if resp.status == 401:
            await self.set_up()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reading_world(client: TestClient) -> FuzzWorld:
    """The world of the GET operations: they read it (a /sync may set the user's presence)."""
    world = FuzzWorld(client)
    await world.set_up()
    return world


@pytest_asyncio.fixture(loop_scope="module")
async def fuzz_world(client: TestClient, reading_world: FuzzWorld,
                     operation: Operation) -> FuzzWorld:
    """A world of the test's own for an operation that may change it (leave the room, ban the
    other member, redact the event, deactivate the user: what the next test's requests would
    stop at); the GET operations share one."""
    if operation.method == "GET":
        return reading_world
    world = FuzzWorld(client)
    await world.set_up()
    return world


def _without_deliberate_deviations(operation: Operation, status: int, answer: Any) -> Any:
    """The answer less where the server deviates from the spec's schema on purpose, each
    named and as narrow as it can be (never a whole endpoint)."""
    # DEVICE_DISPLAY_NAME_NULL: GET /devices and /devices/{deviceId} give
    # "display_name": null for a device without a name, as Synapse does, where the spec has
    # an optional string: matrix-nio's validator (matrix-commander --devices) requires the
    # key, null included (issue 13, item 14).
    if operation.method == "GET" and status == 200 and isinstance(answer, dict) and \
            operation.template in ("/devices", "/devices/{deviceId}"):
        devices = answer.get("devices") if operation.template == "/devices" else [answer]
        for device in devices if isinstance(devices, list) else []:
            if isinstance(device, dict) and "display_name" in device and \
                    device["display_name"] is None:
                del device["display_name"]
    # TURN_UNCONFIGURED_EMPTY: GET /voip/turnServer answers {} when no TURN server is
    # configured, as Synapse does (and clients expect), where the spec's schema requires
    # the credentials (issue 17, item 6). A configured server's answer is checked.
    if operation.method == "GET" and status == 200 and answer == {} and \
            operation.template == "/voip/turnServer":
        return None
    return answer


@pytest.mark.parametrize("operation", implemented_operations(), ids=str)
@settings(max_examples=SPEC_EXAMPLES, deadline=None, database=None,
          derandomize=not os.environ.get("KTCHAT_FUZZ_RANDOM"),
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_spec_generated_requests(fuzz_world: FuzzWorld, operation: Operation,
                                       data: st.DataObject) -> None:
    request = data.draw(fuzz_world.strategy(operation), label="request")
    headers = {**bearer(fuzz_world.token)}
    body: bytes | None = None
    if request.has_body:
        body = json.dumps(request.body).encode()
        headers["Content-Type"] = "application/json"
    url = URL(request.path, encoded=True).with_query(request.query) if request.query \
        else URL(request.path, encoded=True)
    resp = await fuzz_world.client.request(request.method, url, data=body, headers=headers)
    text = await resp.text()
    if request.method != "GET" and operation.template in _ENDS_SESSIONS:
        await fuzz_world.still_signed_in()
    assert resp.status < 500, (request.describe(), resp.status, text)
    try:
        answer = json.loads(text)
    except ValueError:
        raise AssertionError(("not JSON", request.describe(), resp.status, text)) from None
    if resp.status >= 400:
        if resp.status == 401 and isinstance(answer, dict) and "flows" in answer:
            return  # user-interactive auth asks for a stage; errcode is optional then
        assert isinstance(answer, dict) and isinstance(answer.get("errcode"), str) \
            and answer["errcode"].startswith("M_") and isinstance(answer.get("error"), str), \
            (request.describe(), resp.status, text)
    elif resp.status < 300:
        checked = _without_deliberate_deviations(operation, resp.status, answer)
        if checked is not None:
            assert_matches_operation(operation.file, dict(operation.op), resp.status,
                                     checked, request.describe())
