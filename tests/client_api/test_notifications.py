"""Push rule evaluation seen through /sync counts and GET /notifications, on SQLite and
PostgreSQL: what notifies and highlights, per-thread counts, the user's own rules, and the
evaluation catching up after a restart with events it had not evaluated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import delete

from homeserver.app import build_app
from homeserver.services.push import RECENT_PER_ROOM
from storage.schema import push_actions, push_events, push_positions
from tests.client_api.test_receipts_typing import read, send, shared_room, unread
from tests.client_api.test_sync import joined, sync
from tests.helpers.harness import Harness, harness_services
from tests.helpers.room_api import User, api, assert_error, send_text

THREADS = {"room": {"timeline": {"unread_thread_notifications": True}}}


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"presence": {"enabled": False}}


services = harness_services


async def notifications(client: TestClient, user: User, **query: str) -> dict[str, Any]:
    status, body = await api(client, "GET", "/notifications", user, query=query)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def test_notifications_list_and_pages(client: TestClient, alice: User, bob: User
                                            ) -> None:
    room_id = await shared_room(client, alice, bob)
    first = await send_text(client, alice, room_id, "hello")
    mention = await send(client, alice, room_id, {
        "msgtype": "m.text", "body": "hey", "m.mentions": {"user_ids": [bob.user_id]}})
    await send_text(client, bob, room_id, "my own")  # the sender is not notified
    last = await send_text(client, alice, room_id, "bye")
    body = await notifications(client, bob)
    assert [n["event"]["event_id"] for n in body["notifications"]] == [last, mention, first]
    assert "next_token" not in body
    top = body["notifications"][1]
    assert top["room_id"] == room_id and top["read"] is False and isinstance(top["ts"], int)
    assert {"set_tweak": "highlight"} in top["actions"]
    assert top["event"]["content"]["body"] == "hey"
    highlights = await notifications(client, bob, only="highlight")
    assert [n["event"]["event_id"] for n in highlights["notifications"]] == [mention]
    page = await notifications(client, bob, limit="2")
    assert [n["event"]["event_id"] for n in page["notifications"]] == [last, mention]
    rest = await notifications(client, bob, limit="2", **{"from": page["next_token"]})
    assert [n["event"]["event_id"] for n in rest["notifications"]] == [first]
    await read(client, bob, room_id, mention)
    body = await notifications(client, bob)
    assert [n["read"] for n in body["notifications"]] == [False, True, True]
    assert [n["event"]["sender"] for n in (await notifications(client, alice))[
        "notifications"]] == [bob.user_id]
    for query in ({"only": "everything"}, {"limit": "x"}, {"from": "-1"}):
        status, answer = await api(client, "GET", "/notifications", bob, query=query)
        assert_error(status, answer, 400, answer["errcode"])
        assert answer["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON")


async def test_counts_per_thread(client: TestClient, alice: User, bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    root = await send_text(client, alice, room_id, "root")
    replies = [await send(client, alice, room_id, {
        "msgtype": "m.text", "body": f"reply {i}",
        "m.relates_to": {"rel_type": "m.thread", "event_id": root}}) for i in range(2)]
    # Without the filter's option, threads count in the room's counts.
    assert unread(await sync(client, bob), room_id) == (3, 0)
    room = joined(await sync(client, bob, sync_filter=THREADS), room_id)
    assert room["unread_notifications"] == {"notification_count": 1, "highlight_count": 0}
    assert room["unread_thread_notifications"] == {
        root: {"notification_count": 2, "highlight_count": 0}}
    # A receipt in the thread reads the thread only.
    await read(client, bob, room_id, replies[0], thread_id=root)
    room = joined(await sync(client, bob, sync_filter=THREADS), room_id)
    assert room["unread_notifications"]["notification_count"] == 1
    assert room["unread_thread_notifications"][root]["notification_count"] == 1
    # An unthreaded receipt reads everything before it.
    await read(client, bob, room_id, replies[1])
    room = joined(await sync(client, bob, sync_filter=THREADS), room_id)
    assert room["unread_notifications"]["notification_count"] == 0
    assert room["unread_thread_notifications"] == {}


async def test_the_users_own_rules_decide(client: TestClient, alice: User, bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    # Bob mutes the room, then has alice's messages highlight for him.
    status, _ = await api(client, "PUT", f"/pushrules/global/room/{room_id}", bob,
                          {"actions": []})
    assert status == 200
    await send_text(client, alice, room_id, "muted")
    assert unread(await sync(client, bob), room_id) == (0, 0)
    status, _ = await api(client, "PUT", f"/pushrules/global/room/{room_id}/enabled", bob,
                          {"enabled": False})
    status, _ = await api(client, "PUT", f"/pushrules/global/sender/{alice.user_id}", bob,
                          {"actions": ["notify", {"set_tweak": "highlight"}]})
    assert status == 200
    await send_text(client, alice, room_id, "loud")
    assert unread(await sync(client, bob), room_id) == (1, 1)
    # An override on a property, and the master switch.
    status, _ = await api(client, "PUT", "/pushrules/global/override/no_cats", bob, {
        "actions": [], "conditions": [
            {"kind": "event_property_is", "key": "content.cat", "value": True}]})
    await send(client, alice, room_id, {"msgtype": "m.text", "body": "meow", "cat": True})
    assert unread(await sync(client, bob), room_id) == (1, 1)
    status, _ = await api(client, "PUT", "/pushrules/global/override/.m.rule.master/enabled",
                          bob, {"enabled": True})
    await send_text(client, alice, room_id, "silence")
    assert unread(await sync(client, bob), room_id) == (1, 1)


async def test_room_mention_needs_permission(client: TestClient, alice: User, bob: User,
                                            carol: User) -> None:
    room_id = await shared_room(client, alice, bob, carol)
    # Bob (power 0) cannot notify the room; alice (the creator) can.
    await send(client, bob, room_id, {"msgtype": "m.text", "body": "@room hi"})
    await send(client, bob, room_id, {"msgtype": "m.text", "body": "x",
                                      "m.mentions": {"room": True}})
    assert unread(await sync(client, carol), room_id) == (2, 0)
    await send(client, alice, room_id, {"msgtype": "m.text", "body": "x",
                                        "m.mentions": {"room": True}})
    assert unread(await sync(client, carol), room_id) == (3, 1)


async def test_an_invite_notifies_the_invitee(client: TestClient, alice: User, bob: User
                                              ) -> None:
    room_id = await shared_room(client, alice)
    status, _ = await api(client, "POST", f"/rooms/{room_id}/invite", alice,
                          {"user_id": bob.user_id})
    assert status == 200
    body = await notifications(client, bob)
    assert [n["event"]["type"] for n in body["notifications"]] == ["m.room.member"]


async def test_evaluation_catches_up_after_a_restart(
        harness: Harness, client: TestClient, alice: User, bob: User,
        aiohttp_client: Callable[..., Any]) -> None:
    room_id = await shared_room(client, alice, bob)
    await send_text(client, alice, room_id, "before")
    services = harness.services
    assert services is not None
    position = services.push.position
    for i in range(3):
        await send_text(client, alice, room_id, f"message {i}")
    assert unread(await sync(client, bob), room_id) == (4, 0)
    # As if the server had died after the events' commit, before their evaluation's.
    async with services.db.engine.write() as conn:
        for table in (push_events, push_actions):
            await conn.execute(delete(table).where(table.c.stream_ordering > position))
    await services.db.push.record([], [], position, 0)
    client = await aiohttp_client(build_app(await harness.restart()))
    assert unread(await sync(client, bob), room_id) == (4, 0)
    assert len((await notifications(client, bob))["notifications"]) == 4


async def test_a_new_display_name_keeps_earlier_notifications(
        client: TestClient, alice: User, bob: User) -> None:
    room_id = await shared_room(client, alice, bob)
    first = await send_text(client, alice, room_id, "before the name change")
    status, _ = await api(client, "PUT", f"/profile/{bob.user_id}/displayname", bob,
                          {"displayname": "Robert"})
    assert status == 200
    second = await send_text(client, alice, room_id, "after")
    body = await notifications(client, bob)
    assert [n["event"]["event_id"] for n in body["notifications"]] == [second, first]
    assert unread(await sync(client, bob), room_id) == (2, 0)


async def test_counts_stay_right_as_syncs_reuse_what_they_counted(
        client: TestClient, alice: User, bob: User) -> None:
    """Counts are remembered between syncs (per user and room) and only read again for rooms
    with new notifications: every step below must still show the true counts, initial and
    incremental, through receipts, mentions, other rooms' messages and a thread."""
    room = await shared_room(client, alice, bob)
    other = await shared_room(client, alice, bob)
    first = await send_text(client, alice, room, "one")
    await send_text(client, alice, room, "two")
    body = await sync(client, bob)
    assert unread(body, room) == (2, 0) and unread(body, other) == (0, 0)
    since = body["next_batch"]
    mention = await send(client, alice, room, {
        "msgtype": "m.text", "body": "bob!", "m.mentions": {"user_ids": [bob.user_id]}})
    body = await sync(client, bob, since=since)
    assert unread(body, room) == (3, 1)
    since = body["next_batch"]
    await read(client, bob, room, first)  # a later start: the part after it
    body = await sync(client, bob, since=since)
    assert unread(body, room) == (2, 1)
    since = body["next_batch"]
    await send_text(client, alice, other, "elsewhere")
    body = await sync(client, bob, since=since)
    assert unread(body, other) == (1, 0)
    assert unread(await sync(client, bob), room) == (2, 1)  # untouched by the other room
    await read(client, bob, room, mention)
    await send(client, alice, room, {"msgtype": "m.text", "body": "in a thread",
                                     "m.relates_to": {"rel_type": "m.thread",
                                                      "event_id": mention}})
    body = await sync(client, bob, since=since)
    assert unread(body, room) == (1, 0) and unread(body, other) == (1, 0)
    room_view = joined(await sync(client, bob, sync_filter=THREADS), room)
    assert room_view["unread_notifications"] == {"notification_count": 0,
                                                 "highlight_count": 0}
    assert room_view["unread_thread_notifications"] == {
        mention: {"notification_count": 1, "highlight_count": 0}}
    await send_text(client, bob, room, "my own")  # the sender's own: nothing for them
    assert unread(await sync(client, bob), room) == (1, 0)


