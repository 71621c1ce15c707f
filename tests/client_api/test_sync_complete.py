"""Complete syncs (the SSE stream after its first message): when more events are pending than
the timeline limit, a response ends at the limit-th event of the busiest room (``next_batch``
stops there) instead of skipping to the newest with ``limited``; the user's own membership
changes in between are read as they were at that point."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient

from homeserver.services.container import Services
from tests.client_api.test_sync import invite, leave, sync
from tests.helpers.room_api import User, create_room, join, send_text

LIMIT = 3


async def complete_syncs(services: Services, user: User, since: str) -> list[dict[str, Any]]:
    """Complete responses from ``since`` until one is empty."""
    sync_filter = await services.filters.resolve(
        user.user_id, json.dumps({"room": {"timeline": {"limit": LIMIT}}}))
    out = []
    for _ in range(50):
        body = await services.sync.sync(user.user_id, user.device_id, since=since,
                                        timeout_ms=0, full_state=False,
                                        sync_filter=sync_filter, complete=True)
        rooms, device_lists = body["rooms"], body["device_lists"]
        # (A response may carry only device lists: bob stops sharing a room with alice.)
        if not any(rooms[k] for k in ("join", "invite", "leave")) and \
                not (device_lists["changed"] or device_lists["left"]):
            return out
        out.append(body)
        since = body["next_batch"]
    raise AssertionError("complete syncs never ended")


def timeline(body: dict[str, Any], section: str, room_id: str) -> list[dict[str, Any]]:
    room = body["rooms"][section].get(room_id)
    return room["timeline"]["events"] if room else []


async def test_bursts_leave_and_join_in_order(client: TestClient, services: Services,
                                              alice: User, bob: User) -> None:
    busy = await create_room(client, alice, preset="public_chat")
    await join(client, bob, busy)
    since = (await sync(client, bob))["next_batch"]

    before_leave = [await send_text(client, alice, busy, f"before {i}") for i in range(7)]
    await leave(client, bob, busy)
    after_leave = [await send_text(client, alice, busy, f"after {i}") for i in range(4)]
    other = await create_room(client, alice, preset="private_chat")
    await invite(client, alice, other, bob)
    await join(client, bob, other)
    in_other = [await send_text(client, alice, other, f"other {i}") for i in range(5)]

    bodies = await complete_syncs(services, bob, since)
    seen_busy: list[str] = []
    seen_other: list[str] = []
    left_at = joined_other_at = None
    for n, body in enumerate(bodies):
        for section in ("join", "leave"):
            for room_id, room in body["rooms"][section].items():
                events = room["timeline"]["events"]
                assert len(events) <= LIMIT
                if room_id == busy:
                    # Every event bob could see comes once, in order, nothing limited.
                    assert room["timeline"]["limited"] is False
                    seen_busy += [e["event_id"] for e in events]
                    if section == "leave":
                        left_at = n
                elif room_id == other:
                    seen_other += [e["event_id"] for e in events
                                   if e["type"] == "m.room.message"]
                    if section == "join" and joined_other_at is None:
                        joined_other_at = n
        # While bob was still in the busy room, it is never listed as left.
        if left_at is None:
            assert busy not in body["rooms"]["leave"]
    messages = [e for e in seen_busy if e in before_leave or e in after_leave]
    assert messages == before_leave
    assert left_at is not None and joined_other_at is not None
    assert left_at <= joined_other_at
    # Nothing of the busy room after bob left it.
    assert not set(seen_busy) & set(after_leave)
    for body in bodies[left_at + 1:]:
        assert busy not in body["rooms"]["join"]
    assert seen_other == in_other


async def test_a_long_poll_still_skips_to_the_newest(client: TestClient, services: Services,
                                                     alice: User, bob: User) -> None:
    """/sync itself keeps the spec's behaviour: the newest events, ``limited``."""
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    since = (await sync(client, bob))["next_batch"]
    sent = [await send_text(client, alice, room_id, f"{i}") for i in range(LIMIT + 4)]
    body = await sync(client, bob, since=since,
                      sync_filter=json.dumps({"room": {"timeline": {"limit": LIMIT}}}))
    room = body["rooms"]["join"][room_id]
    assert room["timeline"]["limited"] is True
    assert [e["event_id"] for e in room["timeline"]["events"]] == sent[-LIMIT:]
