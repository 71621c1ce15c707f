"""Membership over real HTTP: invite, join, leave, kick, ban, unban, knock, forget, the
restricted join rule, and the lists of rooms and members."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import SERVER_NAME
from tests.helpers.room_api import (
    User,
    api,
    assert_error,
    create_room,
    ids,
    join,
    messages,
    new_user,
    put_state,
    room_state,
    send_text,
    txn,
)


async def membership_of(client: TestClient, reader: User, room_id: str, user_id: str
                        ) -> dict[str, Any] | None:
    """The user's current m.room.member event as ``reader`` sees it, or None."""
    state = await room_state(client, reader, room_id)
    return state.get(("m.room.member", user_id))


async def joined_rooms(client: TestClient, user: User) -> list[str]:
    status, body = await api(client, "GET", "/joined_rooms", user)
    assert status == 200, body
    return list(body["joined_rooms"])


async def post(client: TestClient, user: User, path: str, body: Any = None
               ) -> tuple[int, Any]:
    return await api(client, "POST", path, user, {} if body is None else body)


# -- invite and join --------------------------------------------------------------------------

async def test_invite_then_join(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await post(client, alice, f"/rooms/{room_id}/invite",
                              {"user_id": bob.user_id, "reason": "come along"})
    assert (status, body) == (200, {})
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None
    assert member["content"]["membership"] == "invite"
    assert member["content"]["reason"] == "come along"
    assert member["sender"] == alice.user_id
    assert await joined_rooms(client, bob) == []
    status, body = await post(client, bob, f"/rooms/{room_id}/join")
    assert (status, body) == (200, {"room_id": room_id})
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None and member["content"]["membership"] == "join"
    assert member["sender"] == bob.user_id
    assert await joined_rooms(client, bob) == [room_id]


async def test_join_by_id_through_the_generic_endpoint(client: TestClient, alice: User,
                                                       bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    status, body = await post(client, bob, f"/join/{room_id}")
    assert (status, body) == (200, {"room_id": room_id})
    # Joining again changes nothing.
    events_before = ids((await messages(client, alice, room_id, limit=100))[1]["chunk"])
    status, body = await post(client, bob, f"/join/{room_id}")
    assert (status, body) == (200, {"room_id": room_id})
    events_after = ids((await messages(client, alice, room_id, limit=100))[1]["chunk"])
    assert events_after == events_before


async def test_join_by_alias(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat", room_alias_name="lobby")
    status, body = await post(client, bob, f"/join/#lobby:{SERVER_NAME}")
    assert (status, body) == (200, {"room_id": room_id})
    assert await joined_rooms(client, bob) == [room_id]


async def test_join_unknown_alias_or_room(client: TestClient, bob: User) -> None:
    status, body = await post(client, bob, f"/join/#nowhere:{SERVER_NAME}")
    assert_error(status, body, 404, "M_NOT_FOUND")
    status, body = await post(client, bob, f"/join/!nowhere:{SERVER_NAME}")
    assert_error(status, body, 404, "M_NOT_FOUND")
    assert await joined_rooms(client, bob) == []


async def test_join_invite_only_room_uninvited(client: TestClient, alice: User, bob: User
                                               ) -> None:
    room_id = await create_room(client, alice, preset="private_chat")
    before = ids(await room_state(client, alice, room_id))
    for path in (f"/rooms/{room_id}/join", f"/join/{room_id}"):
        status, body = await post(client, bob, path)
        assert_error(status, body, 403, "M_FORBIDDEN")
    assert ids(await room_state(client, alice, room_id)) == before
    assert await joined_rooms(client, bob) == []


async def test_invite_unknown_local_user(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await post(client, alice, f"/rooms/{room_id}/invite",
                              {"user_id": f"@nobody:{SERVER_NAME}"})
    assert_error(status, body, 404, "M_NOT_FOUND")
    assert await membership_of(client, alice, room_id, f"@nobody:{SERVER_NAME}") is None


async def test_invite_needs_membership_and_power(client: TestClient, alice: User, bob: User,
                                                 carol: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    # Not in the room.
    status, body = await post(client, bob, f"/rooms/{room_id}/invite",
                              {"user_id": carol.user_id})
    assert_error(status, body, 403, "M_FORBIDDEN")
    # In the room, but public_chat needs level 50 to invite.
    await join(client, bob, room_id)
    status, body = await post(client, bob, f"/rooms/{room_id}/invite",
                              {"user_id": carol.user_id})
    assert_error(status, body, 403, "M_FORBIDDEN")
    assert await membership_of(client, alice, room_id, carol.user_id) is None
    # Someone already in the room cannot be invited.
    status, body = await post(client, alice, f"/rooms/{room_id}/invite",
                              {"user_id": bob.user_id})
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_invite_missing_user_id(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice)
    status, body = await post(client, alice, f"/rooms/{room_id}/invite", {})
    assert_error(status, body, 400, "M_MISSING_PARAM")


async def test_reject_invite(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, invite=[bob.user_id])
    status, body = await post(client, bob, f"/rooms/{room_id}/leave", {"reason": "no thanks"})
    assert (status, body) == (200, {})
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None
    assert member["content"]["membership"] == "leave"
    assert member["content"]["reason"] == "no thanks"
    # Without the invite the room is closed again.
    status, body = await post(client, bob, f"/rooms/{room_id}/join")
    assert_error(status, body, 403, "M_FORBIDDEN")


# -- leave and forget -------------------------------------------------------------------------

async def test_leave_then_send_is_forbidden(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    status, body = await post(client, bob, f"/rooms/{room_id}/leave")
    assert (status, body) == (200, {})
    assert await joined_rooms(client, bob) == []
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None and member["content"]["membership"] == "leave"
    status, body = await api(client, "PUT", f"/rooms/{room_id}/send/m.room.message/{txn()}",
                             bob, {"msgtype": "m.text", "body": "still here?"})
    assert_error(status, body, 403, "M_FORBIDDEN")
    # A public room can be joined again.
    await join(client, bob, room_id)
    assert await joined_rooms(client, bob) == [room_id]


async def test_leave_a_room_never_joined(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    before = ids(await room_state(client, alice, room_id))
    status, body = await post(client, bob, f"/rooms/{room_id}/leave")
    assert status in (403, 404), body
    assert ids(await room_state(client, alice, room_id)) == before


async def test_forget_requires_leaving_first(client: TestClient, alice: User, bob: User
                                             ) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    status, body = await post(client, bob, f"/rooms/{room_id}/forget")
    assert status == 400, body
    assert body["errcode"].startswith("M_")
    status, body = await post(client, bob, f"/rooms/{room_id}/leave")
    assert status == 200, body
    status, body = await post(client, bob, f"/rooms/{room_id}/forget")
    assert (status, body) == (200, {})
    # Forgetting is the user's own business: the room and its members are unchanged.
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None and member["content"]["membership"] == "leave"
    # And a forgotten room can be joined again.
    await join(client, bob, room_id)
    assert await joined_rooms(client, bob) == [room_id]


async def test_forget_while_invited_is_refused(client: TestClient, alice: User, bob: User
                                               ) -> None:
    room_id = await create_room(client, alice, invite=[bob.user_id])
    status, body = await post(client, bob, f"/rooms/{room_id}/forget")
    assert status == 400, body


# -- kick, ban, unban -------------------------------------------------------------------------

async def test_kick(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    status, body = await post(client, alice, f"/rooms/{room_id}/kick",
                              {"user_id": bob.user_id, "reason": "spam"})
    assert (status, body) == (200, {})
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None
    assert member["content"]["membership"] == "leave"
    assert member["content"]["reason"] == "spam"
    assert member["sender"] == alice.user_id
    assert await joined_rooms(client, bob) == []
    # A kick is not a ban: bob may come back.
    await join(client, bob, room_id)


async def test_kick_needs_power(client: TestClient, alice: User, bob: User, carol: User
                                ) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    await join(client, carol, room_id)
    status, body = await post(client, bob, f"/rooms/{room_id}/kick", {"user_id": carol.user_id})
    assert_error(status, body, 403, "M_FORBIDDEN")
    member = await membership_of(client, alice, room_id, carol.user_id)
    assert member is not None and member["content"]["membership"] == "join"
    # Nor can a member kick the room's creator.
    status, body = await post(client, bob, f"/rooms/{room_id}/kick", {"user_id": alice.user_id})
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_kick_someone_not_in_the_room(client: TestClient, alice: User, bob: User
                                            ) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    status, body = await post(client, alice, f"/rooms/{room_id}/kick", {"user_id": bob.user_id})
    assert status == 403, body
    assert await membership_of(client, alice, room_id, bob.user_id) is None


async def test_ban_unban(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    status, body = await post(client, alice, f"/rooms/{room_id}/ban",
                              {"user_id": bob.user_id, "reason": "rude"})
    assert (status, body) == (200, {})
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None
    assert (member["content"]["membership"], member["content"]["reason"]) == ("ban", "rude")
    assert await joined_rooms(client, bob) == []
    # Banned: cannot join, even a public room, nor be invited.
    status, body = await post(client, bob, f"/rooms/{room_id}/join")
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await post(client, alice, f"/rooms/{room_id}/invite",
                              {"user_id": bob.user_id})
    assert_error(status, body, 403, "M_FORBIDDEN")
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None and member["content"]["membership"] == "ban"
    status, body = await post(client, alice, f"/rooms/{room_id}/unban",
                              {"user_id": bob.user_id})
    assert (status, body) == (200, {})
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None and member["content"]["membership"] == "leave"
    await join(client, bob, room_id)
    assert await joined_rooms(client, bob) == [room_id]


async def test_ban_someone_never_in_the_room(client: TestClient, alice: User, bob: User
                                             ) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    status, body = await post(client, alice, f"/rooms/{room_id}/ban", {"user_id": bob.user_id})
    assert (status, body) == (200, {})
    status, body = await post(client, bob, f"/rooms/{room_id}/join")
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_ban_and_unban_need_power(client: TestClient, alice: User, bob: User,
                                        carol: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    await join(client, carol, room_id)
    status, body = await post(client, bob, f"/rooms/{room_id}/ban", {"user_id": carol.user_id})
    assert_error(status, body, 403, "M_FORBIDDEN")
    member = await membership_of(client, alice, room_id, carol.user_id)
    assert member is not None and member["content"]["membership"] == "join"
    status, body = await post(client, alice, f"/rooms/{room_id}/ban",
                              {"user_id": carol.user_id})
    assert status == 200, body
    status, body = await post(client, bob, f"/rooms/{room_id}/unban",
                              {"user_id": carol.user_id})
    assert_error(status, body, 403, "M_FORBIDDEN")
    member = await membership_of(client, alice, room_id, carol.user_id)
    assert member is not None and member["content"]["membership"] == "ban"


async def test_moderator_can_kick_lower_but_not_equal(client: TestClient, alice: User,
                                                      bob: User, carol: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat", room_version="11",
                                power_level_content_override={
                                    "users": {alice.user_id: 100, bob.user_id: 50,
                                              carol.user_id: 50}})
    await join(client, bob, room_id)
    await join(client, carol, room_id)
    status, body = await post(client, bob, f"/rooms/{room_id}/kick", {"user_id": carol.user_id})
    assert_error(status, body, 403, "M_FORBIDDEN")
    dave = await new_user(client, "dave")
    await join(client, dave, room_id)
    status, body = await post(client, bob, f"/rooms/{room_id}/kick", {"user_id": dave.user_id})
    assert (status, body) == (200, {})


# -- knock ------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_knock(client: TestClient, alice: User, bob: User, version: str) -> None:
    room_id = await create_room(client, alice, room_version=version, initial_state=[
        {"type": "m.room.join_rules", "content": {"join_rule": "knock"}}])
    status, body = await post(client, bob, f"/knock/{room_id}", {"reason": "let me in"})
    assert (status, body) == (200, {"room_id": room_id})
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None
    assert member["content"]["membership"] == "knock"
    assert member["content"]["reason"] == "let me in"
    # Knocking is not joining.
    assert await joined_rooms(client, bob) == []
    status, body = await post(client, bob, f"/rooms/{room_id}/join")
    assert_error(status, body, 403, "M_FORBIDDEN")
    # The knock is answered with an invite, which bob accepts.
    status, body = await post(client, alice, f"/rooms/{room_id}/invite",
                              {"user_id": bob.user_id})
    assert status == 200, body
    await join(client, bob, room_id)
    assert await joined_rooms(client, bob) == [room_id]


async def test_knock_by_alias(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, room_alias_name="door", initial_state=[
        {"type": "m.room.join_rules", "content": {"join_rule": "knock"}}])
    status, body = await post(client, bob, f"/knock/#door:{SERVER_NAME}")
    assert (status, body) == (200, {"room_id": room_id})


async def test_knock_only_where_the_join_rule_allows(client: TestClient, alice: User,
                                                     bob: User) -> None:
    for preset in ("private_chat", "public_chat"):
        room_id = await create_room(client, alice, preset=preset)
        status, body = await post(client, bob, f"/knock/{room_id}")
        assert_error(status, body, 403, "M_FORBIDDEN")
        assert await membership_of(client, alice, room_id, bob.user_id) is None


async def test_knock_rejected_by_kick(client: TestClient, alice: User, bob: User) -> None:
    room_id = await create_room(client, alice, initial_state=[
        {"type": "m.room.join_rules", "content": {"join_rule": "knock"}}])
    status, body = await post(client, bob, f"/knock/{room_id}")
    assert status == 200, body
    status, body = await post(client, alice, f"/rooms/{room_id}/kick", {"user_id": bob.user_id})
    assert status == 200, body
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None and member["content"]["membership"] == "leave"


# -- restricted join rule ---------------------------------------------------------------------

async def test_restricted_join_via_another_rooms_membership(
        client: TestClient, alice: User, bob: User, carol: User) -> None:
    space = await create_room(client, alice, preset="public_chat")
    room_id = await create_room(client, alice, initial_state=[
        {"type": "m.room.join_rules", "content": {
            "join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": space}]}}])
    await join(client, bob, space)
    status, body = await post(client, bob, f"/rooms/{room_id}/join")
    assert (status, body) == (200, {"room_id": room_id})
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None
    assert member["content"]["membership"] == "join"
    assert member["content"]["join_authorised_via_users_server"] == alice.user_id
    # carol is not in the allowed room.
    before = ids(await room_state(client, alice, room_id))
    status, body = await post(client, carol, f"/rooms/{room_id}/join")
    assert_error(status, body, 403, "M_FORBIDDEN")
    assert ids(await room_state(client, alice, room_id)) == before
    # Having left the allowed room is not enough either.
    status, body = await post(client, bob, f"/rooms/{space}/leave")
    assert status == 200
    status, body = await post(client, bob, f"/rooms/{room_id}/leave")
    assert status == 200
    status, body = await post(client, bob, f"/rooms/{room_id}/join")
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_restricted_room_still_admits_invitees(client: TestClient, alice: User,
                                                     carol: User) -> None:
    room_id = await create_room(client, alice, invite=[carol.user_id], initial_state=[
        {"type": "m.room.join_rules", "content": {
            "join_rule": "restricted",
            "allow": [{"type": "m.room_membership", "room_id": "!other:test.local"}]}}])
    await join(client, carol, room_id)
    member = await membership_of(client, alice, room_id, carol.user_id)
    assert member is not None
    assert "join_authorised_via_users_server" not in member["content"]


# -- lists of rooms and members ---------------------------------------------------------------

async def test_joined_rooms(client: TestClient, alice: User, bob: User) -> None:
    assert await joined_rooms(client, bob) == []
    one = await create_room(client, alice, preset="public_chat")
    two = await create_room(client, alice, preset="public_chat")
    invited = await create_room(client, alice, invite=[bob.user_id])
    await join(client, bob, one)
    await join(client, bob, two)
    assert sorted(await joined_rooms(client, bob)) == sorted([one, two])
    assert sorted(await joined_rooms(client, alice)) == sorted([one, two, invited])
    await post(client, bob, f"/rooms/{one}/leave")
    assert await joined_rooms(client, bob) == [two]


async def test_joined_members(client: TestClient, alice: User, bob: User, carol: User) -> None:
    status, body = await api(client, "PUT", f"/profile/{bob.user_id}/displayname", bob,
                             {"displayname": "Bobby"})
    assert status == 200, body
    room_id = await create_room(client, alice, preset="public_chat", invite=[carol.user_id])
    await join(client, bob, room_id)
    status, body = await api(client, "GET", f"/rooms/{room_id}/joined_members", alice)
    assert status == 200, body
    assert body == {"joined": {alice.user_id: {"display_name": "alice"},
                               bob.user_id: {"display_name": "Bobby"}}}
    # The invitee is not joined and may not look.
    status, body = await api(client, "GET", f"/rooms/{room_id}/joined_members", carol)
    assert_error(status, body, 403, "M_FORBIDDEN")
    dave = await new_user(client, "dave")
    status, body = await api(client, "GET", f"/rooms/{room_id}/joined_members", dave)
    assert_error(status, body, 403, "M_FORBIDDEN")
    # Nor may someone who left.
    await post(client, bob, f"/rooms/{room_id}/leave")
    status, body = await api(client, "GET", f"/rooms/{room_id}/joined_members", bob)
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_members_with_filters(client: TestClient, alice: User, bob: User, carol: User
                                    ) -> None:
    dave = await new_user(client, "dave")
    room_id = await create_room(client, alice, preset="public_chat", invite=[carol.user_id])
    await join(client, bob, room_id)
    await join(client, dave, room_id)
    await post(client, dave, f"/rooms/{room_id}/leave")

    async def members(**query: str) -> dict[str, str]:
        status, body = await api(client, "GET", f"/rooms/{room_id}/members", bob, query=query)
        assert status == 200, body
        assert all(e["type"] == "m.room.member" for e in body["chunk"])
        return {e["state_key"]: e["content"]["membership"] for e in body["chunk"]}

    assert await members() == {alice.user_id: "join", bob.user_id: "join",
                               carol.user_id: "invite", dave.user_id: "leave"}
    assert await members(membership="join") == {alice.user_id: "join", bob.user_id: "join"}
    assert await members(membership="invite") == {carol.user_id: "invite"}
    assert await members(not_membership="leave") == {
        alice.user_id: "join", bob.user_id: "join", carol.user_id: "invite"}
    assert await members(membership="join", not_membership="leave") == {
        alice.user_id: "join", bob.user_id: "join"}
    assert await members(membership="ban") == {}


async def test_members_at_a_point_in_history(client: TestClient, alice: User, bob: User
                                             ) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    early = await send_text(client, alice, room_id, "before bob")
    await join(client, bob, room_id)
    await send_text(client, bob, room_id, "bob is here")
    # Page back to the early message; the token where that page ends is a point before bob.
    status, page = await messages(client, alice, room_id, limit=3)
    assert status == 200, page
    assert page["chunk"][-1]["event_id"] == early
    status, body = await api(client, "GET", f"/rooms/{room_id}/members", alice,
                             query={"at": page["end"]})
    assert status == 200, body
    assert {e["state_key"] for e in body["chunk"]} == {alice.user_id}
    status, body = await api(client, "GET", f"/rooms/{room_id}/members", alice)
    assert {e["state_key"] for e in body["chunk"]} == {alice.user_id, bob.user_id}


async def test_members_forbidden_for_outsiders(client: TestClient, alice: User, bob: User
                                               ) -> None:
    room_id = await create_room(client, alice, preset="private_chat")
    status, body = await api(client, "GET", f"/rooms/{room_id}/members", bob)
    assert_error(status, body, 403, "M_FORBIDDEN")


async def test_membership_endpoints_need_auth(client: TestClient, alice: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    for path in (f"/rooms/{room_id}/join", f"/rooms/{room_id}/leave", f"/join/{room_id}",
                 f"/rooms/{room_id}/forget"):
        status, body = await api(client, "POST", path, None, {})
        assert_error(status, body, 401, "M_MISSING_TOKEN")
    status, body = await api(client, "GET", "/joined_rooms", None)
    assert_error(status, body, 401, "M_MISSING_TOKEN")


async def test_power_levels_let_a_moderator_set_state(client: TestClient, alice: User,
                                                      bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    state = await room_state(client, alice, room_id)
    power = state[("m.room.power_levels", "")]["content"]
    status, body = await put_state(client, alice, room_id, "m.room.power_levels",
                                   {**power, "users": {bob.user_id: 50}})
    assert status == 200, body
    status, body = await put_state(client, bob, room_id, "m.room.name", {"name": "By bob"})
    assert status == 200, body


async def test_forgotten_room_history_is_gone_for_that_user(client: TestClient, alice: User,
                                                             bob: User) -> None:
    room_id = await create_room(client, alice, preset="private_chat", invite=[bob.user_id])
    await join(client, bob, room_id)
    await send_text(client, alice, room_id, "before bob left")
    status, _ = await api(client, "POST", f"/rooms/{room_id}/leave", bob, {})
    assert status == 200
    status, body = await api(client, "GET", f"/rooms/{room_id}/messages", bob, query={"dir": "b"})
    assert status == 200  # a left user still reads up to the leave
    status, _ = await api(client, "POST", f"/rooms/{room_id}/forget", bob, {})
    assert status == 200
    status, body = await api(client, "GET", f"/rooms/{room_id}/messages", bob, query={"dir": "b"})
    assert_error(status, body, 403, "M_FORBIDDEN")
    # Alice keeps hers.
    status, body = await api(client, "GET", f"/rooms/{room_id}/messages", alice, query={"dir": "b"})
    assert status == 200


# -- another user's membership through PUT /state/m.room.member/{userId} ------------------------

async def put_member(client: TestClient, sender: User, room_id: str, target: str,
                     content: dict[str, Any]) -> tuple[int, Any]:
    return await put_state(client, sender, room_id, "m.room.member", content, target)


async def test_changing_another_users_membership_without_power_is_forbidden(
        client: TestClient, alice: User, bob: User, carol: User) -> None:
    """As Synapse: the state endpoint changes another user's membership as the membership
    endpoints do (a kick, ban or invite, by power), and refuses what those would refuse
    with 403, not 400."""
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    await join(client, carol, room_id)
    before = ids(await room_state(client, alice, room_id))
    for content in ({"membership": "leave"}, {"membership": "ban"},
                    {"membership": "join"}, {"membership": "knock"}):
        status, body = await put_member(client, bob, room_id, carol.user_id, content)
        assert_error(status, body, 403, "M_FORBIDDEN")
    # Nobody may join someone else, not even the room's creator.
    dave = await new_user(client, "dave")
    status, body = await put_member(client, alice, room_id, dave.user_id, {"membership": "join"})
    assert_error(status, body, 403, "M_FORBIDDEN")
    assert ids(await room_state(client, alice, room_id)) == before


async def test_kick_ban_unban_and_invite_through_the_state_endpoint(
        client: TestClient, alice: User, bob: User, carol: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)

    status, body = await put_member(client, alice, room_id, bob.user_id,
                                    {"membership": "leave", "reason": "spam"})
    assert status == 200, body
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None and member["event_id"] == body["event_id"]
    assert (member["sender"], member["content"]["membership"], member["content"]["reason"]) \
        == (alice.user_id, "leave", "spam")
    assert await joined_rooms(client, bob) == []

    status, body = await put_member(client, alice, room_id, bob.user_id, {"membership": "ban"})
    assert status == 200, body
    member = await membership_of(client, alice, room_id, bob.user_id)
    assert member is not None and member["content"]["membership"] == "ban"
    status, data = await post(client, bob, f"/rooms/{room_id}/join")
    assert_error(status, data, 403, "M_FORBIDDEN")
    # "leave" for a banned user is an unban.
    status, body = await put_member(client, alice, room_id, bob.user_id, {"membership": "leave"})
    assert status == 200, body
    await join(client, bob, room_id)

    private = await create_room(client, alice)
    status, body = await put_member(client, alice, private, carol.user_id,
                                    {"membership": "invite"})
    assert status == 200, body
    member = await membership_of(client, alice, private, carol.user_id)
    assert member is not None and member["content"]["membership"] == "invite"
    assert member["event_id"] == body["event_id"]
    await join(client, carol, private)


async def test_bad_membership_through_the_state_endpoint(client: TestClient, alice: User,
                                                         bob: User) -> None:
    room_id = await create_room(client, alice, preset="public_chat")
    await join(client, bob, room_id)
    before = ids(await room_state(client, alice, room_id))
    for content in ({}, {"membership": 1}, {"membership": "friend"}):
        status, body = await put_member(client, alice, room_id, bob.user_id, content)
        assert_error(status, body, 400, "M_BAD_JSON")
    status, body = await put_member(client, alice, room_id, "not-a-user", {"membership": "ban"})
    assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await put_member(client, alice, room_id, "@nobody:test.local",
                                    {"membership": "invite"})
    assert_error(status, body, 404, "M_NOT_FOUND")
    assert ids(await room_state(client, alice, room_id)) == before
