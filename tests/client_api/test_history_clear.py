"""The "clearing my history" extension (DESIGN.md, org.ktchat.history): a user hides a room's
events up to a point from themselves alone — in /messages, /context, /event, /sync (every
device, new ones too) and search — while everyone else keeps the room's history."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from homeserver.app import build_app
from tests.client_api.test_friends import befriend
from tests.client_api.test_sync import joined, leave, limit_filter, sync, timeline_ids
from tests.client_api.test_sync_fanout import (
    second_device,
    services,  # noqa: F401
)
from tests.conftest import bearer
from tests.helpers.harness import Harness
from tests.helpers.room_api import (
    User,
    api,
    assert_error,
    create_room,
    ids,
    join,
    messages,
    new_user,
    send_text,
)

HISTORY = "/_matrix/client/unstable/org.ktchat.history"
WORD = "zanzibar"


# -- helpers ----------------------------------------------------------------------------------

async def clear_raw(client: TestClient, user: User | None, room_id: str, body: Any = None,
                    *, data: str | None = None) -> tuple[int, Any]:
    """POST .../rooms/{roomId}/clear; ``body`` as JSON (None: no body), or raw ``data``."""
    kwargs: dict[str, Any] = {"data": data} if data is not None else (
        {"json": body} if body is not None else {})
    resp = await client.post(f"{HISTORY}/rooms/{room_id}/clear",
                             headers=bearer(user.token) if user else None, **kwargs)
    return resp.status, await resp.json()


async def clear(client: TestClient, user: User, room_id: str,
                up_to: str | None = None) -> None:
    status, body = await clear_raw(client, user, room_id,
                                   {"up_to_event_id": up_to} if up_to else {})
    assert (status, body) == (200, {})


async def visible_ids(client: TestClient, user: User, room_id: str, direction: str = "b",
                      **query: Any) -> list[str]:
    """The IDs /messages gives the user in one big page (oldest first)."""
    status, page = await messages(client, user, room_id, dir=direction, limit=100, **query)
    assert status == 200, page
    assert "end" not in page, page
    found = ids(page["chunk"])
    return found[::-1] if direction == "b" else found


async def context(client: TestClient, user: User, room_id: str, event_id: str
                  ) -> tuple[int, Any]:
    return await api(client, "GET", f"/rooms/{room_id}/context/{event_id}", user,
                     query={"limit": "20"})


async def event(client: TestClient, user: User, room_id: str, event_id: str) -> int:
    status, body = await api(client, "GET", f"/rooms/{room_id}/event/{event_id}", user)
    if status != 200:
        assert_error(status, body, 404, "M_NOT_FOUND")
    return status


async def search_ids(client: TestClient, user: User, term: str = WORD) -> list[str]:
    body = {"search_categories": {"room_events": {
        "search_term": term, "event_context": {"before_limit": 5, "after_limit": 5}}}}
    status, res = await api(client, "POST", "/search", user, body)
    assert status == 200, res
    results = res["search_categories"]["room_events"]["results"]
    return [r["result"]["event_id"] for r in results]


async def search_context_ids(client: TestClient, user: User, term: str = WORD) -> set[str]:
    """Every event ID a search shows, its results' context included."""
    body = {"search_categories": {"room_events": {
        "search_term": term, "event_context": {"before_limit": 5, "after_limit": 5}}}}
    status, res = await api(client, "POST", "/search", user, body)
    assert status == 200, res
    out: set[str] = set()
    for r in res["search_categories"]["room_events"]["results"]:
        out.add(r["result"]["event_id"])
        out |= set(ids(r["context"]["events_before"]))
        out |= set(ids(r["context"]["events_after"]))
    return out


