"""The friends extension (DESIGN.md): requests, acceptance, lists, m.direct, removal."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import pytest
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


# -- friends and presence -------------------------------------------------------------------

SYNC = "/_matrix/client/v3/sync"


async def _sync(client: TestClient, user: User, since: str | None = None,
                timeout_ms: int = 0) -> dict[str, Any]:
    params = {"timeout": str(timeout_ms)}
    if since:
        params["since"] = since
    resp = await client.get(SYNC, params=params, headers=bearer(user.token))
    assert resp.status == 200
    return dict(await resp.json())


def _presence_of(body: dict[str, Any], user_id: str) -> dict[str, Any] | None:
    found = [e["content"] for e in body["presence"]["events"] if e["sender"] == user_id]
    return found[-1] if found else None


async def _wait_presence(client: TestClient, watcher: User, since: str, user_id: str,
                         state: str, within_s: float) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        body = await _sync(client, watcher, since, timeout_ms=1000)
        since = body["next_batch"]
        content = _presence_of(body, user_id)
        if content is not None and content["presence"] == state:
            return content
    raise AssertionError(f"{user_id} did not become {state} within {within_s} s")


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"presence": {"offline_timeout_ms": 600, "idle_timeout_ms": 60_000}}


async def test_friends_see_each_others_presence_and_status(
        client: TestClient, alice: User, bob: User, carol: User) -> None:
    await befriend(client, alice, bob)
    carol_since = (await _sync(client, carol))["next_batch"]
    bob_since = (await _sync(client, bob))["next_batch"]
    # Alice syncs (online) and sets a status message.
    await _sync(client, alice)
    status, body = await api(client, "PUT", f"/presence/{alice.user_id}/status", alice,
                             {"presence": "online", "status_msg": "at lunch"}, spec=False)
    assert status == 200, body
    content = await _wait_presence(client, bob, bob_since, alice.user_id, "online", 5)
    assert content["status_msg"] == "at lunch"
    [entry] = await friends_of(client, bob)
    assert (entry["user_id"], entry["presence"], entry["status_msg"]) == (
        alice.user_id, "online", "at lunch")
    assert isinstance(entry["last_active_ago"], int)

    # Alice stops syncing: offline for bob within the configured time, in sync and the list.
    bob_since = (await _sync(client, bob))["next_batch"]
    await _wait_presence(client, bob, bob_since, alice.user_id, "offline", 5)
    [entry] = await friends_of(client, bob)
    assert entry["presence"] == "offline" and entry["status_msg"] == "at lunch"

    # Carol shares no room with either: never sees their presence.
    body = await _sync(client, carol, carol_since)
    assert _presence_of(body, alice.user_id) is None
    assert _presence_of(body, bob.user_id) is None
    assert _presence_of(await _sync(client, carol), alice.user_id) is None
    status, body = await api(client, "GET", f"/presence/{alice.user_id}/status", carol,
                             spec=False)
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_a_removed_friend_no_longer_sees_presence(client: TestClient, alice: User,
                                                        bob: User) -> None:
    await befriend(client, alice, bob)
    await _sync(client, alice)
    status, _ = await api(client, "GET", f"/presence/{alice.user_id}/status", bob,
                          spec=False)
    assert status == 200
    status, _ = await call(client, "DELETE", f"/friends/{quote(alice.user_id)}", bob)
    assert status == 200
    status, body = await api(client, "GET", f"/presence/{alice.user_id}/status", bob,
                             spec=False)
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_presence_only_sync_is_woken_by_a_friend(client: TestClient, alice: User,
                                                       bob: User) -> None:
    """A sync that filters every room out still follows its friends' presence: a change
    ends the long poll at once (not at its timeout)."""
    await befriend(client, alice, bob)
    no_rooms = '{"room": {"rooms": []}}'
    resp = await client.get(SYNC, params={"filter": no_rooms}, headers=bearer(bob.token))
    since = (await resp.json())["next_batch"]
    started = asyncio.get_running_loop().time()
    poll = asyncio.create_task(client.get(SYNC, params={
        "filter": no_rooms, "since": since, "timeout": "20000"}, headers=bearer(bob.token)))
    await asyncio.sleep(0.2)
    status, _ = await api(client, "PUT", f"/presence/{alice.user_id}/status", alice,
                          {"presence": "online", "status_msg": "here"}, spec=False)
    assert status == 200
    resp = await asyncio.wait_for(poll, 10)
    body = await resp.json()
    assert asyncio.get_running_loop().time() - started < 5
    assert _presence_of(body, alice.user_id) == {
        **(_presence_of(body, alice.user_id) or {}), "presence": "online", "status_msg": "here"}
    assert body["rooms"]["join"] == {}
