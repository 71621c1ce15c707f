"""``default_room_version`` (DESIGN.md, "Files"): the version of rooms created without one,
and the default /capabilities advertises. Version 12 room IDs have no server part, which some
clients cannot handle; an operator can choose 10 or 11 instead."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import SERVER_NAME, bearer
from tests.helpers.room_api import User, api, create_room, room_state


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"default_room_version": "10"}


async def test_rooms_are_created_in_the_configured_version(client: TestClient,
                                                           alice: User) -> None:
    room_id = await create_room(client, alice)
    assert room_id.startswith("!") and room_id.endswith(f":{SERVER_NAME}"), room_id
    create = (await room_state(client, alice, room_id))[("m.room.create", "")]
    assert create["content"] == {"room_version": "10", "creator": alice.user_id}


async def test_a_requested_version_still_wins(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, room_version="12")
    assert ":" not in room_id
    create = (await room_state(client, alice, room_id))[("m.room.create", "")]
    assert create["content"]["room_version"] == "12"


async def test_capabilities_advertise_the_configured_default(client: TestClient,
                                                             alice: User) -> None:
    status, body = await api(client, "GET", "/capabilities", alice)
    assert status == 200, body
    versions = body["capabilities"]["m.room_versions"]
    assert versions["default"] == "10"
    assert set(versions["available"]) == {"10", "11", "12"}


async def test_friend_requests_use_the_configured_default(client: TestClient, alice: User,
                                                          bob: User) -> None:
    resp = await client.post("/_matrix/client/unstable/org.ktchat.friends/requests",
                             json={"user_id": bob.user_id}, headers=bearer(alice.token))
    body = await resp.json()
    assert resp.status == 200, body
    assert body["room_id"].endswith(f":{SERVER_NAME}")
