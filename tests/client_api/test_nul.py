"""U+0000 from clients, over real HTTP, on SQLite and on PostgreSQL (whose text columns cannot
hold it): both answer alike and never 500 (``homeserver/http/nul.py``).

In a path segment or query parameter (``%00``) it is ``400 M_INVALID_PARAM``; in any string of
a JSON body, key or value, at any depth, ``400 M_BAD_JSON``. After each refusal what is stored
is unchanged and reads back as before.

The refusals share one server and one world per backend (``env``): each compares what is
stored before and after its own request, and a refusal leaves it as it found it. The test that
stores something has a fresh server and world (``client`` and ``world``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from tests.conftest import bearer
from tests.helpers.harness import SharedServer, harness_services, shared_server
from tests.helpers.room_api import (
    V3,
    User,
    api,
    create_room,
    join,
    new_user,
    send_text,
)

NUL = "\u0000"
ESCAPED = quote(NUL)  # %00


services = harness_services  # of the fresh server of ``client`` (once per test)

# The tests on the module's shared server (``env``) run in the module's event loop.
shared = pytest.mark.asyncio(loop_scope="module")


@dataclass
class World:
    """Alice, with something of everything the table below tries to change."""

    alice: User
    bob: User
    room_id: str
    event_id: str
    filter_id: str


async def build_world(client: TestClient) -> World:
    alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
    room_id = await create_room(client, alice, preset="public_chat", name="Room",
                                topic="Topic", room_alias_name="room")
    await join(client, bob, room_id)
    event_id = await send_text(client, alice, room_id, "hello")
    for method, path, body in (
            ("PUT", f"/profile/{alice.user_id}/displayname", {"displayname": "Alice"}),
            ("PUT", f"/user/{alice.user_id}/account_data/org.example", {"a": "b"}),
            ("PUT", f"/user/{alice.user_id}/rooms/{room_id}/account_data/org.example",
             {"c": "d"}),
            ("PUT", f"/user/{alice.user_id}/rooms/{room_id}/tags/u.work", {"order": 0.5}),
            ("PUT", f"/devices/{alice.device_id}", {"display_name": "Phone"}),
            ("PUT", f"/presence/{alice.user_id}/status", {"presence": "online",
                                                           "status_msg": "here"})):
        status, answer = await api(client, method, path, alice, body, spec=False)
        assert status == 200, (path, answer)
    status, answer = await api(client, "POST", f"/user/{alice.user_id}/filter", alice,
                               {"room": {"timeline": {"limit": 5}}})
    assert status == 200, answer
    return World(alice, bob, room_id, event_id, answer["filter_id"])


@pytest.fixture
async def world(client: TestClient) -> World:
    """A world of its own on a fresh server, for a test that stores something."""
    return await build_world(client)


@dataclass
class Env:
    client: TestClient
    world: World


server = shared_server("nul")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(server: SharedServer) -> Env:
    """One server and one world per backend, shared by the refusals."""
    client = server[1]
    return Env(client, await build_world(client))


async def _get(client: TestClient, user: User, path: str, **query: str) -> Any:
    status, body = await api(client, "GET", path, user, query=query or None, spec=False)
    assert status == 200, (path, body)
    return body


async def snapshot(client: TestClient, w: World) -> dict[str, Any]:
    """Everything the table's requests could have changed, as alice reads it back."""
    a, room = w.alice, w.room_id
    state = await _get(client, a, f"/rooms/{room}/state")
    timeline = await _get(client, a, f"/rooms/{room}/messages", dir="b", limit="50")
    devices = await _get(client, a, "/devices")
    presence = await _get(client, a, f"/presence/{a.user_id}/status")
    return {
        "profile": await _get(client, a, f"/profile/{a.user_id}"),
        "state": sorted((e["type"], e["state_key"], e["event_id"]) for e in state),
        "timeline": [e["event_id"] for e in timeline["chunk"]],
        "account_data": await _get(client, a, f"/user/{a.user_id}/account_data/org.example"),
        "room_account_data": await _get(
            client, a, f"/user/{a.user_id}/rooms/{room}/account_data/org.example"),
        "tags": await _get(client, a, f"/user/{a.user_id}/rooms/{room}/tags"),
        "filter": await _get(client, a, f"/user/{a.user_id}/filter/{w.filter_id}"),
        "devices": sorted((d["device_id"], d["display_name"]) for d in devices["devices"]),
        "alias": await _get(client, a, "/directory/room/#room:test.local"),
        "rooms": await _get(client, a, "/joined_rooms"),
        "status_msg": presence.get("status_msg"),
    }


