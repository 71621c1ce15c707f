"""Federation among three KT-Chat servers, end to end: real processes, TLS on loopback; alice
on A, bob on B, carol on C.

The servers are shared by the module (each test makes its own rooms). The usual room is made
by alice on A, joined by bob through A, then by carol through B alone (``via=[B]``), so C
learns of A only from the room's state. Every wait is a /sync long-poll (or a re-fetched
answer) bounded by at most 30 s. Tests that stop a server come last; the fixture starts any
server an earlier test left stopped.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from tests.helpers.federation import FedPair, FedServer, User, first, send_refused

WAIT = 30


def _tag() -> str:
    return uuid.uuid4().hex[:10]


def _starts_with(prefix: str) -> Callable[[Any], bool]:
    return lambda body: isinstance(body, str) and body.startswith(prefix)


class Trio(FedPair):
    """Servers A, B and C with alice, bob and carol. A ``FedPair`` (A and B) with a third
    server, so the federation conftest's failure hook reports all three servers' logs."""

    def __init__(self, a: FedServer, b: FedServer, c: FedServer, alice: User, bob: User,
                 carol: User) -> None:
        super().__init__(a, b, alice, bob)
        self.c, self.carol = c, carol

    @property
    def servers(self) -> list[FedServer]:
        return [self.a, self.b, self.c]

    @property
    def users(self) -> list[User]:
        return [self.alice, self.bob, self.carol]

    def others(self, user: User) -> list[User]:
        return [u for u in self.users if u is not user]

    async def catch_up(self) -> None:
        for user in self.users:
            await user.catch_up()

    async def room(self, **create: Any) -> str:
        """A public room by alice on A; bob joins via A, then carol via B only. Returns once
        every user has seen every join."""
        room_id = await self.alice.create_room(preset="public_chat", **create)
        assert await self.bob.join(room_id, via=[self.a.server_name]) == room_id
        await self.alice.wait_for_membership(room_id, self.bob.user_id, "join", WAIT)
        await self.bob.wait_for_membership(room_id, self.bob.user_id, "join", WAIT)
        assert await self.carol.join(room_id, via=[self.b.server_name]) == room_id
        for user in self.users:
            await user.wait_for_membership(room_id, self.carol.user_id, "join", WAIT)
        return room_id


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def _trio_module(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Trio]:
    root = tmp_path_factory.mktemp("fed3")
    servers = [FedServer(root, label) for label in ("A", "B", "C")]
    try:
        for server in servers:
            server.start()
        a, b, c = servers
        alice = await a.register("alice")
        bob = await b.register("bob")
        carol = await c.register("carol")
        yield Trio(a, b, c, alice, bob, carol)
    finally:
        for server in servers:
            server.stop()


@pytest_asyncio.fixture
async def trio(_trio_module: Trio) -> Trio:
    """All three servers up, every user's waits starting from this test."""
    _trio_module.ensure_running()
    await _trio_module.catch_up()
    return _trio_module



async def _message_ids(user: User, room_id: str, prefix: str | None = None) -> list[str]:
    """The room's ``m.room.message`` event IDs in ``user``'s /messages, oldest first."""
    return [ev["event_id"] for ev in await user.timeline(room_id, limit=200)
            if ev["type"] == "m.room.message" and (
                prefix is None or str(ev["content"].get("body", "")).startswith(prefix))]


# -- joining ----------------------------------------------------------------------------------


