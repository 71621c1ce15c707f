"""State resolution v2 and v2.1 (core.state_res): each step, the published cases, the
differences of room version 12, determinism and scale.

The published cases are those of Synapse's ``tests/state/test_v2.py`` and the spec's
examples, re-expressed as :mod:`tests.core.state_dag` tables; each runs in room versions 10,
11 and 12, where it has the same answer. The v12 cases (MSC4297 problems A and B, creators)
are where v2.1 answers differently, and assert both answers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest

from core.events.room_versions import V10, V11, V12, RoomVersion
from core.state_res import auth_chain_difference, is_power_event, resolve_state
from core.state_res.loader import EventLoader
from core.state_res.ordering import (
    SenderPowerLevels,
    mainline_order,
    reverse_topological_power_order,
)
from core.state_res.v2 import full_conflicted_set, iterative_auth_checks, split_state_sets
from tests.core.state_dag import (
    ALICE,
    BOB,
    CHARLIE,
    CREATE_KEY,
    EVELYN,
    JOIN_RULES_KEY,
    POWER_LEVELS_KEY,
    TOPIC_KEY,
    ZARA,
    Node,
    StateDag,
    build_dag,
    event_id,
    fork_room,
    join_rules,
    make_event,
    member,
    power_levels,
    topic,
)

VERSIONS = [pytest.param(v, id=f"v{v.identifier}") for v in (V10, V11, V12)]


def ids(*node_ids: str) -> set[str]:
    return {event_id(n) for n in node_ids}


async def loaded(dag: StateDag, *node_ids: str) -> EventLoader:
    """A loader holding the given events, their auth events and the create event."""
    loader = EventLoader(dag.store.fetch)
    await loader.load(ids(*node_ids, "CREATE"))
    await loader.load(a for n in node_ids for a in dag.event(n).auth_event_ids)
    return loader


# -- Step by step -------------------------------------------------------------------------------


def test_split_state_sets_puts_keys_that_differ_or_are_missing_in_the_conflicted_set() -> None:
    a = {("t", "1"): "$x", ("t", "2"): "$y", ("t", "3"): "$z", ("t", "4"): "$w"}
    b = {("t", "1"): "$x", ("t", "2"): "$y2", ("t", "3"): "$z"}
    c = {("t", "1"): "$x", ("t", "2"): "$y", ("t", "3"): "$z"}
    unconflicted, conflicted = split_state_sets([a, b, c])
    assert unconflicted == {("t", "1"): "$x", ("t", "3"): "$z"}
    # A key in one set only is conflicted, with the events the sets that have it give it.
    assert conflicted == {("t", "2"): {"$y", "$y2"}, ("t", "4"): {"$w"}}
    assert split_state_sets([a]) == (a, {})


async def test_auth_chain_difference_counts_the_state_events_and_their_auth_ancestors() -> None:
    # Bob's ban and Alice's new power levels on one side, Bob's topic on the other.
    dag = await build_dag(
        V11,
        [
            power_levels("PA", ALICE, {ALICE: 100, BOB: 50}),
            topic("TB", BOB),
            member("MB", ALICE, "ban", BOB),
            power_levels("PA2", ALICE, {ALICE: 100, BOB: 50, CHARLIE: 10}),
        ],
        [["END", "PA2", "MB", "PA", "START"], ["END", "TB", "PA"]],
    )
    left, right = dag.state("PA2"), dag.state("TB")
    difference = await auth_chain_difference([left, right], dag.store.fetch)
    # Each side's own events; PA (cited by both) and the initial room are in both chains.
    assert difference == ids("PA2", "MB", "TB")
    assert await auth_chain_difference([left, left], dag.store.fetch) == set()
    assert await auth_chain_difference([left], dag.store.fetch) == set()


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_auth_chain_difference_matches_walking_each_state_sets_chain(
    room_version: RoomVersion,
) -> None:
    # The helper walks the chain the state sets share once; the plain definition walks the
    # full chain of each set.
    room = fork_room(room_version, members=30, branch_events=12)
    events = room.store.events

    def full_chain(state: dict[tuple[str, str], str]) -> set[str]:
        chain: set[str] = set()
        stack = list(state.values())
        while stack:
            event_id = stack.pop()
            if event_id not in chain:
                chain.add(event_id)
                stack.extend(events[event_id].auth_event_ids)
        return chain

    chains = [full_chain(s) for s in room.state_sets]
    expected = (chains[0] | chains[1]) - (chains[0] & chains[1])
    assert len(expected) > 12
    assert await auth_chain_difference(room.state_sets, room.store.fetch) == expected


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_full_conflicted_set_is_conflicted_events_and_auth_difference(
    room_version: RoomVersion,
) -> None:
    dag = await build_dag(
        room_version,
        [power_levels("PA", ALICE, {ALICE: 100, BOB: 50}), topic("T1", BOB), topic("T2", ALICE)],
        [["END", "T1", "PA", "START"], ["END", "T2", "START"]],
    )
    sets = [dag.state("T1"), dag.state("T2")]
    _, conflicted = split_state_sets(sets)
    assert conflicted == {TOPIC_KEY: ids("T1", "T2"), POWER_LEVELS_KEY: ids("PA", "IPOWER")}
    difference = await auth_chain_difference(sets, dag.store.fetch)
    assert difference == ids("T1", "T2", "PA")
    loader = EventLoader(dag.store.fetch)
    full = await full_conflicted_set(room_version, ids("T1", "T2", "PA", "IPOWER"), difference,
                                     loader)
    if room_version.state_res_v2_1:
        # The conflicted state subgraph: Bob's join and the join rules it cites lie on the
        # auth path from T1 to IPOWER.
        assert full == ids("T1", "T2", "PA", "IPOWER", "IMB", "IJR")
    else:
        assert full == ids("T1", "T2", "PA", "IPOWER")
    # An event that cannot be fetched is left out, as Synapse does.
    dag.store.hidden.add(event_id("T2"))
    loader = EventLoader(dag.store.fetch)
    full = await full_conflicted_set(room_version, ids("T1", "T2", "PA", "IPOWER"), difference,
                                     loader)
    assert event_id("T2") not in full
    assert ids("T1", "PA", "IPOWER") <= full


async def problem_b(room_version: RoomVersion) -> StateDag:
    """MSC4297 "Problem B": Alice promotes Bob (P1), Bob promotes Charlie (P2), Charlie sets
    the topic. A state set from a faulty partial sync has the stale P0 as power levels while
    its topic's auth chain holds P1 and P2: only P0 and P2 are conflicted, and P1 is in every
    auth chain, so the auth difference leaves it out."""
    return await build_dag(
        room_version,
        [
            power_levels("P0", ALICE, {ALICE: 100, BOB: 50}),
            join_rules("JR", ALICE, "public"),
            member("MB", BOB, "join"),
            member("MC", CHARLIE, "join"),
            power_levels("P1", ALICE, {ALICE: 100, BOB: 100}),
            power_levels("P2", BOB, {ALICE: 100, BOB: 100, CHARLIE: 75}),
            topic("T", CHARLIE),
        ],
        [["T", "P2", "P1", "MC", "MB", "JR", "P0", "IMA", "CREATE"]],
        initial=False,
    )


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_full_conflicted_set_of_v2_1_adds_the_conflicted_state_subgraph(
    room_version: RoomVersion,
) -> None:
    dag = await problem_b(room_version)
    sets = [dag.state("T", stale="P0"), dag.state("T")]
    difference = await auth_chain_difference(sets, dag.store.fetch)
    assert difference == set()
    full = await full_conflicted_set(room_version, ids("P0", "P2"), difference,
                                     EventLoader(dag.store.fetch))
    if room_version.state_res_v2_1:
        # P1 lies on the auth path from P2 to P0, and so do Bob's join, which P2 cites, and
        # the join rules his join cites.
        assert full == ids("P0", "P1", "P2", "MB", "JR")
    else:
        assert full == ids("P0", "P2")


def test_power_events_are_power_levels_join_rules_create_kicks_and_bans() -> None:
    def node(n: Node) -> bool:
        return is_power_event(make_event(V11, n, auth_events=[], prev_events=[], ts=0))

    assert node(power_levels("P", ALICE, {}))
    assert node(join_rules("J", ALICE, "invite"))
    assert node(Node("C", ALICE, "m.room.create", ""))
    assert node(member("K", ALICE, "leave", BOB))
    assert node(member("B", ALICE, "ban", BOB))
    assert not node(member("L", BOB, "leave"))  # leaving is not a kick
    assert not node(member("J2", BOB, "join"))
    assert not node(member("I", ALICE, "invite", BOB))
    assert not node(topic("T", ALICE))
    assert not node(Node("P2", ALICE, "m.room.power_levels", "x"))


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_reverse_topological_power_order_breaks_ties_by_power_then_ts_then_id(
    room_version: RoomVersion,
) -> None:
    # Concurrent bans and a kick, none an auth event of another: Alice (100; a v12 creator)
    # latest, Bob (50) twice at one timestamp, Charlie (50) earliest.
    def ban(node_id: str, sender: str, target: str, ts: int, membership: str = "ban") -> Node:
        return Node(node_id, sender, "m.room.member", target, {"membership": membership}, ts)

    dag = await build_dag(
        room_version,
        [
            power_levels("PA", ALICE, {ALICE: 100, BOB: 50, CHARLIE: 50}),
            ban("KA", ALICE, EVELYN, 40),
            ban("KBY", BOB, ZARA, 30, "leave"),
            ban("KBX", BOB, ZARA, 30),
            ban("KC", CHARLIE, EVELYN, 10),
        ],
        [["END", "KA", "PA", "START"], ["KBY", "PA"], ["KBX", "PA"], ["KC", "PA"]],
    )
    loader = await loaded(dag, "KA", "KBY", "KBX", "KC")
    full = ids("KA", "KBY", "KBX", "KC")
    order = reverse_topological_power_order(room_version, full, full, loader)
    # Power first (Alice despite the latest ts), then ts (Charlie before Bob), then ID.
    assert order == [event_id(n) for n in ("KA", "KC", "KBX", "KBY")]


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_reverse_topological_power_order_puts_auth_events_first(
    room_version: RoomVersion,
) -> None:
    # Bob (50) sets power levels; Alice bans Charlie citing them. Alice has more power, but
    # Bob's event is among her ban's auth events.
    dag = await build_dag(
        room_version,
        [
            power_levels("PA", ALICE, {ALICE: 100, BOB: 50}),
            power_levels("PB", BOB, {ALICE: 100, BOB: 50}, kick=40),
            member("BC", ALICE, "ban", CHARLIE),
        ],
        [["END", "BC", "PB", "PA", "START"]],
    )
    loader = await loaded(dag, "PA", "PB", "BC")
    full = ids("PA", "PB", "BC")
    order = reverse_topological_power_order(room_version, ids("PB", "BC"), full, loader)
    assert order == [event_id(n) for n in ("PA", "PB", "BC")]


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_sender_power_level_reads_the_events_own_auth_events(
    room_version: RoomVersion,
) -> None:
    dag = await build_dag(
        room_version,
        [
            power_levels(
                "PA", ALICE, {ALICE: 100, BOB: 50}, users_default=10, events={"m.room.topic": 10}
            ),
            topic("TA", ALICE), topic("TB", BOB), topic("TC", CHARLIE),
        ],
        [["END", "TA", "PA", "START"], ["END", "TB", "PA"], ["END", "TC", "PA"]],
    )
    loader = await loaded(dag, "TA", "TB", "TC", "IMA", "CREATE")
    power = SenderPowerLevels(room_version, loader)
    creator = float("inf") if room_version.privileged_creators else 100
    assert power.of(dag.event("TA")) == creator
    assert power.of(dag.event("TB")) == 50
    assert power.of(dag.event("TC")) == 10
    # No power levels among the auth events: the v10/v11 creator has 100, others 0.
    assert power.of(dag.event("IMA")) == creator
    await loader.load(ids("IMB"))
    await loader.load(dag.event("IMB").auth_event_ids)
    assert power.of(dag.event("IMB")) == 0


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_iterative_auth_checks_drop_a_failing_event(room_version: RoomVersion) -> None:
    # Alice demotes Bob (PA2) while Bob sets the topic under PA, where he had 50.
    dag = await build_dag(
        room_version,
        [
            power_levels("PA", ALICE, {ALICE: 100, BOB: 50}),
            power_levels("PA2", ALICE, {ALICE: 100, BOB: 0}),
            topic("TB", BOB),
        ],
        [["END", "PA2", "PA", "START"], ["END", "TB", "PA"]],
    )
    loader = await loaded(dag, "PA", "PA2", "TB")
    # Against its own auth events Bob's topic passes...
    assert iterative_auth_checks(room_version, ids("TB"), {}, loader) == dag.keyed("TB")
    # ...against the partially resolved state holding PA2 it is left out.
    state = dag.keyed("PA2")
    assert iterative_auth_checks(room_version, ids("TB"), state, loader) == state


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_iterative_auth_checks_use_the_partially_resolved_state(
    room_version: RoomVersion,
) -> None:
    # Bob sets the topic while powerless (it fails against its own auth events), but the
    # state being resolved has Alice's concurrent promotion of Bob: it passes against that.
    dag = await build_dag(
        room_version,
        [
            power_levels("PA", ALICE, {ALICE: 100, BOB: 50}),
            Node("TB", BOB, "m.room.topic", "", {"topic": "x"}),
        ],
        [["END", "PA", "START"], ["END", "TB", "START"]],
        check=False,
    )
    loader = await loaded(dag, "PA", "TB")
    assert iterative_auth_checks(room_version, ids("TB"), {}, loader) == {}
    state = dag.keyed("PA")
    assert iterative_auth_checks(room_version, ids("TB"), state, loader) == {
        **state, **dag.keyed("TB")
    }
    # The events are applied in order: each one sees those before it.
    assert iterative_auth_checks(room_version, ids("PA"), {}, loader) == state
    assert iterative_auth_checks(
        room_version, [event_id("PA"), event_id("TB")], {}, loader
    ) == {**state, **dag.keyed("TB")}
    assert iterative_auth_checks(
        room_version, [event_id("TB"), event_id("PA")], {}, loader
    ) == state


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_mainline_order_sorts_by_position_then_ts_then_id(
    room_version: RoomVersion,
) -> None:
    # Mainline PA2 -> PA1 -> IPOWER. T1 cites IPOWER (position 2), T2 and T5 cite PA1
    # (position 1), T3 cites PA2 (0), T4 cites PB, off the mainline but based on PA1 (1).
    dag = await build_dag(
        room_version,
        [
            topic("T1", ALICE),
            power_levels("PA1", ALICE, {ALICE: 100, BOB: 50}),
            topic("T2", ALICE, ts=90),
            power_levels("PA2", ALICE, {ALICE: 100, BOB: 50}, state_default=60),
            topic("T3", ALICE, ts=1),
            power_levels("PB", BOB, {ALICE: 100, BOB: 50}),
            topic("T4", BOB, ts=50),
            topic("T5", ALICE, ts=50),
        ],
        [
            ["END", "T3", "PA2", "T2", "PA1", "T1", "START"],
            ["END", "T4", "PB", "PA1"], ["END", "T5", "PA1"],
        ],
    )
    loader = EventLoader(dag.store.fetch)
    events = ids("T1", "T2", "T3", "T4", "T5")
    await loader.load_power_levels_chains([*events, event_id("PA2")])
    order = mainline_order(events, event_id("PA2"), loader)
    assert order == [event_id(n) for n in ("T1", "T4", "T5", "T2", "T3")]
    # Without a power levels event every position is infinite: by ts, then ID.
    assert mainline_order(events, None, loader) == [
        event_id(n) for n in ("T3", "T1", "T4", "T5", "T2")
    ]


# -- The published cases ------------------------------------------------------------------------


async def check_end_state(
    room_version: RoomVersion,
    nodes: Sequence[Node],
    edges: Sequence[Sequence[str]],
    expected: Sequence[str],
) -> StateDag:
    """Build the DAG and assert that the state at END differs from START's exactly by the
    ``expected`` nodes' events."""
    dag = await build_dag(room_version, nodes, edges)
    start = dag.state_after["START"]
    end = dag.state_after["END"]
    want = dag.keyed(*expected)
    got = {k: v for k, v in end.items() if k in want or start.get(k) != v}
    assert got == want
    return dag


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_ban_wins_over_concurrent_power_levels(room_version: RoomVersion) -> None:
    # Alice bans Bob while Bob (50) sends power levels: the ban is sorted first (Alice has
    # more power), so Bob's power levels event fails.
    await check_end_state(
        room_version,
        [
            power_levels("PA", ALICE, {ALICE: 100, BOB: 50}),
            member("MA", ALICE, "join"),
            member("MB", ALICE, "ban", BOB),
            power_levels("PB", BOB, {ALICE: 100, BOB: 50}),
        ],
        [["END", "MB", "MA", "PA", "START"], ["END", "PB", "PA"]],
        ["PA", "MA", "MB"],
    )


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_join_rule_evasion(room_version: RoomVersion) -> None:
    # Evelyn joins through the public join rule while Alice concurrently makes the room
    # invite-only: the join rules (a power event) are applied first, and the join fails.
    await check_end_state(
        room_version,
        [join_rules("JR", ALICE, "invite"), member("ME", EVELYN, "join")],
        [["END", "JR", "START"], ["END", "ME", "START"]],
        ["JR"],
    )


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_offtopic_power_levels(room_version: RoomVersion) -> None:
    # A chain of power levels changes on one side only wins over the state it started from.
    await check_end_state(
        room_version,
        [
            power_levels("PA", ALICE, {ALICE: 100, BOB: 50}),
            power_levels("PB", BOB, {ALICE: 100, BOB: 50, CHARLIE: 50}),
            power_levels("PC", CHARLIE, {ALICE: 100, BOB: 50, CHARLIE: 0}),
        ],
        [["END", "PC", "PB", "PA", "START"], ["END", "PA"]],
        ["PC"],
    )


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_topic_basic(room_version: RoomVersion) -> None:
    # Alice demotes Bob (PA2) while Bob, still 50 on his side, sets the topic (T3): the
    # demotion wins and Bob's topic fails; Alice's T2 stands.
    await check_end_state(
        room_version,
        [
            topic("T1", ALICE),
            power_levels("PA1", ALICE, {ALICE: 100, BOB: 50}),
            topic("T2", ALICE),
            power_levels("PA2", ALICE, {ALICE: 100, BOB: 0}),
            power_levels("PB", BOB, {ALICE: 100, BOB: 50}),
            topic("T3", BOB),
        ],
        [["END", "PA2", "T2", "PA1", "T1", "START"], ["END", "T3", "PB", "PA1"]],
        ["PA2", "T2"],
    )


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_topic_reset(room_version: RoomVersion) -> None:
    # Bob sets the topic, then Alice bans him; merged with a fork that only saw T1, the topic
    # goes back to T1 (Bob's T2 fails: he is banned), not to nothing.
    await check_end_state(
        room_version,
        [
            topic("T1", ALICE),
            power_levels("PA", ALICE, {ALICE: 100, BOB: 50}),
            topic("T2", BOB),
            member("MB", ALICE, "ban", BOB),
        ],
        [["END", "MB", "T2", "PA", "T1", "START"], ["END", "T1"]],
        ["T1", "MB", "PA"],
    )


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_topic_wars(room_version: RoomVersion) -> None:
    # Topics set at different power levels on both sides of a demotion; after the merge
    # Alice's later topic T4 wins, Bob's T3 (under PB, before the demotion) is overridden.
    await check_end_state(
        room_version,
        [
            topic("T1", ALICE),
            power_levels("PA1", ALICE, {ALICE: 100, BOB: 50}),
            topic("T2", ALICE),
            power_levels("PA2", ALICE, {ALICE: 100, BOB: 0}),
            power_levels("PB", BOB, {ALICE: 100, BOB: 50}),
            topic("T3", BOB),
            Node("MZ1", ZARA, "m.room.message", None),
            topic("T4", ALICE),
        ],
        [
            ["END", "T4", "MZ1", "PA2", "T2", "PA1", "T1", "START"],
            ["END", "MZ1", "T3", "PB", "PA1"],
        ],
        ["T4", "PA2"],
    )


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_mainline_sort_prefers_the_topic_based_on_the_latest_power_levels(
    room_version: RoomVersion,
) -> None:
    # T4 is sent after T3, but cites PB (based on PA1) where T3 cites PA2, the resolved
    # power levels: by mainline T4 comes first, and T3 is applied last.
    await check_end_state(
        room_version,
        [
            topic("T1", ALICE),
            power_levels("PA1", ALICE, {ALICE: 100, BOB: 50}),
            topic("T2", ALICE),
            power_levels(
                "PA2", ALICE, {ALICE: 100, BOB: 50}, events={"m.room.power_levels": 100}
            ),
            power_levels("PB", BOB, {ALICE: 100, BOB: 50}),
            topic("T3", BOB),
            topic("T4", ALICE),
        ],
        [["END", "T3", "PA2", "T2", "PA1", "T1", "START"], ["END", "T4", "PB", "PA1"]],
        ["T3", "PA2"],
    )


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_demoted_users_concurrent_changes_fail(room_version: RoomVersion) -> None:
    # Alice demotes Bob; concurrently Bob bans Charlie and promotes Zara. Both of Bob's
    # changes are replayed after the demotion (Alice has more power) and fail.
    await check_end_state(
        room_version,
        [
            power_levels("PA", ALICE, {ALICE: 100, BOB: 50}),
            power_levels("PA2", ALICE, {ALICE: 100, BOB: 0}),
            member("BC", BOB, "ban", CHARLIE),
            power_levels("PB", BOB, {ALICE: 100, BOB: 50, ZARA: 50}),
        ],
        [["END", "PA2", "PA", "START"], ["END", "PB", "BC", "PA"]],
        ["PA2"],
    )


