"""Rooms over real HTTP: /createRoom (presets, versions, initial state), sending messages and
state, and reading state back.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import SERVER_NAME
from tests.helpers.room_api import (
    V3,
    User,
    all_events,
    api,
    assert_error,
    create_room,
    ids,
    join,
    new_user,
    put_state,
    room_state,
    send_text,
    txn,
)


async def test_create_room_defaults(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    # The default room version is 12: the room ID is the create event's hash, no server part.
    assert room_id.startswith("!") and ":" not in room_id and len(room_id) == 44
    state = await room_state(client, alice, room_id)
    assert set(state) == {
        ("m.room.create", ""), ("m.room.member", alice.user_id), ("m.room.power_levels", ""),
        ("m.room.join_rules", ""), ("m.room.history_visibility", ""),
        ("m.room.guest_access", "")}
    create = state[("m.room.create", "")]
    assert create["content"] == {"room_version": "12"}
    assert create["sender"] == alice.user_id
    assert state[("m.room.member", alice.user_id)]["content"]["membership"] == "join"
    # A private room without a preset is private_chat.
    assert state[("m.room.join_rules", "")]["content"] == {"join_rule": "invite"}
    assert state[("m.room.history_visibility", "")]["content"] == {
        "history_visibility": "shared"}
    assert state[("m.room.guest_access", "")]["content"] == {"guest_access": "can_join"}
    power = state[("m.room.power_levels", "")]["content"]
    assert power["users"] == {}  # v12: the creator's power comes from the create event
    assert power["invite"] == 0
    assert (power["ban"], power["kick"], power["redact"], power["state_default"]) == (
        50, 50, 50, 50)
    assert power["events"]["m.room.power_levels"] == 100
    # The room is the creator's, and only theirs.
    status, data = await api(client, "GET", "/joined_rooms", alice)
    assert status == 200 and data == {"joined_rooms": [room_id]}


async def test_create_room_requires_auth(client: TestClient) -> None:
    status, body = await api(client, "POST", "/createRoom", None, {})
    assert_error(status, body, 401, "M_MISSING_TOKEN")


@pytest.mark.parametrize(("preset", "join_rule", "guest_access"), [
    ("private_chat", "invite", "can_join"),
    ("trusted_private_chat", "invite", "can_join"),
    ("public_chat", "public", None),
])
async def test_create_room_presets(client: TestClient, alice: User, bob: User, preset: str,
                                   join_rule: str, guest_access: str | None) -> None:
    room_id = await create_room(client, alice, preset=preset, invite=[bob.user_id])
    state = await room_state(client, alice, room_id)
    assert state[("m.room.join_rules", "")]["content"] == {"join_rule": join_rule}
    assert state[("m.room.history_visibility", "")]["content"] == {
        "history_visibility": "shared"}
    if guest_access is None:
        assert ("m.room.guest_access", "") not in state
    else:
        assert state[("m.room.guest_access", "")]["content"] == {"guest_access": guest_access}
    power = state[("m.room.power_levels", "")]["content"]
    # trusted_private_chat makes the invitees admins: in v12 (the default) as additional
    # creators (the spec, v1.16); the other presets leave them at the default.
    assert power["users"] == {}
    create = state[("m.room.create", "")]["content"]
    if preset == "trusted_private_chat":
        assert create["additional_creators"] == [bob.user_id]
    else:
        assert "additional_creators" not in create
    assert power["invite"] == (50 if preset == "public_chat" else 0)
    assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "invite"


@pytest.mark.parametrize("version", ["10", "11"])
async def test_trusted_private_chat_before_v12(client: TestClient, alice: User, bob: User,
                                               version: str) -> None:
    room_id = await create_room(client, alice, preset="trusted_private_chat",
                                room_version=version, invite=[bob.user_id])
    state = await room_state(client, alice, room_id)
    power = state[("m.room.power_levels", "")]["content"]
    assert power["users"] == {alice.user_id: 100, bob.user_id: 100}
    assert "additional_creators" not in state[("m.room.create", "")]["content"]


async def test_trusted_private_chat_v12_merges_additional_creators(
        client: TestClient, alice: User, bob: User) -> None:
    carol = await new_user(client, "carol")
    room_id = await create_room(client, alice, preset="trusted_private_chat",
                                invite=[bob.user_id, carol.user_id],
                                creation_content={"additional_creators": [carol.user_id]})
    state = await room_state(client, alice, room_id)
    create = state[("m.room.create", "")]["content"]
    assert sorted(create["additional_creators"]) == sorted([bob.user_id, carol.user_id])
    assert state[("m.room.power_levels", "")]["content"]["users"] == {}
    # bob joins and has a creator's power.
    await join(client, bob, room_id)
    status, body = await put_state(client, bob, room_id, "m.room.name", {"name": "bob's"})
    assert status == 200, body


async def test_visibility_picks_the_default_preset(client: TestClient, alice: User) -> None:
    public = await create_room(client, alice, visibility="public")
    private = await create_room(client, alice, visibility="private")
    state = await room_state(client, alice, public)
    assert state[("m.room.join_rules", "")]["content"] == {"join_rule": "public"}
    assert ("m.room.guest_access", "") not in state
    state = await room_state(client, alice, private)
    assert state[("m.room.join_rules", "")]["content"] == {"join_rule": "invite"}
    # Only the public one is listed in the directory.
    status, body = await api(client, "GET", "/publicRooms")
    assert status == 200, body
    assert [r["room_id"] for r in body["chunk"]] == [public]
    status, body = await api(client, "GET", f"/directory/list/room/{private}")
    assert (status, body) == (200, {"visibility": "private"})


async def test_explicit_preset_wins_over_visibility(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, visibility="public", preset="private_chat")
    state = await room_state(client, alice, room_id)
    assert state[("m.room.join_rules", "")]["content"] == {"join_rule": "invite"}
    status, body = await api(client, "GET", "/publicRooms")
    assert status == 200, body
    assert [r["room_id"] for r in body["chunk"]] == [room_id]


@pytest.mark.parametrize("bad", [{"preset": "secret_chat"}, {"visibility": "hidden"}])
async def test_create_room_rejects_unknown_preset_and_visibility(
        client: TestClient, alice: User, bad: dict[str, Any]) -> None:
    status, body = await api(client, "POST", "/createRoom", alice, bad)
    assert status == 400, body
    assert body["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON")
    status, data = await api(client, "GET", "/joined_rooms", alice)
    assert data == {"joined_rooms": []}


async def test_name_and_topic(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, name="Garden", topic="Roses and more")
    state = await room_state(client, alice, room_id)
    assert state[("m.room.name", "")]["content"] == {"name": "Garden"}
    topic = state[("m.room.topic", "")]["content"]
    assert topic["topic"] == "Roses and more"
    if "m.topic" in topic:  # the spec's TopicContentBlock: an object holding m.text
        assert {"mimetype": "text/plain", "body": "Roses and more"} in \
            topic["m.topic"]["m.text"]
    status, body = await api(client, "GET", f"/rooms/{room_id}/state/m.room.name", alice)
    assert (status, body) == (200, {"name": "Garden"})


async def test_room_alias_name(client: TestClient, alice: User, bob: User) -> None:
    status, body = await api(client, "POST", "/createRoom", alice,
                             {"room_alias_name": "garden", "visibility": "public"})
    assert status == 200, body
    alias = f"#garden:{SERVER_NAME}"
    assert body["room_alias"] == alias
    room_id = body["room_id"]
    state = await room_state(client, alice, room_id)
    assert state[("m.room.canonical_alias", "")]["content"] == {"alias": alias}
    status, body = await api(client, "GET", f"/directory/room/{alias}")
    assert status == 200, body
    assert body["room_id"] == room_id and body["servers"] == [SERVER_NAME]
    # The alias is taken now, for anyone.
    status, body = await api(client, "POST", "/createRoom", bob, {"room_alias_name": "garden"})
    assert_error(status, body, 400, "M_ROOM_IN_USE")
    status, data = await api(client, "GET", "/joined_rooms", bob)
    assert data == {"joined_rooms": []}


async def test_invalid_room_alias_name(client: TestClient, alice: User) -> None:
    status, body = await api(client, "POST", "/createRoom", alice,
                             {"room_alias_name": "a:b"})
    assert status == 400, body


async def test_invite_with_is_direct(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, invite=[bob.user_id], is_direct=True,
                                preset="trusted_private_chat")
    state = await room_state(client, alice, room_id)
    member = state[("m.room.member", bob.user_id)]
    assert member["content"]["membership"] == "invite"
    assert member["content"]["is_direct"] is True
    assert member["sender"] == alice.user_id
    # The invitee can accept.
    await join(client, bob, room_id)
    status, body = await api(client, "GET", f"/rooms/{room_id}/joined_members", bob)
    assert status == 200, body
    assert set(body["joined"]) == {alice.user_id, bob.user_id}


async def test_invite_without_is_direct(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, invite=[bob.user_id])
    state = await room_state(client, alice, room_id)
    assert "is_direct" not in state[("m.room.member", bob.user_id)]["content"]


async def test_initial_state_overrides_the_preset(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, preset="private_chat", initial_state=[
        {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "public"}},
        {"type": "m.room.history_visibility", "content": {
            "history_visibility": "world_readable"}},
        {"type": "org.example.custom", "state_key": "k", "content": {"x": 1}},
    ])
    state = await room_state(client, alice, room_id)
    assert state[("m.room.join_rules", "")]["content"] == {"join_rule": "public"}
    assert state[("m.room.history_visibility", "")]["content"] == {
        "history_visibility": "world_readable"}
    assert state[("org.example.custom", "k")]["content"] == {"x": 1}
    # The preset's versions of those events were never sent.
    events = await all_events(client, alice, room_id)
    join_rules = [e for e in events if e["type"] == "m.room.join_rules"]
    assert [e["content"] for e in join_rules] == [{"join_rule": "public"}]


async def test_power_level_content_override(client: TestClient, alice: User, bob: User
                                            ) -> None:
    room_id = await create_room(client, alice, preset="public_chat",
                                power_level_content_override={
                                    "events_default": 20, "events": {"m.room.topic": 0}})
    state = await room_state(client, alice, room_id)
    power = state[("m.room.power_levels", "")]["content"]
    assert power["events_default"] == 20
    assert power["events"] == {"m.room.topic": 0}  # top-level keys are replaced, not merged
    assert power["ban"] == 50
    await join(client, bob, room_id)
    # bob (level 0) may set the topic but not talk.
    status, body = await put_state(client, bob, room_id, "m.room.topic", {"topic": "hi"})
    assert status == 200, body
    status, body = await api(client, "PUT", f"/rooms/{room_id}/send/m.room.message/{txn()}",
                             bob, {"msgtype": "m.text", "body": "x"})
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_creation_content(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, room_version="11", creation_content={
        "m.federate": False, "type": "org.example.kind", "room_version": "10"})
    state = await room_state(client, alice, room_id)
    # The room_version parameter decides, not creation_content.
    assert state[("m.room.create", "")]["content"] == {
        "m.federate": False, "type": "org.example.kind", "room_version": "11"}


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_room_versions(client: TestClient, alice: User, version: str) -> None:
    room_id = await create_room(client, alice, room_version=version)
    state = await room_state(client, alice, room_id)
    create = state[("m.room.create", "")]
    power = state[("m.room.power_levels", "")]["content"]
    assert create["content"]["room_version"] == version
    if version == "12":
        assert ":" not in room_id
        assert "creator" not in create["content"]
        assert power["users"] == {}
    else:
        assert room_id.endswith(f":{SERVER_NAME}")
        assert power["users"] == {alice.user_id: 100}
        if version == "10":
            assert create["content"]["creator"] == alice.user_id
        else:
            assert "creator" not in create["content"]
    for event in state.values():
        assert event["room_id"] == room_id
    # The creator can do everything in the room.
    status, body = await put_state(client, alice, room_id, "m.room.power_levels",
                                   {**power, "ban": 75})
    assert status == 200, body


async def test_v12_additional_creators(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, room_version="12", preset="public_chat",
                                creation_content={"additional_creators": [bob.user_id]})
    state = await room_state(client, alice, room_id)
    assert state[("m.room.create", "")]["content"]["additional_creators"] == [bob.user_id]
    assert state[("m.room.power_levels", "")]["content"]["users"] == {}
    await join(client, bob, room_id)
    # bob has a creator's power though he is not in the power levels.
    power = state[("m.room.power_levels", "")]["content"]
    status, body = await put_state(client, bob, room_id, "m.room.power_levels",
                                   {**power, "kick": 60})
    assert status == 200, body


async def test_unsupported_room_version(client: TestClient, alice: User) -> None:
    for version in ("9", "1", "foo", "13"):
        status, body = await api(client, "POST", "/createRoom", alice,
                                 {"room_version": version})
        assert_error(status, body, 400, "M_UNSUPPORTED_ROOM_VERSION")
    status, data = await api(client, "GET", "/joined_rooms", alice)
    assert data == {"joined_rooms": []}


async def test_create_room_bad_invitee(client: TestClient, alice: User) -> None:
    status, body = await api(client, "POST", "/createRoom", alice, {"invite": ["bob"]})
    assert status == 400, body
    status, data = await api(client, "GET", "/joined_rooms", alice)
    assert data == {"joined_rooms": []}


# -- sending messages -------------------------------------------------------------------------

async def test_send_is_idempotent_per_device_and_txn(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    first = await send_text(client, alice, room_id, "hello", txn_id="t1")
    again = await send_text(client, alice, room_id, "hello", txn_id="t1")
    assert again == first
    other = await send_text(client, alice, room_id, "hello", txn_id="t2")
    assert other != first
    bodies = [e["content"].get("body") for e in await all_events(client, alice, room_id)
              if e["type"] == "m.room.message"]
    assert bodies == ["hello", "hello"]
    # The sender's own device sees its transaction ID.
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{first}", alice)
    assert status == 200, event
    assert event["unsigned"]["transaction_id"] == "t1"


async def test_same_txn_on_another_device_is_a_new_event(client: TestClient, alice: User
                                                          ) -> None:
    room_id = await create_room(client, alice)
    resp = await client.post(f"{V3}/login", json={
        "type": "m.login.password", "password": "correct horse",
        "identifier": {"type": "m.id.user", "user": "alice"}})
    assert resp.status == 200
    login = await resp.json()
    phone = User(login["user_id"], login["access_token"], login["device_id"])
    first = await send_text(client, alice, room_id, "from laptop", txn_id="same")
    second = await send_text(client, phone, room_id, "from phone", txn_id="same")
    assert first != second
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{second}", phone)
    assert event["content"]["body"] == "from phone"
    assert event["unsigned"]["transaction_id"] == "same"
    # Another device does not see the transaction ID.
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{first}", phone)
    assert status == 200, event
    assert "transaction_id" not in event["unsigned"]


async def test_sender_cannot_be_forged(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    status, body = await api(client, "PUT", f"/rooms/{room_id}/send/m.room.message/{txn()}",
                             bob, {"msgtype": "m.text", "body": "hi", "sender": alice.user_id,
                                   "room_id": "!elsewhere:test.local", "type": "m.room.name"})
    assert status == 200, body
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{body['event_id']}",
                              alice)
    assert status == 200, event
    assert event["sender"] == bob.user_id
    assert event["type"] == "m.room.message"
    assert event["room_id"] == room_id


async def test_send_too_large(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    before = ids(await all_events(client, alice, room_id))
    status, body = await api(client, "PUT", f"/rooms/{room_id}/send/m.room.message/{txn()}",
                             alice, {"msgtype": "m.text", "body": "x" * 70_000})
    assert_error(status, body, 413, "M_TOO_LARGE")
    status, body = await put_state(client, alice, room_id, "m.room.topic",
                                   {"topic": "y" * 70_000})
    assert_error(status, body, 413, "M_TOO_LARGE")
    assert ids(await all_events(client, alice, room_id)) == before


async def test_send_not_a_json_object(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await api(client, "PUT", f"/rooms/{room_id}/send/m.room.message/{txn()}",
                             alice, ["not", "an", "object"])
    assert status == 400 and body["errcode"] in ("M_BAD_JSON", "M_NOT_JSON"), body


async def test_non_member_cannot_send(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    status, body = await api(client, "PUT", f"/rooms/{room_id}/send/m.room.message/{txn()}",
                             bob, {"msgtype": "m.text", "body": "sneaky"})
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await put_state(client, bob, room_id, "m.room.topic", {"topic": "sneaky"})
    assert_error(status, body, 403, "M_FORBIDDEN")
    events = await all_events(client, alice, room_id)
    assert all(e["sender"] == alice.user_id for e in events)


async def test_send_to_unknown_room(client: TestClient, alice: User) -> None:
    # Synapse answers 403 "Unknown room" (the requester is not in it); not 404.
    for room_id in ("!nowhere:test.local", "!nowhere:elsewhere.example",
                    "!Rx6wtGEkSSrYXeUxVq4mZdCpoqBZ4ZWbaRk5Znn8Qzs"):
        status, body = await api(client, "PUT",
                                 f"/rooms/{room_id}/send/m.room.message/{txn()}", alice,
                                 {"msgtype": "m.text", "body": "hello?"})
        assert_error(status, body, 403, "M_FORBIDDEN")
        status, body = await put_state(client, alice, room_id, "m.room.topic", {"topic": "t"})
        assert_error(status, body, 403, "M_FORBIDDEN")


async def test_left_member_cannot_send(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    await send_text(client, bob, room_id, "bye")
    status, body = await api(client, "POST", f"/rooms/{room_id}/leave", bob, {})
    assert status == 200, body
    status, body = await api(client, "PUT", f"/rooms/{room_id}/send/m.room.message/{txn()}",
                             bob, {"msgtype": "m.text", "body": "ghost"})
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_redaction_not_sendable_through_send(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    event_id = await send_text(client, alice, room_id, "keep me")
    status, body = await api(client, "PUT",
                             f"/rooms/{room_id}/send/m.room.redaction/{txn()}", alice,
                             {"redacts": event_id})
    assert status == 400, body
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{event_id}", alice)
    assert event["content"]["body"] == "keep me"


# -- state ------------------------------------------------------------------------------------

async def test_state_without_state_key(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await put_state(client, alice, room_id, "m.room.topic", {"topic": "Plants"})
    assert status == 200, body
    event_id = body["event_id"]
    status, body = await api(client, "GET", f"/rooms/{room_id}/state/m.room.topic", alice)
    assert (status, body) == (200, {"topic": "Plants"})
    # (No spec check for format=event: the spec's oneOf [state event, any object] can never
    # accept an event, which is both.)
    status, body = await api(client, "GET", f"/rooms/{room_id}/state/m.room.topic", alice,
                             query={"format": "event"}, spec=False)
    assert status == 200, body
    assert body["event_id"] == event_id
    assert body["type"] == "m.room.topic" and body["state_key"] == ""
    assert body["sender"] == alice.user_id and body["room_id"] == room_id
    assert body["content"] == {"topic": "Plants"}
    assert isinstance(body["origin_server_ts"], int)
    # The same path with an explicit empty state key is the same state.
    status, body = await api(client, "GET", f"/rooms/{room_id}/state/m.room.topic/", alice)
    assert (status, body) == (200, {"topic": "Plants"})


async def test_state_with_state_key(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await put_state(client, alice, room_id, "org.example.widget",
                                   {"url": "https://a.example"}, state_key="w1")
    assert status == 200, body
    first = body["event_id"]
    status, body = await put_state(client, alice, room_id, "org.example.widget",
                                   {"url": "https://b.example"}, state_key="w2")
    assert status == 200, body
    status, body = await api(client, "GET", f"/rooms/{room_id}/state/org.example.widget/w1",
                             alice)
    assert (status, body) == (200, {"url": "https://a.example"})
    status, body = await api(client, "GET", f"/rooms/{room_id}/state/org.example.widget/w1",
                             alice, query={"format": "event"}, spec=False)
    assert body["event_id"] == first and body["state_key"] == "w1"
    # No state under the empty key.
    status, body = await api(client, "GET", f"/rooms/{room_id}/state/org.example.widget",
                             alice)
    assert_error(status, body, 404, "M_NOT_FOUND")
    state = await room_state(client, alice, room_id)
    assert state[("org.example.widget", "w2")]["content"] == {"url": "https://b.example"}


async def test_replacing_state_shows_prev_content(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    _, first = await put_state(client, alice, room_id, "m.room.topic", {"topic": "one"})
    _, second = await put_state(client, alice, room_id, "m.room.topic", {"topic": "two"})
    assert first["event_id"] != second["event_id"]
    status, event = await api(client, "GET", f"/rooms/{room_id}/event/{second['event_id']}",
                              alice)
    assert event["unsigned"]["replaces_state"] == first["event_id"]
    assert event["unsigned"]["prev_content"] == {"topic": "one"}
    status, body = await api(client, "GET", f"/rooms/{room_id}/state/m.room.topic", alice)
    assert status == 200, body
    assert body == {"topic": "two"}


async def test_identical_state_twice_is_the_same_event(client: TestClient, alice: User
                                                       ) -> None:
    room_id = await create_room(client, alice)
    _, first = await put_state(client, alice, room_id, "m.room.name", {"name": "Same"})
    _, second = await put_state(client, alice, room_id, "m.room.name", {"name": "Same"})
    assert first["event_id"] == second["event_id"]
    names = [e for e in await all_events(client, alice, room_id) if e["type"] == "m.room.name"]
    assert [e["event_id"] for e in names] == [first["event_id"]]


async def test_state_needs_power(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat", name="Original")
    await join(client, bob, room_id)
    before = ids(await room_state(client, alice, room_id))
    for event_type, content in [("m.room.name", {"name": "Hijacked"}),
                                ("m.room.power_levels", {"users": {bob.user_id: 100}}),
                                ("org.example.custom", {"x": 1})]:
        status, body = await put_state(client, bob, room_id, event_type, content)
        assert_error(status, body, 403, "M_FORBIDDEN")
    assert ids(await room_state(client, alice, room_id)) == before
    status, body = await api(client, "GET", f"/rooms/{room_id}/state/m.room.name", bob)
    assert body == {"name": "Original"}


async def test_state_for_another_users_membership_is_refused(client: TestClient, alice: User,
                                                             bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    status, body = await put_state(client, alice, room_id, "m.room.member",
                                   {"membership": "join"}, state_key=bob.user_id)
    assert status in (400, 403), body
    state = await room_state(client, alice, room_id)
    assert ("m.room.member", bob.user_id) not in state


async def test_unknown_state_is_404(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await api(client, "GET", f"/rooms/{room_id}/state/m.room.topic", alice)
    assert_error(status, body, 404, "M_NOT_FOUND")


async def test_get_state_lists_current_state(client: TestClient, alice: User, bob: User
                                             ) -> None:
    room_id = await create_room(client, alice, preset="public_chat", name="A")
    await join(client, bob, room_id)
    await put_state(client, alice, room_id, "m.room.name", {"name": "B"})
    state = await room_state(client, bob, room_id)
    assert state[("m.room.name", "")]["content"] == {"name": "B"}
    assert state[("m.room.member", bob.user_id)]["content"]["membership"] == "join"
    # Exactly one event per state key, all from this room.
    status, events = await api(client, "GET", f"/rooms/{room_id}/state", bob)
    assert status == 200, events
    assert len(events) == len(state)
    assert {e["room_id"] for e in events} == {room_id}


async def test_state_keyed_by_another_user_id_is_theirs_alone(client: TestClient, alice: User,
                                                              bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    # Even the room's creator may not set state keyed by someone else's user ID.
    status, body = await put_state(client, alice, room_id, "org.example.profile",
                                   {"x": 1}, state_key=bob.user_id)
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await put_state(client, alice, room_id, "org.example.profile",
                                   {"x": 1}, state_key=alice.user_id)
    assert status == 200, body


async def test_moderator_cannot_raise_their_own_power(client: TestClient, alice: User,
                                                      bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat", room_version="11")
    await join(client, bob, room_id)
    state = await room_state(client, alice, room_id)
    power = state[("m.room.power_levels", "")]["content"]
    power = {**power, "users": {alice.user_id: 100, bob.user_id: 50},
             "events": {**power["events"], "m.room.power_levels": 50}}
    status, body = await put_state(client, alice, room_id, "m.room.power_levels", power)
    assert status == 200, body
    for users in ({alice.user_id: 100, bob.user_id: 100},  # above his own level
                  {alice.user_id: 0, bob.user_id: 50}):  # demoting someone above him
        status, body = await put_state(client, bob, room_id, "m.room.power_levels",
                                       {**power, "users": users})
        assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await api(client, "GET", f"/rooms/{room_id}/state/m.room.power_levels", bob)
    assert body["users"] == {alice.user_id: 100, bob.user_id: 50}


async def test_reading_state_of_unknown_room(client: TestClient, alice: User) -> None:
    for path in ("/rooms/!nowhere:test.local/state",
                 "/rooms/!nowhere:test.local/state/m.room.create"):
        status, body = await api(client, "GET", path, alice)
        assert_error(status, body, 403, "M_FORBIDDEN")
