from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.client_api.test_sync_fanout import services  # noqa: F401
from tests.helpers.room_api import User, api, create_room, send_text


async def test_smoke(client: TestClient, alice: User, bob: User) -> None:
    room = await create_room(client, alice, name="Planning")
    other = await create_room(client, bob)
    await send_text(client, alice, room, "Hello world, the messages are here")
    await send_text(client, alice, room, "我们的中文消息很好")
    await send_text(client, bob, other, "hello from a room alice is not in")
    body: dict[str, Any] = {"search_categories": {"room_events": {"search_term": "hello"}}}
    status, res = await api(client, "POST", "/search", alice, body)
    assert status == 200, res
    results = res["search_categories"]["room_events"]["results"]
    assert [r["result"]["content"]["body"] for r in results] == [
        "Hello world, the messages are here"], res
    for term in ("中文", "消息", "messag", "plan"):
        body = {"search_categories": {"room_events": {"search_term": term,
                                                       "event_context": {"before_limit": 2},
                                                       "include_state": True,
                                                       "groupings": {"group_by": [{"key": "room_id"}]}}}}
        status, res = await api(client, "POST", "/search", alice, body)
        assert status == 200, res
        assert len(res["search_categories"]["room_events"]["results"]) == 1, (term, res)
