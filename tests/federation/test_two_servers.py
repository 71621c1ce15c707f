"""Federation between two KT-Chat servers, end to end: real processes, TLS on loopback, and
the Matrix client-server API on both sides (alice on A, bob on B).

Each test makes its own rooms; every wait is on a condition (a sync long-poll or a re-fetched
answer) with a bound of at most 30 s.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers.federation import FedPair, User, first, poll_until, q, send_refused

RESTART_WAIT = 30


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _starts_with(prefix: str) -> Callable[[Any], bool]:
    return lambda body: isinstance(body, str) and body.startswith(prefix)



def _directions(pair: FedPair, direction: str) -> tuple[User, User]:
    """(the acting user, the one watching on the other server)."""
    return (pair.alice, pair.bob) if direction == "a_to_b" else (pair.bob, pair.alice)


# -- joining ---------------------------------------------------------------------------------


async def test_join_remote_room_by_id_with_server_name(fed_pair: FedPair) -> None:
    alice, bob, a = fed_pair.alice, fed_pair.bob, fed_pair.a
    name = f"by id {_tag()}"
    room_id = await alice.create_room(preset="public_chat", name=name)

    assert await bob.join(room_id, via=[a.server_name]) == room_id

    join = await alice.wait_for_membership(room_id, bob.user_id, "join")
    assert join["sender"] == bob.user_id
    await bob.wait_for_membership(room_id, bob.user_id, "join")
    assert room_id in await bob.joined_rooms()
    # B has the room's state from A.
    assert (await bob.state_event(room_id, "m.room.name"))["name"] == name
    both = {alice.user_id, bob.user_id}
    assert set(await bob.joined_members(room_id)) == both
    assert set(await alice.joined_members(room_id)) == both


async def test_join_remote_room_by_alias(fed_pair: FedPair) -> None:
    alice, bob, a = fed_pair.alice, fed_pair.bob, fed_pair.a
    localpart = f"fedalias{_tag()}"
    room_id = await alice.create_room(preset="public_chat", room_alias_name=localpart)
    alias = a.alias(localpart)

    # B resolves the alias by asking A.
    resolved = await bob.resolve_alias(alias)
    assert resolved["room_id"] == room_id
    assert a.server_name in resolved["servers"]

    assert await bob.join(alias) == room_id
    await alice.wait_for_membership(room_id, bob.user_id, "join")
    assert set(await bob.joined_members(room_id)) == {alice.user_id, bob.user_id}


# -- messages and state -----------------------------------------------------------------------


async def test_messages_cross_both_ways_in_order(fed_pair: FedPair) -> None:
    alice, bob = fed_pair.alice, fed_pair.bob
    tag = _tag()
    room_id = await fed_pair.shared_room()

    a_ids = [await alice.send_text(room_id, f"{tag} from alice {i}") for i in range(5)]
    got = await bob.wait_for_timeline(room_id, 5, type="m.room.message", sender=alice.user_id)
    assert [ev["event_id"] for ev in got] == a_ids
    assert [ev["content"]["body"] for ev in got] == [f"{tag} from alice {i}" for i in range(5)]

    b_ids = [await bob.send_text(room_id, f"{tag} from bob {i}") for i in range(5)]
    got = await alice.wait_for_timeline(room_id, 5, type="m.room.message", sender=bob.user_id)
    assert [ev["event_id"] for ev in got] == b_ids
    assert [ev["content"]["body"] for ev in got] == [f"{tag} from bob {i}" for i in range(5)]

    # Both servers tell the same history, in the same order.
    for user in (alice, bob):
        messages = [ev["event_id"] for ev in await user.timeline(room_id)
                    if ev["type"] == "m.room.message"]
        assert messages == a_ids + b_ids, user
    # A remote copy is the same event as the original.
    for event_id in (a_ids[0], b_ids[0]):
        here, there = await alice.event(room_id, event_id), await bob.event(room_id, event_id)
        for key in ("event_id", "type", "sender", "content", "origin_server_ts", "room_id"):
            assert here[key] == there[key], key


async def test_state_changes_cross_both_ways(fed_pair: FedPair) -> None:
    alice, bob = fed_pair.alice, fed_pair.bob
    tag = _tag()
    room_id = await fed_pair.shared_room()

    name_id = await alice.send_state(room_id, "m.room.name", {"name": f"Name {tag}"})
    seen = await bob.wait_for_event(room_id, event_id=name_id)
    assert seen["type"] == "m.room.name"
    assert seen["state_key"] == ""
    assert seen["content"] == {"name": f"Name {tag}"}
    assert (await bob.state_event(room_id, "m.room.name")) == {"name": f"Name {tag}"}

    # Alice lets bob set the topic (a state change that B must apply to authorize bob's).
    power = await alice.state_event(room_id, "m.room.power_levels")
    power.setdefault("users", {})[bob.user_id] = 50
    power_id = await alice.send_state(room_id, "m.room.power_levels", power)
    await bob.wait_for_event(room_id, event_id=power_id)

    topic_id = await bob.send_state(room_id, "m.room.topic", {"topic": f"Topic {tag}"})
    seen = await alice.wait_for_event(room_id, event_id=topic_id)
    assert seen["sender"] == bob.user_id
    assert seen["content"] == {"topic": f"Topic {tag}"}
    assert (await alice.state_event(room_id, "m.room.topic")) == {"topic": f"Topic {tag}"}

    # Both servers' /state agree, event for event.
    def by_key(state: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
        return {(ev["type"], ev["state_key"]): ev["event_id"] for ev in state}

    on_a, on_b = by_key(await alice.state(room_id)), by_key(await bob.state(room_id))
    assert on_a == on_b
    assert on_a[("m.room.name", "")] == name_id
    assert on_a[("m.room.topic", "")] == topic_id
    assert on_a[("m.room.power_levels", "")] == power_id
    assert on_a[("m.room.member", bob.user_id)] is not None


# -- invites ----------------------------------------------------------------------------------


async def test_invite_remote_user_then_join(fed_pair: FedPair) -> None:
    alice, bob = fed_pair.alice, fed_pair.bob
    name = f"invite {_tag()}"
    room_id = await alice.create_room(preset="private_chat", name=name)

    await alice.invite(room_id, bob.user_id)
    invite = await alice.wait_for_membership(room_id, bob.user_id, "invite")
    assert invite["sender"] == alice.user_id

    invite_state = await bob.wait_for_invite(room_id)
    member = first(invite_state, type="m.room.member", state_key=bob.user_id)
    assert member is not None, invite_state
    assert member["content"]["membership"] == "invite"
    assert member["sender"] == alice.user_id

    # No server named: B joins through the server the invite came from.
    assert await bob.join_room_id(room_id) == room_id
    join = await alice.wait_for_membership(room_id, bob.user_id, "join")
    assert join["sender"] == bob.user_id
    await bob.wait_for_membership(room_id, bob.user_id, "join")
    assert (await bob.state_event(room_id, "m.room.name"))["name"] == name
    assert set(await bob.joined_members(room_id)) == {alice.user_id, bob.user_id}


async def test_remote_user_rejects_invite(fed_pair: FedPair) -> None:
    alice, bob = fed_pair.alice, fed_pair.bob
    room_id = await alice.create_room(preset="private_chat", name=f"rejected {_tag()}")
    await alice.invite(room_id, bob.user_id)
    await bob.wait_for_invite(room_id)

    await bob.leave(room_id)

    rejection = await alice.wait_for_membership(room_id, bob.user_id, "leave")
    assert rejection["sender"] == bob.user_id
    await bob.wait_for_left(room_id)
    assert room_id not in await bob.joined_rooms()
    members = await alice.request("GET", f"/rooms/{q(room_id)}/members")
    bob_member = first(members["chunk"], state_key=bob.user_id)
    assert bob_member is not None
    assert bob_member["content"]["membership"] == "leave"


# -- kick, ban, leave -------------------------------------------------------------------------


async def test_kick_remote_user(fed_pair: FedPair) -> None:
    alice, bob = fed_pair.alice, fed_pair.bob
    room_id = await fed_pair.shared_room()

    await alice.kick(room_id, bob.user_id, reason="kicked in a test")

    kick = await bob.wait_for_membership(room_id, bob.user_id, "leave")
    assert kick["sender"] == alice.user_id
    assert kick["content"].get("reason") == "kicked in a test"
    await bob.wait_for_left(room_id)
    assert room_id not in await bob.joined_rooms()
    await alice.wait_for_membership(room_id, bob.user_id, "leave")
    assert set(await alice.joined_members(room_id)) == {alice.user_id}
    await send_refused(bob, room_id)


async def test_ban_remote_user(fed_pair: FedPair) -> None:
    alice, bob, a = fed_pair.alice, fed_pair.bob, fed_pair.a
    room_id = await fed_pair.shared_room()

    await alice.ban(room_id, bob.user_id, reason="banned in a test")

    ban = await bob.wait_for_membership(room_id, bob.user_id, "ban")
    assert ban["sender"] == alice.user_id
    assert ban["content"].get("reason") == "banned in a test"
    await bob.wait_for_left(room_id)
    assert room_id not in await bob.joined_rooms()
    await alice.wait_for_membership(room_id, bob.user_id, "ban")
    await send_refused(bob, room_id)
    # Nor can bob come back.
    status, body = await bob.raw("POST", f"/join/{q(room_id)}", {},
                                 params=[("via", a.server_name), ("server_name", a.server_name)])
    assert status == 403, (status, body)
    assert body["errcode"] == "M_FORBIDDEN", body


async def test_leave_then_sending_refused(fed_pair: FedPair) -> None:
    alice, bob = fed_pair.alice, fed_pair.bob
    room_id = await fed_pair.shared_room()

    await bob.leave(room_id)

    left = await alice.wait_for_membership(room_id, bob.user_id, "leave")
    assert left["sender"] == bob.user_id
    await bob.wait_for_left(room_id)
    assert room_id not in await bob.joined_rooms()
    assert set(await alice.joined_members(room_id)) == {alice.user_id}
    await send_refused(bob, room_id)


# -- redaction --------------------------------------------------------------------------------


async def test_redaction_reaches_other_server(fed_pair: FedPair) -> None:
    alice, bob = fed_pair.alice, fed_pair.bob
    secret = f"secret {_tag()}"
    room_id = await fed_pair.shared_room()
    event_id = await alice.send_text(room_id, secret)
    await bob.wait_for_event(room_id, event_id=event_id)
    assert (await bob.event(room_id, event_id))["content"]["body"] == secret

    redaction_id = await alice.redact(room_id, event_id, reason="oops")

    redaction = await bob.wait_for_event(room_id, event_id=redaction_id)
    assert redaction["type"] == "m.room.redaction"
    # Room version 11+ carries `redacts` in the content; servers may also copy it to the top.
    assert redaction["content"].get("redacts", redaction.get("redacts")) == event_id
    redacted = await bob.event(room_id, event_id)
    assert redacted["content"] == {}
    assert redacted["unsigned"]["redacted_because"]["event_id"] == redaction_id
    original = first(await bob.timeline(room_id), event_id=event_id)
    assert original is not None
    assert original["content"] == {}
    assert secret not in json.dumps(await bob.messages(room_id))


# -- ephemeral: typing, receipts, presence ----------------------------------------------------


@pytest.mark.parametrize("direction", ["a_to_b", "b_to_a"])
async def test_typing_crosses(fed_pair: FedPair, direction: str) -> None:
    typist, watcher = _directions(fed_pair, direction)
    room_id = await fed_pair.shared_room()

    await typist.typing(room_id, True, timeout_ms=30_000)
    await watcher.wait_for_ephemeral(
        room_id, "m.typing", lambda c: typist.user_id in c.get("user_ids", []))

    await typist.typing(room_id, False)
    await watcher.wait_for_ephemeral(
        room_id, "m.typing", lambda c: typist.user_id not in c.get("user_ids", []))


@pytest.mark.parametrize("direction", ["a_to_b", "b_to_a"])
async def test_read_receipts_cross(fed_pair: FedPair, direction: str) -> None:
    reader, writer = _directions(fed_pair, direction)
    room_id = await fed_pair.shared_room()
    event_id = await writer.send_text(room_id, f"read me {_tag()}")
    await reader.wait_for_event(room_id, event_id=event_id)

    await reader.receipt(room_id, event_id, "m.read")

    receipt = await writer.wait_for_ephemeral(
        room_id, "m.receipt",
        lambda c: reader.user_id in c.get(event_id, {}).get("m.read", {}))
    assert isinstance(receipt["content"][event_id]["m.read"][reader.user_id]["ts"], int)


async def test_presence_crosses(fed_pair: FedPair) -> None:
    alice, bob = fed_pair.alice, fed_pair.bob
    tag = _tag()
    await fed_pair.shared_room()  # presence reaches those who share a room
    await bob.catch_up()

    await alice.set_presence("unavailable", status_msg=f"away {tag}")
    away = await bob.wait_for_presence(alice.user_id, "unavailable", f"away {tag}")
    assert away["type"] == "m.presence"

    await alice.set_presence("online", status_msg=f"here {tag}")
    await bob.wait_for_presence(alice.user_id, "online", f"here {tag}")
    status = await bob.get_presence(alice.user_id)
    assert status["presence"] == "online"
    assert status.get("status_msg") == f"here {tag}"


# -- friends (the org.ktchat.friends extension) ------------------------------------------------


async def test_friend_request_across_servers(fed_pair: FedPair) -> None:
    alice, bob = fed_pair.alice, fed_pair.bob

    room_id = await alice.friend_request(bob.user_id)

    invite_state = await bob.wait_for_invite(room_id)
    member = first(invite_state, type="m.room.member", state_key=bob.user_id)
    assert member is not None, invite_state
    assert member["content"].get("is_direct") is True
    incoming = await poll_until(
        bob.friend_requests, lambda r: any(x["user_id"] == alice.user_id for x in r["incoming"]),
        what="alice's request in bob's incoming requests")
    assert {"user_id": alice.user_id, "room_id": room_id} in incoming["incoming"]
    outgoing = await alice.friend_requests()
    assert {"user_id": bob.user_id, "room_id": room_id} in outgoing["outgoing"]

    assert await bob.accept_friend(alice.user_id) == room_id

    await alice.wait_for_membership(room_id, bob.user_id, "join")
    alice_friends = await poll_until(
        alice.friends, lambda f: any(x["user_id"] == bob.user_id for x in f),
        what="bob in alice's friends")
    bob_friends = await bob.friends()
    assert first(alice_friends, user_id=bob.user_id)["room_id"] == room_id  # type: ignore[index]
    assert first(bob_friends, user_id=alice.user_id)["room_id"] == room_id  # type: ignore[index]
    # Any Matrix client sees the conversation: the room is in both users' m.direct.
    await poll_until(lambda: alice.account_data("m.direct"),
                     lambda d: room_id in d.get(bob.user_id, []), what="alice's m.direct")
    assert room_id in (await bob.account_data("m.direct")).get(alice.user_id, [])
    # No request is left pending on either side.
    assert not any(x["user_id"] == bob.user_id
                   for x in (await alice.friend_requests())["outgoing"])
    assert not any(x["user_id"] == alice.user_id
                   for x in (await bob.friend_requests())["incoming"])


# -- restarts and crashes (last: they take servers down; the fixture starts them again) -------


async def test_receiver_down_gets_everything_after_restart(fed_pair: FedPair) -> None:
    alice, bob, b = fed_pair.alice, fed_pair.bob, fed_pair.b
    tag = _tag()
    room_id = await fed_pair.shared_room()
    hello = await bob.send_text(room_id, f"{tag} hello")
    await alice.wait_for_event(room_id, event_id=hello)
    before = await alice.send_text(room_id, f"{tag} before")
    await bob.wait_for_event(room_id, event_id=before)

    assert b.stop() == 0
    sent = [await alice.send_text(room_id, f"{tag} while down {i}") for i in range(20)]
    b.start()

    got = await bob.wait_for_timeline(room_id, 20, timeout=RESTART_WAIT,
                                      body=_starts_with(f"{tag} while down"))
    assert [ev["event_id"] for ev in got] == sent
    assert [ev["content"]["body"] for ev in got] == [f"{tag} while down {i}" for i in range(20)]
    on_b = [ev["event_id"] for ev in await bob.timeline(room_id)
            if ev["type"] == "m.room.message"]
    assert on_b[-20:] == sent
    # And the conversation goes on both ways.
    reply = await bob.send_text(room_id, f"{tag} back")
    await alice.wait_for_event(room_id, event_id=reply)


async def test_sender_killed_with_queue_full_loses_nothing(fed_pair: FedPair) -> None:
    alice, bob, a, b = fed_pair.alice, fed_pair.bob, fed_pair.a, fed_pair.b
    tag = _tag()
    room_id = await fed_pair.shared_room()
    warm = await alice.send_text(room_id, f"{tag} warm")
    await bob.wait_for_event(room_id, event_id=warm)

    assert b.stop() == 0
    # Each 200 means committed: the events and A's outbound queue to B are in A's database.
    sent = [await alice.send_text(room_id, f"{tag} queued {i}") for i in range(10)]
    assert a.kill() == -9
    a.start()
    b.start()

    got = await bob.wait_for_timeline(room_id, 10, timeout=RESTART_WAIT,
                                      body=_starts_with(f"{tag} queued"))
    assert [ev["event_id"] for ev in got] == sent
    on_a = [ev["event_id"] for ev in await alice.timeline(room_id)
            if ev["type"] == "m.room.message"]
    assert on_a[-10:] == sent
    reply = await bob.send_text(room_id, f"{tag} got them")
    await alice.wait_for_event(room_id, event_id=reply, timeout=RESTART_WAIT)


# -- PostgreSQL on one side ---------------------------------------------------------------------


async def test_messages_cross_with_postgres_on_one_side(fed_pair_pg: FedPair) -> None:
    alice, bob = fed_pair_pg.alice, fed_pair_pg.bob
    tag = _tag()
    room_id = await fed_pair_pg.shared_room()
    from_a = await alice.send_text(room_id, f"{tag} to postgres")
    await bob.wait_for_event(room_id, event_id=from_a)
    from_b = await bob.send_text(room_id, f"{tag} from postgres")
    await alice.wait_for_event(room_id, event_id=from_b)
    for user in (alice, bob):
        messages = [ev["event_id"] for ev in await user.timeline(room_id)
                    if ev["type"] == "m.room.message"]
        assert messages == [from_a, from_b], user


async def test_a_room_joined_through_a_remote_invite_syncs_with_its_state(
        fed_pair: FedPair) -> None:
    """The joiner's own server gives the room's state in sync (initial and incremental): a
    client learns the room's name, encryption and members from it (found by the matrix-nio
    test across servers: the room came with an empty state)."""
    alice, bob = fed_pair.alice, fed_pair.bob
    name = f"invite sync {_tag()}"
    room_id = await alice.create_room(preset="private_chat", name=name)
    before = (await bob.sync())["next_batch"]
    await alice.invite(room_id, bob.user_id)
    await bob.wait_for_invite(room_id)
    assert await bob.join_room_id(room_id) == room_id
    await bob.wait_for_membership(room_id, bob.user_id, "join")

    def seen(room: dict) -> set[tuple[str, str]]:
        events = [*room["state"]["events"], *room["timeline"]["events"]]
        return {(e["type"], e["state_key"]) for e in events if "state_key" in e}

    for since in (None, before):
        response = await bob.sync(since)
        room = response["rooms"]["join"][room_id]
        keys = seen(room)
        assert {("m.room.create", ""), ("m.room.name", ""), ("m.room.power_levels", ""),
                ("m.room.member", alice.user_id), ("m.room.member", bob.user_id)} <= keys, \
            (since, room)