# (method, path template, body) with U+0000 in the path or query: 400 M_INVALID_PARAM.
# {n} is the escaped NUL; {room}, {event}, {me}, {device}, {filter} are alice's.
IN_PATH: list[tuple[str, str, Any]] = [
    ("GET", "/rooms/!a{n}:test.local/state", None),
    ("GET", "/rooms/{room}/event/$e{n}", None),
    ("GET", "/rooms/{room}/context/$e{n}", None),
    ("GET", "/profile/@a{n}:test.local", None),
    ("PUT", "/rooms/{room}/state/m.room.topic/key{n}", {"topic": "x"}),
    ("PUT", "/rooms/{room}/state/org.example{n}", {"a": 1}),
    ("PUT", "/rooms/{room}/send/m.room.message/txn{n}", {"msgtype": "m.text", "body": "x"}),
    ("PUT", "/rooms/{room}/send/org.example{n}/txn1", {"a": 1}),
    ("PUT", "/rooms/{room}/redact/{event}/txn{n}", {}),
    ("PUT", "/user/{me}/account_data/org.example{n}", {"a": 1}),
    ("PUT", "/user/{me}/rooms/{room}/account_data/org{n}", {"a": 1}),
    ("PUT", "/user/{me}/rooms/{room}/tags/u.{n}", {}),
    ("GET", "/user/{me}/filter/{filter}{n}", None),
    ("GET", "/devices/D{n}", None),
    ("PUT", "/devices/D{n}", {"display_name": "x"}),
    ("PUT", "/directory/room/%23a{n}:test.local", {"room_id": "{room}"}),
    ("GET", "/directory/room/%23a{n}:test.local", None),
    ("POST", "/rooms/{room}/receipt/m.read/$e{n}", {}),
    ("PUT", "/sendToDevice/m.x/txn{n}", {"messages": {}}),
    ("POST", "/join/%23room{n}:test.local", {}),
    ("GET", "/sync?since=s1{n}", None),
    ("GET", "/sync?filter=%7B%22room%22%3A%7B%22rooms%22%3A%5B%22a{n}%22%5D%7D%7D", None),
    ("GET", "/sync?filter={filter}{n}", None),
    ("GET", "/rooms/{room}/messages?from=t1-1{n}&dir=b", None),
    ("GET", "/rooms/{room}/messages?dir=b&filter=%7B%22types%22%3A%5B%22a{n}%22%5D%7D", None),
    ("GET", "/rooms/{room}/members?at=s1{n}", None),
    ("POST", "/search?next_batch=rank_1{n}",
     {"search_categories": {"room_events": {"search_term": "hello"}}}),
    ("GET", "/publicRooms?since=x{n}", None),
    ("GET", "/rooms/{room}/state?x{n}=1", None),
]

