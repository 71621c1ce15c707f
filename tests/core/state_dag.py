"""Rooms as DAGs written as tables, for the state resolution tests and bench.

A test lists its events (:class:`Node`: id, type, state_key, sender, content) and its
``prev_events`` edges as chains, newest first (``["END", "MB", "MA", "PA", "START"]``: END
follows MB, which follows MA, ...), the way Synapse's ``tests/state/test_v2.py`` does.
:func:`build_dag` builds them, oldest first (ties by node ID), into real
:class:`core.events.model.Event` objects: each event's ``auth_events`` are selected from the
state before it, and where an event has several ``prev_events`` that state is the resolution of
their states. No signatures: the auth rules only verify them for restricted joins and
third-party invites, which these rooms do not use.

Room versions 10, 11 and 12. Event IDs are ``$`` + node ID. In v12 the room ID is the create
event's (``!CREATE``), no event lists the create event in its ``auth_events``, and the creator
(Alice) has infinite power and may not be listed in ``m.room.power_levels``: the builder drops
the creators from ``users`` there, so one table describes the same room in every version.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.events.model import Event
from core.events.room_versions import RoomVersion
from core.rooms.auth import auth_types_for_event, check_auth_rules, create_event_id_for_room
from core.state_res import StateKey, auth_chain_difference, resolve_state

ALICE = "@alice:example.com"
BOB = "@bob:example.com"
CHARLIE = "@charlie:example.com"
EVELYN = "@evelyn:example.com"
ZARA = "@zara:example.com"

CREATE = "m.room.create"
MEMBER = "m.room.member"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
TOPIC = "m.room.topic"
MESSAGE = "m.room.message"

TOPIC_KEY: StateKey = (TOPIC, "")
POWER_LEVELS_KEY: StateKey = (POWER_LEVELS, "")
JOIN_RULES_KEY: StateKey = (JOIN_RULES, "")
CREATE_KEY: StateKey = (CREATE, "")


@dataclass(frozen=True)
class Node:
    """One event of a test DAG.

    Attributes:
        id: The node ID (the event ID is ``$`` + it).
        sender: The sender.
        type: The event type.
        state_key: The state key; None for a message.
        content: The content (the builder adapts create and power levels content to the
            room version).
        ts: ``origin_server_ts``; None: the event's place in the build order.
    """

    id: str
    sender: str
    type: str
    state_key: str | None
    content: Mapping[str, Any] = field(default_factory=dict)
    ts: int | None = None


def member(id: str, sender: str, membership: str, target: str | None = None) -> Node:
    return Node(id, sender, MEMBER, target or sender, {"membership": membership})


def power_levels(id: str, sender: str, users: Mapping[str, int], **extra: Any) -> Node:
    return Node(id, sender, POWER_LEVELS, "", {"users": dict(users), **extra})


def topic(id: str, sender: str, ts: int | None = None) -> Node:
    return Node(id, sender, TOPIC, "", {"topic": id}, ts)


def join_rules(id: str, sender: str, rule: str) -> Node:
    return Node(id, sender, JOIN_RULES, "", {"join_rule": rule})


INITIAL_NODES = [
    Node("CREATE", ALICE, CREATE, ""),
    member("IMA", ALICE, "join"),
    power_levels("IPOWER", ALICE, {ALICE: 100}),
    join_rules("IJR", ALICE, "public"),
    member("IMB", BOB, "join"),
    member("IMC", CHARLIE, "join"),
    member("IMZ", ZARA, "join"),
    Node("START", ZARA, MESSAGE, None),
    Node("END", ZARA, MESSAGE, None),
]
"""The room every published case starts from: Alice creates it (power 100; infinite in v12),
makes it public, and Bob, Charlie and Zara join."""

INITIAL_EDGES = ["START", "IMZ", "IMC", "IMB", "IJR", "IPOWER", "IMA", "CREATE"]


def event_id(node_id: str) -> str:
    return "$" + node_id


def room_id_for(room_version: RoomVersion) -> str:
    if room_version.room_id_is_create_event_hash:
        return "!" + event_id("CREATE")[1:]
    return "!room:example.com"


def make_event(
    room_version: RoomVersion,
    node: Node,
    *,
    auth_events: Sequence[str],
    prev_events: Sequence[str],
    ts: int,
    creators: Collection[str] = (ALICE,),
) -> Event:
    """The event of ``node`` (content adapted to the room version, see the module)."""
    content = dict(node.content)
    if node.type == CREATE and node.state_key == "":
        content.setdefault("room_version", room_version.identifier)
        if not room_version.implicit_room_creator:
            content.setdefault("creator", node.sender)
    if node.type == POWER_LEVELS and room_version.privileged_creators and "users" in content:
        content["users"] = {u: v for u, v in content["users"].items() if u not in creators}
    pdu: dict[str, Any] = {
        "type": node.type,
        "sender": node.sender,
        "content": content,
        "auth_events": list(auth_events),
        "prev_events": list(prev_events),
        "origin_server_ts": node.ts if node.ts is not None else ts,
        "depth": 1,
    }
    if node.state_key is not None:
        pdu["state_key"] = node.state_key
    if not (node.type == CREATE and room_version.room_id_is_create_event_hash):
        pdu["room_id"] = room_id_for(room_version)
    return Event(event_id(node.id), room_version, pdu)


class EventStore:
    """Events by ID, with the :data:`core.state_res.EventFetcher` over them.

    Attributes:
        events: The events by event ID.
        hidden: Event IDs ``fetch`` pretends not to know (unknown or rejected).
        fetches: The batches ``fetch`` was called with.
    """

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self.events: dict[str, Event] = {e.event_id: e for e in events}
        self.hidden: set[str] = set()
        self.fetches: list[set[str]] = []

    def add(self, event: Event) -> None:
        self.events[event.event_id] = event

    async def fetch(self, event_ids: Collection[str]) -> dict[str, Event]:
        self.fetches.append(set(event_ids))
        return {
            i: self.events[i] for i in event_ids if i in self.events and i not in self.hidden
        }

    async def resolve(
        self, room_version: RoomVersion, state_sets: Sequence[Mapping[StateKey, str]]
    ) -> dict[StateKey, str]:
        """Resolve with the auth difference computed by walking auth events."""
        difference = await auth_chain_difference(state_sets, self.fetch)
        return await resolve_state(room_version, state_sets, difference, self.fetch)


@dataclass
class StateDag:
    """A built DAG.

    Attributes:
        room_version: Its room version.
        store: Its events.
        state_after: The state after each node, by node ID.
    """

    room_version: RoomVersion
    store: EventStore
    state_after: dict[str, dict[StateKey, str]]

    def event(self, node_id: str) -> Event:
        return self.store.events[event_id(node_id)]

    def state(self, node_id: str, **replace: str) -> dict[StateKey, str]:
        """The state after ``node_id``, with the keys of the given nodes' events set to them
        (``state("AL", JR="JR0")``: a state set as a faulty partial sync may give it)."""
        state = dict(self.state_after[node_id])
        for other in replace.values():
            event = self.event(other)
            assert event.state_tuple is not None
            state[event.state_tuple] = event.event_id
        return state

    def changed_since_start(self) -> dict[StateKey, str]:
        """The state at END where it differs from the state at START."""
        start = self.state_after["START"]
        return {k: v for k, v in self.state_after["END"].items() if start.get(k) != v}

    def keyed(self, *node_ids: str) -> dict[StateKey, str]:
        """``{(type, state_key): event ID}`` of the given nodes' events."""
        keyed = {}
        for node_id in node_ids:
            event = self.event(node_id)
            assert event.state_tuple is not None
            keyed[event.state_tuple] = event.event_id
        return keyed