@pytest.mark.parametrize("room_version", VERSIONS)
@pytest.mark.parametrize(("bob_ts", "winner"), [(10, "PC"), (30, "PB")])
async def test_power_levels_racing_at_equal_power_go_by_timestamp(
    room_version: RoomVersion, bob_ts: int, winner: str
) -> None:
    # Bob and Charlie, both 100, set Zara's level concurrently. Neither can undo the other,
    # so both pass and the later one (by origin_server_ts) is applied last and wins.
    admins = {ALICE: 100, BOB: 100, CHARLIE: 100}
    await check_end_state(
        room_version,
        [
            power_levels("PA", ALICE, admins),
            Node("PB", BOB, "m.room.power_levels", "", {"users": {**admins, ZARA: 50}}, bob_ts),
            Node("PC", CHARLIE, "m.room.power_levels", "", {"users": {**admins, ZARA: 75}}, 20),
        ],
        [["END", "PB", "PA", "START"], ["END", "PC", "PA"]],
        [winner],
    )


# -- Room version 12 ------------------------------------------------------------------------------


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_v2_1_starting_from_an_empty_state_keeps_the_join_rules(
    room_version: RoomVersion,
) -> None:
    # MSC4297 "Problem A": Alice sets the join rules twice, then leaves. A faulty partial sync
    # gives one state set the first join rules: the two conflict while both sets agree Alice
    # left. v2 replays both against that agreed state and both fail (the room loses its join
    # rules); v2.1 replays them against their own auth events, and the later one wins.
    dag = await build_dag(
        room_version,
        [
            power_levels("P0", ALICE, {ALICE: 100}),
            join_rules("JR0", ALICE, "public"),
            member("MB", BOB, "join"),
            join_rules("JR1", ALICE, "invite"),
            member("AL", ALICE, "leave"),
        ],
        [["AL", "JR1", "MB", "JR0", "P0", "IMA", "CREATE"]],
        initial=False,
    )
    sets = [dag.state("AL", stale="JR0"), dag.state("AL")]
    resolved = await dag.store.resolve(room_version, sets)
    if room_version.state_res_v2_1:
        assert resolved == dag.state("AL")
    else:
        assert JOIN_RULES_KEY not in resolved
        assert resolved == {k: v for k, v in dag.state("AL").items() if k != JOIN_RULES_KEY}


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_v2_1_conflicted_state_subgraph_keeps_the_promotions(
    room_version: RoomVersion,
) -> None:
    # MSC4297 "Problem B" (see problem_b): v2 replays P0 then P2, and P2 fails without P1
    # (the power levels reset to P0); v2.1 replays P0, P1, P2 and keeps P2.
    dag = await problem_b(room_version)
    resolved = await dag.store.resolve(room_version, [dag.state("T", stale="P0"), dag.state("T")])
    want = "P2" if room_version.state_res_v2_1 else "P0"
    assert resolved == dag.state("T", pl=want)


