"""GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event: the closest event the user may
see at or after (``dir=f``) or at or before (``dir=b``) a time, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import bearer
from tests.helpers.harness import harness_services
from tests.helpers.room_api import (
    User,
    api,
    assert_error,
    create_room,
    join,
    put_state,
    send_text,
)
from tests.helpers.spec import assert_matches_spec

V1 = "/_matrix/client/v1"
# More than one page of the service's search (50) of events hidden from bob.
_PAGE_AND_MORE = 55


services = harness_services




async def closest(client: TestClient, user: User, room_id: str, ts: Any, direction: Any,
                  prefix: str = V1) -> tuple[int, Any]:
    query = {k: str(v) for k, v in (("ts", ts), ("dir", direction)) if v is not None}
    resp = await client.get(f"{prefix}/rooms/{room_id}/timestamp_to_event", params=query,
                            headers=bearer(user.token))
    body = await resp.json()
    if resp.status in (200, 404) and prefix == V1:
        assert_matches_spec("client-server", "GET", f"/rooms/{room_id}/timestamp_to_event",
                            resp.status, body)
    return resp.status, body


async def ts_of(client: TestClient, user: User, room_id: str, event_id: str) -> int:
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{event_id}", user)
    assert status == 200, event
    return int(event["origin_server_ts"])


async def send_apart(client: TestClient, user: User, room_id: str, text: str) -> str:
    await asyncio.sleep(0.01)  # distinct milliseconds
    return await send_text(client, user, room_id, text)


async def test_closest_both_ways(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    first = await send_apart(client, alice, room_id, "one")
    second = await send_apart(client, alice, room_id, "two")
    t1, t2 = (await ts_of(client, alice, room_id, first),
              await ts_of(client, alice, room_id, second))
    assert t1 < t2

    status, body = await closest(client, alice, room_id, t1, "f")
    assert (status, body) == (200, {"event_id": first, "origin_server_ts": t1})
    status, body = await closest(client, alice, room_id, t1 + 1, "f")
    assert (status, body) == (200, {"event_id": second, "origin_server_ts": t2})
    status, body = await closest(client, alice, room_id, t2, "b")
    assert (status, body) == (200, {"event_id": second, "origin_server_ts": t2})
    status, body = await closest(client, alice, room_id, t2 - 1, "b")
    assert body["event_id"] == first
    # The unstable prefix (MSC3030) answers the same.
    status, body = await closest(client, alice, room_id, t2 - 1, "b",
                                 prefix="/_matrix/client/unstable/org.matrix.msc3030")
    assert (status, body["event_id"]) == (200, first)

    # Nothing after the last event, nothing before the room.
    status, body = await closest(client, alice, room_id, t2 + 10_000_000, "f")
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await closest(client, alice, room_id, 0, "b")
    assert_error(status, body, 404, "M_NOT_FOUND")
    # From the beginning: the room's first event.
    status, body = await closest(client, alice, room_id, 0, "f")
    assert status == 200
    status, create = await api(client, "GET", f"/rooms/{room_id}/state/m.room.create", alice,
                               query={"format": "event"}, spec=False)
    assert body["event_id"] == create["event_id"]


async def test_history_visibility_is_respected(client: TestClient, alice: User,
                                               bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await put_state(client, alice, room_id, "m.room.history_visibility",
                    {"history_visibility": "joined"})
    secret = await send_apart(client, alice, room_id, "before bob")
    t_secret = await ts_of(client, alice, room_id, secret)
    # bob is not in the room yet: 403 as in Synapse.
    status, body = await closest(client, bob, room_id, t_secret, "b")
    assert_error(status, body, 403, "M_FORBIDDEN")
    await asyncio.sleep(0.01)
    await join(client, bob, room_id)
    later = await send_apart(client, alice, room_id, "after bob")
    # Backwards from the secret: alice's message from before bob joined is hidden from him;
    # he gets the change of visibility before it (judged as the more open "shared").
    status, body = await closest(client, bob, room_id, t_secret, "b")
    assert status == 200 and body["event_id"] != secret, body
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{body['event_id']}",
                              bob)
    assert (status, event["type"]) == (200, "m.room.history_visibility")
    status, body = await closest(client, alice, room_id, t_secret, "b")
    assert body["event_id"] == secret
    # Forwards from the secret: his own join is the first thing after it he may see.
    status, body = await closest(client, bob, room_id, t_secret, "f")
    assert status == 200, body
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{body['event_id']}",
                              bob)
    assert (event["type"], event["state_key"]) == ("m.room.member", bob.user_id)
    t_later = await ts_of(client, bob, room_id, later)
    status, body = await closest(client, bob, room_id, t_later, "b")
    assert body["event_id"] == later


async def test_skips_many_invisible_events(client: TestClient, alice: User,
                                           bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await put_state(client, alice, room_id, "m.room.history_visibility",
                    {"history_visibility": "joined"})
    first = await send_apart(client, alice, room_id, "hidden")
    for i in range(_PAGE_AND_MORE):
        await send_text(client, alice, room_id, f"hidden {i}")
    await asyncio.sleep(0.01)
    await join(client, bob, room_id)
    status, body = await closest(client, bob, room_id,
                                 await ts_of(client, alice, room_id, first), "f")
    assert status == 200, body
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{body['event_id']}",
                              bob)
    assert event["state_key"] == bob.user_id


@pytest.mark.parametrize(("ts", "direction", "errcode"), [
    (None, "f", "M_MISSING_PARAM"),
    (5, None, "M_MISSING_PARAM"),
    ("abc", "f", "M_INVALID_PARAM"),
    ("-5", "f", "M_INVALID_PARAM"),
    ("1.5", "f", "M_INVALID_PARAM"),
    ("99999999999999999999", "f", "M_INVALID_PARAM"),
    (5, "x", "M_INVALID_PARAM"),
])
async def test_bad_params(client: TestClient, alice: User, ts: Any, direction: Any,
                          errcode: str) -> None:
    room_id = await create_room(client, alice)
    status, body = await closest(client, alice, room_id, ts, direction)
    assert_error(status, body, 400, errcode)


async def test_unknown_and_malformed_rooms(client: TestClient, alice: User) -> None:
    status, body = await closest(client, alice, "!unknown:test.local", 0, "f")
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await closest(client, alice, "not-a-room", 0, "f")
    assert status == 400 and body["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON"), body
    resp = await client.get(f"{V1}/rooms/!unknown:test.local/timestamp_to_event",
                            params={"ts": "0", "dir": "f"})
    assert_error(resp.status, await resp.json(), 401, "M_MISSING_TOKEN")
