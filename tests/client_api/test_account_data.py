"""Account data over real HTTP: global and per-room account data, and room tags."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from tests.client_api.test_rooms import User, api, assert_error, create_room

TYPE = "org.example.settings"


def global_path(user: User | str, type_: str = TYPE) -> str:
    user_id = user if isinstance(user, str) else user.user_id
    return f"/user/{user_id}/account_data/{type_}"


def room_path(user: User | str, room_id: str, type_: str = TYPE) -> str:
    user_id = user if isinstance(user, str) else user.user_id
    return f"/user/{user_id}/rooms/{room_id}/account_data/{type_}"


def tags_path(user: User | str, room_id: str, tag: str | None = None) -> str:
    user_id = user if isinstance(user, str) else user.user_id
    path = f"/user/{user_id}/rooms/{room_id}/tags"
    return f"{path}/{tag}" if tag is not None else path


# -- global account data ----------------------------------------------------------------------

async def test_global_put_get(client: TestClient, alice: User) -> None:
    content = {"theme": "dark", "nested": {"list": [1, 2, 3]}}
    status, body = await api(client, "PUT", global_path(alice), alice, content)
    assert (status, body) == (200, {})
    status, body = await api(client, "GET", global_path(alice), alice)
    assert (status, body) == (200, content)
    # Replacing, not merging.
    status, body = await api(client, "PUT", global_path(alice), alice, {"theme": "light"})
    assert status == 200, body
    status, body = await api(client, "GET", global_path(alice), alice)
    assert body == {"theme": "light"}
    # An empty object is a value too.
    status, body = await api(client, "PUT", global_path(alice), alice, {})
    assert status == 200, body
    status, body = await api(client, "GET", global_path(alice), alice)
    assert (status, body) == (200, {})


async def test_global_missing(client: TestClient, alice: User) -> None:
    status, body = await api(client, "GET", global_path(alice, "org.example.never"), alice)
    assert_error(status, body, 404, "M_NOT_FOUND")


async def test_each_user_has_their_own(client: TestClient, alice: User, bob: User) -> None:
    await api(client, "PUT", global_path(alice), alice, {"who": "alice"})
    await api(client, "PUT", global_path(bob), bob, {"who": "bob"})
    status, body = await api(client, "GET", global_path(alice), alice)
    assert body == {"who": "alice"}
    status, body = await api(client, "GET", global_path(bob), bob)
    assert status == 200, body
    assert body == {"who": "bob"}


async def test_another_users_account_data_is_forbidden(client: TestClient, alice: User,
                                                       bob: User) -> None:
    await api(client, "PUT", global_path(alice), alice, {"secret": 1})
    room_id = await create_room(client, alice)
    await api(client, "PUT", room_path(alice, room_id), alice, {"secret": 2})
    for method, path in (("GET", global_path(alice)), ("PUT", global_path(alice)),
                         ("GET", room_path(alice, room_id)),
                         ("PUT", room_path(alice, room_id)),
                         ("GET", tags_path(alice, room_id)),
                         ("PUT", tags_path(alice, room_id, "u.x")),
                         ("DELETE", tags_path(alice, room_id, "u.x"))):
        status, body = await api(client, method, path, bob,
                                 {"stolen": True} if method == "PUT" else None)
        assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await api(client, "GET", global_path(alice), alice)
    assert body == {"secret": 1}
    status, body = await api(client, "GET", room_path(alice, room_id), alice)
    assert body == {"secret": 2}


async def test_account_data_needs_auth(client: TestClient, alice: User) -> None:
    status, body = await api(client, "GET", global_path(alice), None)
    assert_error(status, body, 401, "M_MISSING_TOKEN")
    status, body = await api(client, "PUT", global_path(alice), None, {})
    assert_error(status, body, 401, "M_MISSING_TOKEN")


async def test_content_must_be_an_object(client: TestClient, alice: User) -> None:
    for body in (["a", "list"], "a string", 42):
        status, answer = await api(client, "PUT", global_path(alice), alice, body)
        assert status == 400 and answer["errcode"] in ("M_BAD_JSON", "M_NOT_JSON"), answer
    status, answer = await api(client, "GET", global_path(alice), alice)
    assert status == 404


async def test_not_json(client: TestClient, alice: User) -> None:
    resp = await client.put(f"/_matrix/client/v3/user/{alice.user_id}/account_data/{TYPE}",
                            data=b"{nope", headers={"Authorization": f"Bearer {alice.token}",
                                                    "Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_NOT_JSON"


@pytest.mark.parametrize("type_", ["m.fully_read", "m.push_rules"])
async def test_server_managed_types_are_refused(client: TestClient, alice: User, type_: str
                                                ) -> None:
    room_id = await create_room(client, alice)
    status, body = await api(client, "PUT", global_path(alice, type_), alice,
                             {"event_id": "$x"})
    assert_error(status, body, 405, "M_BAD_JSON")
    if type_ == "m.fully_read":
        status, body = await api(client, "PUT", room_path(alice, room_id, type_), alice,
                                 {"event_id": "$x"})
        assert_error(status, body, 405, "M_BAD_JSON")
        status, body = await api(client, "GET", room_path(alice, room_id, type_), alice)
        assert_error(status, body, 404, "M_NOT_FOUND")


# -- room account data ------------------------------------------------------------------------

async def test_room_put_get(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    other = await create_room(client, alice)
    status, body = await api(client, "PUT", room_path(alice, room_id), alice, {"room": 1})
    assert (status, body) == (200, {})
    status, body = await api(client, "GET", room_path(alice, room_id), alice)
    assert (status, body) == (200, {"room": 1})
    # Room data is per room, and apart from global data of the same type.
    status, body = await api(client, "GET", room_path(alice, other), alice)
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await api(client, "GET", global_path(alice), alice)
    assert_error(status, body, 404, "M_NOT_FOUND")
    await api(client, "PUT", global_path(alice), alice, {"global": 1})
    status, body = await api(client, "GET", room_path(alice, room_id), alice)
    assert body == {"room": 1}
    status, body = await api(client, "GET", global_path(alice), alice)
    assert body == {"global": 1}


async def test_room_missing(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await api(client, "GET", room_path(alice, room_id), alice)
    assert_error(status, body, 404, "M_NOT_FOUND")


async def test_room_id_must_be_a_room_id(client: TestClient, alice: User) -> None:
    for room_id in ("not-a-room", "@alice:test.local", "#alias:test.local"):
        status, body = await api(client, "PUT", room_path(alice, room_id), alice, {"x": 1})
        assert_error(status, body, 400, "M_INVALID_PARAM")
        status, body = await api(client, "GET", room_path(alice, room_id), alice)
        assert_error(status, body, 400, "M_INVALID_PARAM")


# -- tags -------------------------------------------------------------------------------------

async def test_tags(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await api(client, "GET", tags_path(alice, room_id), alice)
    assert (status, body) == (200, {"tags": {}})
    status, body = await api(client, "PUT", tags_path(alice, room_id, "m.favourite"), alice,
                             {"order": 0.25})
    assert (status, body) == (200, {})
    status, body = await api(client, "PUT", tags_path(alice, room_id, "u.work"), alice, {})
    assert status == 200, body
    status, body = await api(client, "GET", tags_path(alice, room_id), alice)
    assert (status, body) == (200, {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}})
    # Putting a tag again replaces it.
    await api(client, "PUT", tags_path(alice, room_id, "m.favourite"), alice, {"order": 1})
    status, body = await api(client, "GET", tags_path(alice, room_id), alice)
    assert body["tags"]["m.favourite"] == {"order": 1}
    status, body = await api(client, "DELETE", tags_path(alice, room_id, "m.favourite"), alice)
    assert (status, body) == (200, {})
    status, body = await api(client, "GET", tags_path(alice, room_id), alice)
    assert body == {"tags": {"u.work": {}}}
    # Deleting a tag that is not there is fine.
    status, body = await api(client, "DELETE", tags_path(alice, room_id, "m.lowpriority"),
                             alice)
    assert (status, body) == (200, {})


async def test_tags_are_per_room_and_user(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    other = await create_room(client, alice)
    await api(client, "PUT", tags_path(alice, room_id, "u.a"), alice, {})
    status, body = await api(client, "GET", tags_path(alice, other), alice)
    assert body == {"tags": {}}
    status, body = await api(client, "GET", tags_path(bob, room_id), bob)
    assert status == 200, body
    assert body == {"tags": {}}


async def test_tag_order_must_be_a_number(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    for order in ("first", True, [1]):
        status, body = await api(client, "PUT", tags_path(alice, room_id, "u.x"), alice,
                                 {"order": order})
        assert status == 400, body
    status, body = await api(client, "GET", tags_path(alice, room_id), alice)
    assert body == {"tags": {}}


async def test_tag_too_long(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await api(client, "PUT", tags_path(alice, room_id, "u." + "x" * 300),
                             alice, {})
    assert status == 400, body
