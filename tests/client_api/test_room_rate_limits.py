"""Per-user token buckets for sending, joining and inviting (429 M_LIMIT_EXCEEDED)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import bearer, register_user


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    tight = {"per_second": 0.01, "burst_count": 3}
    loose = {"per_second": 100, "burst_count": 100}
    return {"rate_limits": {"enabled": True, "message_per_user": tight,
                            "joins_per_user": tight, "invites_per_user": tight,
                            "registration_per_ip": loose, "login_per_ip": loose}}


async def _limited(resp: Any) -> None:
    assert resp.status == 429, await resp.text()
    body = await resp.json()
    assert body["errcode"] == "M_LIMIT_EXCEEDED"
    assert isinstance(body["retry_after_ms"], int) and body["retry_after_ms"] > 0
    assert int(resp.headers["Retry-After"]) >= 1


async def test_sending_is_rate_limited_per_user(client) -> None:
    alice = await register_user(client, "alice")
    bob = await register_user(client, "bob")
    resp = await client.post("/_matrix/client/v3/createRoom", json={"preset": "public_chat"},
                             headers=bearer(alice["access_token"]))
    room_id = (await resp.json())["room_id"]
    statuses = []
    for i in range(4):
        resp = await client.put(f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t{i}",
                                json={"msgtype": "m.text", "body": "x"},
                                headers=bearer(alice["access_token"]))
        statuses.append(resp.status)
        if resp.status == 429:
            await _limited(resp)
    assert statuses == [200, 200, 200, 429]
    # The limit is per user: bob joins and sends.
    resp = await client.post(f"/_matrix/client/v3/join/{room_id}",
                             headers=bearer(bob["access_token"]))
    assert resp.status == 200
    resp = await client.put(f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/b1",
                            json={"msgtype": "m.text", "body": "y"},
                            headers=bearer(bob["access_token"]))
    assert resp.status == 200
    # A repeated transaction is answered without spending tokens.
    resp = await client.put(f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t0",
                            json={"msgtype": "m.text", "body": "x"},
                            headers=bearer(alice["access_token"]))
    assert resp.status in (200, 429)


async def test_joins_and_invites_are_rate_limited(client) -> None:
    alice = await register_user(client, "alice")
    bob = await register_user(client, "bob")
    headers = bearer(alice["access_token"])
    rooms = []
    for _ in range(4):
        resp = await client.post("/_matrix/client/v3/createRoom",
                                 json={"preset": "public_chat"}, headers=headers)
        rooms.append((await resp.json())["room_id"])
    statuses = []
    for room_id in rooms:
        resp = await client.post(f"/_matrix/client/v3/join/{room_id}",
                                 headers=bearer(bob["access_token"]))
        statuses.append(resp.status)
    assert statuses[:3] == [200, 200, 200]
    await _limited(resp)

    invites = []
    for i in range(4):
        user = await register_user(client, f"guest{i}")
        resp = await client.post(f"/_matrix/client/v3/rooms/{rooms[0]}/invite",
                                 json={"user_id": user["user_id"]}, headers=headers)
        invites.append(resp.status)
    assert invites[:3] == [200, 200, 200]
    await _limited(resp)
