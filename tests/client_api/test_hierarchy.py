"""Space hierarchies (GET /_matrix/client/v1/rooms/{roomId}/hierarchy) over real HTTP, on
SQLite and PostgreSQL: which children are listed (joined, invited, public, knockable,
world-readable, restricted to a room the user is in; not private ones), the summaries and
children_state, the walk's order (``order``, then age), max_depth, suggested_only, paging
with ``from``, loops, and the errors; and the federation answer for another server."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from core.errors import NotFound
from homeserver.services.container import Services
from tests.client_api import test_sync_fanout
from tests.conftest import SERVER_NAME, bearer
from tests.helpers.room_api import User, api, assert_error, create_room, join, new_user, put_state
from tests.helpers.spec import assert_matches_spec

services = test_sync_fanout.services  # every test here runs on SQLite and on PostgreSQL


async def hierarchy_raw(client: TestClient, user: User | None, room_id: str,
                        **query: Any) -> tuple[int, Any]:
    resp = await client.get(f"/_matrix/client/v1/rooms/{quote(room_id, safe='')}/hierarchy",
                            params={k: str(v) for k, v in query.items()},
                            headers=bearer(user.token) if user else None)
    body = await resp.json()
    if resp.status == 200:
        assert_matches_spec("client-server", "GET", f"/rooms/{room_id}/hierarchy", 200, body)
    return resp.status, body


async def hierarchy(client: TestClient, user: User, room_id: str, **query: Any
                    ) -> dict[str, Any]:
    status, body = await hierarchy_raw(client, user, room_id, **query)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def room_ids(client: TestClient, user: User, room_id: str, **query: Any) -> list[str]:
    return [r["room_id"] for r in (await hierarchy(client, user, room_id, **query))["rooms"]]


async def space(client: TestClient, user: User, **body: Any) -> str:
    return await create_room(client, user, creation_content={"type": "m.space"}, **body)


async def add_child(client: TestClient, user: User, parent: str, child: str,
                    **content: Any) -> None:
    status, body = await put_state(client, user, parent, "m.space.child",
                                   {"via": [SERVER_NAME], **content}, child)
    assert status == 200, body


def rules(join_rule: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"type": "m.room.join_rules", "state_key": "",
             "content": {"join_rule": join_rule, **extra}}]


@pytest.fixture
async def tree(client: TestClient) -> dict[str, Any]:
    """Alice's public space with children of every kind; Bob joins only the space."""
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    root = await space(client, alice, preset="public_chat", name="Root space",
                       topic="All of it")
    rooms = {
        "public": await create_room(client, alice, preset="public_chat", name="Lobby"),
        "private": await create_room(client, alice, preset="private_chat"),
        "invited": await create_room(client, alice, preset="private_chat",
                                     invite=[bob.user_id]),
        "knock": await create_room(client, alice, preset="private_chat",
                                   initial_state=rules("knock")),
        "readable": await create_room(client, alice, preset="private_chat",
                                      initial_state=[{
                                          "type": "m.room.history_visibility",
                                          "state_key": "",
                                          "content": {"history_visibility": "world_readable"}}]),
        "restricted": await create_room(client, alice, preset="private_chat",
                                        initial_state=rules("restricted", allow=[
                                            {"type": "m.room_membership", "room_id": root}])),
        "sub": await space(client, alice, preset="public_chat", name="Sub space"),
    }
    rooms["deep"] = await create_room(client, alice, preset="public_chat", name="Deep")
    for i, name in enumerate(("public", "private", "invited", "knock", "readable",
                              "restricted", "sub")):
        await add_child(client, alice, root, rooms[name], order=f"{i:02d}")
    await add_child(client, alice, rooms["sub"], rooms["deep"], suggested=True)
    await join(client, bob, root)
    return {"alice": alice, "bob": bob, "root": root, **rooms}