async def test_third_server_joins_through_second(trio: Trio) -> None:
    name = f"three {_tag()}"
    room_id = await trio.room(name=name)

    everyone = {u.user_id for u in trio.users}
    for user in trio.users:
        assert set(await user.joined_members(room_id)) == everyone, user
        assert room_id in await user.joined_rooms()
    # C has the room's state, from B.
    assert (await trio.carol.state_event(room_id, "m.room.name"))["name"] == name
    create = await trio.carol.state_event(room_id, "m.room.create")
    assert create.get("creator", trio.alice.user_id) == trio.alice.user_id

    # All three servers agree on the room's state, event for event.
    def by_key(state: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
        return {(ev["type"], ev["state_key"]): ev["event_id"] for ev in state}

    states = [by_key(await u.state(room_id)) for u in trio.users]
    assert states[0] == states[1] == states[2]


# -- messages ---------------------------------------------------------------------------------


async def test_messages_from_each_server_reach_the_other_two_in_order(trio: Trio) -> None:
    tag = _tag()
    room_id = await trio.room()

    all_ids: list[str] = []
    for sender in trio.users:
        bodies = [f"{tag} {sender.localpart} {i}" for i in range(3)]
        sent = [await sender.send_text(room_id, body) for body in bodies]
        all_ids += sent
        for other in trio.others(sender):
            got = await other.wait_for_timeline(room_id, 3, WAIT, type="m.room.message",
                                                sender=sender.user_id)
            assert [ev["event_id"] for ev in got] == sent, (other, sender)
            assert [ev["content"]["body"] for ev in got] == bodies, (other, sender)

    for user in trio.users:
        assert await _message_ids(user, room_id, tag) == all_ids, user
    # The copies on the three servers are one and the same event.
    for event_id in all_ids[::3]:
        copies = [await u.event(room_id, event_id) for u in trio.users]
        for key in ("event_id", "type", "sender", "content", "origin_server_ts", "room_id"):
            assert copies[0][key] == copies[1][key] == copies[2][key], (event_id, key)


async def test_carol_reaches_alice_directly_with_b_down(trio: Trio) -> None:
    """C joined through B, yet talks to A itself: with B stopped, carol's message reaches
    alice and alice's reply reaches carol. B, restarted, gets both."""
    alice, bob, carol, b = trio.alice, trio.bob, trio.carol, trio.b
    tag = _tag()
    room_id = await trio.room()
    warm = await carol.send_text(room_id, f"{tag} warm")
    for user in (alice, bob):
        await user.wait_for_event(room_id, WAIT, event_id=warm)

    assert b.stop() == 0
    from_carol = await carol.send_text(room_id, f"{tag} carol while B is down")
    got = await alice.wait_for_event(room_id, WAIT, event_id=from_carol)
    assert got["sender"] == carol.user_id
    assert got["content"]["body"] == f"{tag} carol while B is down"
    from_alice = await alice.send_text(room_id, f"{tag} alice while B is down")
    await carol.wait_for_event(room_id, WAIT, event_id=from_alice)

    b.start()
    got_b = await bob.wait_for_timeline(room_id, 2, WAIT,
                                        body=_starts_with(f"{tag} "),
                                        event_id=lambda e: e in (from_carol, from_alice))
    assert {ev["event_id"] for ev in got_b} == {from_carol, from_alice}
    expected = [warm, from_carol, from_alice]
    for user in trio.users:
        assert await _message_ids(user, room_id, tag) == expected, user


# -- ephemeral --------------------------------------------------------------------------------


async def test_typing_from_third_server_reaches_both(trio: Trio) -> None:
    carol = trio.carol
    room_id = await trio.room()

    await carol.typing(room_id, True, timeout_ms=30_000)
    for watcher in (trio.alice, trio.bob):
        await watcher.wait_for_ephemeral(
            room_id, "m.typing", lambda c: carol.user_id in c.get("user_ids", []), WAIT)

    await carol.typing(room_id, False)
    for watcher in (trio.alice, trio.bob):
        await watcher.wait_for_ephemeral(
            room_id, "m.typing", lambda c: carol.user_id not in c.get("user_ids", []), WAIT)


async def test_read_receipt_from_third_server_reaches_both(trio: Trio) -> None:
    alice, carol = trio.alice, trio.carol
    room_id = await trio.room()
    event_id = await alice.send_text(room_id, f"read me {_tag()}")
    await carol.wait_for_event(room_id, WAIT, event_id=event_id)

    await carol.receipt(room_id, event_id, "m.read")

    for watcher in (alice, trio.bob):
        receipt = await watcher.wait_for_ephemeral(
            room_id, "m.receipt",
            lambda c: carol.user_id in c.get(event_id, {}).get("m.read", {}), WAIT)
        assert isinstance(receipt["content"][event_id]["m.read"][carol.user_id]["ts"], int)


# -- state ------------------------------------------------------------------------------------


async def test_room_name_by_a_seen_by_c(trio: Trio) -> None:
    alice, carol = trio.alice, trio.carol
    name = f"renamed {_tag()}"
    room_id = await trio.room(name="before")

    name_id = await alice.send_state(room_id, "m.room.name", {"name": name})

    for watcher in (carol, trio.bob):
        seen = await watcher.wait_for_event(room_id, WAIT, event_id=name_id)
        assert seen["type"] == "m.room.name"
        assert seen["state_key"] == ""
        assert seen["sender"] == alice.user_id
        assert seen["content"] == {"name": name}
        assert await watcher.state_event(room_id, "m.room.name") == {"name": name}
    on_c = {(ev["type"], ev["state_key"]): ev["event_id"] for ev in await carol.state(room_id)}
    assert on_c[("m.room.name", "")] == name_id


async def test_concurrent_name_changes_converge(trio: Trio) -> None:
    """alice (on A) and carol (on C, made a moderator) rename the room at the same moment,
    and bob on B too: however the servers receive the three, they must all end up agreeing
    on the room's name (state resolution picks one winner for every server), and the name
    each server reports is that of the state event all three agree on."""
    alice, bob, carol = trio.alice, trio.bob, trio.carol
    tag = _tag()
    room_id = await trio.room(name="start")
    power = await alice.state_event(room_id, "m.room.power_levels")
    power.setdefault("users", {}).update({bob.user_id: 50, carol.user_id: 50})
    power_id = await alice.send_state(room_id, "m.room.power_levels", power)
    for user in (bob, carol):
        await user.wait_for_event(room_id, WAIT, event_id=power_id)

    ids = await asyncio.gather(*(
        u.send_state(room_id, "m.room.name", {"name": f"{tag} by {u.localpart}"})
        for u in trio.users))
    for user in trio.users:
        await user.wait_for_timeline(room_id, 3, WAIT, event_id=lambda e: e in ids)

    # A message from each server after all three merges the branches everywhere.
    after = [await u.send_text(room_id, f"{tag} after {u.localpart}") for u in trio.users]
    for user in trio.users:
        await user.wait_for_timeline(room_id, 3, WAIT, event_id=lambda e: e in after)

    async def names() -> list[tuple[str, str]]:
        out = []
        for user in trio.users:
            state = {(ev["type"], ev["state_key"]): ev for ev in await user.state(room_id)}
            out.append((state[("m.room.name", "")]["event_id"],
                        (await user.state_event(room_id, "m.room.name"))["name"]))
        return out

    seen = await names()
    assert seen[0][0] in ids, seen
    assert seen[0] == seen[1] == seen[2], f"servers A, B, C disagree on the name: {seen}"


# -- kick, leave ------------------------------------------------------------------------------


async def test_a_kicks_c(trio: Trio) -> None:
    alice, bob, carol = trio.alice, trio.bob, trio.carol
    room_id = await trio.room()

    await alice.kick(room_id, carol.user_id, reason="kicked by A")

    for watcher in (bob, carol):
        kick = await watcher.wait_for_membership(room_id, carol.user_id, "leave", WAIT)
        assert kick["sender"] == alice.user_id, watcher
        assert kick["content"].get("reason") == "kicked by A", watcher
    await carol.wait_for_left(room_id, WAIT)
    assert room_id not in await carol.joined_rooms()
    await send_refused(carol, room_id)
    for user in (alice, bob):
        assert set(await user.joined_members(room_id)) == {alice.user_id, bob.user_id}, user
    # The room goes on without carol.
    after = await bob.send_text(room_id, f"after the kick {_tag()}")
    await alice.wait_for_event(room_id, WAIT, event_id=after)


async def test_third_server_user_leaves(trio: Trio) -> None:
    alice, bob, carol = trio.alice, trio.bob, trio.carol
    room_id = await trio.room()

    await carol.leave(room_id)

    for watcher in (alice, bob):
        left = await watcher.wait_for_membership(room_id, carol.user_id, "leave", WAIT)
        assert left["sender"] == carol.user_id, watcher
    await carol.wait_for_left(room_id, WAIT)
    assert room_id not in await carol.joined_rooms()
    for user in (alice, bob):
        assert set(await user.joined_members(room_id)) == {alice.user_id, bob.user_id}, user
    await send_refused(carol, room_id)


# -- invites ----------------------------------------------------------------------------------


async def test_a_invites_c_to_a_new_room(trio: Trio) -> None:
    alice, carol = trio.alice, trio.carol
    tag = _tag()
    room_id = await alice.create_room(preset="private_chat", name=f"invite {tag}")

    await alice.invite(room_id, carol.user_id)

    invite_state = await carol.wait_for_invite(room_id, WAIT)
    member = first(invite_state, type="m.room.member", state_key=carol.user_id)
    assert member is not None, invite_state
    assert member["content"]["membership"] == "invite"
    assert member["sender"] == alice.user_id
    assert first(invite_state, type="m.room.name", content={"name": f"invite {tag}"}), \
        invite_state

    assert await carol.join_room_id(room_id) == room_id
    await alice.wait_for_membership(room_id, carol.user_id, "join", WAIT)
    await carol.wait_for_membership(room_id, carol.user_id, "join", WAIT)
    assert set(await carol.joined_members(room_id)) == {alice.user_id, carol.user_id}

    from_carol = await carol.send_text(room_id, f"{tag} hi alice")
    got = await alice.wait_for_event(room_id, WAIT, event_id=from_carol)
    assert got["content"]["body"] == f"{tag} hi alice"
    from_alice = await alice.send_text(room_id, f"{tag} hi carol")
    got = await carol.wait_for_event(room_id, WAIT, event_id=from_alice)
    assert got["content"]["body"] == f"{tag} hi carol"
    for user in (alice, carol):
        assert await _message_ids(user, room_id, tag) == [from_carol, from_alice], user


# -- a server down (last: it stops A; the fixture starts it again) ----------------------------


async def test_a_down_b_and_c_chat_then_a_catches_up(trio: Trio) -> None:
    alice, bob, carol, a = trio.alice, trio.bob, trio.carol, trio.a
    tag = _tag()
    room_id = await trio.room()
    warm = await alice.send_text(room_id, f"{tag} warm")
    for user in (bob, carol):
        await user.wait_for_event(room_id, WAIT, event_id=warm)

    assert a.stop() == 0

    # bob and carol send at the same time: their messages cross.
    async def burst(user: User) -> list[str]:
        return [await user.send_text(room_id, f"{tag} crossing {user.localpart} {i}")
                for i in range(5)]

    from_bob, from_carol = await asyncio.gather(burst(bob), burst(carol))
    got = await carol.wait_for_timeline(room_id, 5, WAIT,
                                        body=_starts_with(f"{tag} crossing bob"))
    assert [ev["event_id"] for ev in got] == from_bob
    got = await bob.wait_for_timeline(room_id, 5, WAIT,
                                      body=_starts_with(f"{tag} crossing carol"))
    assert [ev["event_id"] for ev in got] == from_carol
    # Then a conversation: each message answers the one before.
    conversation: list[str] = []
    for i in range(2):
        for speaker, listener in ((bob, carol), (carol, bob)):
            event_id = await speaker.send_text(room_id, f"{tag} talk {speaker.localpart} {i}")
            await listener.wait_for_event(room_id, WAIT, event_id=event_id)
            conversation.append(event_id)

    a.start()

    said = set(from_bob) | set(from_carol) | set(conversation)
    got = await alice.wait_for_timeline(room_id, len(said), WAIT,
                                        event_id=lambda e: e in said)
    assert {ev["event_id"] for ev in got} == said
    on_a = await _message_ids(alice, room_id, tag)
    assert on_a[0] == warm
    assert set(on_a[1:]) == said, on_a
    # In order: each sender's messages as sent, and the conversation after the crossing.
    for sent in (from_bob, from_carol, conversation):
        assert [e for e in on_a if e in sent] == sent, on_a
    assert on_a[-len(conversation):] == conversation, on_a
    # B and C hold the same messages.
    for user in (bob, carol):
        assert set(await _message_ids(user, room_id, tag)) == set(on_a), user

    # And A is back in the conversation both ways.
    back = await alice.send_text(room_id, f"{tag} A is back")
    for user in (bob, carol):
        await user.wait_for_event(room_id, WAIT, event_id=back)
    reply = await carol.send_text(room_id, f"{tag} welcome back")
    await alice.wait_for_event(room_id, WAIT, event_id=reply)