async def build_dag(
    room_version: RoomVersion,
    nodes: Sequence[Node],
    edges: Sequence[Sequence[str]],
    *,
    initial: bool = True,
    check: bool = True,
) -> StateDag:
    """Build ``nodes`` (after :data:`INITIAL_NODES` unless ``initial`` is False) linked by
    ``edges`` (chains of ``prev_events``, newest first).

    Args:
        room_version: The room version.
        nodes: The events.
        edges: The chains.
        initial: Whether to start from the initial room (START follows it); else only
            from its create event and Alice's join (CREATE and IMA).
        check: Assert that every event passes the auth rules against the state before it
            (catches a mistaken table; resolution decides what happens to it afterwards).

    Returns:
        The DAG.
    """
    first = INITIAL_NODES if initial else INITIAL_NODES[:2]
    all_nodes = {n.id: n for n in [*first, *nodes]}
    prevs: dict[str, set[str]] = {node_id: set() for node_id in all_nodes}
    chains = [INITIAL_EDGES, *edges] if initial else list(edges)
    for chain in chains:
        for newer, older in itertools.pairwise(chain):
            prevs[newer].add(older)
    store = EventStore()
    dag = StateDag(room_version, store, {})
    for index, node_id in enumerate(_oldest_first(prevs)):
        node = all_nodes[node_id]
        before_sets = [dag.state_after[p] for p in sorted(prevs[node_id])]
        if not before_sets:
            before: dict[StateKey, str] = {}
        elif len(before_sets) == 1:
            before = dict(before_sets[0])
        else:
            before = await store.resolve(room_version, before_sets)
        auth_types = auth_types_for_event(
            room_version, node.type, node.state_key, node.sender, node.content
        )
        event = make_event(
            room_version,
            node,
            auth_events=sorted(before[k] for k in auth_types if k in before),
            prev_events=[event_id(p) for p in sorted(prevs[node_id])],
            ts=index,
        )
        if check and event.is_state:
            state_map = {k: store.events[v] for k, v in before.items()}
            create = store.events.get(create_event_id_for_room(room_id_for(room_version)))
            check_auth_rules(
                event,
                state_map,
                create_event=create if room_version.room_id_is_create_event_hash else None,
            )
        store.add(event)
        after = dict(before)
        if event.state_tuple is not None:
            after[event.state_tuple] = event.event_id
        dag.state_after[node_id] = after
    return dag


