"""Room aliases and the public room directory over real HTTP: /directory/room/{alias},
/rooms/{roomId}/aliases, /directory/list/room/{roomId} and /publicRooms."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import SERVER_NAME
from tests.helpers.room_api import (
    User,
    api,
    assert_error,
    create_room,
    join,
    new_user,
    put_state,
    room_state,
)


def alias(name: str) -> str:
    return f"#{name}:{SERVER_NAME}"


async def put_alias(client: TestClient, user: User, name: str, room_id: str
                    ) -> tuple[int, Any]:
    return await api(client, "PUT", f"/directory/room/{alias(name)}", user,
                     {"room_id": room_id})


# -- aliases ----------------------------------------------------------------------------------

async def test_alias_lifecycle(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await put_alias(client, alice, "plants", room_id)
    assert (status, body) == (200, {})
    status, body = await api(client, "GET", f"/directory/room/{alias('plants')}", alice)
    assert (status, body) == (200, {"room_id": room_id, "servers": [SERVER_NAME]})
    # Resolving needs no login.
    status, body = await api(client, "GET", f"/directory/room/{alias('plants')}")
    assert status == 200 and body["room_id"] == room_id
    status, body = await api(client, "DELETE", f"/directory/room/{alias('plants')}", alice)
    assert (status, body) == (200, {})
    status, body = await api(client, "GET", f"/directory/room/{alias('plants')}", alice)
    assert_error(status, body, 404, "M_NOT_FOUND")
    # The name is free again.
    status, body = await put_alias(client, alice, "plants", room_id)
    assert status == 200, body


async def test_alias_taken(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice)
    other = await create_room(client, bob)
    assert (await put_alias(client, alice, "taken", room_id))[0] == 200
    for user, target in ((alice, room_id), (bob, other)):
        status, body = await put_alias(client, user, "taken", target)
        assert_error(status, body, 409, "M_UNKNOWN")
    status, body = await api(client, "GET", f"/directory/room/{alias('taken')}")
    assert body["room_id"] == room_id


async def test_delete_someone_elses_alias(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    assert (await put_alias(client, alice, "mine", room_id))[0] == 200
    status, body = await api(client, "DELETE", f"/directory/room/{alias('mine')}", bob)
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await api(client, "GET", f"/directory/room/{alias('mine')}")
    assert status == 200 and body["room_id"] == room_id


async def test_delete_unknown_alias(client: TestClient, alice: User) -> None:
    status, body = await api(client, "DELETE", f"/directory/room/{alias('never')}", alice)
    assert_error(status, body, 404, "M_NOT_FOUND")


async def test_resolve_unknown_alias(client: TestClient) -> None:
    status, body = await api(client, "GET", f"/directory/room/{alias('never')}")
    assert_error(status, body, 404, "M_NOT_FOUND")


async def test_malformed_alias(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    for bad in ("noserver", "#noserver", "plants:test.local"):
        status, body = await api(client, "PUT", f"/directory/room/{bad}", alice,
                                 {"room_id": room_id})
        assert_error(status, body, 400, "M_INVALID_PARAM")
        status, body = await api(client, "GET", f"/directory/room/{bad}")
        assert_error(status, body, 400, "M_INVALID_PARAM")


async def test_alias_on_another_server(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await api(client, "PUT", "/directory/room/#plants:elsewhere.example",
                             alice, {"room_id": room_id})
    assert_error(status, body, 400, "M_INVALID_PARAM")


async def test_alias_needs_room_id(client: TestClient, alice: User) -> None:
    status, body = await api(client, "PUT", f"/directory/room/{alias('x')}", alice, {})
    assert status == 400, body


async def test_alias_for_unknown_room(client: TestClient, alice: User) -> None:
    status, body = await put_alias(client, alice, "ghost", "!nowhere:test.local")
    assert status in (403, 404), body
    status, body = await api(client, "GET", f"/directory/room/{alias('ghost')}")
    assert_error(status, body, 404, "M_NOT_FOUND")


async def test_alias_put_needs_auth(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await api(client, "PUT", f"/directory/room/{alias('anon')}", None,
                             {"room_id": room_id})
    assert_error(status, body, 401, "M_MISSING_TOKEN")


async def test_room_aliases(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, room_alias_name="first")
    assert (await put_alias(client, alice, "second", room_id))[0] == 200
    status, body = await api(client, "GET", f"/rooms/{room_id}/aliases", alice)
    assert status == 200, body
    assert sorted(body["aliases"]) == [alias("first"), alias("second")]
    # Aliases of other rooms are not listed.
    other = await create_room(client, alice)
    status, body = await api(client, "GET", f"/rooms/{other}/aliases", alice)
    assert (status, body) == (200, {"aliases": []})
    # Outsiders may not look.
    status, body = await api(client, "GET", f"/rooms/{room_id}/aliases", bob)
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_room_aliases_world_readable(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, room_alias_name="open", initial_state=[
        {"type": "m.room.history_visibility",
         "content": {"history_visibility": "world_readable"}}])
    status, body = await api(client, "GET", f"/rooms/{room_id}/aliases", bob)
    assert (status, body) == (200, {"aliases": [alias("open")]})


# -- directory visibility ---------------------------------------------------------------------

async def test_directory_visibility(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, name="Listed")
    status, body = await api(client, "GET", f"/directory/list/room/{room_id}")
    assert (status, body) == (200, {"visibility": "private"})
    status, body = await api(client, "PUT", f"/directory/list/room/{room_id}", alice,
                             {"visibility": "public"})
    assert (status, body) == (200, {})
    status, body = await api(client, "GET", f"/directory/list/room/{room_id}")
    assert (status, body) == (200, {"visibility": "public"})
    status, body = await api(client, "GET", "/publicRooms")
    assert [r["room_id"] for r in body["chunk"]] == [room_id]
    status, body = await api(client, "PUT", f"/directory/list/room/{room_id}", alice,
                             {"visibility": "private"})
    assert status == 200, body
    status, body = await api(client, "GET", "/publicRooms")
    assert body["chunk"] == []


async def test_directory_visibility_needs_power(client: TestClient, alice: User, bob: User
                                                ) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    status, body = await api(client, "PUT", f"/directory/list/room/{room_id}", bob,
                             {"visibility": "public"})
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await api(client, "GET", f"/directory/list/room/{room_id}")
    assert body == {"visibility": "private"}
    # Outsiders neither.
    carol = await new_user(client, "carol")
    status, body = await api(client, "PUT", f"/directory/list/room/{room_id}", carol,
                             {"visibility": "public"})
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_directory_visibility_unknown_room(client: TestClient, alice: User) -> None:
    status, body = await api(client, "GET", "/directory/list/room/!nowhere:test.local")
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await api(client, "PUT", "/directory/list/room/!nowhere:test.local", alice,
                             {"visibility": "public"})
    assert_error(status, body, 404, "M_NOT_FOUND")


async def test_directory_visibility_bad_value(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await api(client, "PUT", f"/directory/list/room/{room_id}", alice,
                             {"visibility": "everyone"})
    assert status == 400, body


# -- /publicRooms -----------------------------------------------------------------------------

async def test_public_rooms_entries(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, visibility="public", name="Garden",
                                topic="All about roses", room_alias_name="garden")
    await join(client, bob, room_id)
    status, body = await api(client, "GET", "/publicRooms")
    assert status == 200, body
    assert body["total_room_count_estimate"] == 1
    assert "next_batch" not in body and "prev_batch" not in body
    (entry,) = body["chunk"]
    assert entry == {
        "room_id": room_id, "name": "Garden", "topic": "All about roses",
        "canonical_alias": alias("garden"), "num_joined_members": 2,
        "world_readable": False, "guest_can_join": False, "join_rule": "public"}
    # The same through POST.
    status, posted = await api(client, "POST", "/publicRooms", alice, {})
    assert status == 200, posted
    assert posted["chunk"] == body["chunk"]


async def test_public_rooms_reflect_state_changes(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, visibility="public", name="Old")
    await put_state(client, alice, room_id, "m.room.name", {"name": "New"})
    await put_state(client, alice, room_id, "m.room.history_visibility",
                    {"history_visibility": "world_readable"})
    status, body = await api(client, "GET", "/publicRooms")
    assert status == 200, body
    (entry,) = body["chunk"]
    assert entry["name"] == "New" and entry["world_readable"] is True


async def test_public_rooms_sorted_by_members(client: TestClient, alice: User, bob: User
                                              ) -> None:
    small = await create_room(client, alice, visibility="public", name="small")
    big = await create_room(client, alice, visibility="public", name="big")
    await join(client, bob, big)
    status, body = await api(client, "GET", "/publicRooms")
    assert status == 200, body
    assert [r["room_id"] for r in body["chunk"]] == [big, small]


async def test_public_rooms_search(client: TestClient, alice: User) -> None:
    by_name = await create_room(client, alice, visibility="public", name="Rose Garden")
    by_topic = await create_room(client, alice, visibility="public", name="Other",
                                 topic="we grow roses")
    by_alias = await create_room(client, alice, visibility="public", room_alias_name="roses")
    await create_room(client, alice, visibility="public", name="Vegetables")
    await create_room(client, alice, visibility="private", name="Secret roses")
    status, body = await api(client, "POST", "/publicRooms", alice,
                             {"filter": {"generic_search_term": "ROSE"}})
    assert status == 200, body
    assert {r["room_id"] for r in body["chunk"]} == {by_name, by_topic, by_alias}
    status, body = await api(client, "POST", "/publicRooms", alice,
                             {"filter": {"generic_search_term": "tulips"}})
    assert (status, body["chunk"]) == (200, [])
    status, body = await api(client, "POST", "/publicRooms", alice,
                             {"filter": {"generic_search_term": "veg"}, "limit": 5})
    assert [r["name"] for r in body["chunk"]] == ["Vegetables"]


async def test_public_rooms_pagination(client: TestClient, alice: User) -> None:
    created = {await create_room(client, alice, visibility="public", name=f"room {n}")
               for n in range(5)}

    async def page_through(method: str) -> list[str]:
        seen: list[str] = []
        since: str | None = None
        for _ in range(10):
            if method == "GET":
                query = {"limit": "2", **({"since": since} if since else {})}
                status, body = await api(client, "GET", "/publicRooms", query=query)
            else:
                status, body = await api(client, "POST", "/publicRooms", alice,
                                         {"limit": 2, **({"since": since} if since else {})})
            assert status == 200, body
            assert len(body["chunk"]) <= 2
            assert body["total_room_count_estimate"] == 5
            if since is not None:
                assert "prev_batch" in body
            seen += [r["room_id"] for r in body["chunk"]]
            if "next_batch" not in body:
                return seen
            since = body["next_batch"]
        raise AssertionError("never ended")

    for method in ("GET", "POST"):
        seen = await page_through(method)
        assert len(seen) == 5 and set(seen) == created
    # prev_batch leads back.
    status, first = await api(client, "GET", "/publicRooms", query={"limit": "2"})
    status, second = await api(client, "GET", "/publicRooms",
                               query={"limit": "2", "since": first["next_batch"]})
    status, again = await api(client, "GET", "/publicRooms",
                              query={"limit": "2", "since": second["prev_batch"]})
    assert status == 200, again
    assert again["chunk"] == first["chunk"]


async def test_public_rooms_bad_parameters(client: TestClient) -> None:
    for query in ({"limit": "-1"}, {"limit": "x"}, {"since": "bogus"}):
        status, body = await api(client, "GET", "/publicRooms", query=query)
        assert status == 400, (query, body)


async def test_public_rooms_post_needs_auth(client: TestClient) -> None:
    status, body = await api(client, "POST", "/publicRooms", None, {})
    assert_error(status, body, 401, "M_MISSING_TOKEN")


async def test_public_room_state_is_unchanged_by_listing(client: TestClient, alice: User
                                                         ) -> None:
    room_id = await create_room(client, alice)
    before = set(await room_state(client, alice, room_id))
    await api(client, "PUT", f"/directory/list/room/{room_id}", alice, {"visibility": "public"})
    assert set(await room_state(client, alice, room_id)) == before
