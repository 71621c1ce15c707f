"""Identifiers from clients, over real HTTP, on SQLite and on PostgreSQL: each is checked
against its grammar and length where it enters (``client_api/params.py``, with the grammars in
``core/types.py``), so an over-long or malformed one is a Matrix error, never a 500, and
nothing of it is stored.

Limits (the spec's appendices and its PDU size limits; errors as Synapse answers them):
room aliases, room IDs, event IDs and user IDs at most 255 bytes, else ``400 M_INVALID_PARAM``;
event types and state keys at most 255 bytes, else ``413 M_TOO_LARGE`` (Synapse's
``EventSizeError``); transaction IDs, account data types and tags at most 255 bytes, else
``400 M_INVALID_PARAM``; a profile key over 255 bytes, ``400 M_KEY_TOO_LARGE`` (the spec);
``via``/``server_name`` must be server names (``400 M_INVALID_PARAM``). Control characters are
refused in every identifier but state keys. A ``/`` (``%2F`` in a path segment) is allowed in
event types, state keys, account data types and transaction IDs, as Synapse allows it, and what
is stored under it reads back under the same name.

The refusals share one server and one world per backend (``env``): each compares what is
stored before and after its own request, and a refusal leaves it as it found it. The tests
that store something have a fresh server and world each (``client`` and ``world``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
import sqlalchemy as sa
from aiohttp.test_utils import TestClient

from homeserver.services.container import Services
from storage import schema
from tests.conftest import SERVER_NAME, bearer
from tests.helpers.harness import SharedServer, harness_services, shared_server
from tests.helpers.room_api import V3, User, api, create_room, join, new_user, send_text

# Lengths in bytes of the over-long identifiers: just over the limit, and two the issue tried.
LENGTHS = (256, 1000, 8000)


services = harness_services  # of the fresh server of ``client`` (once per test)

# The tests on the module's shared server (``env``) run in the module's event loop.
shared = pytest.mark.asyncio(loop_scope="module")


@dataclass
class World:
    alice: User
    bob: User
    room_id: str
    event_id: str


async def build_world(client: TestClient) -> World:
    alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
    room_id = await create_room(client, alice, preset="public_chat", room_alias_name="room")
    await join(client, bob, room_id)
    event_id = await send_text(client, alice, room_id, "hello")
    for path, body in (
            (f"/user/{alice.user_id}/account_data/org.example", {"a": "b"}),
            (f"/user/{alice.user_id}/rooms/{room_id}/account_data/org.example", {"c": "d"}),
            (f"/user/{alice.user_id}/rooms/{room_id}/tags/u.work", {"order": 0.5})):
        status, answer = await api(client, "PUT", path, alice, body, spec=False)
        assert status == 200, (path, answer)
    return World(alice, bob, room_id, event_id)


@pytest.fixture
async def world(client: TestClient) -> World:
    """A world of its own on a fresh server, for a test that stores something."""
    return await build_world(client)


@dataclass
class Env:
    client: TestClient
    services: Services
    world: World


server = shared_server("identifiers")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(server: SharedServer) -> Env:
    """One server and one world per backend, shared by the refusals."""
    services, client = server
    return Env(client, services, await build_world(client))


# Tables a refused identifier could have landed in.
_TABLES = (schema.events, schema.state_keys, schema.current_state, schema.room_aliases,
           schema.account_data, schema.receipts, schema.rooms, schema.device_inbox,
           schema.user_filters)


async def stored(services: Services) -> dict[str, int]:
    """How many rows each table of ``_TABLES`` holds."""
    async with services.db.engine.read() as conn:
        return {t.name: (await conn.execute(sa.select(sa.func.count()).select_from(t)))
                .scalar_one() for t in _TABLES}


async def _get(client: TestClient, user: User, path: str, **query: str) -> Any:
    status, body = await api(client, "GET", path, user, query=query or None, spec=False)
    assert status == 200, (path, body)
    return body


async def snapshot(client: TestClient, services: Services, w: World) -> dict[str, Any]:
    """What alice reads back of everything the requests below could change, and the rows."""
    a, room = w.alice, w.room_id
    state = await _get(client, a, f"/rooms/{room}/state")
    timeline = await _get(client, a, f"/rooms/{room}/messages", dir="b", limit="50")
    return {
        "state": sorted((e["type"], e["state_key"], e["event_id"]) for e in state),
        "timeline": [e["event_id"] for e in timeline["chunk"]],
        "account_data": await _get(client, a, f"/user/{a.user_id}/account_data/org.example"),
        "room_account_data": await _get(
            client, a, f"/user/{a.user_id}/rooms/{room}/account_data/org.example"),
        "tags": await _get(client, a, f"/user/{a.user_id}/rooms/{room}/tags"),
        "alias": await _get(client, a, f"/directory/room/#room:{SERVER_NAME}"),
        "rooms": await _get(client, a, "/joined_rooms"),
        "rows": await stored(services),
    }


def _q(value: str) -> str:
    return quote(value, safe="")


def _pad(n: int, prefix: str = "", suffix: str = "") -> str:
    """``prefix`` + ``a``s + ``suffix``, ``n`` bytes in all."""
    return prefix + "a" * (n - len(prefix.encode()) - len(suffix.encode())) + suffix


# (name, request maker, expected status, errcode). A maker gets the world and a length in
# bytes and gives (method, path below /_matrix/client/v3 with its segments quoted, body).
Maker = Any
OVERLONG: list[tuple[str, Maker, int, str]] = [
    ("PUT alias", lambda w, n: (
        "PUT", f"/directory/room/{_q(_pad(n, '#', ':' + SERVER_NAME))}",
        {"room_id": w.room_id}), 400, "M_INVALID_PARAM"),
    ("GET alias", lambda w, n: (
        "GET", f"/directory/room/{_q(_pad(n, '#', ':' + SERVER_NAME))}", None),
     400, "M_INVALID_PARAM"),
    ("DELETE alias", lambda w, n: (
        "DELETE", f"/directory/room/{_q(_pad(n, '#', ':' + SERVER_NAME))}", None),
     400, "M_INVALID_PARAM"),
    ("join alias", lambda w, n: (
        "POST", f"/join/{_q(_pad(n, '#', ':' + SERVER_NAME))}", {}), 400, "M_INVALID_PARAM"),
    ("createRoom alias", lambda w, n: (
        "POST", "/createRoom", {"room_alias_name": _pad(n - len(SERVER_NAME) - 2)}),
     400, "M_INVALID_PARAM"),
    ("send type", lambda w, n: (
        "PUT", f"/rooms/{_q(w.room_id)}/send/{_q(_pad(n, 'org.'))}/t1", {"a": 1}),
     413, "M_TOO_LARGE"),
    ("state type", lambda w, n: (
        "PUT", f"/rooms/{_q(w.room_id)}/state/{_q(_pad(n, 'org.'))}", {"a": 1}),
     413, "M_TOO_LARGE"),
    ("state key", lambda w, n: (
        "PUT", f"/rooms/{_q(w.room_id)}/state/org.example/{_q(_pad(n))}", {"a": 1}),
     413, "M_TOO_LARGE"),
    ("member state key", lambda w, n: (
        "PUT", f"/rooms/{_q(w.room_id)}/state/m.room.member/"
        f"{_q(_pad(n, '@', ':' + SERVER_NAME))}", {"membership": "invite"}),
     413, "M_TOO_LARGE"),
    ("createRoom state type", lambda w, n: (
        "POST", "/createRoom", {"initial_state": [{"type": _pad(n, "org."), "content": {}}]}),
     413, "M_TOO_LARGE"),
    ("createRoom state key", lambda w, n: (
        "POST", "/createRoom", {"initial_state": [
            {"type": "org.example", "state_key": _pad(n), "content": {}}]}),
     413, "M_TOO_LARGE"),
    ("send txn", lambda w, n: (
        "PUT", f"/rooms/{_q(w.room_id)}/send/m.room.message/{_q(_pad(n))}",
        {"msgtype": "m.text", "body": "x"}), 400, "M_INVALID_PARAM"),
    ("redact txn", lambda w, n: (
        "PUT", f"/rooms/{_q(w.room_id)}/redact/{_q(w.event_id)}/{_q(_pad(n))}", {}),
     400, "M_INVALID_PARAM"),
    ("to-device txn", lambda w, n: (
        "PUT", f"/sendToDevice/m.x/{_q(_pad(n))}",
        {"messages": {w.bob.user_id: {"*": {"a": 1}}}}), 400, "M_INVALID_PARAM"),
    ("to-device type", lambda w, n: (
        "PUT", f"/sendToDevice/{_q(_pad(n, 'org.'))}/t1",
        {"messages": {w.bob.user_id: {"*": {"a": 1}}}}), 400, "M_INVALID_PARAM"),
    ("account data type", lambda w, n: (
        "PUT", f"/user/{_q(w.alice.user_id)}/account_data/{_q(_pad(n, 'org.'))}", {"a": 1}),
     400, "M_INVALID_PARAM"),
    ("GET account data type", lambda w, n: (
        "GET", f"/user/{_q(w.alice.user_id)}/account_data/{_q(_pad(n, 'org.'))}", None),
     400, "M_INVALID_PARAM"),
    ("room account data type", lambda w, n: (
        "PUT", f"/user/{_q(w.alice.user_id)}/rooms/{_q(w.room_id)}/account_data/"
        f"{_q(_pad(n, 'org.'))}", {"a": 1}), 400, "M_INVALID_PARAM"),
    ("room account data room", lambda w, n: (
        "PUT", f"/user/{_q(w.alice.user_id)}/rooms/{_q(_pad(n, '!', ':' + SERVER_NAME))}/"
        "account_data/org.example", {"a": 1}), 400, "M_INVALID_PARAM"),
    ("tag", lambda w, n: (
        "PUT", f"/user/{_q(w.alice.user_id)}/rooms/{_q(w.room_id)}/tags/{_q(_pad(n, 'u.'))}",
        {}), 400, "M_INVALID_PARAM"),
    ("tag room", lambda w, n: (
        "PUT", f"/user/{_q(w.alice.user_id)}/rooms/{_q(_pad(n, '!', ':' + SERVER_NAME))}/"
        "tags/u.work", {}), 400, "M_INVALID_PARAM"),
    ("room ID", lambda w, n: (
        "GET", f"/rooms/{_q(_pad(n, '!', ':' + SERVER_NAME))}/state", None),
     400, "M_INVALID_PARAM"),
    ("join room ID", lambda w, n: (
        "POST", f"/join/{_q(_pad(n, '!', ':' + SERVER_NAME))}", {}), 400, "M_INVALID_PARAM"),
    ("event ID", lambda w, n: (
        "GET", f"/rooms/{_q(w.room_id)}/event/{_q(_pad(n, '$'))}", None),
     400, "M_INVALID_PARAM"),
    ("receipt event ID", lambda w, n: (
        "POST", f"/rooms/{_q(w.room_id)}/receipt/m.read/{_q(_pad(n, '$'))}", {}),
     400, "M_INVALID_PARAM"),
    ("read marker event ID", lambda w, n: (
        "POST", f"/rooms/{_q(w.room_id)}/read_markers", {"m.fully_read": _pad(n, "$")}),
     400, "M_INVALID_PARAM"),
    ("kick user ID", lambda w, n: (
        "POST", f"/rooms/{_q(w.room_id)}/kick", {"user_id": _pad(n, "@", ":" + SERVER_NAME)}),
     400, "M_INVALID_PARAM"),
    ("unban user ID", lambda w, n: (
        "POST", f"/rooms/{_q(w.room_id)}/unban",
        {"user_id": _pad(n, "@", ":" + SERVER_NAME)}), 400, "M_INVALID_PARAM"),
    ("invite user ID", lambda w, n: (
        "POST", f"/rooms/{_q(w.room_id)}/invite",
        {"user_id": _pad(n, "@", ":" + SERVER_NAME)}), 400, "M_INVALID_PARAM"),
    ("via", lambda w, n: (
        "POST", f"/join/{_q(w.room_id)}?via={_q(_pad(n))}", {}), 400, "M_INVALID_PARAM"),
    ("profile key", lambda w, n: (
        "PUT", f"/profile/{_q(w.alice.user_id)}/{_q(_pad(n, 'org.'))}",
        {_pad(n, "org."): "x"}), 400, "M_KEY_TOO_LARGE"),
]


async def _refused(client: TestClient, services: Services, w: World, method: str, path: str,
                   body: Any, status: int, errcode: str) -> None:
    before = await snapshot(client, services, w)
    resp = await client.request(method, V3 + path, json=body, headers=bearer(w.alice.token))
    answer = await resp.json()
    assert (resp.status, answer.get("errcode")) == (status, errcode), answer
    assert isinstance(answer.get("error"), str)
    assert await snapshot(client, services, w) == before


@shared
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize(("name", "make", "status", "errcode"), OVERLONG,
                         ids=[name for name, *_ in OVERLONG])
async def test_overlong_identifier_is_refused_and_nothing_is_stored(
        env: Env, name: str, make: Maker, status: int, errcode: str, length: int) -> None:
    method, path, body = make(env.world, length)
    await _refused(env.client, env.services, env.world, method, path, body, status, errcode)


@shared
async def test_multibyte_identifiers_count_bytes(env: Env) -> None:
    """200 characters of two bytes each are 400 bytes: over the limit."""
    wide = "é" * 200
    w = env.world
    for method, path, body, status, errcode in (
            ("PUT", f"/directory/room/{_q('#' + wide + ':' + SERVER_NAME)}",
             {"room_id": w.room_id}, 400, "M_INVALID_PARAM"),
            ("PUT", f"/rooms/{_q(w.room_id)}/state/org.example/{_q(wide)}", {"a": 1},
             413, "M_TOO_LARGE"),
            ("PUT", f"/rooms/{_q(w.room_id)}/send/{_q('org.' + wide)}/t1", {"a": 1},
             413, "M_TOO_LARGE"),
            ("PUT", f"/user/{_q(w.alice.user_id)}/rooms/{_q(w.room_id)}/tags/{_q(wide)}", {},
             400, "M_INVALID_PARAM"),
            ("PUT", f"/user/{_q(w.alice.user_id)}/account_data/{_q(wide)}", {"a": 1},
             400, "M_INVALID_PARAM"),
            ("POST", f"/rooms/{_q(w.room_id)}/receipt/m.read/{_q(w.event_id)}",
             {"thread_id": "$" + wide}, 400, "M_INVALID_PARAM")):
        await _refused(env.client, env.services, w, method, path, body, status, errcode)


# Control characters (and other grammar errors): 400 M_INVALID_PARAM.
MALFORMED: list[tuple[str, str, Any]] = [
    ("PUT", "/rooms/{room}/send/org.ex%01ample/t1", {"a": 1}),
    ("PUT", "/rooms/{room}/state/org.ex%0Aample", {"a": 1}),
    ("PUT", "/rooms/{room}/send/m.room.message/t%7F1", {"msgtype": "m.text", "body": "x"}),
    ("PUT", "/user/{me}/account_data/org.ex%09ample", {"a": 1}),
    ("PUT", "/user/{me}/rooms/{room}/account_data/org.ex%1Bample", {"a": 1}),
    ("PUT", "/user/{me}/rooms/{room}/tags/u.%0Dwork", {}),
    ("PUT", "/user/{me}/rooms/not-a-room/tags/u.work", {}),
    ("PUT", "/user/{me}/rooms/not-a-room/account_data/org.example", {"a": 1}),
    ("PUT", "/sendToDevice/m.%0Ax/t1", {"messages": {}}),
    ("PUT", "/directory/room/%23al%0Aias:test.local", {"room_id": "{room}"}),
    ("PUT", "/directory/room/%23al%20ias:test.local", {"room_id": "{room}"}),
    ("PUT", "/directory/room/%23:test.local", {"room_id": "{room}"}),
    ("PUT", "/directory/room/%23alias:bad%20server", {"room_id": "{room}"}),
    ("PUT", "/directory/room/%23alias", {"room_id": "{room}"}),
    ("PUT", "/directory/room/%23other:test.local", {"room_id": "not-a-room"}),
    ("GET", "/directory/room/alias:test.local", None),
    ("POST", "/join/%23alias:bad%20server", {}),
    ("POST", "/join/{room}?via=bad%20server", {}),
    ("POST", "/join/{room}?server_name=bad_server:99999", {}),
    ("POST", "/join/{room}?via=test.local&via=", {}),
    ("POST", "/rooms/{room}/kick", {"user_id": "bob"}),
    ("POST", "/rooms/{room}/unban", {"user_id": "@bob"}),
    ("GET", "/rooms/{room}/event/not-an-event", None),
    ("POST", "/rooms/{room}/receipt/m.read/not-an-event", {}),
    ("POST", "/createRoom", {"room_alias_name": "al\nias"}),
    ("POST", "/createRoom", {"initial_state": [{"type": "org.\u0001x", "content": {}}]}),
    ("POST", "/createRoom", {"initial_state": [{"type": "", "content": {}}]}),
]


@shared
@pytest.mark.parametrize(("method", "template", "body"), MALFORMED,
                         ids=[f"{m} {t} {i}" for i, (m, t, _) in enumerate(MALFORMED)])
async def test_malformed_identifier_is_invalid_param(env: Env, method: str, template: str,
                                                     body: Any) -> None:
    world = env.world
    path = template.format(room=_q(world.room_id), me=_q(world.alice.user_id))
    if isinstance(body, dict) and body.get("room_id") == "{room}":
        body = {**body, "room_id": world.room_id}
    await _refused(env.client, env.services, world, method, path, body, 400,
                   "M_INVALID_PARAM")


@shared
async def test_initial_state_key_must_be_a_string(env: Env) -> None:
    """Not turned into one (``5`` into ``"5"``): ``400 M_BAD_JSON``."""
    await _refused(env.client, env.services, env.world, "POST", "/createRoom", {
        "initial_state": [{"type": "org.example", "state_key": 5, "content": {}}]},
        400, "M_BAD_JSON")


# -- what is allowed (stored: a fresh server each) ------------------------------------------


async def test_identifiers_of_255_bytes_are_accepted(client: TestClient,
                                                     world: World) -> None:
    w, a = world, world.alice
    alias = _pad(255, "#", ":" + SERVER_NAME)
    status, body = await api(client, "PUT", f"/directory/room/{alias}", a,
                             {"room_id": w.room_id})
    assert status == 200, body
    status, body = await api(client, "GET", f"/directory/room/{alias}", a)
    assert (status, body["room_id"]) == (200, w.room_id), body
    event_type, state_key = _pad(255, "org."), _pad(255, "k")
    status, body = await api(client, "PUT", f"/rooms/{w.room_id}/state/{event_type}/{state_key}",
                             a, {"x": 1})
    assert status == 200, body
    status, body = await api(client, "GET",
                             f"/rooms/{w.room_id}/state/{event_type}/{state_key}", a)
    assert (status, body) == (200, {"x": 1})
    status, body = await api(client, "PUT", f"/rooms/{w.room_id}/send/{event_type}/"
                             f"{_pad(255, 't')}", a, {"y": 2})
    assert status == 200, body
    status, body = await api(client, "PUT", f"/user/{a.user_id}/account_data/{event_type}", a,
                             {"z": 3})
    assert status == 200, body
    status, body = await api(client, "GET", f"/user/{a.user_id}/account_data/{event_type}", a)
    assert (status, body) == (200, {"z": 3})


async def test_slash_in_a_path_segment_reads_back_under_the_same_name(
        client: TestClient, world: World) -> None:
    """``%2F`` is one segment: stored as ``/`` and found again by the same path, as Synapse."""
    w, a = world, world.alice
    room, me = _q(w.room_id), _q(a.user_id)

    async def request(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        resp = await client.request(method, V3 + path, json=body, headers=bearer(a.token))
        return resp.status, await resp.json()

    status, body = await request("PUT", f"/rooms/{room}/state/org.a%2Fb/k%2Fey", {"x": 1})
    assert status == 200, body
    status, body = await request("GET", f"/rooms/{room}/state/org.a%2Fb/k%2Fey")
    assert (status, body) == (200, {"x": 1})
    status, state = await request("GET", f"/rooms/{room}/state")
    assert status == 200, state
    assert [(e["type"], e["state_key"], e["content"]) for e in state
            if e["type"] == "org.a/b"] == [("org.a/b", "k/ey", {"x": 1})]
    status, first = await request("PUT", f"/rooms/{room}/send/org.c%2Fd/t%2F1", {"y": 2})
    assert status == 200, first
    status, again = await request("PUT", f"/rooms/{room}/send/org.c%2Fd/t%2F1", {"y": 2})
    assert (status, again) == (200, first)  # the same transaction
    status, event = await request("GET", f"/rooms/{room}/event/{_q(first['event_id'])}")
    assert (status, event["type"], event["content"]) == (200, "org.c/d", {"y": 2})
    status, body = await request("PUT", f"/user/{me}/account_data/org.e%2Ff", {"z": 3})
    assert status == 200, body
    status, body = await request("GET", f"/user/{me}/account_data/org.e%2Ff")
    assert (status, body) == (200, {"z": 3})
    status, body = await request("GET", f"/user/{me}/account_data/org.e")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