def _oldest_first(prevs: Mapping[str, set[str]]) -> list[str]:
    """Node IDs with every node after its prev nodes, ties by node ID."""
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(prevs):
        ready = sorted(n for n, p in prevs.items() if n not in done and p <= done)
        assert ready, "the edges have a cycle"
        order.append(ready[0])
        done.add(ready[0])
    return order


# -- A large room with a fork (scale test and bench/state_res.py) --------------------------------


@dataclass
class ForkRoom:
    """A room of many members whose state forked.

    Attributes:
        store: Its events.
        state_sets: The states at the two forward extremities.
    """

    store: EventStore
    state_sets: list[dict[StateKey, str]]


class _Branch:
    """Appends events to a state, selecting their auth events from it."""

    def __init__(self, room_version: RoomVersion, store: EventStore, prefix: str,
                 state: Mapping[StateKey, str], last: str | None, ts: int) -> None:
        self.room_version = room_version
        self.store = store
        self.prefix = prefix
        self.state = dict(state)
        self.last = last
        self.ts = ts
        self.count = 0

    def add(self, sender: str, type: str, state_key: str, content: Mapping[str, Any]) -> Event:
        self.count += 1
        node = Node(f"{self.prefix}{self.count}", sender, type, state_key, content)
        if type == CREATE:
            node = Node("CREATE", sender, type, state_key, content)
        auth_types = auth_types_for_event(self.room_version, type, state_key, sender, content)
        self.ts += 1
        event = make_event(
            self.room_version,
            node,
            auth_events=[self.state[k] for k in sorted(auth_types) if k in self.state],
            prev_events=[self.last] if self.last is not None else [],
            ts=self.ts,
        )
        self.store.add(event)
        self.state[(type, state_key)] = event.event_id
        self.last = event.event_id
        return event

    def fork(self, prefix: str) -> _Branch:
        return _Branch(self.room_version, self.store, prefix, self.state, self.last, self.ts)


def fork_room(room_version: RoomVersion, *, members: int, branch_events: int) -> ForkRoom:
    """A public room Alice created, where Bob and Charlie are moderators (50, may kick) and
    ``members`` users have joined; then a fork, each moderator adding ``branch_events`` events
    on one side: power levels changes (giving a member 10), kicks, topics and new joins, in
    turn. The power levels, the topic, the kicked members and the new members conflict."""
    store = EventStore()
    base = _Branch(room_version, store, "$base", {}, None, 0)
    base.add(ALICE, CREATE, "", {})
    base.add(ALICE, MEMBER, ALICE, {"membership": "join"})
    base.add(ALICE, POWER_LEVELS, "",
             {"users": {ALICE: 100, BOB: 50, CHARLIE: 50}, "kick": 50, "ban": 50})
    base.add(ALICE, JOIN_RULES, "", {"join_rule": "public"})
    for user in (BOB, CHARLIE, *(f"@u{i}:example.com" for i in range(members))):
        base.add(user, MEMBER, user, {"membership": "join"})
    state_sets = []
    for side, moderator in enumerate((BOB, CHARLIE)):
        branch = base.fork(f"${'ab'[side]}")
        for step in range(branch_events):
            kind = step % 4
            user = f"@u{side * branch_events + step}:example.com"
            if kind == 0:
                current = store.events[branch.state[POWER_LEVELS_KEY]].content
                users = {**current["users"], user: 10}
                branch.add(moderator, POWER_LEVELS, "", {**current, "users": users})
            elif kind == 1:
                branch.add(moderator, MEMBER, user, {"membership": "leave"})
            elif kind == 2:
                branch.add(moderator, TOPIC, "", {"topic": f"{side}/{step}"})
            else:
                new = f"@new{side}-{step}:example.com"
                branch.add(new, MEMBER, new, {"membership": "join"})
        state_sets.append(branch.state)
    return ForkRoom(store, state_sets)
