"""State events carry the content they replaced (unsigned.prev_content), in every read."""

from __future__ import annotations

from tests.conftest import bearer, register_user


async def test_changed_state_carries_prev_content(client) -> None:
    alice = await register_user(client, "alice")
    headers = bearer(alice["access_token"])
    resp = await client.post("/_matrix/client/v3/createRoom", json={"name": "first"},
                             headers=headers)
    room_id = (await resp.json())["room_id"]
    resp = await client.put(f"/_matrix/client/v3/rooms/{room_id}/state/m.room.name",
                            json={"name": "second"}, headers=headers)
    event_id = (await resp.json())["event_id"]

    resp = await client.get(f"/_matrix/client/v3/rooms/{room_id}/event/{event_id}",
                            headers=headers)
    unsigned = (await resp.json())["unsigned"]
    assert unsigned["prev_content"] == {"name": "first"}
    assert unsigned["replaces_state"].startswith("$")

    resp = await client.get(f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=1",
                            headers=headers)
    assert (await resp.json())["chunk"][0]["unsigned"]["prev_content"] == {"name": "first"}

    resp = await client.get("/_matrix/client/v3/sync", headers=headers)
    timeline = (await resp.json())["rooms"]["join"][room_id]["timeline"]["events"]
    renamed = next(e for e in timeline if e["event_id"] == event_id)
    assert renamed["unsigned"]["prev_content"] == {"name": "first"}
    first = next(e for e in timeline if e["type"] == "m.room.name" and e["event_id"] != event_id)
    assert "prev_content" not in first["unsigned"]