def state_of(room: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """A synced room's state: its state section, then its timeline's state events."""
    out = {(e["type"], e["state_key"]): e for e in room["state"]["events"]}
    out.update({(e["type"], e["state_key"]): e for e in room["timeline"]["events"]
                if "state_key" in e})
    return out


async def send_many(client: TestClient, user: User, room_id: str, *texts: str) -> list[str]:
    return [await send_text(client, user, room_id, t) for t in texts]


# -- clearing everything ----------------------------------------------------------------------

async def test_clear_all_hides_it_from_me_and_not_from_my_friend(
        client: TestClient, alice: User, bob: User) -> None:
    room = await befriend(client, alice, bob)
    old = await send_many(client, alice, room, f"{WORD} one", f"{WORD} two")
    old += await send_many(client, bob, room, f"{WORD} three", "four")
    before_all = await visible_ids(client, alice, room)
    assert set(old) <= set(before_all)
    # Tokens from before the clear: the middle of the room, both ways.
    status, page = await messages(client, alice, room, dir="b", limit=2)
    assert status == 200 and "end" in page, page
    back_token = page["end"]
    status, page = await messages(client, alice, room, dir="f", limit=3)
    assert status == 200 and "end" in page, page
    forward_token = page["end"]
    bob_sync = await sync(client, bob)

    await clear(client, alice, room)

    # Nothing of the room's history is left for alice...
    assert await visible_ids(client, alice, room, "b") == []
    assert await visible_ids(client, alice, room, "f") == []
    assert await visible_ids(client, alice, room, "b", **{"from": back_token}) == []
    assert await visible_ids(client, alice, room, "f", **{"from": forward_token}) == []
    for event_id in [before_all[0], *old]:  # the room's creation, and the messages
        status, body = await context(client, alice, room, event_id)
        assert_error(status, body, 404, "M_NOT_FOUND")
        assert await event(client, alice, room, event_id) == 404
    assert await search_ids(client, alice) == []

    # ...and all of it for bob, everywhere.
    assert await visible_ids(client, bob, room) == before_all
    for event_id in old:
        status, body = await context(client, bob, room, event_id)
        assert status == 200, body
        assert await event(client, bob, room, event_id) == 200
    assert set(await search_ids(client, bob)) == set(old[:3])
    assert set(old) <= set(timeline_ids(joined(await sync(client, bob), room)))
    # bob's incremental sync: the clear is nothing new to him.
    body = await sync(client, bob, since=bob_sync["next_batch"], timeout_ms=0)
    assert room not in body["rooms"]["join"]

    # New messages show for both, everywhere.
    new = [await send_text(client, bob, room, f"{WORD} after"),
           await send_text(client, alice, room, "mine after")]
    assert await visible_ids(client, alice, room, "b") == new
    assert await visible_ids(client, alice, room, "f") == new
    assert await visible_ids(client, alice, room, "f", **{"from": forward_token}) == new
    assert await visible_ids(client, bob, room) == before_all + new
    status, body = await context(client, alice, room, new[0])
    assert status == 200, body
    assert ids(body["events_before"]) == [] and ids(body["events_after"]) == new[1:]
    assert await event(client, alice, room, new[1]) == 200
    assert await search_ids(client, alice) == [new[0]]
    # The results' context (events around them) leaves the cleared events out too.
    shown = await search_context_ids(client, alice)
    assert set(new) <= shown and not shown & set(before_all), shown
    assert set(old) <= await search_context_ids(client, bob)
    assert set(await search_ids(client, bob)) == set(old[:3]) | {new[0]}


async def test_sync_after_clear_all_same_and_new_device(client: TestClient, alice: User,
                                                        bob: User) -> None:
    room = await create_room(client, alice, preset="public_chat", name="Garden",
                             topic="Roses")
    await join(client, bob, room)
    old = await send_many(client, alice, room, "a1", "a2")
    old += await send_many(client, bob, room, "b1")
    first = await sync(client, alice)
    hidden = set(timeline_ids(joined(first, room)))
    assert set(old) <= hidden
    status, page = await messages(client, alice, room, dir="f", limit=100)
    hidden |= set(ids(page["chunk"]))

    await clear(client, alice, room)

    new_device = await second_device(client, alice)
    for user in (alice, new_device):
        for sync_filter in (None, limit_filter(2), limit_filter(50)):
            body = await sync(client, user, sync_filter=sync_filter)
            synced = joined(body, room)
            assert not set(timeline_ids(synced)) & hidden, (sync_filter, synced)
            # The room is still there, with its state: name, topic and members.
            state = state_of(synced)
            assert state[("m.room.name", "")]["content"]["name"] == "Garden", synced
            assert state[("m.room.topic", "")]["content"]["topic"] == "Roses", synced
            for member in (alice, bob):
                assert state[("m.room.member", member.user_id)]["content"][
                    "membership"] == "join", synced
            # prev_batch does not lead back into what was cleared.
            status, page = await messages(client, user, room, dir="b", limit=100,
                                          **{"from": synced["timeline"]["prev_batch"]})
            assert status == 200 and not set(ids(page["chunk"])) & hidden, page

    # Incremental sync from before the clear, on the old device: the new events come as
    # usual; the new device's incremental sync too.
    new_sync = await sync(client, new_device)
    new = [await send_text(client, bob, room, "b2"), await send_text(client, alice, room, "a3")]
    for user, since in ((alice, first["next_batch"]), (new_device, new_sync["next_batch"])):
        synced = joined(await sync(client, user, since=since, timeout_ms=0), room)
        assert timeline_ids(synced) == new
    # A state change the client had not seen yet, then cleared: an incremental sync from
    # before it still brings the room's current state (not the cleared events).
    since = (await sync(client, alice))["next_batch"]
    status, body = await api(client, "PUT", f"/rooms/{room}/state/m.room.name", alice,
                             {"name": "Orchard"})
    assert status == 200, body
    renamed = body["event_id"]
    await send_text(client, bob, room, "b3")
    await clear(client, alice, room)
    synced = joined(await sync(client, alice, since=since, timeout_ms=0), room)
    assert not set(timeline_ids(synced)) & {renamed}, synced
    assert state_of(synced)[("m.room.name", "")]["content"]["name"] == "Orchard", synced
    # The other member's sync is untouched.
    bob_room = joined(await sync(client, bob, sync_filter=limit_filter(50)), room)
    assert set(old) <= set(timeline_ids(bob_room))


# -- clearing up to a point -------------------------------------------------------------------

async def test_clear_up_to_an_event_and_only_forward(client: TestClient, alice: User,
                                                     bob: User) -> None:
    room = await befriend(client, alice, bob)
    m = await send_many(client, alice, room, *(f"{WORD} {i}" for i in range(1, 6)))
    everything = await visible_ids(client, alice, room)

    await clear(client, alice, room, up_to=m[2])
    kept = m[3:]
    hidden = everything[:everything.index(m[2]) + 1]
    assert await visible_ids(client, alice, room, "b") == kept
    assert await visible_ids(client, alice, room, "f") == kept
    for event_id in hidden:
        assert await event(client, alice, room, event_id) == 404
        status, body = await context(client, alice, room, event_id)
        assert_error(status, body, 404, "M_NOT_FOUND")
    for event_id in kept:
        assert await event(client, alice, room, event_id) == 200
    status, body = await context(client, alice, room, m[3])
    assert status == 200, body
    assert ids(body["events_before"]) == [] and ids(body["events_after"]) == [m[4]]
    assert sorted(await search_ids(client, alice)) == sorted(kept)
    synced = joined(await sync(client, alice, sync_filter=limit_filter(50)), room)
    assert timeline_ids(synced) == kept
    assert await visible_ids(client, bob, room) == everything
    # Per room: alice's other rooms are untouched.
    other = await create_room(client, alice)
    in_other = await send_text(client, alice, other, f"{WORD} elsewhere")
    assert in_other in await visible_ids(client, alice, other)
    assert in_other in await search_ids(client, alice)

    # Clearing up to an earlier point later changes nothing.
    await clear(client, alice, room, up_to=m[0])
    await clear(client, alice, room, up_to=everything[0])
    assert await visible_ids(client, alice, room) == kept
    assert await event(client, alice, room, m[2]) == 404
    synced = joined(await sync(client, alice, sync_filter=limit_filter(50)), room)
    assert timeline_ids(synced) == kept
    assert sorted(await search_ids(client, alice)) == sorted([*kept, in_other])

    # Clearing the same point again is fine too; a later point moves it on.
    await clear(client, alice, room, up_to=m[2])
    await clear(client, alice, room, up_to=m[3])
    assert await visible_ids(client, alice, room) == [m[4]]

    # New messages after it show for both; clearing everything (no body) hides them all.
    new = await send_text(client, bob, room, "later")
    assert await visible_ids(client, alice, room) == [m[4], new]
    assert await visible_ids(client, bob, room) == [*everything, new]
    status, body = await clear_raw(client, alice, room)
    assert (status, body) == (200, {})
    assert await visible_ids(client, alice, room) == []
    assert await visible_ids(client, bob, room) == [*everything, new]


# -- who may clear ----------------------------------------------------------------------------

async def test_advertised_and_errors(client: TestClient, alice: User, bob: User,
                                     carol: User) -> None:
    resp = await client.get("/_matrix/client/versions")
    assert resp.status == 200
    assert (await resp.json())["unstable_features"]["org.ktchat.history"] is True

    room = await befriend(client, alice, bob)
    mine = await send_text(client, alice, room, "hello")
    other = await create_room(client, carol)
    elsewhere = await send_text(client, carol, other, "elsewhere")

    # Not a member, or no such room.
    status, body = await clear_raw(client, carol, room, {})
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await clear_raw(client, carol, room, {"up_to_event_id": mine})
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await clear_raw(client, alice, "!nosuchroom:test.local", {})
    assert_error(status, body, 403, "M_FORBIDDEN")
    # An event that is not in the room.
    for event_id in (elsewhere, "$nosuchevent", "$nosuchevent:test.local"):
        status, body = await clear_raw(client, alice, room, {"up_to_event_id": event_id})
        assert_error(status, body, 404, "M_NOT_FOUND")
    # Bad bodies.
    status, body = await clear_raw(client, alice, room, data="{not json")
    assert_error(status, body, 400, "M_NOT_JSON")
    for bad in ({"up_to_event_id": 5}, {"up_to_event_id": ["$x"]},
                {"up_to_event_id": {"id": "$x"}}):
        status, body = await clear_raw(client, alice, room, bad)
        assert_error(status, body, 400, "M_BAD_JSON")
    status, body = await clear_raw(client, alice, room, data="[]")
    assert status == 400 and body["errcode"] in ("M_NOT_JSON", "M_BAD_JSON"), body
    # No or a bad access token.
    status, body = await clear_raw(client, None, room, {})
    assert_error(status, body, 401, "M_MISSING_TOKEN")
    status, body = await clear_raw(client, User(alice.user_id, "nope", "X"), room, {})
    assert_error(status, body, 401, "M_UNKNOWN_TOKEN")

    # Never joined: invited, banned, or an invite rejected (a "leave" without a join).
    private = await create_room(client, carol, preset="private_chat")
    await send_text(client, carol, private, "secret")
    for path, user in (("invite", alice), ("ban", bob)):
        status, body = await api(client, "POST", f"/rooms/{private}/{path}", carol,
                                 {"user_id": user.user_id})
        assert status == 200, body
    status, body = await clear_raw(client, alice, private, {})
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await clear_raw(client, bob, private, {})
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await api(client, "POST", f"/rooms/{private}/leave", alice, {})
    assert status == 200, body
    status, body = await clear_raw(client, alice, private, {})
    assert_error(status, body, 403, "M_FORBIDDEN")

    # None of it changed anything.
    assert mine in await visible_ids(client, alice, room)
    assert mine in await visible_ids(client, bob, room)
    assert elsewhere in await visible_ids(client, carol, other)


async def test_left_user_may_clear_until_forgotten(client: TestClient, alice: User,
                                                   bob: User) -> None:
    room = await create_room(client, alice, preset="public_chat", name="Porch")
    await join(client, bob, room)
    said = await send_many(client, alice, room, "one", "two", "three")
    await leave(client, bob, room)
    after_leave = await send_text(client, alice, room, "after bob left")
    seen = await visible_ids(client, bob, room)
    assert set(said) <= set(seen) and after_leave not in seen

    # A member who left (and did not forget the room) may clear it.
    await clear(client, bob, room, up_to=said[1])
    assert await visible_ids(client, bob, room) == seen[seen.index(said[1]) + 1:]
    assert await event(client, bob, room, said[0]) == 404
    assert await event(client, bob, room, said[2]) == 200
    await clear(client, bob, room)
    assert await visible_ids(client, bob, room) == []
    assert set(said) | {after_leave} <= set(await visible_ids(client, alice, room))
    # The left room in /sync (include_leave): no cleared events, its state still there.
    for limit in (None, 50):
        room_filter: dict[str, Any] = {"include_leave": True}
        if limit is not None:
            room_filter["timeline"] = {"limit": limit}
        left = (await sync(client, bob, sync_filter={"room": room_filter}))["rooms"]["leave"]
        assert room in left, left
        assert timeline_ids(left[room]) in ([], [seen[-1]]), left[room]  # at most the leave
        state = state_of(left[room])
        assert state[("m.room.name", "")]["content"]["name"] == "Porch", left[room]
        assert ("m.room.create", "") in state, left[room]
    # An event after the leave is in the room: clearing up to it is not a 404.
    status, body = await clear_raw(client, bob, room, {"up_to_event_id": after_leave})
    assert status in (200, 403), body

    # Once forgotten, the room is not the user's to clear any more.
    status, body = await api(client, "POST", f"/rooms/{room}/forget", bob, {})
    assert status == 200, body
    status, body = await clear_raw(client, bob, room, {})
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await clear_raw(client, bob, room, {"up_to_event_id": said[0]})
    assert_error(status, body, 403, "M_FORBIDDEN")

    # Joining again makes it the user's room again: the old point still holds.
    await join(client, bob, room)
    rejoined = await send_text(client, alice, room, "welcome back")
    assert rejoined in await visible_ids(client, bob, room)
    assert not set(said) & set(await visible_ids(client, bob, room))
    await clear(client, bob, room)
    assert await visible_ids(client, bob, room) == []


# -- durability -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_the_point_survives_a_restart(kind: str, tmp_path: Path,
                                            aiohttp_client: Callable[..., Any]) -> None:
    harness = Harness(kind, tmp_path)
    try:
        services = await harness.setup()
        http = await aiohttp_client(build_app(services))
        alice, bob = await new_user(http, "alice"), await new_user(http, "bob")
        room = await befriend(http, alice, bob)
        m = await send_many(http, alice, room, "one", "two", "three")
        await clear(http, alice, room, up_to=m[1])
        everything = await visible_ids(http, bob, room)
        assert await visible_ids(http, alice, room) == [m[2]]

        services = await harness.restart()
        http = await aiohttp_client(build_app(services))
        assert await visible_ids(http, alice, room) == [m[2]]
        assert await visible_ids(http, bob, room) == everything
        assert await event(http, alice, room, m[1]) == 404
        synced = joined(await sync(http, alice, sync_filter=limit_filter(50)), room)
        assert timeline_ids(synced) == [m[2]]
        # Still only forward after the restart.
        await clear(http, alice, room, up_to=m[0])
        assert await visible_ids(http, alice, room) == [m[2]]
    finally:
        await harness.teardown()