async def test_counts_after_more_messages_than_are_remembered(
        client: TestClient, alice: User, bob: User) -> None:
    """More notifications between two syncs than the evaluator remembers per room: the
    count is read from the database again, and is right."""
    room = await shared_room(client, alice, bob)
    await send_text(client, alice, room, "first")
    body = await sync(client, bob)
    assert unread(body, room) == (1, 0)
    for i in range(RECENT_PER_ROOM + 6):
        await send_text(client, alice, room, f"message {i}")
    body = await sync(client, bob, since=body["next_batch"])
    assert unread(body, room) == (RECENT_PER_ROOM + 7, 0)
    await send_text(client, alice, room, "one more")
    assert unread(await sync(client, bob, since=body["next_batch"]), room) == (
        RECENT_PER_ROOM + 8, 0)


async def all_pages(client: TestClient, user: User, **query: str) -> list[str]:
    """Every notification's event ID, page by page (``next_token`` until there is none)."""
    out: list[str] = []
    token: str | None = None
    while True:
        page = await notifications(client, user, **query,
                                   **({"from": token} if token is not None else {}))
        out += [n["event"]["event_id"] for n in page["notifications"]]
        token = page.get("next_token")
        if token is None:
            return out


async def test_pages_across_rooms_joins_and_invites(client: TestClient, alice: User,
                                                    bob: User, carol: User) -> None:
    first_room = await shared_room(client, alice, bob)
    late_room = await shared_room(client, alice, carol)
    early = await send_text(client, alice, late_room, "before bob joined")
    expected = [await send_text(client, alice, first_room, "a1")]
    status, _ = await api(client, "POST", f"/join/{late_room}", bob, {})
    assert status == 200
    expected.append(await send(client, carol, late_room, {
        "msgtype": "m.text", "body": "b1", "m.mentions": {"user_ids": [bob.user_id]}}))
    expected.append(await send_text(client, alice, first_room, "a2"))
    invite_room = await shared_room(client, carol)
    status, _ = await api(client, "POST", f"/rooms/{invite_room}/invite", carol,
                          {"user_id": bob.user_id})
    assert status == 200
    expected.append((await notifications(client, bob))["notifications"][0]["event"][
        "event_id"])
    expected.append(await send_text(client, carol, late_room, "b2"))
    expected.reverse()
    whole = await all_pages(client, bob)
    assert whole == expected and early not in whole
    for limit in ("1", "2", "3"):
        assert await all_pages(client, bob, limit=limit) == expected
    assert await all_pages(client, bob, limit="1", only="highlight") == [expected[3]]


async def test_events_from_before_push_existed_are_not_counted(
        harness: Harness, client: TestClient, alice: User, bob: User,
        aiohttp_client: Callable[..., Any]) -> None:
    """A database upgraded from before the push tables (no evaluation position, no rows):
    evaluation starts at the head, as in Synapse, which never backfilled push actions."""
    room_id = await shared_room(client, alice, bob)
    await send_text(client, alice, room_id, "before the upgrade")
    services = harness.services
    assert services is not None
    await services.push.wait_for(services.push.head)
    async with services.db.engine.write() as conn:
        for table in (push_events, push_actions, push_positions):
            await conn.execute(delete(table))
    client = await aiohttp_client(build_app(await harness.restart()))
    assert unread(await sync(client, bob), room_id) == (0, 0)
    after = await send_text(client, alice, room_id, "after the upgrade")
    assert unread(await sync(client, bob), room_id) == (1, 0)
    assert [n["event"]["event_id"] for n in (await notifications(client, bob))[
        "notifications"]] == [after]