# (method, path template, body) with U+0000 in the JSON body: 400 M_BAD_JSON.
IN_BODY: list[tuple[str, str, Any]] = [
    ("PUT", "/profile/{me}/displayname", {"displayname": f"A{NUL}lice"}),
    ("PUT", "/profile/{me}/avatar_url", {"avatar_url": f"mxc://test.local/a{NUL}"}),
    ("PUT", "/rooms/{room}/state/m.room.name", {"name": f"Ro{NUL}om"}),
    ("PUT", "/rooms/{room}/state/m.room.topic", {"topic": f"To{NUL}pic"}),
    ("PUT", "/rooms/{room}/send/m.room.message/t1", {"msgtype": "m.text", "body": f"h{NUL}"}),
    ("PUT", "/rooms/{room}/send/org.example/t2", {"deep": {"list": [1, {"x": [f"{NUL}"]}]}}),
    ("PUT", "/rooms/{room}/send/org.example/t3", {f"key{NUL}": 1}),
    ("PUT", "/rooms/{room}/state/org.example/custom", {"a": NUL}),
    ("PUT", "/rooms/{room}/redact/{event}/t4", {"reason": f"r{NUL}"}),
    ("POST", "/createRoom", {"name": f"N{NUL}"}),
    ("POST", "/createRoom", {"topic": f"T{NUL}"}),
    ("POST", "/createRoom", {"room_alias_name": f"al{NUL}ias"}),
    ("POST", "/createRoom", {"initial_state": [{"type": "org.example", "state_key": NUL,
                                                "content": {}}]}),
    ("PUT", "/user/{me}/account_data/org.example", {"a": f"b{NUL}"}),
    ("PUT", "/user/{me}/account_data/org.example", {f"a{NUL}": "b"}),
    ("PUT", "/user/{me}/rooms/{room}/account_data/org.example", {"c": NUL}),
    ("PUT", "/user/{me}/rooms/{room}/tags/u.work", {"order": 1, "x": NUL}),
    ("POST", "/user/{me}/filter", {"room": {"rooms": [f"!a{NUL}:test.local"]}}),
    ("PUT", "/devices/{device}", {"display_name": f"Ph{NUL}one"}),
    ("PUT", "/directory/room/%23other:test.local", {"room_id": f"!a{NUL}:test.local"}),
    ("POST", "/search", {"search_categories": {"room_events": {"search_term": f"h{NUL}"}}}),
    ("PUT", "/presence/{me}/status", {"presence": "online", "status_msg": f"x{NUL}"}),
    ("POST", "/rooms/{room}/read_markers", {"m.fully_read": f"$e{NUL}"}),
    ("POST", "/rooms/{room}/invite", {"user_id": f"@b{NUL}:test.local"}),
    ("POST", "/rooms/{room}/kick", {"user_id": "@bob:test.local", "reason": NUL}),
    ("PUT", "/sendToDevice/m.x/t5", {"messages": {"@bob:test.local": {"*": {"a": NUL}}}}),
    ("PUT", "/rooms/{room}/typing/{me}", {"typing": True, "timeout": 1000, "x": NUL}),
    ("POST", "/rooms/{room}/receipt/m.read/{event}", {"thread_id": NUL}),
]


def _fill(template: str, w: World) -> str:
    return template.format(n=ESCAPED, room=quote(w.room_id, safe=""),
                           event=quote(w.event_id, safe=""), me=quote(w.alice.user_id, safe=""),
                           device=quote(w.alice.device_id, safe=""), filter=w.filter_id)


def _fill_body(body: Any, w: World) -> Any:
    return json.loads(json.dumps(body).replace("{room}", w.room_id)) if body else body


async def _refused(client: TestClient, w: World, method: str, template: str, body: Any,
                   errcode: str) -> None:
    before = await snapshot(client, w)
    resp = await client.request(method, V3 + _fill(template, w),
                                json=_fill_body(body, w), headers=bearer(w.alice.token))
    answer = await resp.json()
    assert (resp.status, answer.get("errcode")) == (400, errcode), answer
    assert isinstance(answer.get("error"), str)
    assert await snapshot(client, w) == before


@shared
@pytest.mark.parametrize("method, template, body", IN_PATH,
                         ids=[f"{m} {t}" for m, t, _ in IN_PATH])
async def test_nul_in_a_path_or_query_is_invalid_param(env: Env, method: str, template: str,
                                                       body: Any) -> None:
    await _refused(env.client, env.world, method, template, body, "M_INVALID_PARAM")


@shared
@pytest.mark.parametrize("method, template, body", IN_BODY,
                         ids=[f"{m} {t} {i}" for i, (m, t, _) in enumerate(IN_BODY)])
async def test_nul_in_a_body_is_bad_json(env: Env, method: str, template: str,
                                         body: Any) -> None:
    await _refused(env.client, env.world, method, template, body, "M_BAD_JSON")


@shared
async def test_nul_before_login_and_in_registration(env: Env) -> None:
    """Unauthenticated endpoints too (their user names reach the database)."""
    client = env.client
    for path, body in (
            ("/login", {"type": "m.login.password", "password": "x",
                        "identifier": {"type": "m.id.user", "user": f"a{NUL}"}}),
            ("/register", {"username": f"a{NUL}", "password": "correct horse"}),
            ("/register/available?username=a%00", None)):
        resp = await client.request("GET" if body is None else "POST", V3 + path, json=body)
        answer = await resp.json()
        assert resp.status == 400, answer
        assert answer["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), answer


async def test_escaped_backslash_u0000_is_not_nul(client: TestClient, world: World) -> None:
    """``"\\\\u0000"`` is a backslash and five characters, not U+0000: stored and read back."""
    text = "\\u0000"
    event_id = await send_text(client, world.alice, world.room_id, text)
    status, event = await api(client, "GET", f"/rooms/{world.room_id}/event/{event_id}",
                              world.alice)
    assert status == 200, event
    assert event["content"]["body"] == text
