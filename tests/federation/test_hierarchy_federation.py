"""Spaces and the user directory between two of our servers (real processes over TLS; B on
SQLite, then on PostgreSQL): alice's space on A has children that live on B, which A fills in
by asking B (``/_matrix/federation/v1/hierarchy/{roomId}``, served by B) — public rooms and a
sub-space with its own children are listed, B's private room is not. Bob from B, once in a
room on A, is found in A's user directory by his display name, which follows his renames,
until he leaves. Another server's malformed answers are checked field by field."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.services.container import Services
from homeserver.services.rooms import CreateRoomRequest
from homeserver.services.spaces import checked_answer
from roomserver.api import NewEvent
from tests.conftest import SERVER_NAME
from tests.federation.test_reads import (  # noqa: F401 (fixtures)
    ALICE,
    V1,
    FakeRemote,
    Fed,
    fed,
    hs,
    remote,
    remote_member,
    stranger,
)
from tests.helpers.federation import FedPair, User, poll_until, q
from tests.helpers.spec import assert_matches_spec


@pytest.fixture(params=["sqlite", "postgres"])
def pair(request: pytest.FixtureRequest) -> FedPair:
    name = "fed_pair" if request.param == "sqlite" else "fed_pair_pg"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


async def hierarchy(user: User, room_id: str, **query: str) -> dict[str, Any]:
    body = await user.request("GET", f"/_matrix/client/v1/rooms/{q(room_id)}/hierarchy",
                              params=query)
    assert_matches_spec("client-server", "GET", f"/rooms/{room_id}/hierarchy", 200, body)
    return body  # type: ignore[no-any-return]


async def add_child(user: User, parent: str, child: str, via: str, **content: Any) -> None:
    await user.send_state(parent, "m.space.child", {"via": [via], **content}, child)


async def test_children_on_another_server(pair: FedPair) -> None:
    alice, bob, b = pair.alice, pair.bob, pair.b.server_name
    lobby = await bob.create_room(preset="public_chat", name="Lobby on B", topic="Hello")
    secret = await bob.create_room(preset="private_chat", name="Secret on B")
    sub = await bob.create_room(preset="public_chat", name="Sub space on B",
                                creation_content={"type": "m.space"})
    deep = await bob.create_room(preset="public_chat", name="Deep on B")
    await add_child(bob, sub, deep, b, suggested=True)
    await add_child(bob, sub, secret, b)
    root = await alice.create_room(preset="public_chat", name="Alice's space",
                                   creation_content={"type": "m.space"})
    await add_child(alice, root, lobby, b, order="1")
    await add_child(alice, root, sub, b, order="2")

    body = await hierarchy(alice, root)
    rooms = {r["room_id"]: r for r in body["rooms"]}
    assert [r["room_id"] for r in body["rooms"]] == [root, lobby, sub, deep]
    assert secret not in rooms
    assert rooms[lobby]["name"] == "Lobby on B" and rooms[lobby]["topic"] == "Hello"
    assert rooms[lobby]["num_joined_members"] == 1
    assert rooms[lobby]["join_rule"] == "public"
    assert rooms[sub]["room_type"] == "m.space"
    assert [c["state_key"] for c in rooms[sub]["children_state"]] == [deep, secret]
    assert rooms[deep]["name"] == "Deep on B"
    # Depth and suggested_only hold across servers too.
    assert [r["room_id"] for r in (await hierarchy(alice, root, max_depth="1"))["rooms"]] == [
        root, lobby, sub]
    # A walk starts in a room this server holds: B's sub-space is not one (yet).
    status, error = await alice.raw("GET", f"/_matrix/client/v1/rooms/{q(sub)}/hierarchy")
    assert (status, error["errcode"]) == (403, "M_FORBIDDEN")
    # Once alice joins B's sub-space, A walks it from its own copy.
    await alice.join(sub, via=[b])
    body = await hierarchy(alice, sub, suggested_only="true")
    assert [r["room_id"] for r in body["rooms"]] == [sub, deep]
    await alice.leave(sub)


async def test_remote_users_in_the_user_directory(pair: FedPair) -> None:
    alice, bob, b = pair.alice, pair.bob, pair.b.server_name
    await bob.request("PUT", f"/profile/{q(bob.user_id)}/displayname",
                      {"displayname": "Bobby Tables"})
    room = await alice.create_room(preset="private_chat", invite=[bob.user_id])
    await bob.wait_for_invite(room)
    await bob.join(room, via=[pair.a.server_name])
    await alice.wait_for_membership(room, bob.user_id, "join")

    async def search(term: str) -> list[dict[str, Any]]:
        body = await alice.request("POST", "/user_directory/search", {"search_term": term})
        assert_matches_spec("client-server", "POST", "/user_directory/search", 200, body)
        return body["results"]  # type: ignore[no-any-return]

    found = await poll_until(lambda: search("tables"), lambda r: bool(r), what="bob found")
    assert found == [{"user_id": bob.user_id, "display_name": "Bobby Tables"}]
    assert await search(bob.user_id) == found
    assert await search(f"bob {b.split(':')[0]}") == found
    # A rename reaches A as a member event and the directory follows it.
    await bob.request("PUT", f"/profile/{q(bob.user_id)}/displayname",
                      {"displayname": "Robert Drop"})
    await poll_until(lambda: search("drop"), lambda r: bool(r), what="rename")
    assert await search("tables") == []
    # Leaving the only shared room: no longer found.
    await bob.leave(room)
    await alice.wait_for_membership(room, bob.user_id, "leave")
    await poll_until(lambda: search("robert"), lambda r: r == [], what="bob gone")
    # In a public room of B's that alice joins, he is found again; when A leaves it (alice
    # was its only user here), A knows nothing more of who is there, and forgets him.
    public = await bob.create_room(preset="public_chat")
    await alice.join(public, via=[b])
    await poll_until(lambda: search("robert"), lambda r: bool(r), what="bob again")
    await alice.leave(public)
    await poll_until(lambda: search("robert"), lambda r: r == [], what="bob forgotten")


def test_malformed_remote_answers_are_checked() -> None:
    child = {"type": "m.space.child", "state_key": "!c:b", "content": {"via": ["b"]},
             "sender": "@x:b", "origin_server_ts": 5}
    room = {"room_id": "!r:b", "num_joined_members": 1, "world_readable": False,
            "guest_can_join": False, "name": "n" * 1000, "avatar_url": "http://no",
            "children_state": [child, {**child, "content": {"via": []}}, "junk",
                               {**child, "state_key": "nope"}], "evil": True}
    answer = checked_answer({"room": room, "children": [
        {"room_id": "!c:b", "num_joined_members": "1", "world_readable": False,
         "guest_can_join": False},
        {"room_id": "!d:b", "num_joined_members": 1, "world_readable": False,
         "guest_can_join": False, "join_rule": "public"}],
        "inaccessible_children": ["!e:b", 5, "x"]}, "!r:b")
    assert answer == {
        "room": {"room_id": "!r:b", "num_joined_members": 1, "world_readable": False,
                 "guest_can_join": False, "name": "n" * 255, "children_state": [child]},
        "children": [{"room_id": "!d:b", "num_joined_members": 1, "world_readable": False,
                      "guest_can_join": False, "join_rule": "public"}],
        "inaccessible_children": ["!e:b"]}
    for bad in (None, [], {"room": None}, {"room": {**room, "room_id": "!other:b"}},
                {"room": {**room, "num_joined_members": -1}}):
        assert checked_answer(bad, "!r:b") is None


# -- the federation endpoint, in process (signed requests from fake servers) ---------------

async def _room(hs: Services, preset: str, space: bool = False) -> str:  # noqa: F811
    if await hs.db.users.get_user(ALICE) is None:
        await hs.accounts.register("alice", None)
    room_id, _ = await hs.rooms.create_room(CreateRoomRequest(
        creator=ALICE, preset=preset,
        creation_content={"type": "m.space"} if space else {}))
    return room_id


async def test_served_to_other_servers(hs: Services, fed: Fed, remote: FakeRemote,  # noqa: F811
                                       stranger: FakeRemote) -> None:  # noqa: F811
    root = await _room(hs, "public_chat", space=True)
    public = await _room(hs, "public_chat")
    private = await _room(hs, "private_chat")
    hidden_space = await _room(hs, "private_chat", space=True)
    for child in (public, private):
        await hs.roomserver.send(root, NewEvent("m.space.child", ALICE, {"via": [SERVER_NAME]},
                                                state_key=child))
    # The remote server has a user in the private room; the stranger has none anywhere.
    await hs.roomserver.send(private, NewEvent("m.room.member", ALICE, {"membership": "invite"},
                                               state_key=remote.user("bob")))
    await remote_member(hs, private, remote.user("bob"))
    path = f"{V1}/hierarchy/{q(root)}"

    status, body = await fed.request("GET", path, origin=remote)
    assert status == 200, body
    assert_matches_spec("server-server", "GET", f"/hierarchy/{root}", 200, body)
    assert body["room"]["room_id"] == root
    assert [c["state_key"] for c in body["room"]["children_state"]] == [public, private]
    assert [c["room_id"] for c in body["children"]] == [public, private]
    assert body["inaccessible_children"] == []
    status, body = await fed.request("GET", path, origin=stranger)
    assert status == 200, body
    assert [c["room_id"] for c in body["children"]] == [public]
    assert body["inaccessible_children"] == [private]
    status, body = await fed.request("GET", path, origin=stranger,
                                     params={"suggested_only": "true"})
    assert status == 200 and body["children"] == [] and body["room"]["children_state"] == []

    for room_id in (hidden_space, f"!nowhere:{SERVER_NAME}"):
        status, body = await fed.request("GET", f"{V1}/hierarchy/{q(room_id)}", origin=remote)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    for bad_path, params in ((path, {"suggested_only": "maybe"}),
                             (f"{V1}/hierarchy/not-a-room", None)):
        status, body = await fed.request("GET", bad_path, origin=remote, params=params)
        assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, body = await fed.request("GET", path, origin=None)
    assert status == 401