async def test_v12_creators_have_infinite_power_in_the_power_ordering() -> None:
    # v12: Alice created the room and is not in the power levels; Bob has 100. Alice demotes
    # Bob while Bob bans Charlie (earlier). Sorted by the creator's infinite power, Alice's
    # change is replayed first and Bob's ban then fails; were Alice's power read from the
    # power levels (users_default 0), the ban would go first and stand.
    dag = await build_dag(
        V12,
        [
            power_levels("PA", ALICE, {BOB: 100}),
            Node("PA2", ALICE, "m.room.power_levels", "", {"users": {BOB: 0}}, 50),
            Node("BC", BOB, "m.room.member", CHARLIE, {"membership": "ban"}, 40),
        ],
        [["END", "PA2", "PA", "START"], ["END", "BC", "PA"]],
    )
    assert dag.changed_since_start() == dag.keyed("PA2")
    loader = await loaded(dag, "PA2", "BC")
    assert SenderPowerLevels(V12, loader).of(dag.event("PA2")) == float("inf")


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_create_event_in_the_conflicted_set_is_resolved(room_version: RoomVersion) -> None:
    # One state set lacks the create event (in v12 no event cites it, so it is also in the
    # auth difference): it is replayed as a power event, passes, and stays in the state.
    dag = await build_dag(room_version, [topic("T", ALICE)], [["END", "T", "START"]])
    full = dag.state("T")
    without_create = {k: v for k, v in full.items() if k != CREATE_KEY}
    difference = await auth_chain_difference([full, without_create], dag.store.fetch)
    assert (event_id("CREATE") in difference) == room_version.room_id_is_create_event_hash
    assert await dag.store.resolve(room_version, [full, without_create]) == full
    assert await dag.store.resolve(room_version, [without_create, full]) == full