async def test_lists_what_the_user_may_see(client: TestClient, tree: dict[str, Any]) -> None:
    bob = tree["bob"]
    body = await hierarchy(client, bob, tree["root"])
    assert "next_batch" not in body
    assert [r["room_id"] for r in body["rooms"]] == [
        tree[name] for name in ("root", "public", "invited", "knock", "readable", "restricted",
                                "sub", "deep")]
    # Alice (in every room) sees the private one too.
    assert tree["private"] in await room_ids(client, tree["alice"], tree["root"])
    root = body["rooms"][0]
    assert {k: v for k, v in root.items() if k != "children_state"} == {
        "room_id": tree["root"], "name": "Root space", "topic": "All of it",
        "num_joined_members": 2, "world_readable": False, "guest_can_join": False,
        "join_rule": "public", "room_type": "m.space", "room_version": "12"}
    children = root["children_state"]
    assert [c["state_key"] for c in children] == [
        tree[name] for name in ("public", "private", "invited", "knock", "readable",
                                "restricted", "sub")]
    assert children[0]["content"] == {"via": [SERVER_NAME], "order": "00"}
    assert children[0]["sender"] == tree["alice"].user_id
    assert isinstance(children[0]["origin_server_ts"], int)
    by_id = {r["room_id"]: r for r in body["rooms"]}
    assert by_id[tree["public"]]["children_state"] == []
    assert by_id[tree["public"]]["name"] == "Lobby"
    assert "room_type" not in by_id[tree["public"]]
    assert by_id[tree["knock"]]["join_rule"] == "knock"
    assert by_id[tree["readable"]]["world_readable"] is True
    assert by_id[tree["restricted"]]["allowed_room_ids"] == [tree["root"]]


async def test_order_then_age(client: TestClient, services: Services) -> None:
    alice = await new_user(client, "alice")
    root = await space(client, alice)
    first = await create_room(client, alice)
    second = await create_room(client, alice)
    third = await create_room(client, alice)
    await add_child(client, alice, root, third)  # no order: last
    await add_child(client, alice, root, second, order="b")
    await add_child(client, alice, root, first, order="a")
    # Not printable ASCII: as no order, so after the ordered ones, and newer than third.
    fourth = await create_room(client, alice)
    await add_child(client, alice, root, fourth, order="\u00e9")
    assert await room_ids(client, alice, root) == [root, first, second, third, fourth]


async def test_max_depth_and_suggested_only(client: TestClient, tree: dict[str, Any]) -> None:
    bob, root = tree["bob"], tree["root"]
    assert await room_ids(client, bob, root, max_depth=0) == [root]
    depth_one = await room_ids(client, bob, root, max_depth=1)
    assert tree["sub"] in depth_one and tree["deep"] not in depth_one
    assert len(await room_ids(client, bob, root, max_depth=2)) == 8
    # Only the suggested child of the sub-space; none of the root's children is suggested.
    assert await room_ids(client, bob, tree["sub"], suggested_only="true") == [
        tree["sub"], tree["deep"]]
    assert await room_ids(client, bob, root, suggested_only="true") == [root]


async def test_paging(client: TestClient, tree: dict[str, Any]) -> None:
    bob, root = tree["bob"], tree["root"]
    everything = await room_ids(client, bob, root)
    seen: list[str] = []
    token = None
    for _ in range(10):
        query: dict[str, Any] = {"limit": 3}
        if token is not None:
            query["from"] = token
        body = await hierarchy(client, bob, root, **query)
        assert len(body["rooms"]) <= 3
        seen += [r["room_id"] for r in body["rooms"]]
        token = body.get("next_batch")
        if token is None:
            break
    assert seen == everything
    # A token is for its own walk: other parameters, another user or an unknown token: 400.
    body = await hierarchy(client, bob, root, limit=2)
    status, error = await hierarchy_raw(client, bob, root, suggested_only="true",
                                        **{"from": body["next_batch"]})
    assert_error(status, error, 400, "M_INVALID_PARAM")
    body = await hierarchy(client, bob, root, limit=2)
    status, error = await hierarchy_raw(client, tree["alice"], root,
                                        **{"from": body["next_batch"]})
    assert_error(status, error, 400, "M_INVALID_PARAM")
    status, error = await hierarchy_raw(client, bob, root, **{"from": "nonsense"})
    assert_error(status, error, 400, "M_INVALID_PARAM")


