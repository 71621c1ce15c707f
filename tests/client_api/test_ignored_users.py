"""Ignoring users (``m.ignored_user_list``): their messages leave the ignorer's /sync
timelines and /messages, their invites are not shown, and un-ignoring brings them back, on
SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from homeserver.app import build_app
from tests.client_api.test_sync import (
    invite,
    joined,
    limit_filter,
    put_account_data,
    sync,
    timeline_bodies,
)
from tests.helpers.harness import Harness, harness_services
from tests.helpers.room_api import (
    User,
    api,
    assert_error,
    create_room,
    join,
    messages,
    put_state,
    send_text,
)

IGNORED = "m.ignored_user_list"


services = harness_services





async def ignore(client: TestClient, user: User, *others: User) -> None:
    await put_account_data(client, user, IGNORED,
                           {"ignored_users": {o.user_id: {} for o in others}})


async def shared_room(client: TestClient, alice: User, *others: User) -> str:
    room_id = await create_room(client, alice, preset="public_chat")
    for other in others:
        await join(client, other, room_id)
    return room_id


def message_bodies(chunk: list[dict[str, Any]]) -> list[str]:
    return [e["content"]["body"] for e in chunk if e["type"] == "m.room.message"]


@pytest.mark.parametrize("content", [{"ignored_users": []}, {"ignored_users": "@bob:x"},
                                     {"ignored_users": None}])
async def test_shape_is_checked(client: TestClient, alice: User, content: Any) -> None:
    status, body = await api(client, "PUT", f"/user/{alice.user_id}/account_data/{IGNORED}",
                             alice, content)
    assert_error(status, body, 400, "M_BAD_JSON")
    status, body = await api(client, "GET", f"/user/{alice.user_id}/account_data/{IGNORED}",
                             alice)
    assert_error(status, body, 404, "M_NOT_FOUND")
    # Without the key (nobody ignored) or with an object, it is stored.
    for good in ({}, {"ignored_users": {}}):
        status, body = await api(client, "PUT",
                                 f"/user/{alice.user_id}/account_data/{IGNORED}", alice, good)
        assert (status, body) == (200, {})
    # Per-room account data of that type is no ignore list, and not checked.
    room_id = await create_room(client, alice)
    await put_account_data(client, alice, IGNORED, {"ignored_users": []}, room_id=room_id)


async def test_sync_and_messages_hide_ignored_users(client: TestClient, alice: User,
                                                    bob: User, carol: User) -> None:
    room_id = await shared_room(client, alice, bob, carol)
    await send_text(client, bob, room_id, "bob before")
    await ignore(client, alice, bob)
    first = await sync(client, alice)
    assert "bob before" not in timeline_bodies(joined(first, room_id))

    await send_text(client, bob, room_id, "bob 1")
    await send_text(client, carol, room_id, "carol 1")
    status, _ = await put_state(client, bob, room_id, "m.room.member",
                                {"membership": "join", "displayname": "Bobby"}, bob.user_id)
    assert status == 200
    second = await sync(client, alice, since=first["next_batch"])
    room = joined(second, room_id)
    assert timeline_bodies(room) == ["carol 1"]
    # State events of ignored users still count: the room's state is the room's.
    assert "m.room.member" in [e["type"] for e in room["timeline"]["events"]]
    # Other users see everything.
    status, page = await messages(client, carol, room_id, limit=50)
    assert {"bob before", "bob 1", "carol 1"} <= set(message_bodies(page["chunk"]))

    status, page = await messages(client, alice, room_id, limit=50)
    assert status == 200, page
    assert message_bodies(page["chunk"]) == ["carol 1"]
    status, page = await messages(client, alice, room_id, dir="f", limit=50)
    assert message_bodies(page["chunk"]) == ["carol 1"]
    # A page that is all ignored users' events is skipped past.
    for i in range(5):
        await send_text(client, bob, room_id, f"bob flood {i}")
    status, page = await messages(client, alice, room_id, limit=3)
    assert message_bodies(page["chunk"]) == ["carol 1"]

    # A room whose only news is an ignored user's messages does not show up at all.
    third = await sync(client, alice, since=second["next_batch"])
    await send_text(client, bob, room_id, "bob alone")
    fourth = await sync(client, alice, since=third["next_batch"], timeout_ms=200)
    assert room_id not in fourth["rooms"]["join"]


async def test_context_leaves_ignored_users_out(client: TestClient, alice: User, bob: User,
                                                carol: User) -> None:
    room_id = await shared_room(client, alice, bob, carol)
    await send_text(client, carol, room_id, "c1")
    b1 = await send_text(client, bob, room_id, "b1")
    middle = await send_text(client, carol, room_id, "c2")
    await send_text(client, bob, room_id, "b2")
    await send_text(client, carol, room_id, "c3")
    await ignore(client, alice, bob)
    status, body = await api(client, "GET", f"/rooms/{room_id}/context/{middle}", alice,
                             query={"limit": "10"})
    assert status == 200, body
    assert message_bodies(body["events_before"]) == ["c1"]
    assert message_bodies(body["events_after"]) == ["c3"]
    # An ignored user's event itself is not found for the ignorer (as Synapse's
    # filter_events_for_client), neither alone nor as the centre of a context; others see it.
    for path in (f"/rooms/{room_id}/event/{b1}", f"/rooms/{room_id}/context/{b1}"):
        status, body = await api(client, "GET", path, alice)
        assert_error(status, body, 404, "M_NOT_FOUND")
        status, body = await api(client, "GET", path, carol)
        assert status == 200, body


async def test_invites_from_ignored_users_are_not_shown(client: TestClient, alice: User,
                                                        bob: User, carol: User) -> None:
    await ignore(client, alice, bob)
    first = await sync(client, alice)
    from_bob = await create_room(client, bob)
    await invite(client, bob, from_bob, alice)
    from_carol = await create_room(client, carol)
    await invite(client, carol, from_carol, alice)
    second = await sync(client, alice, since=first["next_batch"])
    assert list(second["rooms"]["invite"]) == [from_carol]
    initial = await sync(client, alice)
    assert list(initial["rooms"]["invite"]) == [from_carol]


async def test_unignoring_brings_them_back(client: TestClient, alice: User, bob: User,
                                           carol: User) -> None:
    room_id = await shared_room(client, alice, bob, carol)
    await ignore(client, alice, bob)
    first = await sync(client, alice, sync_filter=limit_filter(20))
    await send_text(client, bob, room_id, "while ignored")
    await send_text(client, carol, room_id, "carol")
    second = await sync(client, alice, since=first["next_batch"],
                        sync_filter=limit_filter(20))
    assert timeline_bodies(joined(second, room_id)) == ["carol"]

    await ignore(client, alice)  # nobody
    third = await sync(client, alice, since=second["next_batch"],
                       sync_filter=limit_filter(20))
    assert any(e["type"] == IGNORED for e in third["account_data"]["events"])
    # The room comes again, with what was hidden.
    assert timeline_bodies(joined(third, room_id)) == ["while ignored", "carol"]
    await send_text(client, bob, room_id, "after")
    fourth = await sync(client, alice, since=third["next_batch"],
                        sync_filter=limit_filter(20))
    assert timeline_bodies(joined(fourth, room_id)) == ["after"]
    status, page = await messages(client, alice, room_id, limit=50)
    assert (status, message_bodies(page["chunk"])) == (200, ["after", "carol", "while ignored"])


async def test_ignore_list_survives_a_restart(harness: Harness, client: TestClient,
                                              alice: User, bob: User, carol: User,
                                              aiohttp_client: Callable[..., Any]) -> None:
    room_id = await shared_room(client, alice, bob, carol)
    await send_text(client, bob, room_id, "bob")
    await send_text(client, carol, room_id, "carol")
    await ignore(client, alice, bob)
    client = await aiohttp_client(build_app(await harness.restart()))
    status, page = await messages(client, alice, room_id, limit=50)
    assert status == 200, page
    assert message_bodies(page["chunk"]) == ["carol"]


async def test_ignored_users_messages_do_not_notify(client: TestClient, alice: User,
                                                   bob: User, carol: User) -> None:
    """Push rules give the ignorer nothing for an ignored user's messages (as Synapse): no
    unread count, no notification; others' still count, and bob's count for the others."""
    room_id = await shared_room(client, alice, bob, carol)
    await ignore(client, alice, bob)
    for i in range(3):
        await send_text(client, bob, room_id, f"bob {i}")
    await send_text(client, carol, room_id, f"hey {alice.user_id}")  # a mention
    room = joined(await sync(client, alice), room_id)
    assert room["unread_notifications"] == {"notification_count": 1, "highlight_count": 1}
    status, body = await api(client, "GET", "/notifications", alice)
    assert status == 200, body
    assert [n["event"]["sender"] for n in body["notifications"]] == [carol.user_id]
    assert joined(await sync(client, carol), room_id)["unread_notifications"][
        "notification_count"] == 3
    # Un-ignored, bob notifies again.
    await put_account_data(client, alice, IGNORED, {"ignored_users": {}})
    await send_text(client, bob, room_id, "bob again")
    room = joined(await sync(client, alice), room_id)
    assert room["unread_notifications"]["notification_count"] == 2


async def test_a_changed_list_sends_again_only_the_rooms_it_concerns(
        harness: Harness, client: TestClient, alice: User, bob: User, carol: User,
        aiohttp_client: Callable[..., Any]) -> None:
    with_bob = await shared_room(client, alice, bob)
    without_bob = await shared_room(client, alice, carol)
    await ignore(client, alice, bob)
    await send_text(client, bob, with_bob, "while ignored")
    await send_text(client, carol, without_bob, "carol")
    first = await sync(client, alice, sync_filter=limit_filter(20))
    assert timeline_bodies(joined(first, with_bob)) == []
    await ignore(client, alice)  # nobody
    second = await sync(client, alice, since=first["next_batch"],
                        sync_filter=limit_filter(20))
    # Bob's room comes again whole, with what was hidden; carol's room has nothing new.
    assert timeline_bodies(joined(second, with_bob)) == ["while ignored"]
    assert without_bob not in second["rooms"]["join"]
    # Ignoring carol: her room only.
    await ignore(client, alice, carol)
    third = await sync(client, alice, since=second["next_batch"],
                       sync_filter=limit_filter(20))
    assert list(third["rooms"]["join"]) == [without_bob]
    assert timeline_bodies(joined(third, without_bob)) == []
    # After a restart the server no longer knows whom a change concerned: every room.
    client = await aiohttp_client(build_app(await harness.restart()))
    await ignore(client, alice)
    fourth = await sync(client, alice, since=third["next_batch"],
                        sync_filter=limit_filter(20))
    assert set(fourth["rooms"]["join"]) == {with_bob, without_bob}
    assert timeline_bodies(joined(fourth, without_bob)) == ["carol"]
