from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from homeserver.services.container import Services
from tests.client_api.test_admin import admin_token
from tests.client_api.test_sync_fanout import services  # noqa: F401
from tests.helpers.room_api import User, all_events, api, create_room, send_text


async def test_purge_and_delete(client: TestClient, services: Services, alice: User,
                                bob: User) -> None:
    token = await admin_token(client)
    h = {"Authorization": f"Bearer {token}"}
    room = await create_room(client, alice, name="R")
    ids = [await send_text(client, alice, room, f"m{i}") for i in range(5)]
    resp = await client.post(f"/_synapse/admin/v1/purge_history/{room}",
                             json={"purge_up_to_event_id": ids[3], "delete_local_events": True},
                             headers=h)
    body = await resp.json()
    assert resp.status == 200, body
    for _ in range(100):
        resp = await client.get(f"/_synapse/admin/v1/purge_history_status/{body['purge_id']}",
                                headers=h)
        st = await resp.json()
        if st["status"] != "active":
            break
        await asyncio.sleep(0.05)
    assert st == {"status": "complete"}
    events = await all_events(client, alice, room)
    bodies = [e["content"].get("body") for e in events if e["type"] == "m.room.message"]
    assert bodies == ["m3", "m4"], bodies
    assert await send_text(client, alice, room, "after")
    resp = await client.delete(f"/_synapse/admin/v2/rooms/{room}", json={"block": True}, headers=h)
    d = await resp.json()
    assert resp.status == 200, d
    for _ in range(100):
        resp = await client.get(f"/_synapse/admin/v2/rooms/delete_status/{d['delete_id']}",
                                headers=h)
        st = await resp.json()
        if st["status"] not in ("shutting_down", "purging"):
            break
        await asyncio.sleep(0.05)
    assert st["status"] == "complete", st
    assert st["shutdown_room"]["kicked_users"] == [alice.user_id]
    status, res = await api(client, "POST", f"/rooms/{room}/join", alice, {})
    assert status == 403, res
    status, res = await api(client, "GET", "/joined_rooms", alice)
    assert room not in res["joined_rooms"]
    status, res = await api(client, "GET", "/sync", alice)
    assert status == 200
    assert room not in str(res)


async def test_retention(client: TestClient, services: Services, alice: User) -> None:
    room = await create_room(client, alice)
    await send_text(client, alice, room, "old")
    await send_text(client, alice, room, "old2")
    status, _ = await api(client, "PUT", f"/rooms/{room}/state/m.room.retention", alice,
                          {"max_lifetime": 1000}, spec=False)
    await send_text(client, alice, room, "new")
    object.__setattr__(services.purge, "retention",
                       type(services.config.retention)(enabled=True))
    now = services.clock.time_ms()
    n = await services.purge.run_retention(now + 1500)
    assert n == 2, n
    events = await all_events(client, alice, room)
    bodies = [e["content"].get("body") for e in events if e["type"] == "m.room.message"]
    assert bodies == ["new"], bodies
    types = {e["type"] for e in events}
    assert {"m.room.create", "m.room.member", "m.room.power_levels", "m.room.retention"} <= types
    assert await send_text(client, alice, room, "still works")
    search: dict[str, Any] = {"search_categories": {"room_events": {"search_term": "old"}}}
    status, res = await api(client, "POST", "/search", alice, search)
    assert res["search_categories"]["room_events"]["results"] == []
