"""Simplified sliding sync (MSC4186) as Synapse serves it:
``POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`` — lists, ranges,
ordering by bump stamp, required_state, subscriptions, per-connection state, ``pos``,
long polls, errors. Every response is shape-checked. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp.test_utils import TestClient

from tests.client_api import test_sync_fanout
from tests.client_api.test_rooms import (
    User,
    api,
    assert_error,
    create_room,
    join,
    new_user,
    send_text,
)
from tests.client_api.test_sync import invite, leave, put_account_data
from tests.conftest import bearer

services = test_sync_fanout.services  # every test here runs on SQLite and on PostgreSQL

SS = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"

_ROOM_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str, "avatar": str, "heroes": list, "initial": bool, "required_state": list,
    "timeline": list, "limited": bool, "prev_batch": str, "num_live": int,
    "joined_count": int, "invited_count": int, "notification_count": int,
    "highlight_count": int, "invite_state": list, "bump_stamp": int,
    "unstable_expanded_timeline": bool, "is_dm": bool,
}


def check_shape(body: dict[str, Any]) -> None:
    """The response's shape as Synapse's: ``pos``, ``lists`` of ``{count, ops}``, ``rooms``
    with the per-room fields typed, ``extensions``; no nulls."""
    assert isinstance(body["pos"], str) and "/" in body["pos"]
    assert isinstance(body["rooms"], dict)
    assert isinstance(body["extensions"], dict)
    for entry in body.get("lists", {}).values():
        assert isinstance(entry["count"], int)
        for op in entry["ops"]:
            assert op["op"] == "SYNC"
            assert isinstance(op["room_ids"], list) and len(op["range"]) == 2
    for room in body["rooms"].values():
        assert set(room) <= set(_ROOM_FIELDS), set(room) - set(_ROOM_FIELDS)
        for key, value in room.items():
            assert isinstance(value, _ROOM_FIELDS[key]), (key, value)
        assert "notification_count" in room and "highlight_count" in room
        for event in room.get("timeline", []) + room.get("required_state", []):
            assert {"type", "sender", "content", "event_id", "origin_server_ts"} <= set(event)
            assert "room_id" not in event
        for hero in room.get("heroes", []):
            assert isinstance(hero["user_id"], str)


async def ss(client: TestClient, user: User, body: dict[str, Any], *, pos: str | None = None,
             timeout_ms: int | None = None, expect: int = 200) -> dict[str, Any]:
    params = {}
    if pos is not None:
        params["pos"] = pos
    if timeout_ms is not None:
        params["timeout"] = str(timeout_ms)
    resp = await client.post(SS, json=body, params=params, headers=bearer(user.token))
    data = await resp.json()
    assert resp.status == expect, data
    if expect == 200:
        check_shape(data)
    return data  # type: ignore[no-any-return]


def one_list(limit: int = 1, end: int = 19, required_state: list[Any] | None = None,
             **extra: Any) -> dict[str, Any]:
    return {"lists": {"all": {"ranges": [[0, end]], "timeline_limit": limit,
                              "required_state": required_state or [], **extra}}}


def room_ids(body: dict[str, Any], key: str = "all") -> list[str]:
    return list(body["lists"][key]["ops"][0]["room_ids"])


def bodies(room: dict[str, Any]) -> list[str]:
    return [e["content"].get("body") for e in room.get("timeline", [])
            if e["type"] == "m.room.message"]


def state_keys(room: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["type"], e["state_key"]) for e in room.get("required_state", [])}


# -- discovery ------------------------------------------------------------------------------


async def test_advertised_and_password_login_discoverable(client: TestClient) -> None:
    resp = await client.get("/_matrix/client/versions")
    features = (await resp.json())["unstable_features"]
    assert features["org.matrix.simplified_msc3575"] is True
    assert features["org.ktchat.sse.sliding"] is True
    # No OIDC: rust-sdk falls back to password login.
    for path in ("/_matrix/client/v1/auth_metadata",
                 "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata"):
        resp = await client.get(path)
        assert_error(resp.status, await resp.json(), 404, "M_UNRECOGNIZED")
    resp = await client.get("/_matrix/client/v3/login")
    flows = [f["type"] for f in (await resp.json())["flows"]]
    assert "m.login.password" in flows


# -- initial and incremental ---------------------------------------------------------------


async def test_initial_response(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, name="Hello room")
    await invite(client, alice, room_id, bob)
    await join(client, bob, room_id)
    for text in ("one", "two", "three"):
        await send_text(client, bob, room_id, text)
    body = await ss(client, alice, one_list(limit=2, required_state=[["m.room.create", ""]]))
    assert body["lists"]["all"]["count"] == 1
    assert body["lists"]["all"]["ops"] == [{"op": "SYNC", "range": [0, 19],
                                           "room_ids": [room_id]}]
    room = body["rooms"][room_id]
    assert room["name"] == "Hello room"
    assert room["initial"] is True
    assert bodies(room) == ["two", "three"]
    assert room["limited"] is True
    assert room["num_live"] == 0
    assert room["joined_count"] == 2 and room["invited_count"] == 0
    assert room["notification_count"] == 3
    assert room["bump_stamp"] > 0
    assert state_keys(room) == {("m.room.create", "")}
    assert "is_dm" not in room and "heroes" not in room
    # prev_batch pages back with /messages from just before the timeline.
    status, page = await api(client, "GET", f"/rooms/{room_id}/messages", alice,
                             query={"dir": "b", "from": room["prev_batch"], "limit": "1"})
    assert status == 200, page
    assert [e["content"].get("body") for e in page["chunk"]] == ["one"]


async def test_incremental_carries_only_news(client: TestClient, alice: User) -> None:
    quiet = await create_room(client, alice, name="quiet")
    busy = await create_room(client, alice, name="busy")
    first = await ss(client, alice, one_list(limit=5))
    assert set(first["rooms"]) == {quiet, busy}
    await send_text(client, alice, busy, "news")
    second = await ss(client, alice, one_list(limit=5), pos=first["pos"])
    assert list(second["rooms"]) == [busy]
    room = second["rooms"][busy]
    assert bodies(room) == ["news"]
    assert "initial" not in room and "name" not in room
    assert room["limited"] is False and room["num_live"] == 1
    # Nothing new: an empty response at once (timeout 0), same connection position.
    third = await ss(client, alice, one_list(limit=5), pos=second["pos"])
    assert third["rooms"] == {}
    assert third["lists"]["all"]["count"] == 2


async def test_ordering_follows_bump_stamps(client: TestClient, alice: User) -> None:
    rooms = [await create_room(client, alice, name=f"r{i}") for i in range(3)]
    body = await ss(client, alice, one_list())
    assert room_ids(body) == rooms[::-1]  # the newest room first
    await send_text(client, alice, rooms[0], "bump")
    body = await ss(client, alice, one_list(), pos=body["pos"])
    assert room_ids(body) == [rooms[0], rooms[2], rooms[1]]
    assert body["rooms"][rooms[0]]["bump_stamp"] > 0
    # A state event (not a bump type) does not move a room up.
    status, _ = await api(client, "PUT", f"/rooms/{rooms[1]}/state/m.room.topic", alice,
                          {"topic": "t"})
    assert status == 200
    body = await ss(client, alice, one_list(), pos=body["pos"])
    assert room_ids(body) == [rooms[0], rooms[2], rooms[1]]
    # A window of one: only the top room, the count says how many there are.
    top = await ss(client, alice, one_list(end=0))
    assert room_ids(top) == [rooms[0]] and list(top["rooms"]) == [rooms[0]]
    assert top["lists"]["all"]["count"] == 3
    # Out of range news is held back, and comes (limited) when the room is in range.
    full = await ss(client, alice, one_list(end=2, limit=1))
    again = await ss(client, alice, one_list(end=0, limit=1), pos=full["pos"])
    assert again["rooms"] == {}
    await send_text(client, alice, rooms[1], "hidden 1")
    await send_text(client, alice, rooms[0], "top again")
    held = await ss(client, alice, one_list(end=0, limit=1), pos=again["pos"])
    assert list(held["rooms"]) == [rooms[0]]
    await send_text(client, alice, rooms[1], "hidden 2")
    moved = await ss(client, alice, one_list(end=0, limit=1), pos=held["pos"])
    assert room_ids(moved) == [rooms[1]]
    room = moved["rooms"][rooms[1]]
    assert "initial" not in room  # the connection had the room before
    assert bodies(room) == ["hidden 2"] and room["limited"] is True


async def test_invites_and_leaves(client: TestClient, alice: User, bob: User,
                                  carol: User) -> None:
    room_id = await create_room(client, alice, name="Invite me")
    first = await ss(client, bob, one_list(limit=3))
    assert first["lists"]["all"]["count"] == 0
    await invite(client, alice, room_id, bob)
    body = await ss(client, bob, one_list(limit=3), pos=first["pos"])
    room = body["rooms"][room_id]
    assert room["initial"] is True and "timeline" not in room
    stripped = {(e["type"], e.get("state_key")) for e in room["invite_state"]}
    assert ("m.room.name", "") in stripped and ("m.room.member", bob.user_id) in stripped
    assert ("m.room.member", alice.user_id) in stripped  # the inviter, as from Synapse
    assert all("event_id" not in e for e in room["invite_state"])
    assert room["name"] == "Invite me"
    assert "joined_count" not in room and room["bump_stamp"] > 0
    await join(client, bob, room_id)
    body = await ss(client, bob, one_list(limit=3), pos=body["pos"])
    assert body["rooms"][room_id]["initial"] is True  # newly joined: whole
    # Leaving: the leave comes once, then the room is gone from new connections.
    await leave(client, bob, room_id)
    body = await ss(client, bob, one_list(limit=3), pos=body["pos"])
    timeline = body["rooms"][room_id]["timeline"]
    assert timeline[-1]["type"] == "m.room.member"
    assert timeline[-1]["content"]["membership"] == "leave"
    fresh = await ss(client, bob, one_list(limit=3))
    assert fresh["lists"]["all"]["count"] == 0 and fresh["rooms"] == {}
    # A kick stays in the list (Synapse's rule), with the timeline up to the kick.
    other = await create_room(client, alice, name="Kick")
    await invite(client, alice, other, carol)
    await join(client, carol, other)
    status, _ = await api(client, "POST", f"/rooms/{other}/kick", alice,
                          {"user_id": carol.user_id})
    assert status == 200
    await send_text(client, alice, other, "after the kick")
    fresh = await ss(client, carol, one_list(limit=3))
    assert room_ids(fresh) == [other]
    assert "after the kick" not in bodies(fresh["rooms"][other])


async def test_required_state_wildcards_me_and_lazy(client: TestClient, alice: User,
                                                    bob: User, carol: User) -> None:
    room_id = await create_room(client, alice, name="State")
    for user in (bob, carol):
        await invite(client, alice, room_id, user)
        await join(client, user, room_id)
    await send_text(client, bob, room_id, "from bob")
    everything = await ss(client, alice, one_list(limit=1, required_state=[["*", "*"]]))
    keys = state_keys(everything["rooms"][room_id])
    assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.member", bob.user_id),
            ("m.room.member", carol.user_id), ("m.room.power_levels", "")} <= keys
    members = await ss(client, alice, one_list(required_state=[["m.room.member", "*"]]))
    assert state_keys(members["rooms"][room_id]) == {
        ("m.room.member", u.user_id) for u in (alice, bob, carol)}
    lazy = await ss(client, alice, one_list(limit=1, required_state=[
        ["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.name", ""]]))
    assert state_keys(lazy["rooms"][room_id]) == {
        ("m.room.member", bob.user_id), ("m.room.member", alice.user_id), ("m.room.name", "")}
    # Incremental: a new sender's member event comes once; one already sent does not.
    await send_text(client, carol, room_id, "from carol")
    body = await ss(client, alice, one_list(limit=1, required_state=[
        ["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.name", ""]]),
        pos=lazy["pos"])
    assert state_keys(body["rooms"][room_id]) == {("m.room.member", carol.user_id)}
    await send_text(client, carol, room_id, "again")
    body = await ss(client, alice, one_list(limit=1, required_state=[
        ["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.name", ""]]),
        pos=body["pos"])
    assert "required_state" not in body["rooms"][room_id]
    # A state change it asks for comes as a delta.
    status, _ = await api(client, "PUT", f"/rooms/{room_id}/state/m.room.name", alice,
                          {"name": "Renamed"})
    assert status == 200
    body = await ss(client, alice, one_list(limit=1, required_state=[
        ["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.name", ""]]),
        pos=body["pos"])
    room = body["rooms"][room_id]
    assert room["name"] == "Renamed"
    assert ("m.room.name", "") in state_keys(room)


async def test_heroes_when_unnamed(client: TestClient, alice: User, bob: User) -> None:
    status, _ = await api(client, "PUT", f"/profile/{bob.user_id}/displayname", bob,
                          {"displayname": "Bobby"})
    assert status == 200
    room_id = await create_room(client, alice)
    await invite(client, alice, room_id, bob)
    await join(client, bob, room_id)
    body = await ss(client, alice, one_list())
    room = body["rooms"][room_id]
    assert "name" not in room
    assert room["heroes"] == [{"user_id": bob.user_id, "displayname": "Bobby"}]


async def test_subscriptions(client: TestClient, alice: User, bob: User) -> None:
    old = await create_room(client, alice, name="old")
    await send_text(client, alice, old, "old message")
    new = await create_room(client, alice, name="new")
    secret = await create_room(client, bob, name="not alice's")
    request = {**one_list(end=0), "room_subscriptions": {
        old: {"timeline_limit": 5, "required_state": [["m.room.name", ""]]},
        secret: {"timeline_limit": 5, "required_state": []}}}
    body = await ss(client, alice, request)
    assert room_ids(body) == [new]
    assert set(body["rooms"]) == {old, new}
    assert "old message" in bodies(body["rooms"][old])
    assert state_keys(body["rooms"][old]) == {("m.room.name", "")}
    # A subscription stays until unsubscribe_rooms names it (MSC3575's sticky parameters:
    # matrix-js-sdk sends a subscription once).
    body = await ss(client, alice, one_list(end=0), pos=body["pos"])
    assert body["rooms"] == {}
    await send_text(client, alice, old, "news")
    body = await ss(client, alice, one_list(end=0), pos=body["pos"])
    assert bodies(body["rooms"][old]) == ["news"]
    body = await ss(client, alice, {**one_list(end=0), "unsubscribe_rooms": [old]},
                    pos=body["pos"])
    await send_text(client, alice, old, "not followed")
    await send_text(client, alice, new, "keeps the top of the list")
    body = await ss(client, alice, one_list(end=0), pos=body["pos"])
    assert room_ids(body) == [new] and old not in body["rooms"]
    for bad in ("!a:b", ["!a:b", 3]):
        answer = await ss(client, alice, {**one_list(), "unsubscribe_rooms": bad}, expect=400)
        assert answer["errcode"] == "M_BAD_JSON"
    # A subscription with a larger timeline_limit expands the timeline.
    bigger = {**request, "room_subscriptions": {
        new: {"timeline_limit": 3, "required_state": []}}}
    body = await ss(client, alice, bigger, pos=body["pos"])
    assert body["rooms"][new]["unstable_expanded_timeline"] is True
    assert len(body["rooms"][new]["timeline"]) == 3


# -- filters --------------------------------------------------------------------------------


async def test_filters(client: TestClient, alice: User, bob: User) -> None:
    plain = await create_room(client, alice, name="plain")
    encrypted = await create_room(client, alice, name="enc", initial_state=[
        {"type": "m.room.encryption", "state_key": "",
         "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
    space = await create_room(client, alice, name="space",
                              creation_content={"type": "m.space"})
    status, _ = await api(client, "PUT", f"/rooms/{space}/state/m.space.child/{plain}", alice,
                          {"via": ["localhost"]})
    assert status == 200
    dm = await create_room(client, alice, is_direct=True)
    await put_account_data(client, alice, "m.direct", {bob.user_id: [dm]})
    status, _ = await api(client, "PUT", f"/user/{alice.user_id}/rooms/{plain}/tags/m.favourite",
                          alice, {"order": 0.5})
    assert status == 200
    invited = await create_room(client, bob, name="invite")
    await invite(client, bob, invited, alice)

    async def only(filters: dict[str, Any]) -> set[str]:
        body = await ss(client, alice, one_list(filters=filters))
        return set(room_ids(body))

    everything = {plain, encrypted, space, dm, invited}
    assert await only({}) == everything
    assert await only({"is_dm": True}) == {dm}
    assert await only({"is_dm": False}) == everything - {dm}
    assert await only({"is_encrypted": True}) == {encrypted}
    assert await only({"is_invite": True}) == {invited}
    assert await only({"is_invite": False}) == everything - {invited}
    assert await only({"room_types": ["m.space"]}) == {space}
    assert await only({"not_room_types": ["m.space"]}) == everything - {space}
    assert await only({"room_types": [None]}) == everything - {space, invited} | {invited}
    assert await only({"spaces": [space]}) == {plain}
    assert await only({"tags": ["m.favourite"]}) == {plain}
    assert await only({"not_tags": ["m.favourite"]}) == everything - {plain}
    body = await ss(client, alice, one_list())
    assert body["rooms"][dm]["is_dm"] is True


# -- positions ------------------------------------------------------------------------------


async def test_unknown_pos(client: TestClient, alice: User) -> None:
    await create_room(client, alice, name="r")
    body = await ss(client, alice, {**one_list(), "conn_id": "main"})
    for pos in ("nonsense", "999/s1_0_0_0_0_0_0", body["pos"].replace("/", "x")):
        data = await ss(client, alice, one_list(), pos=pos, expect=400)
        assert data["errcode"] == "M_UNKNOWN_POS"
    # A position belongs to its connection.
    data = await ss(client, alice, {**one_list(), "conn_id": "other"}, pos=body["pos"],
                    expect=400)
    assert data["errcode"] == "M_UNKNOWN_POS"
    # Starting the connection again forgets its old positions.
    await ss(client, alice, {**one_list(), "conn_id": "main"})
    data = await ss(client, alice, {**one_list(), "conn_id": "main"}, pos=body["pos"],
                    expect=400)
    assert data["errcode"] == "M_UNKNOWN_POS"
    # The same position may be used twice (a retried request).
    first = await ss(client, alice, {**one_list(), "conn_id": "main"})
    await ss(client, alice, {**one_list(), "conn_id": "main"}, pos=first["pos"])
    await ss(client, alice, {**one_list(), "conn_id": "main"}, pos=first["pos"])


async def test_bad_input(client: TestClient, alice: User) -> None:
    bad_bodies: list[Any] = [
        {"lists": {"a": {"ranges": [[0, 1]], "required_state": []}}},  # no timeline_limit
        {"lists": {"a": {"ranges": [[0, 1]], "timeline_limit": "1", "required_state": []}}},
        {"lists": {"a": {"ranges": [[0, "x"]], "timeline_limit": 1, "required_state": []}}},
        {"lists": {"a": {"ranges": [[-1, 1]], "timeline_limit": 1, "required_state": []}}},
        {"lists": {"a": {"ranges": [[0, 1]], "timeline_limit": 1,
                         "required_state": [["m.room.name"]]}}},
        {"lists": {"a": {"ranges": [[0, 1]], "timeline_limit": 1, "required_state": [],
                         "filters": {"is_dm": "yes"}}}},
        {"lists": []},
        {"room_subscriptions": {"!a:b": {"timeline_limit": 1, "required_state": 5}}},
        {"extensions": {"to_device": {"enabled": True, "since": "abc"}}},
        {"extensions": {"receipts": {"enabled": "true"}}},
        {"conn_id": 5},
        {"lists": {"a" * 65: {"ranges": [[0, 1]], "timeline_limit": 1, "required_state": []}}},
    ]
    for bad in bad_bodies:
        data = await ss(client, alice, bad, expect=400)
        assert data["errcode"] == "M_BAD_JSON", (bad, data)
    resp = await client.post(SS, params={"timeout": "soon"}, json={},
                             headers=bearer(alice.token))
    assert_error(resp.status, await resp.json(), 400, "M_INVALID_PARAM")
    resp = await client.post(SS, data=b"{not json", headers=bearer(alice.token))
    assert_error(resp.status, await resp.json(), 400, "M_NOT_JSON")
    resp = await client.post(SS, json={})
    assert resp.status == 401
    # Unknown extensions and keys are ignored.
    await ss(client, alice, {"extensions": {"org.example.unknown": {"enabled": True}},
                             "whatever": 1})


async def test_hostile_shapes_never_500(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, name="h")
    odd: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x", [], [[]], [None], {}, {"a": []}]
    keys = ["lists", "room_subscriptions", "extensions", "conn_id"]
    seen = set()
    for key in keys:
        for value in odd:
            for body in ({key: value},
                         {"lists": {"l": {"ranges": value, "timeline_limit": 1,
                                          "required_state": []}}},
                         {"lists": {"l": {"ranges": [[0, 5]], "timeline_limit": 1,
                                          "required_state": [], "filters": {key: value}}}},
                         {"lists": {"l": {"ranges": [[0, 5]], "timeline_limit": value,
                                          "required_state": value}}},
                         {"room_subscriptions": {room_id: value}},
                         {"extensions": {"typing": value, "to_device": {"enabled": True,
                                                                        "limit": value}}}):
                resp = await client.post(SS, json=body, headers=bearer(alice.token))
                assert resp.status in (200, 400), (body, resp.status)
                data = await resp.json()
                if resp.status == 400:
                    assert data["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), data
                seen.add(resp.status)
    assert seen == {200, 400}
    # Ranges past the end, backwards, or huge: answered.
    body = await ss(client, alice, {"lists": {"l": {"ranges": [[5, 2], [0, 2**40]],
                                                    "timeline_limit": 0,
                                                    "required_state": []}}})
    assert body["lists"]["l"]["ops"][0]["room_ids"] == []
    assert body["lists"]["l"]["ops"][1]["room_ids"] == [room_id]
    assert "timeline" not in body["rooms"][room_id]


# -- long polls -----------------------------------------------------------------------------


async def test_long_poll_woken_by_a_message(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, name="poll")
    first = await ss(client, alice, one_list(limit=5))

    async def later() -> str:
        await asyncio.sleep(0.3)
        return await send_text(client, alice, room_id, "wake up")

    start = time.monotonic()
    sender = asyncio.create_task(later())
    body = await ss(client, alice, one_list(limit=5), pos=first["pos"], timeout_ms=20_000)
    assert time.monotonic() - start < 5
    await sender
    assert bodies(body["rooms"][room_id]) == ["wake up"]
    # Nothing comes: the poll ends at its timeout with an empty response, pos still valid.
    start = time.monotonic()
    empty = await ss(client, alice, one_list(limit=5), pos=body["pos"], timeout_ms=300)
    assert 0.25 < time.monotonic() - start < 5
    assert empty["rooms"] == {}
    await ss(client, alice, one_list(limit=5), pos=empty["pos"])


async def test_long_poll_not_woken_by_other_users_rooms(client: TestClient, alice: User) -> None:
    mine = await create_room(client, alice, name="mine")
    eve = await new_user(client, "eve")
    theirs = await create_room(client, eve, name="theirs")
    first = await ss(client, alice, one_list(limit=5))

    async def chatter() -> None:
        for i in range(5):
            await send_text(client, eve, theirs, f"not for alice {i}")
            await asyncio.sleep(0.05)

    task = asyncio.create_task(chatter())
    start = time.monotonic()
    body = await ss(client, alice, one_list(limit=5), pos=first["pos"], timeout_ms=600)
    await task
    assert time.monotonic() - start >= 0.55
    assert body["rooms"] == {} and room_ids(body) == [mine]


async def test_events_between_responses_exactly_once(client: TestClient, alice: User,
                                                     bob: User) -> None:
    rooms = [await create_room(client, alice, name=f"c{i}") for i in range(3)]
    for room_id in rooms:
        await invite(client, alice, room_id, bob)
        await join(client, bob, room_id)
    request = one_list(limit=100)
    body = await ss(client, bob, request)
    sent: list[str] = []

    async def writer() -> None:
        for i in range(30):
            sent.append(await send_text(client, alice, rooms[i % 3], f"m{i}"))
            if i % 4 == 0:
                await asyncio.sleep(0.01)

    task = asyncio.create_task(writer())
    seen: list[str] = []
    pos = body["pos"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = await ss(client, bob, request, pos=pos, timeout_ms=500)
        pos = body["pos"]
        for room in body["rooms"].values():
            assert room.get("limited") is not True
            seen += [e["event_id"] for e in room.get("timeline", [])
                     if e["type"] == "m.room.message"]
        if task.done() and len(seen) >= len(sent):
            break
    await task
    assert sorted(seen) == sorted(sent)
    assert len(seen) == len(set(seen))


async def test_account_data_wakes_and_dm_flag(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, name="x")
    request = {**one_list(), "extensions": {"account_data": {"enabled": True}}}
    first = await ss(client, alice, request)

    async def later() -> None:
        await asyncio.sleep(0.2)
        await put_account_data(client, alice, "org.example.a", {"a": 1})

    task = asyncio.create_task(later())
    body = await ss(client, alice, request, pos=first["pos"], timeout_ms=10_000)
    await task
    assert body["extensions"]["account_data"]["global"] == [
        {"type": "org.example.a", "content": {"a": 1}}]
    assert room_id not in body["rooms"]


async def test_other_users_rooms_stay_hidden(client: TestClient, alice: User) -> None:
    eve = await new_user(client, "eve")
    hidden = await create_room(client, eve, name="eve's")
    await send_text(client, eve, hidden, "private")
    body = await ss(client, alice, {**one_list(), "room_subscriptions": {
        hidden: {"timeline_limit": 5, "required_state": [["*", "*"]]}}})
    assert body["rooms"] == {} and body["lists"]["all"]["count"] == 0
