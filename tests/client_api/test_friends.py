"""The friends extension (DESIGN.md): requests, acceptance, lists, m.direct, removal."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp.test_utils import TestClient

from tests.conftest import bearer
from tests.helpers.room_api import User, api, assert_error, new_user

FRIENDS = "/_matrix/client/unstable/org.ktchat.friends"


async def call(client: TestClient, method: str, path: str, user: User, body: Any = None
               ) -> tuple[int, Any]:
    resp = await client.request(method, FRIENDS + path, json=body, headers=bearer(user.token))
    return resp.status, await resp.json()


async def request(client: TestClient, user: User, target: str) -> str:
    status, body = await call(client, "POST", "/requests", user, {"user_id": target})
    assert status == 200, body
    return str(body["room_id"])


async def friends_of(client: TestClient, user: User) -> list[dict[str, Any]]:
    status, body = await call(client, "GET", "/friends", user)
    assert status == 200, body
    return list(body["friends"])


async def requests_of(client: TestClient, user: User) -> dict[str, Any]:
    status, body = await call(client, "GET", "/requests", user)
    assert status == 200, body
    return dict(body)


async def direct(client: TestClient, user: User) -> dict[str, Any]:
    status, body = await api(client, "GET", f"/user/{user.user_id}/account_data/m.direct",
                             user, spec=False)
    return dict(body) if status == 200 else {}


async def befriend(client: TestClient, a: User, b: User) -> str:
    room_id = await request(client, a, b.user_id)
    status, body = await call(client, "POST", f"/requests/{quote(a.user_id)}/accept", b)
    assert status == 200, body
    assert body["room_id"] == room_id
    return room_id


async def test_advertised(client: TestClient) -> None:
    resp = await client.get("/_matrix/client/versions")
    assert (await resp.json())["unstable_features"]["org.ktchat.friends"] is True


async def test_request_accept_and_lists(client: TestClient, alice: User, bob: User) -> None:
    room_id = await request(client, alice, bob.user_id)
    assert await requests_of(client, alice) == {
        "incoming": [], "outgoing": [{"user_id": bob.user_id, "room_id": room_id}]}
    assert await requests_of(client, bob) == {
        "incoming": [{"user_id": alice.user_id, "room_id": room_id}], "outgoing": []}
    assert await friends_of(client, alice) == []

    status, body = await call(client, "POST", f"/requests/{quote(alice.user_id)}/accept", bob)
    assert (status, body) == (200, {"room_id": room_id})
    for me, other in ((alice, bob), (bob, alice)):
        [entry] = await friends_of(client, me)
        assert entry["user_id"] == other.user_id and entry["room_id"] == room_id
        assert entry["presence"] in ("online", "unavailable", "offline")
        assert (await direct(client, me)) == {other.user_id: [room_id]}
        assert await requests_of(client, me) == {"incoming": [], "outgoing": []}

    # A standard DM room: is_direct invite, both joined.
    status, members = await api(client, "GET", f"/rooms/{room_id}/joined_members", alice)
    assert status == 200 and set(members["joined"]) == {alice.user_id, bob.user_id}


async def test_repeats_are_idempotent_and_crossed_requests_accept(
        client: TestClient, alice: User, bob: User) -> None:
    room_id = await request(client, alice, bob.user_id)
    assert await request(client, alice, bob.user_id) == room_id
    # Bob asking alice back accepts her request.
    assert await request(client, bob, alice.user_id) == room_id
    assert [f["user_id"] for f in await friends_of(client, alice)] == [bob.user_id]
    assert await request(client, alice, bob.user_id) == room_id
    status, body = await call(client, "POST", f"/requests/{quote(alice.user_id)}/accept", bob)
    assert (status, body) == (200, {"room_id": room_id})


async def test_reject(client: TestClient, alice: User, bob: User) -> None:
    await request(client, alice, bob.user_id)
    status, body = await call(client, "POST", f"/requests/{quote(alice.user_id)}/reject", bob)
    assert (status, body) == (200, {})
    for user in (alice, bob):
        assert await requests_of(client, user) == {"incoming": [], "outgoing": []}
        assert await friends_of(client, user) == []
    status, body = await call(client, "POST", f"/requests/{quote(alice.user_id)}/reject", bob)
    assert_error(status, body, 404, "M_NOT_FOUND")
    # A new request after a rejection is a new room.
    again = await request(client, alice, bob.user_id)
    assert (await requests_of(client, bob))["incoming"] == [
        {"user_id": alice.user_id, "room_id": again}]


async def test_remove_ends_it_on_both_sides(client: TestClient, alice: User, bob: User
                                            ) -> None:
    room_id = await befriend(client, alice, bob)
    status, body = await call(client, "DELETE", f"/friends/{quote(bob.user_id)}", alice)
    assert (status, body) == (200, {})
    for user in (alice, bob):
        assert await friends_of(client, user) == []
        assert room_id not in str(await direct(client, user))
    status, joined = await api(client, "GET", "/joined_rooms", bob)
    assert room_id not in joined["joined_rooms"]
    status, body = await call(client, "DELETE", f"/friends/{quote(bob.user_id)}", alice)
    assert_error(status, body, 404, "M_NOT_FOUND")


async def test_errors(client: TestClient, alice: User, bob: User) -> None:
    status, body = await call(client, "POST", "/requests", alice, {"user_id": alice.user_id})
    assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await call(client, "POST", "/requests", alice,
                              {"user_id": "@nobody:test.local"})
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await call(client, "POST", "/requests", alice, {"user_id": "not-an-id"})
    assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await call(client, "POST", "/requests", alice, {})
    assert_error(status, body, 400, "M_MISSING_PARAM")
    status, body = await call(client, "POST", "/requests", alice, {"user_id": 5})
    assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await call(client, "POST", f"/requests/{quote(bob.user_id)}/accept", alice)
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await call(client, "DELETE", f"/friends/{quote(bob.user_id)}", alice)
    assert_error(status, body, 404, "M_NOT_FOUND")
    resp = await client.get(FRIENDS + "/friends")
    assert resp.status == 401


async def test_a_forged_friendship_room_is_not_a_friendship(client: TestClient, alice: User,
                                                            bob: User) -> None:
    """Only the room's creator can be the requester named in its marker."""
    carol = await new_user(client, "mallory")
    status, body = await api(client, "POST", "/createRoom", carol, {
        "preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": True,
        "creation_content": {"org.ktchat.friendship": {"users": [alice.user_id,
                                                                 bob.user_id]}}})
    assert status == 200, body
    assert await requests_of(client, bob) == {"incoming": [], "outgoing": []}