# -- Determinism, fetching, scale ---------------------------------------------------------------


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_the_order_of_the_state_sets_does_not_matter(room_version: RoomVersion) -> None:
    dag = await build_dag(
        room_version,
        [
            power_levels("PA", ALICE, {ALICE: 100, BOB: 50, CHARLIE: 50}),
            topic("T1", BOB),
            member("MB", ALICE, "ban", EVELYN),
            power_levels("PC", CHARLIE, {ALICE: 100, BOB: 50, CHARLIE: 50}, state_default=40),
            topic("T2", CHARLIE),
            member("KB", CHARLIE, "leave", ZARA),
            topic("T3", ALICE),
        ],
        [
            ["END", "T1", "PA", "START"], ["END", "T2", "PC", "PA"],
            ["END", "KB", "MB", "PA"], ["END", "T3", "START"],
        ],
    )
    sets = [dag.state(n) for n in ("T1", "T2", "KB", "T3")]
    answers = set()
    for permutation in itertools.permutations(sets):
        resolved = await dag.store.resolve(room_version, list(permutation))
        answers.add(tuple(sorted(resolved.items())))
    assert len(answers) == 1


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_events_that_cannot_be_fetched_are_left_out(room_version: RoomVersion) -> None:
    dag = await build_dag(
        room_version,
        [topic("T1", ALICE), topic("T2", ALICE)],
        [["END", "T1", "START"], ["END", "T2", "START"]],
    )
    sets = [dag.state("T1"), dag.state("T2")]
    difference = await auth_chain_difference(sets, dag.store.fetch)
    dag.store.hidden.add(event_id("T2"))
    resolved = await resolve_state(room_version, sets, difference, dag.store.fetch)
    assert resolved == dag.state("T1")


@pytest.mark.parametrize("room_version", VERSIONS)
async def test_a_large_room_resolves_with_a_few_fetches(room_version: RoomVersion) -> None:
    # 10,000 joined members agreed on, and a fork where two moderators each change the
    # power levels, kick members and set the topic.
    room = fork_room(room_version, members=10_000, branch_events=8)
    difference = await auth_chain_difference(room.state_sets, room.store.fetch)
    room.store.fetches.clear()
    resolved = await resolve_state(room_version, room.state_sets, difference, room.store.fetch)
    assert len(resolved) >= 10_000
    assert resolved[POWER_LEVELS_KEY] in {s[POWER_LEVELS_KEY] for s in room.state_sets}
    # Every unconflicted key is kept.
    unconflicted, _ = split_state_sets(room.state_sets)
    assert all(resolved[k] == v for k, v in unconflicted.items())
    # One fetch per phase (v2.1: per level of the conflicted events' auth ancestors).
    assert len(room.store.fetches) <= (12 if room_version.state_res_v2_1 else 4)
    assert all(len(batch) < 2_000 for batch in room.store.fetches)
