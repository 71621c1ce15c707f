"""Rotation of push results (homeserver/services/push_rotation.py), on SQLite and PostgreSQL:
old non-highlight rows are counted into summaries and deleted, and /sync's counts (per room
and per thread) and GET /notifications stay right before and after, as users read on."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select, update

from homeserver.services.container import Services
from homeserver.services.push_rotation import PushRotation
from storage.schema import events, push_actions, push_events, push_summaries
from tests.client_api.test_notifications import THREADS, notifications
from tests.client_api.test_receipts_typing import read, send, shared_room, unread
from tests.client_api.test_sync import joined, sync
from tests.helpers.harness import Harness, harness_services
from tests.helpers.room_api import User, api, send_text


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"presence": {"enabled": False}}


services = harness_services


async def rows(services: Services) -> tuple[int, int, int]:
    """(push_events, push_actions, push_summaries) row counts."""
    async with services.db.engine.read() as conn:
        return tuple([int((await conn.execute(select(func.count()).select_from(t))).scalar()
                           or 0) for t in (push_events, push_actions, push_summaries)])  # type: ignore[return-value]


async def counts(client: TestClient, user: User, room_id: str
                 ) -> tuple[tuple[int, int], dict[str, Any], dict[str, Any]]:
    """(room counts, the same with threads apart, the threads' counts)."""
    plain = unread(await sync(client, user), room_id)
    room = joined(await sync(client, user, sync_filter=THREADS), room_id)
    return plain, room["unread_notifications"], room.get("unread_thread_notifications", {})


async def rotate(services: Services) -> int:
    await services.push.wait_for(services.push.head)
    return await services.push_rotation.rotate(up_to=services.push.position)


async def test_counts_survive_rotation(harness: Harness, client: TestClient, alice: User,
                                       bob: User, carol: User) -> None:
    services = harness.services
    assert services is not None
    room_id = await shared_room(client, alice, bob, carol)
    first = await send_text(client, alice, room_id, "one")
    await send_text(client, alice, room_id, "two")
    mention = await send(client, alice, room_id, {
        "msgtype": "m.text", "body": "hey", "m.mentions": {"user_ids": [bob.user_id]}})
    root = await send_text(client, alice, room_id, "root")
    replies = [await send(client, alice, room_id, {
        "msgtype": "m.text", "body": f"reply {i}",
        "m.relates_to": {"rel_type": "m.thread", "event_id": root}}) for i in range(3)]
    await send_text(client, carol, room_id, "carol's own")
    await read(client, bob, room_id, first)
    await read(client, carol, room_id, replies[0], thread_id=root)
    before = {u.user_id: await counts(client, u, room_id) for u in (bob, carol)}
    # two, the mention, root, three replies and carol's
    assert before[bob.user_id][0] == (7, 1)
    assert before[carol.user_id][0] == (7, 0)
    assert before[carol.user_id][2] == {root: {"notification_count": 2,
                                               "highlight_count": 0}}
    listed = [n["event"]["event_id"] for n in (await notifications(client, bob))[
        "notifications"]]
    assert len(listed) == 8 and listed[-1] == first

    assert await rotate(services) > 0
    room_wide, own, summaries = await rows(services)
    assert room_wide == 0 and own == 1 and summaries > 0  # bob's mention stays
    for user in (bob, carol):
        assert await counts(client, user, room_id) == before[user.user_id]
    # Only the highlight is still listed (as in Synapse: old non-highlights are gone).
    assert [n["event"]["event_id"] for n in (await notifications(client, bob))[
        "notifications"]] == [mention]

    # New events add to the summaries; a second rotation adds them in too.
    await send_text(client, alice, room_id, "three")
    reply = await send(client, alice, room_id, {
        "msgtype": "m.text", "body": "reply 3",
        "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    after_new = await counts(client, carol, room_id)
    assert after_new[0] == (9, 0)
    assert after_new[2][root]["notification_count"] == 3
    await rotate(services)
    assert await counts(client, carol, room_id) == after_new
    assert (await counts(client, bob, room_id))[0] == (9, 1)

    # Reading on: what is read no longer counts; what comes after does.
    last = await send_text(client, alice, room_id, "four")
    await read(client, bob, room_id, last)
    assert (await counts(client, bob, room_id))[0] == (0, 0)
    five = await send_text(client, alice, room_id, "five")
    await rotate(services)
    assert (await counts(client, bob, room_id))[0] == (1, 0)
    assert (await counts(client, carol, room_id))[0] == (11, 0)
    # A thread receipt reads the thread only, also for what rotation counted.
    await read(client, carol, room_id, reply, thread_id=root)
    plain, main, threads = await counts(client, carol, room_id)
    assert plain == (11, 0) and main["notification_count"] == 7 and threads == {}
    await read(client, carol, room_id, five)
    assert (await counts(client, carol, room_id))[0] == (0, 0)


async def test_a_verdict_on_a_room_highlight_survives_rotation(
        harness: Harness, client: TestClient, alice: User, bob: User, carol: User) -> None:
    """A room mention highlights for everyone (a row that stays); bob's own rule makes it a
    plain notification for him (his verdict, rotated into his summary)."""
    services = harness.services
    assert services is not None
    room_id = await shared_room(client, alice, bob, carol)
    status, _ = await api(client, "PUT", "/pushrules/global/override/no_room_highlights", bob, {
        "actions": ["notify"], "conditions": [
            {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True}]})
    assert status == 200
    await send(client, alice, room_id, {"msgtype": "m.text", "body": "all",
                                        "m.mentions": {"room": True}})
    await send_text(client, alice, room_id, "plain")
    assert unread(await sync(client, bob), room_id) == (2, 0)
    assert unread(await sync(client, carol), room_id) == (2, 1)
    await rotate(services)
    assert unread(await sync(client, bob), room_id) == (2, 0)
    assert unread(await sync(client, carol), room_id) == (2, 1)
    assert len((await notifications(client, carol, only="highlight"))["notifications"]) == 1


async def test_rotation_waits_for_the_horizon_and_goes_in_batches(
        harness: Harness, client: TestClient, alice: User, bob: User) -> None:
    services = harness.services
    assert services is not None
    room_id = await shared_room(client, alice, bob)
    for i in range(5):
        await send_text(client, alice, room_id, f"m{i}")
    await services.push.wait_for(services.push.head)
    # Nothing is a day old: the background job's horizon leaves everything.
    assert await services.push_rotation.rotate() == 0
    assert (await rows(services))[0] == 5
    # Small batches, each its own transaction, to the same result.
    small = PushRotation(services.db.push_rotation, services.db.push, services.db.events,
                         services.push, services.clock, services.config.server_name, batch=2)
    assert await small.rotate(up_to=services.push.position) == 5
    assert await services.push_rotation.rotate(up_to=services.push.position) == 0
    assert unread(await sync(client, bob), room_id) == (5, 0)


async def test_the_horizon_is_a_day_by_received_time(
        harness: Harness, client: TestClient, alice: User, bob: User) -> None:
    services = harness.services
    assert services is not None
    room_id = await shared_room(client, alice, bob)
    old = [await send_text(client, alice, room_id, f"old {i}") for i in range(3)]
    new = [await send_text(client, alice, room_id, f"new {i}") for i in range(2)]
    await services.push.wait_for(services.push.head)
    last_old = await services.db.events.get_event(old[-1])
    assert last_old is not None and last_old.stream_ordering is not None
    two_days_ago = services.clock.time_ms() - 2 * 24 * 60 * 60 * 1000
    async with services.db.engine.write() as conn:
        await conn.execute(update(events).where(
            events.c.stream_ordering <= last_old.stream_ordering).values(
                received_ts=two_days_ago))
    assert await services.push_rotation.rotate() == 3
    assert await services.db.push_rotation.position() == last_old.stream_ordering
    assert (await rows(services))[0] == 2
    assert unread(await sync(client, bob), room_id) == (5, 0)
    assert [n["event"]["event_id"] for n in (await notifications(client, bob))[
        "notifications"]] == new[::-1]