async def test_loops_are_walked_once(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    one = await space(client, alice)
    two = await space(client, alice)
    await add_child(client, alice, one, two)
    await add_child(client, alice, two, one)
    await add_child(client, alice, two, two)
    assert await room_ids(client, alice, one) == [one, two]


async def test_children_without_via_and_unknown_rooms(client: TestClient) -> None:
    alice = await new_user(client, "alice")
    root = await space(client, alice)
    child = await create_room(client, alice)
    for content in ({"via": []}, {"via": "x"}, {}):
        status, body = await put_state(client, alice, root, "m.space.child", content, child)
        assert status == 200, body
        assert await room_ids(client, alice, root) == [root]
    # A child unknown here with no other server to ask is left out.
    await add_child(client, alice, root, f"!unknown:{SERVER_NAME}")
    body = await hierarchy(client, alice, root)
    assert [r["room_id"] for r in body["rooms"]] == [root]
    assert [c["state_key"] for c in body["rooms"][0]["children_state"]] == [
        f"!unknown:{SERVER_NAME}"]


async def test_errors(client: TestClient, tree: dict[str, Any]) -> None:
    bob, root = tree["bob"], tree["root"]
    carol = await new_user(client, "carol")
    # A private room Carol is not in, and rooms that do not exist: 403.
    for room in (tree["private"], f"!nowhere:{SERVER_NAME}"):
        status, body = await hierarchy_raw(client, carol, room)
        assert_error(status, body, 403, "M_FORBIDDEN")
    for query in ({"limit": 0}, {"limit": -1}, {"limit": "x"}, {"max_depth": -1},
                  {"max_depth": "1.5"}, {"suggested_only": "yes"}, {"from": ""}):
        status, body = await hierarchy_raw(client, bob, root, **query)
        assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await hierarchy_raw(client, bob, "not-a-room")
    assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await hierarchy_raw(client, None, root)
    assert_error(status, body, 401, "M_MISSING_TOKEN")
    # Huge limits and depths are capped, not refused.
    assert len(await room_ids(client, bob, root, limit=10**9, max_depth=10**9)) == 8


async def test_federation_answer(services: Services, tree: dict[str, Any]) -> None:
    """What another server is told: the rooms its users could see, the others as
    inaccessible; unknown or hidden rooms are 404."""
    answer = await services.spaces.federation_hierarchy("other.example", tree["root"],
                                                        suggested_only=False)
    assert_matches_spec("server-server", "GET", f"/hierarchy/{tree['root']}", 200, answer)
    assert answer["room"]["room_id"] == tree["root"]
    assert {c["room_id"] for c in answer["children"]} == {
        tree[name] for name in ("public", "knock", "readable", "sub")}
    assert set(answer["inaccessible_children"]) == {
        tree[name] for name in ("private", "invited", "restricted")}
    answer = await services.spaces.federation_hierarchy("other.example", tree["sub"],
                                                        suggested_only=True)
    assert [c["room_id"] for c in answer["children"]] == [tree["deep"]]
    for room in (tree["private"], f"!nowhere:{SERVER_NAME}"):
        with pytest.raises(NotFound):
            await services.spaces.federation_hierarchy("other.example", room,
                                                       suggested_only=False)


async def test_api_path_is_v1_only(client: TestClient, tree: dict[str, Any]) -> None:
    status, _body = await api(client, "GET", f"/rooms/{tree['root']}/hierarchy", tree["bob"],
                             spec=False)
    assert status in (404, 405)
