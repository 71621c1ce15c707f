"""State convergence among three KT-Chat servers after concurrent state changes: real
processes, TLS on loopback, and network partitions between them.

Servers A (alice, the room's creator and admin), B (bob) and C (carol, and dave, who stays in
every room) sit behind ``tests.helpers.partition.Network``: a test cuts a server off from the
other two while all three keep running (its requests and theirs to it are dropped at the
connection), lets users on both sides change the room's state, then heals the cut. Every
test ends the same way: once the winning change is on every server, after two rounds of
messages from a user on each server (each round seen by all three before the next, so every
server holds every event of both sides), the room's current state (``GET /rooms/{id}/state``
through a joined user on each server, as a map ``(type, state_key) -> event_id``) is the same
on A, B and C, and it is the state that state resolution gives (v2 for room version 11, v2.1
for room version 12); each test says which event wins and why.

Spec: https://spec.matrix.org/v1.16/rooms/v2/#state-resolution, and room version 12's
changes (v2.1). In short: the power events of the conflicted state (power levels, join rules,
and membership events by which someone bans or kicks someone else) are sorted by reverse
topological power ordering (auth-chain order, then the sender's power level, higher first,
then ``origin_server_ts``, then event ID) and authorised one by one against the state
resolved so far; each that passes replaces what came before. The other conflicted events
follow in mainline order, checked the same way against the resolved power levels. So a
change made concurrently by someone whose power a concurrent, higher-ranked change took away
fails its check and is in no server's state, whatever the timestamps say.

In each race the change that must lose is sent last, so it is the later by timestamp: a
server that lets the later of two concurrent values win (as this one did before the
roomserver, #15) keeps its own losing change on the side that was cut off, while the other two
soft-fail it, and the test shows the three servers' differing events.

The servers are shared by the module (each test makes its own room); the gap test, last,
stops and restarts C. Waits poll an endpoint, each bounded (30 s, 60 s for C's restart);
nothing sleeps to synchronise. The whole module takes about a minute.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.helpers.federation import FedPair, FedServer, User, poll_until
from tests.helpers.partition import (
    NAME,
    PL,
    TOPIC,
    Network,
    State,
    StateDiverged,
    StateKey,
    converged,
    has_event,
    member,
    merge,
    power_content,
    put_state,
    seen,
    state_id,
)

WAIT = 30
VERSIONS = ["11", "12"]
# A server that was cut off retries within a second of the heal (the harness default: 5 s).
FAST_RETRY = {"federation": {"retry_initial_interval": "250ms", "retry_max_interval": "1s"}}



class Net(FedPair):
    """Servers A, B, C behind a network a test can cut; alice on A, bob on B, carol and dave
    on C. A ``FedPair`` (A and B) with a third server, so the federation conftest's failure
    hook reports all three servers' logs."""

    def __init__(self, network: Network, a: FedServer, b: FedServer, c: FedServer,
                 alice: User, bob: User, carol: User, dave: User) -> None:
        super().__init__(a, b, alice, bob)
        self.network, self.c, self.carol, self.dave = network, c, carol, dave

    @property
    def servers(self) -> list[FedServer]:
        return [self.a, self.b, self.c]

    @property
    def witnesses(self) -> list[User]:
        """One user per server, joined to the room throughout: A's, B's and C's view."""
        return [self.alice, self.bob, self.dave]

    async def catch_up(self) -> None:
        for user in (self.alice, self.bob, self.carol, self.dave):
            await user.catch_up()

    async def room(self, version: str, **create: Any) -> str:
        """A public room of ``version`` made by alice on A, joined by bob, carol and dave
        through A; returns once every server lists all four as joined."""
        room_id = await self.alice.create_room(preset="public_chat", room_version=version,
                                               **create)
        for user in (self.bob, self.carol, self.dave):
            assert await user.join(room_id, via=[self.a.server_name]) == room_id
        everyone = {u.user_id for u in (self.alice, self.bob, self.carol, self.dave)}
        for user in self.witnesses:
            await poll_until(lambda u=user: u.joined_members(room_id),
                             lambda m: set(m) == everyone, WAIT,
                             what=f"all four joined on {user.server.label}")
        return room_id

    async def set_power(self, sender: User, room_id: str, users: dict[User, int] | None = None,
                        events: dict[str, int] | None = None,
                        seen_by: list[User] | None = None) -> str:
        """``sender`` changes power levels; returns once ``seen_by`` (default: a user on
        every server) have the event."""
        content = await power_content(sender, room_id, users, events)
        event_id = await put_state(sender, room_id, PL, content)
        await seen(self.witnesses if seen_by is None else seen_by, room_id, [event_id], WAIT)
        return event_id

    async def merge(self, room_id: str) -> None:
        await merge(self.witnesses, room_id, timeout=WAIT)

    async def converged(self, room_id: str, expected: dict[StateKey, str | None]) -> State:
        return await converged(self.witnesses, room_id, expected)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def _net_module(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    root = tmp_path_factory.mktemp("converge")
    network = Network()
    servers: list[FedServer] = []
    try:
        for label in ("A", "B", "C"):
            # Each behind its proxy and started as soon as it is made: the ports it was
            # given are taken at once (see Network.add).
            server = FedServer(root, label, config=FAST_RETRY)
            servers.append(server)
            network.add(server)
            server.start()
        a, b, c = servers
        alice = await a.register("alice")
        bob = await b.register("bob")
        carol = await c.register("carol")
        dave = await c.register("dave")
        yield Net(network, a, b, c, alice, bob, carol, dave)
    finally:
        for server in servers:
            server.stop()
        network.close()


@pytest_asyncio.fixture
async def net(_net_module: Net) -> Net:
    """No cut in the network, all three servers up, every user's waits from this test on."""
    _net_module.network.reset()
    _net_module.ensure_running()
    await _net_module.catch_up()
    return _net_module


# -- 1. concurrent power level changes ------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_concurrent_power_level_changes(net: Net, version: str) -> None:
    """alice (A: 100 in v11; the creator, above every level, in v12) and bob (B: 75, and
    changing power levels takes 75) change the power levels at the same time, B cut off:
    alice demotes bob to 50; bob, not knowing, raises dave to 60 (sent last: the later).

    Expected: alice's event, on every server. Both are power events of the conflicted set;
    alice's sender outranks bob's, so it comes first in the reverse topological power
    ordering and passes; bob's, checked next against alice's levels, fails (bob, now 50, is
    below the 75 it takes). (Taken the other way round, alice's would pass after bob's and
    replace it: the same answer.) dave stays at the default level."""
    alice, bob, dave = net.alice, net.bob, net.dave
    room_id = await net.room(version)
    await net.set_power(alice, room_id, users={bob: 75}, events={"m.room.power_levels": 75})

    net.network.isolate(net.b)
    by_alice = await net.set_power(alice, room_id, users={bob: 50}, seen_by=[alice, dave])
    by_bob = await put_state(bob, room_id, PL,
                             await power_content(bob, room_id, users={dave: 60}))
    assert not await has_event(bob, room_id, by_alice), "B got alice's change through the cut"
    net.network.heal()

    # The winner reaches B before anyone sends on top (see test_losing_side_keeps_talking).
    await seen(net.witnesses, room_id, [by_alice], WAIT)
    await net.merge(room_id)
    state = await net.converged(room_id, {PL: by_alice})
    users = state[PL]["content"].get("users", {})
    assert users.get(bob.user_id) == 50 and dave.user_id not in users, users
    assert by_bob != by_alice


# A soft-failed event must stay usable as an auth event: the roomserver keeps an event it
# soft-failed out of its event cache until its batch commits, so a later PDU of the same
# transaction checked before that commit, naming it among its auth events, is refused as
# having unknown ones. A race with the commit: it shows in some runs only.


async def test_losing_side_keeps_talking(net: Net) -> None:
    """As in the power level race: B cut off, alice demotes bob (75 to 50) while bob raises
    dave, a few times, talking on B after each change. bob's messages are authorised by his
    own power levels (their auth events), which lose the race and are soft-failed on A and C,
    yet the messages themselves are valid everywhere: they pass against their auth events,
    against the state before them (B's side of the fork), and against the current state of A
    and C (bob, at 50, may still speak). So A and C take them, each PDU of B's transaction
    answered ``{}``, and they are in every server's timeline; the power levels converge to
    alice's. (Synapse takes such messages.)"""
    alice, bob, dave = net.alice, net.bob, net.dave
    tag = _tag()
    room_id = await net.room("12")
    await net.set_power(alice, room_id, users={bob: 75}, events={"m.room.power_levels": 75})

    net.network.isolate(net.b)
    by_alice = await net.set_power(alice, room_id, users={bob: 50}, seen_by=[alice, dave])
    # Each of bob's changes (all built on his own levels, all losing) is followed by a
    # message naming it among its auth events: five chances for the receiving servers to
    # check a message while the change before it is still waiting to be written.
    said: list[str] = []
    by_bob: list[str] = []
    for i in range(5):
        by_bob.append(await put_state(bob, room_id, PL, await power_content(
            bob, room_id, users={dave: 60 + i})))
        said.append(await bob.send_text(room_id, f"{tag} bob while cut off {i}"))
    net.network.heal()

    def answers(to: FedServer) -> dict[str, Any]:
        return net.network.pdu_results(net.b, to)

    async def answered() -> list[dict[str, Any]]:
        return [answers(net.a), answers(net.c)]

    got = await poll_until(answered, lambda r: all(set(said) <= set(a) for a in r), WAIT,
                           what="A's and C's answers to B's transaction")
    refused = {label: {e: a[e] for e in [*by_bob, *said] if a.get(e)}
               for label, a in zip("AC", got, strict=True)}
    assert not any(refused[label].get(e) for label in "AC" for e in said), \
        f"bob's messages refused: {refused}"
    await seen(net.witnesses, room_id, said, WAIT)
    await seen(net.witnesses, room_id, [by_alice], WAIT)
    await net.merge(room_id)
    await net.converged(room_id, {PL: by_alice})


# -- 2. a ban racing a join -------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_ban_races_rejoin(net: Net, version: str) -> None:
    """carol (C) has left; C is cut off; alice (A) bans carol while carol joins again on C (C
    is in the room through dave, so the join is C's own; sent last, the later).

    Expected: the ban, on every server. The ban (a membership event about someone else) is a
    power event: it is resolved first and passes. carol's join is not: it is checked after,
    in mainline order, against a state in which carol is banned, and fails. carol is joined
    on no server."""
    alice, carol, dave = net.alice, net.carol, net.dave
    room_id = await net.room(version)
    await carol.leave(room_id)
    for user in net.witnesses:
        await poll_until(lambda u=user: u.joined_members(room_id),
                         lambda m: carol.user_id not in m, WAIT,
                         what=f"carol gone on {user.server.label}")

    net.network.isolate(net.c)
    await alice.ban(room_id, carol.user_id, reason="banned while C is cut off")
    ban = await state_id(alice, room_id, member(carol))
    await seen([alice, net.bob], room_id, [ban], WAIT)
    assert await carol.join_room_id(room_id) == room_id
    join = await state_id(dave, room_id, member(carol))
    assert join != ban
    assert not await has_event(dave, room_id, ban), "C got the ban through the cut"
    net.network.heal()

    await seen(net.witnesses, room_id, [ban], WAIT)
    await net.merge(room_id)
    state = await net.converged(room_id, {member(carol): ban})
    assert state[member(carol)]["content"]["membership"] == "ban"
    for user in net.witnesses:
        assert carol.user_id not in await user.joined_members(room_id), user.server.label


# -- 3. a demotion racing a change by the demoted ---------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_demotion_races_change_by_demoted(net: Net, version: str) -> None:
    """bob (B) is a moderator (50, what state events take); B is cut off; alice (A) demotes
    bob to 0 while bob sets the topic on B (sent last, the later).

    Expected: alice's power levels and the topic from before, on every server; bob's topic
    in no server's state. The power levels resolve to alice's (the only power event that
    changed); bob's topic, checked in mainline order against them, fails (0 < 50), so the
    topic stays the one alice gave the room."""
    alice, bob, dave = net.alice, net.bob, net.dave
    tag = _tag()
    room_id = await net.room(version, topic=f"{tag} topic by alice")
    topic_before = await state_id(alice, room_id, TOPIC)
    await net.set_power(alice, room_id, users={bob: 50})

    net.network.isolate(net.b)
    demotion = await net.set_power(alice, room_id, users={bob: 0}, seen_by=[alice, dave])
    by_bob = await put_state(bob, room_id, TOPIC, {"topic": f"{tag} topic by bob"})
    assert not await has_event(bob, room_id, demotion), "B got the demotion through the cut"
    net.network.heal()

    await seen(net.witnesses, room_id, [demotion], WAIT)
    await net.merge(room_id)
    state = await net.converged(room_id, {PL: demotion, TOPIC: topic_before})
    assert state[PL]["content"]["users"][bob.user_id] == 0
    assert state[TOPIC]["content"]["topic"] == f"{tag} topic by alice"
    assert state[TOPIC]["event_id"] != by_bob


# -- 4. a partition that heals ------------------------------------------------------------


@pytest.mark.parametrize("version", ["12"])
async def test_partition_heals(net: Net, version: str) -> None:
    """B is cut off while all three keep running. On the A/C side: messages, alice renames
    the room, carol (a moderator) sets the topic, alice lowers dave's level, carol leaves. On
    B: bob keeps talking and sets his display name in the room. Nothing conflicts (no key
    changes on both sides, no change takes power from a sender on the other side), so after
    the heal every change stands on every server (each is the later of its key's values in
    mainline order, and passes its checks), and every message of both sides is in every
    server's /messages, each sender's in the order sent."""
    alice, bob, carol, dave = net.alice, net.bob, net.carol, net.dave
    tag = _tag()
    room_id = await net.room(version, name=f"{tag} before", topic=f"{tag} before")
    await net.set_power(alice, room_id, users={carol: 50})

    net.network.isolate(net.b)
    said: dict[str, list[str]] = {u.user_id: [] for u in (alice, bob, dave)}

    async def talk(n: int) -> None:
        for user in (alice, dave, bob):
            said[user.user_id].append(await user.send_text(room_id, f"{tag} {user.localpart} {n}"))

    await talk(0)
    name = await put_state(alice, room_id, NAME, {"name": f"{tag} renamed on A"})
    await talk(1)
    topic = await put_state(carol, room_id, TOPIC, {"topic": f"{tag} topic by carol"})
    bob_member = await put_state(bob, room_id, member(bob), {
        "membership": "join", "displayname": f"bob {tag} (cut off)"})
    power = await net.set_power(alice, room_id, users={dave: 20}, seen_by=[alice, dave])
    await talk(2)
    await carol.leave(room_id)
    carol_left = await state_id(dave, room_id, member(carol))
    await talk(3)
    a_side = [name, topic, power, carol_left, *said[alice.user_id], *said[dave.user_id]]
    await seen([alice, dave], room_id, a_side, WAIT)
    assert not await has_event(bob, room_id, name), "B got A's rename through the cut"
    assert not await has_event(alice, room_id, bob_member), "A got B's change through the cut"
    net.network.heal()

    await seen(net.witnesses, room_id, [*a_side, bob_member, *said[bob.user_id]], WAIT)
    await net.merge(room_id)
    await net.converged(room_id, {NAME: name, TOPIC: topic, PL: power,
                                  member(carol): carol_left, member(bob): bob_member})
    for user in net.witnesses:
        timeline = [ev["event_id"] for ev in await _history(user, room_id)]
        for sender, sent in said.items():
            assert [e for e in timeline if e in sent] == sent, (user.server.label, sender)


# -- 5. a long gap, with a state change in it (last: it stops and restarts C) -----------------

GAP = 500
NAME_AT = 100  # the rename's place in the gap: far before its last 200 events


async def test_gap_with_state_change_heals(net: Net) -> None:
    """C is down while alice sends 500 events, the 101st of them renaming the room; A's
    transactions to C are taken by the network and dropped (as a sender that gave up on a
    backlog leaves a gap: Synapse's catch-up sends a returning server only each room's
    newest event), so C, back up, hears only of what comes next. alice sends one more
    message: C fetches what it lacks (``/get_missing_events``, which cannot go back 500
    events, and the state at the gap's edge through ``/state_ids`` or ``/state``) and ends
    with A's and B's state, the rename included, the new message in its timeline."""
    alice, dave, c = net.alice, net.dave, net.c
    tag = _tag()
    room_id = await net.room("12", name=f"{tag} before the gap")
    await merge(net.witnesses, room_id, rounds=1, timeout=WAIT)

    assert c.stop() == 0
    net.network.swallow(c)
    sent = [await alice.send_text(room_id, f"{tag} gap {i}") for i in range(NAME_AT)]
    name = await put_state(alice, room_id, NAME, {"name": f"{tag} renamed in the gap"})
    sent += await _send_many(alice, room_id, [f"{tag} gap {i}"
                                              for i in range(NAME_AT, GAP - 1)])
    assert len(sent) + 1 == GAP

    async def swallowed() -> int:
        return sum(1 for p in net.network.swallowed(c)
                   if p.pdu.get("room_id") == room_id and p.origin == net.a.server_name)

    await poll_until(swallowed, lambda n: n >= GAP, WAIT,
                     what=f"A's {GAP} events to C taken by the network")
    await seen([net.bob], room_id, [name, sent[-1]], WAIT)
    net.network.stop_swallowing(c)
    mark = net.network.mark()
    c.start()

    after = await alice.send_text(room_id, f"{tag} after the gap")
    await seen([dave], room_id, [after], timeout=60)
    await net.merge(room_id)
    asked = sorted({r.split("/_matrix/federation/")[1].split("/")[1]
                    for r in net.network.requests(c, net.a, since=mark)
                    + net.network.requests(c, net.b, since=mark)} - {"send"})
    try:
        state = await net.converged(room_id, {NAME: name})
    except StateDiverged as e:
        raise StateDiverged(f"{e}\nC asked A and B for: {asked}") from None
    assert state[NAME]["content"]["name"] == f"{tag} renamed in the gap"


# -- helpers ------------------------------------------------------------------------------------


def _tag() -> str:
    return uuid.uuid4().hex[:10]


async def _send_many(user: User, room_id: str, bodies: list[str], width: int = 8
                     ) -> list[str]:
    """Send the messages ``width`` at a time; their event IDs, in the order of ``bodies``."""
    ids: list[str] = []
    for start in range(0, len(bodies), width):
        ids += await asyncio.gather(*(user.send_text(room_id, body)
                                      for body in bodies[start:start + width]))
    return ids


async def _history(user: User, room_id: str) -> list[dict[str, Any]]:
    """Every event ``/messages`` gives going back from now, oldest first."""
    events: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(50):
        page = await user.messages(room_id, "b", 100, token)
        events += page["chunk"]
        token = page.get("end")
        if token is None or not page["chunk"]:
            break
    return list(reversed(events))
