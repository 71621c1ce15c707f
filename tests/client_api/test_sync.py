"""/sync over real HTTP: the response shape (checked against the spec), tokens, filters, the
joined/invited/left sections, account data, long polling, and many clients syncing while many
users send."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import bearer
from tests.helpers.room_api import (
    V3,
    User,
    api,
    assert_error,
    create_room,
    join,
    messages,
    new_user,
    put_state,
    send_text,
)
from tests.helpers.spec import assert_matches_spec

# -- helpers ----------------------------------------------------------------------------------


async def sync(client: TestClient, user: User, *, since: str | None = None,
               timeout_ms: int | None = None, sync_filter: Any = None,
               full_state: bool | None = None) -> dict[str, Any]:
    """One /sync; asserts 200 and that the body fits the spec."""
    status, body = await sync_raw(client, user, since=since, timeout_ms=timeout_ms,
                                  sync_filter=sync_filter, full_state=full_state)
    assert status == 200, body
    assert_matches_spec("client-server", "GET", "/sync", 200, body)
    assert isinstance(body["next_batch"], str) and body["next_batch"]
    return body


async def sync_raw(client: TestClient, user: User | None, *, since: str | None = None,
                   timeout_ms: int | None = None, sync_filter: Any = None,
                   full_state: bool | None = None) -> tuple[int, Any]:
    query: dict[str, str] = {}
    if since is not None:
        query["since"] = since
    if timeout_ms is not None:
        query["timeout"] = str(timeout_ms)
    if sync_filter is not None:
        query["filter"] = sync_filter if isinstance(sync_filter, str) \
            else json.dumps(sync_filter)
    if full_state is not None:
        query["full_state"] = "true" if full_state else "false"
    resp = await client.get(V3 + "/sync", params=query,
                            headers=bearer(user.token) if user else None)
    return resp.status, await resp.json()


def limit_filter(limit: int, **room: Any) -> dict[str, Any]:
    return {"room": {"timeline": {"limit": limit}, **room}}


def joined(body: dict[str, Any], room_id: str) -> dict[str, Any]:
    room = body["rooms"]["join"].get(room_id)
    assert room is not None, f"{room_id} not in rooms.join: {list(body['rooms']['join'])}"
    return room  # type: ignore[no-any-return]


def timeline_ids(room: dict[str, Any]) -> list[str]:
    return [e["event_id"] for e in room["timeline"]["events"]]


def timeline_bodies(room: dict[str, Any]) -> list[str]:
    return [e["content"]["body"] for e in room["timeline"]["events"]
            if e["type"] == "m.room.message"]


def all_room_ids(body: dict[str, Any]) -> set[str]:
    return {r for section in body["rooms"].values() for r in section}


def no_rooms(body: dict[str, Any]) -> bool:
    return not all_room_ids(body)


async def invite(client: TestClient, inviter: User, room_id: str, invitee: User,
                 **extra: Any) -> None:
    status, data = await api(client, "POST", f"/rooms/{room_id}/invite", inviter,
                             {"user_id": invitee.user_id, **extra})
    assert status == 200, data


async def leave(client: TestClient, user: User, room_id: str) -> None:
    status, data = await api(client, "POST", f"/rooms/{room_id}/leave", user, {})
    assert status == 200, data


async def put_account_data(client: TestClient, user: User, event_type: str,
                           content: dict[str, Any], room_id: str | None = None) -> None:
    path = f"/user/{user.user_id}/rooms/{room_id}/account_data/{event_type}" if room_id \
        else f"/user/{user.user_id}/account_data/{event_type}"
    status, data = await api(client, "PUT", path, user, content)
    assert status == 200, data


async def upload_filter(client: TestClient, user: User, body: Any) -> str:
    status, data = await api(client, "POST", f"/user/{user.user_id}/filter", user, body)
    assert status == 200, data
    assert isinstance(data["filter_id"], str)
    return str(data["filter_id"])


# -- shape, tokens, errors --------------------------------------------------------------------

async def test_initial_and_incremental_sync_match_spec(client: TestClient, alice: User,
                                                       bob: User) -> None:
    room_id = await create_room(client, alice, name="Shape", topic="t")
    await invite(client, alice, room_id, bob)
    sent = [await send_text(client, alice, room_id, f"m{i}") for i in range(3)]

    first = await sync(client, alice)
    room = joined(first, room_id)
    assert timeline_ids(room)[-3:] == sent
    assert room["timeline"]["limited"] is False or "prev_batch" in room["timeline"]
    assert {"m.joined_member_count", "m.invited_member_count"} <= set(room["summary"])
    # Events in /sync are client events without their room ID.
    for event in room["timeline"]["events"] + room["state"]["events"]:
        assert "room_id" not in event
        assert {"event_id", "sender", "type", "content", "origin_server_ts"} <= set(event)
    assert first["next_batch"]

    # Nothing new: an incremental sync has no rooms.
    quiet = await sync(client, alice, since=first["next_batch"])
    assert no_rooms(quiet)
    assert quiet["account_data"]["events"] == []

    more = [await send_text(client, alice, room_id, f"n{i}") for i in range(2)]
    second = await sync(client, alice, since=quiet["next_batch"])
    room = joined(second, room_id)
    assert timeline_ids(room) == more
    assert room["timeline"]["limited"] is False
    assert room["state"]["events"] == []
    assert second["next_batch"] != first["next_batch"]

    # The same since token twice gives the same answer (a retry after a lost response).
    again = await sync(client, alice, since=quiet["next_batch"])
    assert timeline_ids(joined(again, room_id)) == more
    assert again["next_batch"] == second["next_batch"]
    assert no_rooms(await sync(client, alice, since=second["next_batch"]))


async def test_bad_since_token(client: TestClient, alice: User) -> None:
    for token in ("garbage", "s", "s1_x", "t1-2"):
        status, body = await sync_raw(client, alice, since=token)
        assert_error(status, body, 400, "M_INVALID_PARAM")


async def test_bad_timeout_and_full_state(client: TestClient, alice: User) -> None:
    resp = await client.get(V3 + "/sync", params={"timeout": "soon"},
                            headers=bearer(alice.token))
    assert_error(resp.status, await resp.json(), 400, "M_INVALID_PARAM")
    resp = await client.get(V3 + "/sync", params={"full_state": "maybe"},
                            headers=bearer(alice.token))
    assert_error(resp.status, await resp.json(), 400, "M_INVALID_PARAM")


async def test_sync_needs_a_token(client: TestClient) -> None:
    status, body = await sync_raw(client, None)
    assert_error(status, body, 401, "M_MISSING_TOKEN")
    resp = await client.get(V3 + "/sync", headers=bearer("not-a-token"))
    assert_error(resp.status, await resp.json(), 401, "M_UNKNOWN_TOKEN")


async def test_bad_filter_json(client: TestClient, alice: User) -> None:
    status, body = await sync_raw(client, alice, sync_filter="{not json")
    assert_error(status, body, 400, "M_NOT_JSON")


async def test_inline_filter_of_wrong_shape(client: TestClient, alice: User) -> None:
    status, body = await sync_raw(client, alice,
                                  sync_filter={"room": {"timeline": {"limit": "ten"}}})
    assert_error(status, body, 400, "M_BAD_JSON")


async def test_unknown_filter_id(client: TestClient, alice: User) -> None:
    status, body = await sync_raw(client, alice, sync_filter="987654")
    assert_error(status, body, 404, "M_NOT_FOUND")


async def test_filter_upload_get_and_use(client: TestClient, alice: User, bob: User) -> None:
    definition = {"room": {"timeline": {"limit": 2}, "state": {"lazy_load_members": True}},
                  "account_data": {"not_types": ["m.push_rules"]}}
    filter_id = await upload_filter(client, alice, definition)
    status, data = await api(client, "GET", f"/user/{alice.user_id}/filter/{filter_id}", alice)
    assert status == 200, data
    assert data == definition

    # Someone else's filters are neither readable nor writable...
    status, data = await api(client, "GET", f"/user/{alice.user_id}/filter/{filter_id}", bob)
    assert_error(status, data, 403, "M_FORBIDDEN")
    status, data = await api(client, "POST", f"/user/{alice.user_id}/filter", bob, {})
    assert_error(status, data, 403, "M_FORBIDDEN")
    # ... nor usable by ID in their /sync.
    status, data = await sync_raw(client, bob, sync_filter=filter_id)
    assert_error(status, data, 404, "M_NOT_FOUND")
    status, data = await api(client, "GET", f"/user/{alice.user_id}/filter/424242", alice)
    assert_error(status, data, 404, "M_NOT_FOUND")

    room_id = await create_room(client, alice)
    sent = [await send_text(client, alice, room_id, f"m{i}") for i in range(4)]
    body = await sync(client, alice, sync_filter=filter_id)
    room = joined(body, room_id)
    assert timeline_ids(room) == sent[-2:]
    assert room["timeline"]["limited"] is True


async def test_invalid_filter_body(client: TestClient, alice: User) -> None:
    for bad in ({"room": {"timeline": {"limit": -1}}},
                {"room": {"timeline": {"types": "m.room.message"}}},
                {"room": {"include_leave": "yes"}},
                {"room": "everything"},
                {"event_format": "xml"},
                {"event_fields": [1, 2]}):
        status, data = await api(client, "POST", f"/user/{alice.user_id}/filter", alice, bad)
        assert_error(status, data, 400, "M_BAD_JSON")
    resp = await client.post(V3 + f"/user/{alice.user_id}/filter", data=b"{nope",
                             headers={**bearer(alice.token),
                                      "Content-Type": "application/json"})
    assert_error(resp.status, await resp.json(), 400, "M_NOT_JSON")


# -- joined rooms -----------------------------------------------------------------------------

async def page_back(client: TestClient, user: User, room_id: str, token: str, limit: int
                    ) -> list[dict[str, Any]]:
    """Every event before ``token``, newest first, following ``end``."""
    events: list[dict[str, Any]] = []
    for _ in range(200):
        status, page = await messages(client, user, room_id, dir="b", limit=limit,
                                      **{"from": token})
        assert status == 200, page
        events += page["chunk"]
        if "end" not in page:
            return events
        token = page["end"]
    raise AssertionError("pagination never ended")


async def test_timeline_limited_and_prev_batch(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    sent = [await send_text(client, alice, room_id, f"m{i}") for i in range(15)]

    body = await sync(client, alice, sync_filter=limit_filter(5))
    room = joined(body, room_id)
    assert timeline_ids(room) == sent[-5:]
    assert room["timeline"]["limited"] is True
    prev_batch = room["timeline"]["prev_batch"]

    # /messages backwards from prev_batch: the events just before the timeline, no overlap.
    status, page = await messages(client, alice, room_id, dir="b", limit=3,
                                  **{"from": prev_batch})
    assert status == 200, page
    assert [e["event_id"] for e in page["chunk"]] == list(reversed(sent[7:10]))
    # All the way back: with the timeline, exactly the room's history, in order.
    before = page_back(client, alice, room_id, prev_batch, 4)
    history = list(reversed(await before)) + room["timeline"]["events"]
    status, everything = await messages(client, alice, room_id, dir="f", limit=1000)
    assert status == 200
    assert [e["event_id"] for e in history] == [e["event_id"] for e in everything["chunk"]]

    # An incremental sync with more new events than the limit: limited again, and the gap
    # between the last sync and the timeline is reachable from prev_batch.
    more = [await send_text(client, alice, room_id, f"n{i}") for i in range(8)]
    body = await sync(client, alice, since=body["next_batch"], sync_filter=limit_filter(5))
    room = joined(body, room_id)
    assert timeline_ids(room) == more[-5:]
    assert room["timeline"]["limited"] is True
    status, page = await messages(client, alice, room_id, dir="b", limit=3,
                                  **{"from": room["timeline"]["prev_batch"]})
    assert status == 200, page
    assert [e["event_id"] for e in page["chunk"]] == list(reversed(more[:3]))

    # Exactly the limit: not limited.
    exact = [await send_text(client, alice, room_id, f"o{i}") for i in range(5)]
    body = await sync(client, alice, since=body["next_batch"], sync_filter=limit_filter(5))
    room = joined(body, room_id)
    assert timeline_ids(room) == exact
    assert room["timeline"]["limited"] is False


async def test_incremental_prev_batch_not_limited(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    body = await sync(client, alice)
    first = await send_text(client, alice, room_id, "one")
    second = await send_text(client, alice, room_id, "two")
    body = await sync(client, alice, since=body["next_batch"])
    room = joined(body, room_id)
    assert timeline_ids(room) == [first, second]
    status, page = await messages(client, alice, room_id, dir="b", limit=1,
                                  **{"from": room["timeline"]["prev_batch"]})
    assert status == 200, page
    everything = [e["event_id"] for e in (await messages(
        client, alice, room_id, dir="f", limit=1000))[1]["chunk"]]
    assert [e["event_id"] for e in page["chunk"]] == [everything[everything.index(first) - 1]]


async def test_initial_state_section(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, name="Stateful", topic="about things")
    await invite(client, alice, room_id, bob)
    await join(client, bob, room_id)
    for i in range(3):
        await send_text(client, bob, room_id, f"m{i}")
    status, current = await api(client, "GET", f"/rooms/{room_id}/state", alice)
    assert status == 200
    current_ids = {e["event_id"] for e in current}

    for limit in (1, 4, 50):
        body = await sync(client, alice, sync_filter=limit_filter(limit))
        room = joined(body, room_id)
        state_ids = [e["event_id"] for e in room["state"]["events"]]
        timeline = room["timeline"]["events"]
        assert len(state_ids) == len(set(state_ids))
        # State is not repeated in the timeline.
        assert not set(state_ids) & set(timeline_ids(room))
        for event in room["state"]["events"]:
            assert "state_key" in event
        # State (at the timeline's start) plus the timeline's state events = current state.
        keys = {(e["type"], e["state_key"]): e["event_id"] for e in room["state"]["events"]}
        for event in timeline:
            if "state_key" in event:
                keys[(event["type"], event["state_key"])] = event["event_id"]
        assert set(keys.values()) == current_ids, limit
        if limit == 1:
            types = {e["type"] for e in room["state"]["events"]}
            assert {"m.room.create", "m.room.power_levels", "m.room.join_rules",
                    "m.room.name", "m.room.topic", "m.room.member"} <= types
            members = {e["state_key"] for e in room["state"]["events"]
                       if e["type"] == "m.room.member"}
            assert members == {alice.user_id, bob.user_id}


async def test_full_state_on_incremental_sync(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, name="Full")
    await put_account_data(client, alice, "org.example.a", {"a": 1})
    body = await sync(client, alice)
    # full_state: every room with all its state, but the timeline still starts at since.
    full = await sync(client, alice, since=body["next_batch"], full_state=True)
    room = joined(full, room_id)
    assert room["timeline"]["events"] == []
    types = {e["type"] for e in room["state"]["events"]}
    assert {"m.room.create", "m.room.name", "m.room.member", "m.room.power_levels"} <= types
    assert {"type": "org.example.a", "content": {"a": 1}} in full["account_data"]["events"]

    new = await send_text(client, alice, room_id, "after")
    full = await sync(client, alice, since=body["next_batch"], full_state=True)
    room = joined(full, room_id)
    assert timeline_ids(room) == [new]
    assert room["timeline"]["limited"] is False
    assert {"m.room.create", "m.room.name"} <= {e["type"] for e in room["state"]["events"]}


async def test_timeline_limit_zero(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, name="Quiet")
    await send_text(client, alice, room_id, "hidden")
    room = joined(await sync(client, alice, sync_filter=limit_filter(0)), room_id)
    assert room["timeline"]["events"] == []
    assert room["timeline"]["limited"] is True
    # The state is all there is, then: the whole current state.
    assert {"m.room.create", "m.room.name", "m.room.member"} <= \
        {e["type"] for e in room["state"]["events"]}
    # And paging back from prev_batch starts at the newest event.
    status, page = await messages(client, alice, room_id, dir="b", limit=1,
                                  **{"from": room["timeline"]["prev_batch"]})
    assert status == 200, page
    assert [e["content"].get("body") for e in page["chunk"]] == ["hidden"]


async def test_state_change_in_incremental_sync(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, name="Before")
    body = await sync(client, alice)
    status, data = await put_state(client, alice, room_id, "m.room.name", {"name": "After"})
    assert status == 200
    body = await sync(client, alice, since=body["next_batch"])
    room = joined(body, room_id)
    assert [e["event_id"] for e in room["timeline"]["events"]] == [data["event_id"]]
    assert room["state"]["events"] == []


async def test_lazy_load_members(client: TestClient, alice: User, bob: User,
                                 carol: User) -> None:
    dave = await new_user(client, "dave")
    # Six early members: the room (which has no name) is called after the first five.
    early = [await new_user(client, f"early{i}") for i in range(6)]
    room_id = await create_room(client, alice, preset="public_chat")
    for user in (*early, bob, carol, dave):
        await join(client, user, room_id)
    for i in range(3):
        await send_text(client, bob, room_id, f"bob {i}")

    def members_of(room: dict[str, Any]) -> set[str]:
        return {e["state_key"] for e in room["state"]["events"]
                if e["type"] == "m.room.member"}

    lazy = {"room": {"timeline": {"limit": 3}, "state": {"lazy_load_members": True}}}
    room = joined(await sync(client, alice, sync_filter=lazy), room_id)
    heroes = room["summary"]["m.heroes"]
    assert heroes == [u.user_id for u in early[:5]]
    # The timeline's senders, the user, and (the spec's MUST) the heroes; nobody else.
    assert members_of(room) == {alice.user_id, bob.user_id, *heroes}
    assert {"m.room.create", "m.room.power_levels"} <= \
        {e["type"] for e in room["state"]["events"]}

    # From carol's side: her own member event, bob's, and her heroes'.
    room = joined(await sync(client, carol, sync_filter=lazy), room_id)
    heroes = room["summary"]["m.heroes"]
    assert heroes == [alice.user_id] + [u.user_id for u in early[:4]]
    assert members_of(room) == {carol.user_id, bob.user_id, *heroes}

    # Incremental: a member who was silent so far speaks; their member event comes along.
    body = await sync(client, alice, sync_filter=lazy)
    said = await send_text(client, dave, room_id, "dave speaks")
    body = await sync(client, alice, since=body["next_batch"], sync_filter=lazy)
    room = joined(body, room_id)
    assert timeline_ids(room) == [said]
    assert dave.user_id in members_of(room)
    assert carol.user_id not in members_of(room)

    eager = {"room": {"timeline": {"limit": 3}}}
    room = joined(await sync(client, alice, sync_filter=eager), room_id)
    assert members_of(room) == {u.user_id for u in (alice, bob, carol, dave, *early)}


async def test_summary_counts_and_heroes(client: TestClient, alice: User, bob: User,
                                         carol: User) -> None:
    room_id = await create_room(client, alice)
    await invite(client, alice, room_id, bob)
    await invite(client, alice, room_id, carol)
    await join(client, carol, room_id)

    summary = joined(await sync(client, alice), room_id)["summary"]
    assert summary["m.joined_member_count"] == 2
    assert summary["m.invited_member_count"] == 1
    assert set(summary["m.heroes"]) == {bob.user_id, carol.user_id}
    summary = joined(await sync(client, carol), room_id)["summary"]
    assert set(summary["m.heroes"]) == {alice.user_id, bob.user_id}
    assert carol.user_id not in summary["m.heroes"]

    # At most five heroes, in the order they became members.
    others = [await new_user(client, f"u{i}") for i in range(6)]
    big = await create_room(client, alice, preset="public_chat")
    for user in reversed(others):
        await join(client, user, big)
    summary = joined(await sync(client, alice), big)["summary"]
    assert summary["m.joined_member_count"] == 7
    assert summary["m.invited_member_count"] == 0
    assert len(summary["m.heroes"]) == 5
    assert alice.user_id not in summary["m.heroes"]
    assert summary["m.heroes"] == [u.user_id for u in reversed(others)][:5]

    # Joined members come before invited ones.
    status, data = await api(client, "POST", f"/rooms/{room_id}/invite", alice,
                             {"user_id": others[0].user_id})
    assert status == 200, data
    summary = joined(await sync(client, alice), room_id)["summary"]
    assert summary["m.heroes"] == [carol.user_id, bob.user_id, others[0].user_id]
    assert summary["m.invited_member_count"] == 2

    # Everyone else gone: the heroes are those who left (the room was "with them").
    lonely = await create_room(client, alice, preset="public_chat")
    await join(client, bob, lonely)
    await leave(client, bob, lonely)
    summary = joined(await sync(client, alice), lonely)["summary"]
    assert (summary["m.joined_member_count"], summary["m.invited_member_count"]) == (1, 0)
    assert summary["m.heroes"] == [bob.user_id]


async def test_room_account_data(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    other = await create_room(client, alice)
    body = await sync(client, alice)
    assert joined(body, room_id)["account_data"]["events"] == []

    await put_account_data(client, alice, "org.example.note", {"n": 1}, room_id=room_id)
    body = await sync(client, alice, since=body["next_batch"])
    room = joined(body, room_id)
    assert room["account_data"]["events"] == [{"type": "org.example.note",
                                               "content": {"n": 1}}]
    assert room["timeline"]["events"] == []
    assert other not in body["rooms"]["join"]
    assert all(e["type"] != "org.example.note" for e in body["account_data"]["events"])

    assert no_rooms(await sync(client, alice, since=body["next_batch"]))
    initial = await sync(client, alice)
    assert {"type": "org.example.note", "content": {"n": 1}} in \
        joined(initial, room_id)["account_data"]["events"]


async def test_global_account_data(client: TestClient, alice: User, bob: User) -> None:
    body = await sync(client, alice)
    room_id = await create_room(client, alice, is_direct=True, invite=[bob.user_id])
    await put_account_data(client, alice, "m.direct", {bob.user_id: [room_id]})

    body = await sync(client, alice, since=body["next_batch"])
    direct = [e for e in body["account_data"]["events"] if e["type"] == "m.direct"]
    assert direct == [{"type": "m.direct", "content": {bob.user_id: [room_id]}}]
    body = await sync(client, alice, since=body["next_batch"])
    assert body["account_data"]["events"] == []

    await put_account_data(client, alice, "m.direct", {bob.user_id: [room_id, "!x:y"]})
    body = await sync(client, alice, since=body["next_batch"])
    assert body["account_data"]["events"] == [
        {"type": "m.direct", "content": {bob.user_id: [room_id, "!x:y"]}}]
    assert no_rooms(body)

    initial = await sync(client, alice)
    direct = [e for e in initial["account_data"]["events"] if e["type"] == "m.direct"]
    assert direct == [{"type": "m.direct", "content": {bob.user_id: [room_id, "!x:y"]}}]
    # Bob's account data is his own.
    assert all(e["type"] != "m.direct"
               for e in (await sync(client, bob))["account_data"]["events"])
    # The account_data filter applies.
    filtered = await sync(client, alice,
                          sync_filter={"account_data": {"not_types": ["m.direct"]}})
    assert all(e["type"] != "m.direct" for e in filtered["account_data"]["events"])


# -- invites, joins, leaves -------------------------------------------------------------------

async def test_invite_then_join(client: TestClient, alice: User, bob: User) -> None:
    body = await sync(client, bob)
    room_id = await create_room(client, alice, name="Party", topic="cake")
    await invite(client, alice, room_id, bob)

    body = await sync(client, bob, since=body["next_batch"])
    assert list(body["rooms"]["invite"]) == [room_id]
    assert body["rooms"]["join"] == {}
    stripped = body["rooms"]["invite"][room_id]["invite_state"]["events"]
    for event in stripped:
        assert set(event) <= {"type", "state_key", "sender", "content"}
        assert {"type", "state_key", "sender", "content"} == set(event)
    by_type = {(e["type"], e["state_key"]): e for e in stripped}
    member = by_type[("m.room.member", bob.user_id)]
    assert member["content"]["membership"] == "invite"
    assert member["sender"] == alice.user_id
    assert by_type[("m.room.name", "")]["content"] == {"name": "Party"}
    assert ("m.room.create", "") in by_type
    assert ("m.room.join_rules", "") in by_type

    # Shown once; the initial sync still lists it. The room's messages are not bob's yet.
    await send_text(client, alice, room_id, "while bob is only invited")
    body = await sync(client, bob, since=body["next_batch"])
    assert no_rooms(body)
    assert room_id in (await sync(client, bob))["rooms"]["invite"]

    await join(client, bob, room_id)
    body = await sync(client, bob, since=body["next_batch"])
    assert room_id not in body["rooms"]["invite"]
    room = joined(body, room_id)
    # A newly joined room comes with its state, like an initial sync.
    keys = {(e["type"], e["state_key"]) for e in
            room["state"]["events"] + room["timeline"]["events"] if "state_key" in e}
    assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.topic", ""),
            ("m.room.member", alice.user_id), ("m.room.member", bob.user_id)} <= keys
    assert room["timeline"]["events"][-1]["type"] == "m.room.member"
    assert room["timeline"]["events"][-1]["state_key"] == bob.user_id
    assert (await sync(client, bob))["rooms"]["invite"] == {}


async def test_invite_and_join_between_syncs(client: TestClient, alice: User,
                                            bob: User) -> None:
    body = await sync(client, bob)
    room_id = await create_room(client, alice, name="Quick", invite=[bob.user_id])
    await join(client, bob, room_id)
    said = await send_text(client, alice, room_id, "welcome")
    body = await sync(client, bob, since=body["next_batch"])
    assert body["rooms"]["invite"] == {}
    room = joined(body, room_id)
    assert timeline_ids(room)[-1] == said
    keys = {(e["type"], e["state_key"]) for e in
            room["state"]["events"] + room["timeline"]["events"] if "state_key" in e}
    assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.member", bob.user_id)} <= keys


async def test_direct_invite(client: TestClient, alice: User, bob: User) -> None:
    body = await sync(client, bob)
    room_id = await create_room(client, alice, is_direct=True, invite=[bob.user_id],
                                preset="trusted_private_chat")
    body = await sync(client, bob, since=body["next_batch"])
    stripped = body["rooms"]["invite"][room_id]["invite_state"]["events"]
    member = [e for e in stripped
              if e["type"] == "m.room.member" and e["state_key"] == bob.user_id]
    assert len(member) == 1
    assert member[0]["content"]["is_direct"] is True
    assert member[0]["content"]["membership"] == "invite"


async def test_leave(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    said = await send_text(client, alice, room_id, "before")
    body = await sync(client, bob)
    await leave(client, bob, room_id)
    body = await sync(client, bob, since=body["next_batch"])
    assert room_id not in body["rooms"]["join"]
    left = body["rooms"]["leave"][room_id]
    last = left["timeline"]["events"][-1]
    assert (last["type"], last["state_key"], last["content"]["membership"]) == \
        ("m.room.member", bob.user_id, "leave")
    assert said not in [e["event_id"] for e in left["timeline"]["events"]]

    # What happens after the leave is not bob's to see: the room stays out.
    await send_text(client, alice, room_id, "after")
    body = await sync(client, bob, since=body["next_batch"])
    assert no_rooms(body)
    initial = await sync(client, bob)
    assert room_id not in all_room_ids(initial)


async def test_kick(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    body = await sync(client, bob)
    status, data = await api(client, "POST", f"/rooms/{room_id}/kick", alice,
                             {"user_id": bob.user_id, "reason": "out"})
    assert status == 200, data
    body = await sync(client, bob, since=body["next_batch"])
    assert room_id not in body["rooms"]["join"]
    timeline = body["rooms"]["leave"][room_id]["timeline"]["events"]
    kick = timeline[-1]
    assert kick["type"] == "m.room.member" and kick["state_key"] == bob.user_id
    assert kick["sender"] == alice.user_id
    assert kick["content"]["membership"] == "leave"
    assert kick["content"].get("reason") == "out"

    await send_text(client, alice, room_id, "gone")
    assert no_rooms(await sync(client, bob, since=body["next_batch"]))


async def test_ban(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    body = await sync(client, bob)
    status, data = await api(client, "POST", f"/rooms/{room_id}/ban", alice,
                             {"user_id": bob.user_id})
    assert status == 200, data
    body = await sync(client, bob, since=body["next_batch"])
    ban = body["rooms"]["leave"][room_id]["timeline"]["events"][-1]
    assert (ban["state_key"], ban["content"]["membership"], ban["sender"]) == \
        (bob.user_id, "ban", alice.user_id)
    await send_text(client, alice, room_id, "banned")
    assert no_rooms(await sync(client, bob, since=body["next_batch"]))


async def test_rejected_invite_shows_in_leave(client: TestClient, alice: User,
                                              bob: User) -> None:
    room_id = await create_room(client, alice)
    await invite(client, alice, room_id, bob)
    body = await sync(client, bob)
    assert room_id in body["rooms"]["invite"]
    await leave(client, bob, room_id)
    body = await sync(client, bob, since=body["next_batch"])
    assert room_id in body["rooms"]["leave"]
    assert room_id not in body["rooms"]["invite"]
    await send_text(client, alice, room_id, "later")
    assert no_rooms(await sync(client, bob, since=body["next_batch"]))


async def test_include_leave(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat", name="Was here")
    await join(client, bob, room_id)
    await send_text(client, bob, room_id, "bye")
    await leave(client, bob, room_id)
    await send_text(client, alice, room_id, "after bob left")

    assert room_id not in all_room_ids(await sync(client, bob))
    body = await sync(client, bob, sync_filter={"room": {"include_leave": True}})
    left = body["rooms"]["leave"][room_id]
    assert left["timeline"]["events"][-1]["content"]["membership"] == "leave"
    assert "after bob left" not in timeline_bodies(left)
    keys = {(e["type"], e["state_key"]) for e in
            left["state"]["events"] + left["timeline"]["events"] if "state_key" in e}
    assert ("m.room.name", "") in keys


async def test_forgotten_room_not_in_include_leave(client: TestClient, alice: User,
                                                   bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    await leave(client, bob, room_id)
    include_leave = {"room": {"include_leave": True}}
    assert room_id in (await sync(client, bob, sync_filter=include_leave))["rooms"]["leave"]
    status, data = await api(client, "POST", f"/rooms/{room_id}/forget", bob, {})
    assert status == 200, data
    assert room_id not in all_room_ids(await sync(client, bob, sync_filter=include_leave))


async def test_room_and_event_filters(client: TestClient, alice: User) -> None:
    first = await create_room(client, alice, name="First")
    second = await create_room(client, alice, name="Second")
    said = await send_text(client, alice, first, "hello")
    status, data = await put_state(client, alice, first, "m.room.topic", {"topic": "t"})
    assert status == 200

    body = await sync(client, alice, sync_filter={"room": {"rooms": [first]}})
    assert set(body["rooms"]["join"]) == {first}
    body = await sync(client, alice, sync_filter={"room": {"not_rooms": [first]}})
    assert set(body["rooms"]["join"]) == {second}

    body = await sync(client, alice, sync_filter={
        "room": {"timeline": {"types": ["m.room.message"]}}})
    assert timeline_ids(joined(body, first)) == [said]
    body = await sync(client, alice, sync_filter={
        "room": {"timeline": {"not_types": ["m.room.message"]}}})
    assert said not in timeline_ids(joined(body, first))
    assert data["event_id"] in timeline_ids(joined(body, first))
    body = await sync(client, alice, sync_filter={
        "room": {"state": {"types": ["m.room.create"]}, "timeline": {"limit": 1}}})
    assert {e["type"] for e in joined(body, second)["state"]["events"]} == {"m.room.create"}

    # event_fields trims events below what the spec's schema requires: no spec check here.
    status, body = await sync_raw(client, alice, sync_filter={
        "event_fields": ["type", "content.body"],
        "room": {"timeline": {"types": ["m.room.message"]}}})
    assert status == 200, body
    assert joined(body, first)["timeline"]["events"] == [
        {"type": "m.room.message", "content": {"body": "hello"}}]


# -- long polling -----------------------------------------------------------------------------

async def _timed_sync(client: TestClient, user: User, since: str, timeout_ms: int,
                      **kwargs: Any) -> tuple[float, dict[str, Any]]:
    start = time.monotonic()
    body = await sync(client, user, since=since, timeout_ms=timeout_ms, **kwargs)
    return time.monotonic() - start, body


async def test_long_poll_woken_by_message(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    body = await sync(client, bob)
    task = asyncio.create_task(_timed_sync(client, bob, body["next_batch"], 10_000))
    await asyncio.sleep(0.2)
    assert not task.done()
    event_id = await send_text(client, alice, room_id, "wake up")
    elapsed, body = await asyncio.wait_for(task, 5)
    assert elapsed < 5
    assert timeline_ids(joined(body, room_id)) == [event_id]


async def test_long_poll_woken_by_invite(client: TestClient, alice: User, bob: User) -> None:
    body = await sync(client, bob)
    task = asyncio.create_task(_timed_sync(client, bob, body["next_batch"], 10_000))
    await asyncio.sleep(0.2)
    assert not task.done()
    room_id = await create_room(client, alice, invite=[bob.user_id])
    elapsed, body = await asyncio.wait_for(task, 5)
    assert elapsed < 5
    assert list(body["rooms"]["invite"]) == [room_id]


async def test_long_poll_woken_by_account_data(client: TestClient, alice: User) -> None:
    body = await sync(client, alice)
    task = asyncio.create_task(_timed_sync(client, alice, body["next_batch"], 10_000))
    await asyncio.sleep(0.2)
    assert not task.done()
    await put_account_data(client, alice, "org.example.setting", {"on": True})
    elapsed, body = await asyncio.wait_for(task, 5)
    assert elapsed < 5
    assert body["account_data"]["events"] == [{"type": "org.example.setting",
                                               "content": {"on": True}}]


async def test_long_poll_times_out_empty(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice)
    body = await sync(client, alice)
    # Bob's activity in his own room does not concern alice.
    bob_room = await create_room(client, bob)
    elapsed, quiet = await _timed_sync(client, alice, body["next_batch"], 300)
    assert elapsed >= 0.25
    assert no_rooms(quiet)
    assert quiet["account_data"]["events"] == []
    task = asyncio.create_task(_timed_sync(client, alice, quiet["next_batch"], 400))
    await asyncio.sleep(0.05)
    await send_text(client, bob, bob_room, "not for alice")
    elapsed, quiet = await task
    assert no_rooms(quiet)
    assert room_id not in all_room_ids(quiet)


async def test_long_poll_without_since_returns_at_once(client: TestClient,
                                                       alice: User) -> None:
    start = time.monotonic()
    await sync(client, alice, timeout_ms=5_000)
    assert time.monotonic() - start < 4


async def test_long_poll_does_not_miss_event_committed_while_building(
        client: TestClient, services: Any, monkeypatch: pytest.MonkeyPatch, alice: User,
        bob: User) -> None:
    """An event committed after the sync read its position but before it started waiting
    must still end the wait at once."""
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    body = await sync(client, bob)
    store = services.members
    original = store.memberships
    sent: list[str] = []

    async def memberships_then_send(user_id: str) -> Any:
        result = await original(user_id)
        if not sent:
            sent.append("pending")
            sent[0] = await send_text(client, alice, room_id, "racing")
        return result

    monkeypatch.setattr(store, "memberships", memberships_then_send)
    # Presence off in the filter: alice's send also makes her online, a change of its own.
    elapsed, body = await asyncio.wait_for(_timed_sync(
        client, bob, body["next_batch"], 3_000,
        sync_filter={"presence": {"not_types": ["*"]}}), 10)
    assert elapsed < 2, "the long poll slept through an event"
    assert timeline_ids(joined(body, room_id)) == [sent[0]]


# -- many senders, many syncing clients -------------------------------------------------------

async def test_concurrent_senders_and_syncing_clients(client: TestClient) -> None:
    users = [await new_user(client, name) for name in ("ann", "ben", "cat", "dan")]
    ann, ben, cat, dan = users
    shared = [await create_room(client, ann, preset="public_chat") for _ in range(3)]
    members: dict[str, list[User]] = {shared[0]: users, shared[1]: [ann, ben, cat],
                                      shared[2]: [ann, ben, dan]}
    for room_id, people in members.items():
        for user in people[1:]:
            await join(client, user, room_id)
    private = await create_room(client, ann, preset="private_chat")
    members[private] = [ann]

    sync_filter = limit_filter(200)
    starts = {u.user_id: (await sync(client, u, sync_filter=sync_filter))["next_batch"]
              for u in users}
    per_sender = 12
    done_sending = asyncio.Event()

    async def send_all(user: User) -> list[tuple[str, str]]:
        out = []
        rooms = [r for r, people in members.items() if user in people]
        for i in range(per_sender):
            room_id = rooms[i % len(rooms)]
            out.append((room_id, await send_text(client, user, room_id,
                                                 f"{user.user_id} {i}")))
        return out

    async def sync_loop(user: User) -> tuple[dict[str, list[str]], set[str]]:
        since = starts[user.user_id]
        seen: dict[str, list[str]] = {}
        rooms_seen: set[str] = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            finished = done_sending.is_set()
            body = await sync(client, user, since=since, timeout_ms=500,
                              sync_filter=sync_filter)
            rooms_seen |= all_room_ids(body)
            for room_id, room in body["rooms"]["join"].items():
                assert room["timeline"]["limited"] is False
                seen.setdefault(room_id, []).extend(timeline_ids(room))
            since = body["next_batch"]
            if finished and no_rooms(body):
                return seen, rooms_seen
        raise AssertionError(f"{user.user_id} never caught up")

    loops = [asyncio.create_task(sync_loop(u)) for u in users]
    await asyncio.sleep(0.05)
    sent_lists = await asyncio.gather(*(send_all(u) for u in users))
    done_sending.set()
    results = await asyncio.gather(*loops)

    sent_by_room: dict[str, set[str]] = {}
    for pairs in sent_lists:
        for room_id, event_id in pairs:
            sent_by_room.setdefault(room_id, set()).add(event_id)
    for user, (seen, rooms_seen) in zip(users, results, strict=True):
        mine = {r for r, people in members.items() if user in people}
        assert rooms_seen <= mine, f"{user.user_id} saw rooms it is not in"
        if user is not ann:
            assert private not in rooms_seen
        for room_id in mine:
            got = seen.get(room_id, [])
            assert len(got) == len(set(got)), f"{user.user_id} got duplicates in {room_id}"
            assert set(got) == sent_by_room.get(room_id, set())
            # In the room's order.
            everything = await messages(client, user, room_id, dir="f", limit=1000)
            order = [e["event_id"] for e in everything[1]["chunk"]
                     if e["event_id"] in sent_by_room.get(room_id, set())]
            assert got == order


async def test_many_filters_get_distinct_ids(client: TestClient, alice: User) -> None:
    ids_seen = []
    for limit in range(1, 5):
        resp = await client.post(f"/_matrix/client/v3/user/{alice.user_id}/filter",
                                 json={"room": {"timeline": {"limit": limit}}},
                                 headers=bearer(alice.token))
        assert resp.status == 200, await resp.text()
        ids_seen.append((await resp.json())["filter_id"])
    assert len(set(ids_seen)) == 4
    resp = await client.get(f"/_matrix/client/v3/user/{alice.user_id}/filter/{ids_seen[2]}",
                            headers=bearer(alice.token))
    assert (await resp.json()) == {"room": {"timeline": {"limit": 3}}}
