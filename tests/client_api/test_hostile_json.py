"""Hostile JSON bodies and integers from clients (issue 14), over real HTTP, on SQLite and on
PostgreSQL: never a 500, nothing stored, and what is stored reads back.

``homeserver.http.json.read_json_object`` refuses, for every body:
- nesting deeper than ``MAX_JSON_NESTING`` (100) levels: ``400 M_NOT_JSON``;
- a lone surrogate (``"\\ud800"`` not part of a pair), which canonical JSON cannot encode:
  ``400 M_BAD_JSON``;
- a key repeated in one object (``"password"`` twice at login): ``400 M_NOT_JSON``;
- an integer outside canonical JSON's [-(2**53)+1, 2**53-1]: ``400 M_BAD_JSON``.
Integer query parameters (``limit``) are checked for range and sign (``400 M_INVALID_PARAM``),
and the numbers in pagination tokens are bounded alike. ``createRoom`` is all-or-nothing: an
initial event that fails leaves no room behind.

The module shares one server and one world (alice, bob, their room) per database: a test that
checks that nothing changed does so against its own snapshot, taken just before; what a test
stores has names no other test uses, and a test that would leave something behind that the
others read (a lone surrogate in an account's data) has a user of its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from homeserver.services.container import Services
from storage.schema import events as events_table
from storage.schema import rooms as rooms_table
from tests.conftest import bearer
from tests.helpers.harness import SharedServer, shared_server
from tests.helpers.room_api import (
    V3,
    User,
    api,
    assert_error,
    create_room,
    join,
    new_user,
    send_text,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_INT = 2**53 - 1


# The module's server, once on SQLite and once on PostgreSQL.
server = shared_server("hostile_json")


@pytest.fixture(scope="module")
def services(server: SharedServer) -> Services:
    return server[0]


@pytest.fixture(scope="module")
def client(server: SharedServer) -> TestClient:
    return server[1]


def tag() -> str:
    """A name no other test uses (the server is the module's)."""
    return uuid.uuid4().hex[:10]


@dataclass
class World:
    alice: User
    bob: User
    room_id: str
    filter_id: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(client: TestClient) -> World:
    alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
    room_id = await create_room(client, alice, preset="public_chat", name="Room")
    await join(client, bob, room_id)
    await send_text(client, alice, room_id, "hello")
    for path, body in (
            (f"/profile/{alice.user_id}/displayname", {"displayname": "Alice"}),
            (f"/user/{alice.user_id}/account_data/org.example", {"a": "b"}),
            (f"/user/{alice.user_id}/rooms/{room_id}/account_data/org.example", {"c": "d"}),
            (f"/user/{alice.user_id}/rooms/{room_id}/tags/u.work", {"order": 0.5})):
        status, answer = await api(client, "PUT", path, alice, body, spec=False)
        assert status == 200, (path, answer)
    status, answer = await api(client, "POST", f"/user/{alice.user_id}/filter", alice,
                               {"room": {"timeline": {"limit": 5}}})
    assert status == 200, answer
    return World(alice, bob, room_id, answer["filter_id"])


async def _get(client: TestClient, user: User, path: str, **query: str) -> Any:
    status, body = await api(client, "GET", path, user, query=query or None, spec=False)
    assert status == 200, (path, body)
    return body


async def _rows(services: Services) -> tuple[int, int]:
    """How many rooms and events are stored."""
    async with services.db.engine.read() as conn:
        rooms = (await conn.execute(select(func.count()).select_from(rooms_table))).scalar_one()
        events = (await conn.execute(select(func.count()).select_from(events_table))
                  ).scalar_one()
    return int(rooms), int(events)


async def snapshot(client: TestClient, services: Services, w: World) -> dict[str, Any]:
    """Everything the bodies below could have changed, as alice and bob read it back; /sync
    answers (a stored value it cannot serve would fail every sync of its owner)."""
    a, room = w.alice, w.room_id
    state = await _get(client, a, f"/rooms/{room}/state")
    timeline = await _get(client, a, f"/rooms/{room}/messages", dir="b", limit="50")
    syncs = {}
    for user in (w.alice, w.bob):
        status, body = await api(client, "GET", "/sync", user, spec=False)
        assert status == 200, body
        syncs[user.user_id] = sorted(body["rooms"]["join"])
        assert not body.get("to_device", {}).get("events"), body["to_device"]
    return {
        "rows": await _rows(services),
        "profile": await _get(client, a, f"/profile/{a.user_id}"),
        "state": sorted((e["type"], e["state_key"], e["event_id"]) for e in state),
        "timeline": [e["event_id"] for e in timeline["chunk"]],
        "account_data": await _get(client, a, f"/user/{a.user_id}/account_data/org.example"),
        "room_account_data": await _get(
            client, a, f"/user/{a.user_id}/rooms/{room}/account_data/org.example"),
        "tags": await _get(client, a, f"/user/{a.user_id}/rooms/{room}/tags"),
        "filter": await _get(client, a, f"/user/{a.user_id}/filter/{w.filter_id}"),
        "rooms": await _get(client, a, "/joined_rooms"),
        "syncs": syncs,
    }


async def send_raw(client: TestClient, method: str, path: str, user: User | None,
                   text: str) -> tuple[int, Any]:
    """``text`` sent exactly as the body of ``/_matrix/client/v3{path}`` (path quoted)."""
    headers = {"Content-Type": "application/json", **(bearer(user.token) if user else {})}
    resp = await client.request(method, V3 + quote(path, safe="/"), data=text.encode(),
                                headers=headers)
    return resp.status, await resp.json()


async def refused(client: TestClient, services: Services, w: World, method: str,
                  template: str, text: str, status: int, errcode: str) -> None:
    """The request is a Matrix error and changes nothing."""
    before = await snapshot(client, services, w)
    answer = await send_raw(client, method, fill(template, w), w.alice, text)
    assert_error(*answer, status, errcode)
    assert await snapshot(client, services, w) == before


def fill(template: str, w: World) -> str:
    return template.format(room=w.room_id, me=w.alice.user_id, bob=w.bob.user_id,
                           device=w.bob.device_id)


def nested(levels: int) -> str:
    """A JSON object nesting objects ``levels`` deep (``{}`` is one level)."""
    return '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)


# Where a client puts JSON the server keeps: (method, path template, body with VALUE where
# the test puts its value, and how many levels of the body are above that value).
STORE_PATHS: list[tuple[str, str, str, int]] = [
    ("PUT", "/rooms/{room}/send/m.room.message/t1",
     '{"msgtype": "m.text", "body": "b", "x": VALUE}', 1),
    ("PUT", "/rooms/{room}/state/m.room.topic", '{"topic": "t", "x": VALUE}', 1),
    ("PUT", "/rooms/{room}/state/org.example.custom/key", '{"x": VALUE}', 1),
    ("POST", "/createRoom", '{"creation_content": {"x": VALUE}}', 2),
    ("POST", "/createRoom", '{"name": "N", "initial_state": [{"type": "org.example", '
                            '"state_key": "", "content": {"x": VALUE}}]}', 4),
    ("POST", "/createRoom", '{"power_level_content_override": {"x": VALUE}}', 2),
    ("PUT", "/user/{me}/account_data/org.example", '{"x": VALUE}', 1),
    ("PUT", "/user/{me}/rooms/{room}/account_data/org.example", '{"x": VALUE}', 1),
    ("PUT", "/user/{me}/rooms/{room}/tags/u.work", '{"order": 1, "x": VALUE}', 1),
    ("POST", "/user/{me}/filter", '{"room": {"timeline": {"x": VALUE}}}', 3),
    ("PUT", "/profile/{me}/displayname", '{"displayname": "A", "x": VALUE}', 1),
    ("PUT", "/sendToDevice/org.example/t2", '{"messages": {"BOB": {"DEVICE": {"x": VALUE}}}}',
     4),
]
STORE_IDS = [f"{m} {p} {i}" for i, (m, p, _, _) in enumerate(STORE_PATHS)]


def body_with(template: str, w: World, value: str) -> str:
    return template.replace("BOB", w.bob.user_id).replace("DEVICE", w.bob.device_id).replace(
        "VALUE", value)


# -- every kind, everywhere a client stores JSON -------------------------------------------------


# Values a client may not put anywhere in a body, at VALUE: (what, JSON text, status, errcode).
LONE_SURROGATES = [r'"\ud800"', r'"\udfff"', r'"a\ud83d"', r'"\ude00\ud83d"',
                   r'"\ud800\u0041"', r'{"\udc00": 1}', r'["ok", {"k": "\uDBFF"}]']
DUPLICATE_KEYS = ['{"k": 1, "k": 2}', '[{"deep": {"k": 1, "j": 0, "k": 1}}]']
OUT_OF_RANGE = [str(2**53), str(-(2**53)), str(2**64), str(-(2**64)), "1" + "0" * 400,
                f'[1, {{"n": {2**63}}}]']


def hostile_values(above: int) -> list[tuple[str, str, int, str]]:
    """``above``: how many levels of the body are above VALUE."""
    return [
        # 101 levels in all; then the depths that used to reach the event builder's
        # deepcopy (488-990) and beyond the decoder's own recursion (5000).
        *((f"nested {n}", nested(n), 400, "M_NOT_JSON") for n in (101 - above, 488, 990, 5000)),
        *((f"lone surrogate {v}", v, 400, "M_BAD_JSON") for v in LONE_SURROGATES),
        *((f"duplicate key {v}", v, 400, "M_NOT_JSON") for v in DUPLICATE_KEYS),
        *((f"integer {v[:30]}", v, 400, "M_BAD_JSON") for v in OUT_OF_RANGE),
    ]


@pytest.mark.parametrize("method, template, body, above", STORE_PATHS, ids=STORE_IDS)
async def test_hostile_values_are_refused_and_change_nothing(
        client: TestClient, services: Services, world: World, method: str, template: str,
        body: str, above: int) -> None:
    before = await snapshot(client, services, world)
    for what, value, status, errcode in hostile_values(above):
        answer = await send_raw(client, method, fill(template, world), world.alice,
                                body_with(body, world, value))
        assert (answer[0], answer[1].get("errcode")) == (status, errcode), (what, answer)
        assert isinstance(answer[1].get("error"), str)
    assert await snapshot(client, services, world) == before


# -- nesting ----------------------------------------------------------------------------------


async def test_nesting_deeper_than_100_levels_is_refused_before_login(
        client: TestClient) -> None:
    for levels in (101, 600):
        text = '{"type": "m.login.password", "password": "x", "x": ' + nested(levels - 1) + "}"
        assert_error(*await send_raw(client, "POST", "/login", None, text), 400, "M_NOT_JSON")


async def test_100_levels_are_stored_and_read_back(client: TestClient, world: World) -> None:
    a, room, t = world.alice, world.room_id, tag()
    deep = nested(99)
    status, sent = await send_raw(client, "PUT", f"/rooms/{room}/send/org.example/deep{t}", a,
                                  '{"x": ' + deep + "}")
    assert status == 200, sent
    status, state = await send_raw(client, "PUT", f"/rooms/{room}/state/org.example/deep{t}",
                                   a, '{"x": ' + deep + "}")
    assert status == 200, state
    status, answer = await send_raw(client, "PUT",
                                    f"/user/{a.user_id}/account_data/org.deep{t}", a,
                                    '{"x": ' + deep + "}")
    assert status == 200, answer
    expected: dict[str, Any] = {}
    for _ in range(98):
        expected = {"a": expected}
    content = {"x": expected}
    event = await _get(client, a, f"/rooms/{room}/event/{sent['event_id']}")
    assert event["content"] == content
    assert await _get(client, a, f"/rooms/{room}/state/org.example/deep{t}") == content
    assert await _get(client, a, f"/user/{a.user_id}/account_data/org.deep{t}") == content
    for user in (world.alice, world.bob):
        status, body = await api(client, "GET", "/sync", user, spec=False)
        assert status == 200, body
        timeline = body["rooms"]["join"][room]["timeline"]["events"]
        assert content in [e["content"] for e in timeline]
    status, body = await api(client, "GET", "/sync", a, spec=False)
    assert {"type": f"org.deep{t}", "content": content} in body["account_data"]["events"]


# -- createRoom: all or nothing -----------------------------------------------------------------


CREATE_FAILS_LATE: list[tuple[dict[str, Any], int, str]] = [
    # The creator lowers herself below state_default: the power levels event passes, the
    # join rules after it do not.
    ({"room_version": "10", "power_level_content_override": {"users": {"@alice:test.local": 0}}},
     403, "M_FORBIDDEN"),
    # Power levels the auth rules refuse (not integers).
    ({"room_version": "10", "power_level_content_override": {"users_default": "high"}},
     403, "M_FORBIDDEN"),
    # v12: creators have no power level entry.
    ({"room_version": "12", "power_level_content_override": {"users": {"@alice:test.local": 100}}},
     403, "M_FORBIDDEN"),
    # Initial state the auth rules refuse: a second create event, another user's join.
    ({"initial_state": [{"type": "m.room.create", "state_key": "", "content": {}}]},
     400, "M_BAD_JSON"),
    ({"room_version": "10",
      "initial_state": [{"type": "m.room.create", "state_key": "", "content": {}}]},
     403, "M_FORBIDDEN"),
    ({"initial_state": [{"type": "m.room.member", "state_key": "@bob:test.local",
                         "content": {"membership": "join"}}]}, 403, "M_FORBIDDEN"),
    # Malformed initial state after good entries.
    ({"name": "N", "initial_state": [{"type": "org.example", "content": {}},
                                     {"type": "org.example.b"}]}, 400, "M_BAD_JSON"),
    ({"initial_state": [{"type": "org.example", "state_key": "", "content": {"n": 2**53}}]},
     400, "M_BAD_JSON"),
    ({"topic": "t", "initial_state": [{"type": "org.example", "state_key": "",
                                      "content": {"x": "y" * 70_000}}]}, 413, "M_TOO_LARGE"),
]


@pytest.mark.parametrize("body, status, errcode", CREATE_FAILS_LATE,
                         ids=[str(i) for i in range(len(CREATE_FAILS_LATE))])
async def test_create_room_that_fails_leaves_no_room(
        client: TestClient, services: Services, world: World, body: dict[str, Any],
        status: int, errcode: str) -> None:
    before = await snapshot(client, services, world)
    assert_error(*await api(client, "POST", "/createRoom", world.alice, body), status, errcode)
    assert await snapshot(client, services, world) == before
    # The creator's next room is whole.
    room_id = await create_room(client, world.alice, name="Next")
    state = await _get(client, world.alice, f"/rooms/{room_id}/state")
    assert {"m.room.create", "m.room.member", "m.room.power_levels", "m.room.join_rules",
            "m.room.name"} <= {e["type"] for e in state}


# -- lone surrogates ----------------------------------------------------------------------------


NAMED_FIELDS_WITH_LONE_SURROGATES = [
    ("PUT", "/profile/{me}/displayname", r'{"displayname": "A\ud800"}'),
    ("PUT", "/profile/{me}/avatar_url", r'{"avatar_url": "mxc://test.local/\udc00"}'),
    ("POST", "/createRoom", r'{"name": "\ud800"}'),
    ("POST", "/createRoom", r'{"topic": "\ud800"}'),
    ("POST", "/createRoom", r'{"room_alias_name": "a\ud800"}'),
    ("PUT", "/rooms/{room}/send/m.room.message/t3", r'{"msgtype": "m.text", "body": "\ud800"}'),
    ("PUT", "/rooms/{room}/state/m.room.name", r'{"name": "\ud800"}'),
    ("PUT", "/rooms/{room}/typing/{me}", r'{"typing": true, "x": "\ud800"}'),
    ("POST", "/search", r'{"search_categories": {"room_events": {"search_term": "\ud800"}}}'),
]


async def test_lone_surrogate_in_named_fields_is_bad_json(client: TestClient,
                                                          services: Services,
                                                          world: World) -> None:
    before = await snapshot(client, services, world)
    for method, template, body in NAMED_FIELDS_WITH_LONE_SURROGATES:
        answer = await send_raw(client, method, fill(template, world), world.alice, body)
        assert_error(*answer, 400, "M_BAD_JSON")
    assert await snapshot(client, services, world) == before


async def test_surrogate_pairs_and_escaped_backslashes_are_kept(client: TestClient,
                                                                world: World) -> None:
    a, t = world.alice, tag()
    text = r'{"emoji": "\ud83d\ude00", "upper": "\uD83D\uDE00", "literal": "\\ud800"}'
    status, answer = await send_raw(client, "PUT", f"/user/{a.user_id}/account_data/org.e{t}",
                                    a, text)
    assert status == 200, answer
    content = {"emoji": "\U0001f600", "upper": "\U0001f600", "literal": "\\ud800"}
    assert await _get(client, a, f"/user/{a.user_id}/account_data/org.e{t}") == content
    status, sent = await send_raw(client, "PUT",
                                  f"/rooms/{world.room_id}/send/m.room.message/emoji{t}", a,
                                  r'{"msgtype": "m.text", "body": "\ud83d\ude00 \\udfff"}')
    assert status == 200, sent
    event = await _get(client, a, f"/rooms/{world.room_id}/event/{sent['event_id']}")
    assert event["content"]["body"] == "\U0001f600 \\udfff"


async def test_a_stored_lone_surrogate_is_served_not_a_500(client: TestClient,
                                                           services: Services) -> None:
    """Data stored before bodies were checked still reads back (escaped, as it came in),
    and /sync keeps working. (A user of its own, in a room of her own: what is stored here
    stays, and the other tests' snapshots sync the world's users.)"""
    a = await new_user(client, f"old{tag()}")
    await create_room(client, a, name="Old")
    await services.db.account_data.put(a.user_id, "", "org.old", {"x": "\ud800"})
    resp = await client.get(f"{V3}/user/{quote(a.user_id)}/account_data/org.old",
                            headers=bearer(a.token))
    assert resp.status == 200
    assert await resp.text() == '{"x":"\\ud800"}'
    resp = await client.get(f"{V3}/sync", headers=bearer(a.token))
    assert resp.status == 200
    body = await resp.json()
    assert {"type": "org.old", "content": {"x": "\ud800"}} in body["account_data"]["events"]


# -- duplicate keys -----------------------------------------------------------------------------


async def test_login_with_two_passwords_is_not_json(client: TestClient, world: World) -> None:
    for first, second in (("wrong", "correct horse"), ("correct horse", "wrong")):
        text = ('{"type": "m.login.password", "identifier": {"type": "m.id.user", '
                f'"user": "alice"}}, "password": "{first}", "password": "{second}"}}')
        assert_error(*await send_raw(client, "POST", "/login", None, text), 400, "M_NOT_JSON")
    # One password still logs in.
    status, answer = await api(client, "POST", "/login", None, {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "correct horse"})
    assert status == 200, answer


async def test_duplicate_top_level_key_is_not_json(client: TestClient, services: Services,
                                                   world: World) -> None:
    await refused(client, services, world, "PUT", "/rooms/{room}/send/m.room.message/t9",
                  '{"msgtype": "m.text", "body": "a", "body": "b"}', 400, "M_NOT_JSON")


# -- integers -----------------------------------------------------------------------------------


REQUEST_FIELDS_OUT_OF_RANGE = [
    ("PUT", "/rooms/{room}/typing/{me}", f'{{"typing": true, "timeout": {2**64}}}'),
    ("PUT", "/rooms/{room}/typing/{me}", f'{{"typing": true, "timeout": {2**53}}}'),
    ("POST", "/user/{me}/filter", f'{{"room": {{"timeline": {{"limit": {2**64}}}}}}}'),
    ("POST", "/user/{me}/filter", f'{{"presence": {{"limit": {2**53}}}}}'),
    ("POST", "/createRoom", f'{{"power_level_content_override": {{"users_default": {2**60}}}}}'),
    ("POST", "/search", '{"search_categories": {"room_events": {"search_term": "a", '
                        f'"event_context": {{"before_limit": {2**64}}}}}}}}}'),
]


async def test_integers_out_of_range_in_request_fields_are_bad_json(
        client: TestClient, services: Services, world: World) -> None:
    before = await snapshot(client, services, world)
    for method, template, body in REQUEST_FIELDS_OUT_OF_RANGE:
        answer = await send_raw(client, method, fill(template, world), world.alice, body)
        assert_error(*answer, 400, "M_BAD_JSON")
    assert await snapshot(client, services, world) == before


async def test_integers_at_the_edges_of_the_range_are_kept(client: TestClient,
                                                           world: World) -> None:
    a, t = world.alice, tag()
    content = {"max": MAX_INT, "min": -MAX_INT, "list": [0, -1, MAX_INT]}
    status, answer = await api(client, "PUT", f"/user/{a.user_id}/account_data/org.ints{t}", a,
                               content)
    assert status == 200, answer
    assert await _get(client, a, f"/user/{a.user_id}/account_data/org.ints{t}") == content
    status, answer = await api(client, "PUT", f"/rooms/{world.room_id}/typing/{a.user_id}", a,
                               {"typing": True, "timeout": MAX_INT})
    assert status == 200, answer
    # The world is the module's: alice stops typing.
    status, answer = await api(client, "PUT", f"/rooms/{world.room_id}/typing/{a.user_id}", a,
                               {"typing": False})
    assert status == 200, answer


# -- integer query parameters and tokens --------------------------------------------------------


BAD_INTEGERS = ["-1", str(2**53), str(2**64), "9" * 5000, "1e3", "1.5", "abc", "", " 5",
                "\u00b2", "\u0663", "+5", "0x10"]


@pytest.mark.parametrize("path", ["/rooms/{room}/messages?dir=b&limit={n}",
                                  "/rooms/{room}/context/{event}?limit={n}",
                                  "/publicRooms?limit={n}"])
async def test_integer_query_parameters_are_checked(client: TestClient, services: Services,
                                                    world: World, path: str) -> None:
    event_id = await send_text(client, world.alice, world.room_id, "context")
    before = await snapshot(client, services, world)
    for value in BAD_INTEGERS:
        url = path.format(room=quote(world.room_id), event=quote(event_id), n=quote(value))
        resp = await client.get(V3 + url, headers=bearer(world.alice.token))
        assert_error(resp.status, await resp.json(), 400, "M_INVALID_PARAM")
    for value in ("0", "1", "1000000", str(MAX_INT)):
        url = path.format(room=quote(world.room_id), event=quote(event_id), n=value)
        resp = await client.get(V3 + url, headers=bearer(world.alice.token))
        assert resp.status == 200, (value, await resp.text())
    assert await snapshot(client, services, world) == before


async def test_messages_limit_zero_is_an_empty_page(client: TestClient, world: World) -> None:
    body = await _get(client, world.alice, f"/rooms/{world.room_id}/messages", dir="b",
                      limit="0")
    assert body["chunk"] == []


@pytest.mark.parametrize("path", [
    "/rooms/{room}/messages?dir=b&from={big}",
    "/rooms/{room}/messages?dir=f&from=t1-1&to={big}",
    "/rooms/{room}/messages?dir=b&from=t{n}-{n}",
    "/rooms/{room}/messages?dir=b&from=t-{n}-1",
    "/rooms/{room}/members?at={big}",
    "/sync?since={big}",
])
async def test_huge_numbers_in_tokens_are_a_matrix_error_not_a_500(
        client: TestClient, services: Services, world: World, path: str) -> None:
    before = await snapshot(client, services, world)
    for n in (str(2**53), str(2**63), str(2**64), "9" * 30):
        for big in (f"t{n}-1", f"t1-{n}", f"s{n}", f"s1_{n}_1"):
            url = path.format(room=quote(world.room_id), big=big, n=n)
            resp = await client.get(V3 + url, headers=bearer(world.alice.token))
            assert resp.status < 500, (url, await resp.text())
            if resp.status != 200:
                assert_error(resp.status, await resp.json(), 400, "M_INVALID_PARAM")
    assert await snapshot(client, services, world) == before


async def test_huge_search_batch_is_a_matrix_error_not_a_500(client: TestClient,
                                                              world: World) -> None:
    for n in (str(2**63), str(2**64), "9" * 30):
        for token in (f"rank_{n}", f"recent_{n}"):
            for order in ("rank", "recent"):
                resp = await client.post(
                    f"{V3}/search?next_batch={token}", headers=bearer(world.alice.token),
                    json={"search_categories": {"room_events": {"search_term": "hello",
                                                                "order_by": order}}})
                assert resp.status < 500, (token, order, await resp.text())
                if resp.status != 200:
                    assert_error(resp.status, await resp.json(), 400, "M_INVALID_PARAM")


async def test_huge_public_rooms_since_is_a_matrix_error_not_a_500(client: TestClient,
                                                                    world: World) -> None:
    for n in (str(2**64), "9" * 5000):
        resp = await client.get(f"{V3}/publicRooms?since=o{n}", headers=bearer(world.alice.token))
        assert resp.status < 500, await resp.text()
        resp = await client.post(f"{V3}/publicRooms", headers=bearer(world.alice.token),
                                 json={"since": f"o{n}"})
        assert resp.status < 500, await resp.text()


async def test_an_inline_filter_is_held_to_the_rules_of_bodies(client: TestClient) -> None:
    """``/sync?filter={...}``: the same JSON rules as a request body."""
    alice = await new_user(client, f"inlinefilter{tag()}")
    for bad, errcode in (('{"room": {"timeline": {"limit": 1}}, "room": {}}', "M_NOT_JSON"),
                         ('{"event_fields": ["\\ud800"]}', "M_BAD_JSON"),
                         ('{"room": {"timeline": {"limit": 9007199254740992}}}', "M_BAD_JSON"),
                         ("{" * 200 + "}" * 200, "M_NOT_JSON")):
        resp = await client.get("/_matrix/client/v3/sync", params={"filter": bad},
                                headers=bearer(alice.token))
        body = await resp.json()
        assert resp.status == 400 and body["errcode"] == errcode, (bad, body)
