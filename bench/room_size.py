"""Room size: what a room of 100, 1,000 and 10,000 members costs the roomserver (issue #15).

1. In process, on real storage (SQLite; ``--postgres URL`` adds PostgreSQL). The services are
   built from a small config of their own (``build_services``). A local user (Alice) creates
   a public room (``--room-version``, default 12; repeatable) and 30 local senders join it
   (``MembershipService.join``); then it fills with remote members ``@uN:remote.example``:
   each member event is built by ``roomserver.build`` and stored by
   ``roomserver.receive_queued`` (the federation receive path, commits pipelined), until the
   room has each of ``--sizes`` joined members. At each size, ``--rounds`` times:

   - ``roomserver.send`` of 300 messages from Alice one at a time: latency p50/p99 and the
     process CPU time per message;
   - 300 messages from the 30 local senders at once (10 each, one after another): msg/s;
   - 30 topic changes from Alice one at a time (a state event, for comparison: the room's
     state moves): p50 and CPU time per event;
   - the same sends (Alice's and the 30 senders') in a second room of Alice and the senders
     that stays at 100 members, alternating with those in the growing room: the ratio of the
     two is taken under the same load (the ratio across sizes is taken minutes apart, on a
     machine whose load drifts).

   and a fork: two branches built on the room's head by two remote admins (power 100),
   each of 22 events in a chain: a power levels change, 7 bans, 7 kicks, 6 joins of new
   remote users, a topic (the branches overlap: B kicks users A bans, bans users A kicks,
   so membership keys conflict). The database is copied twice (the room itself stays as it
   was and grows on); on one copy branch A is received then B, on the other B then A, each
   event through ``roomserver.receive`` (answered after its commit). Every event of the second
   branch is placed against the first branch's head, so the room's current state is resolved
   (state resolution v2/v2.1) for each: total ms and per-event p50/max. The two copies' current
   states (the roomserver's and the ``current_state`` table) must be identical: asserted
   (convergence).

   One JSON line per backend, room version and size (medians of the rounds; CPU times are
   this process's, the steadier figure on a busy machine); then one line per backend and
   room version with ``message_p50@largest / message_p50@smallest`` (should be ~1).

2. Over HTTP, KT-Chat and Synapse (``.venv-synapse``) as processes on SQLite, one after the
   other, the same workload: ``--http-members`` users registered with the shared-secret admin
   API (Synapse with ``bcrypt_rounds: 4``), a public room joined through ``POST /join``
   (10 at a time); at 100 members and at ``--http-members``, ``--rounds`` times 300
   ``PUT /send`` one after another from the creator (fewer rounds when they take over 45 s
   each: Synapse at 1,000 members): p50/p99, the server's CPU time per send, and the
   ratios. 1,000 members by default, not 10,000: on a 2-core machine Synapse took ~55 s for
   900 joins (one at a time per room) and ~280 ms per send at 1,000 members (5x its figure
   at 100: it evaluates push rules and writes a push action for every local member), so
   10,000 joins and 300 sends would take tens of minutes, far beyond the 10-minute budget.
   ``--no-synapse`` skips Synapse (and it is skipped, with a note, when not installed or when
   its set-up passes ``--synapse-seconds``); ``--no-http`` skips part 2.

``--profile DIR`` writes cProfile files of the joins, Alice's sends (last round) and the
second branch of the fork, per backend, version and size (they slow those phases);
``KTCHAT_BENCH_PYSPY=DIR`` has py-spy sample each HTTP server's first 30 s of sends at the
largest size (DIR/ktchat.txt, DIR/synapse.txt).

    python bench/room_size.py [--sizes 100,1000,10000] [--room-version 12 ...]
                              [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
                              [--rounds 5] [--http-members 1000] [--no-synapse] [--no-http]
                              [--sqlite/--no-sqlite] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import asyncpg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import emit, machine, percentiles
from _servers import FedBenchServer, SynapseBenchServer

from core.crypto.signing_keys import generate_key_file, load_signing_key
from core.events.builder import build_event
from core.events.model import Event
from core.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from core.rooms.auth import auth_types_for_event
from homeserver.config import parse_config
from homeserver.services.container import Services, build_services
from homeserver.services.rooms import CreateRoomRequest
from roomserver.api import NewEvent
from storage import Database

SERVER_NAME = "bench.local"
ALICE = f"@alice:{SERVER_NAME}"
SENDERS = [f"@sender{i}:{SERVER_NAME}" for i in range(30)]
ADMIN_A = "@admin:a.example"
ADMIN_B = "@admin:b.example"
MESSAGES = 300
STATE_EVENTS = 30
CONTROL_MEMBERS = 100
JOIN_PIPELINE = 200  # member events queued before waiting for their commits
V3 = "/_matrix/client/v3"
HTTP_ROUND_SECONDS = 45


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


# -- storage --------------------------------------------------------------------------------


class SqliteBackend:
    name = "sqlite"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ktchat-bench-roomsize-db-"))
        self.main = self.url("main")

    def url(self, label: str) -> str:
        return f"sqlite+aiosqlite:///{self.root / label}.db"

    async def setup(self) -> None:
        pass

    async def clone(self, label: str) -> str:
        """A copy of the main database (the services on it are stopped)."""
        for suffix in ("", "-wal"):
            source = self.root / f"main.db{suffix}"
            if source.exists():
                shutil.copyfile(source, self.root / f"{label}.db{suffix}")
        return self.url(label)

    async def drop(self, label: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            (self.root / f"{label}.db{suffix}").unlink(missing_ok=True)

    async def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class PostgresBackend:
    """Throwaway databases on the cluster of ``url``; a copy is ``CREATE DATABASE ...
    TEMPLATE`` of the main one."""

    name = "postgres"

    def __init__(self, url: str) -> None:
        parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1)
                         .replace("postgres://", "postgresql://", 1))
        self._parts = parts
        self.admin_dsn = urlunsplit(parts)
        self.prefix = "ktbench_rs_" + secrets.token_hex(4)
        self._made: list[str] = []
        self.main = self.url("main")

    def url(self, label: str) -> str:
        return urlunsplit(self._parts._replace(scheme="postgresql+asyncpg",
                                               path=f"/{self.prefix}_{label}"))

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def setup(self) -> None:
        await self._admin(f'CREATE DATABASE "{self.prefix}_main"')
        self._made.append("main")

    async def clone(self, label: str) -> str:
        await self._admin(f'CREATE DATABASE "{self.prefix}_{label}" '
                          f'TEMPLATE "{self.prefix}_main"')
        self._made.append(label)
        return self.url(label)

    async def drop(self, label: str) -> None:
        await self._admin(f'DROP DATABASE IF EXISTS "{self.prefix}_{label}" WITH (FORCE)')
        if label in self._made:
            self._made.remove(label)

    async def teardown(self) -> None:
        for label in list(self._made):
            await self.drop(label)


Backend = SqliteBackend | PostgresBackend


class Node:
    """The services of one process on one database (started, stopped, restarted)."""

    def __init__(self, workdir: Path, url: str) -> None:
        self.workdir = workdir
        self.url = url
        self.services: Services | None = None

    async def start(self) -> Services:
        key_path = self.workdir / "signing.key"
        if not key_path.exists():
            generate_key_file(key_path)
        config = parse_config({
            "server_name": SERVER_NAME,
            "public_baseurl": "http://127.0.0.1:8008/",
            "signing_key_path": str(key_path),
            "database": {"url": self.url},
            "registration": {"enabled": False},
            "rate_limits": {"enabled": False},
            "media": {"store_path": str(self.workdir / "media")},
            "logging": {"level": "WARNING"},
        }, self.workdir)
        self.services = build_services(config, db=Database(self.url))
        await self.services.start()
        return self.services

    async def stop(self) -> None:
        if self.services is not None:
            services, self.services = self.services, None
            await services.stop()


# -- the room -------------------------------------------------------------------------------


@dataclass
class Room:
    room_id: str
    version: RoomVersion
    fillers: int = 0  # remote members joined so far: @{prefix}0 .. @{prefix}{fillers-1}
    joined: int = 0
    prefix: str = "u"

    def filler(self, n: int) -> str:
        return f"@{self.prefix}{n}:remote.example"


async def create_room(hs: Services, version: RoomVersion) -> Room:
    await hs.accounts.register("alice", None)
    for user in SENDERS:
        await hs.accounts.register(user[1:].split(":")[0], None)
    room_id, _ = await hs.rooms.create_room(CreateRoomRequest(
        creator=ALICE, preset="public_chat", room_version=version.identifier))
    for user in SENDERS:
        await hs.membership.join(user, room_id)
    rs = hs.roomserver
    for admin in (ADMIN_A, ADMIN_B):
        event = await rs.build(room_id, NewEvent("m.room.member", admin, {"membership": "join"},
                                                 state_key=admin))
        assert await rs.receive(event) == "accepted"
    levels = dict(await rs.state_content(room_id, ("m.room.power_levels", "")) or {})
    levels["users"] = {**levels.get("users", {}), ADMIN_A: 100, ADMIN_B: 100}
    await rs.send(room_id, NewEvent("m.room.power_levels", ALICE, levels, state_key=""))
    room = Room(room_id, version)
    room.joined = await joined_count(hs, room)
    return room


async def create_control_room(hs: Services, version: RoomVersion, members: int) -> Room:
    """A second room that stays at ``members``: Alice's sends there alternate with those in
    the growing room, so the two are compared under the same load."""
    room_id, _ = await hs.rooms.create_room(CreateRoomRequest(
        creator=ALICE, preset="public_chat", room_version=version.identifier))
    for user in SENDERS:
        await hs.membership.join(user, room_id)
    room = Room(room_id, version, prefix="c")
    room.joined = await joined_count(hs, room)
    await fill(hs, room, members)
    return room


async def joined_count(hs: Services, room: Room) -> int:
    head = await hs.roomserver.room_head(room.room_id)
    assert head is not None
    return len(head.joined)


async def fill(hs: Services, room: Room, target: int) -> dict[str, Any]:
    """Remote members join (built by the roomserver, received as another server's events,
    commits pipelined) until ``target`` are joined."""
    rs = hs.roomserver
    wanted = target - room.joined
    started = time.perf_counter()
    cpu = time.process_time()
    pending: list[asyncio.Future[None]] = []
    for _ in range(max(0, wanted)):
        user = room.filler(room.fillers)
        room.fillers += 1
        event = await rs.build(room.room_id, NewEvent("m.room.member", user,
                                                      {"membership": "join"}, state_key=user))
        outcome, future = await rs.receive_queued(event, known_absent=True)
        assert outcome == "accepted", outcome
        if future is not None:
            pending.append(future)
        if len(pending) >= JOIN_PIPELINE:
            for f in pending:
                await rs.committed(f, room.room_id)
            pending.clear()
    for f in pending:
        await rs.committed(f, room.room_id)
    elapsed = time.perf_counter() - started
    room.joined = await joined_count(hs, room)
    assert room.joined == target, (room.joined, target)
    return {"joined": max(0, wanted), "seconds": round(elapsed, 2),
            "ms_per_member": round(elapsed * 1000 / wanted, 3) if wanted > 0 else None,
            "cpu_ms_per_member": round((time.process_time() - cpu) * 1000 / wanted, 3)
            if wanted > 0 else None}


def message(sender: str, body: str) -> NewEvent:
    return NewEvent("m.room.message", sender, {"msgtype": "m.text", "body": body},
                    device_id="BENCH", txn_id=secrets.token_hex(8))


async def send_sequential(hs: Services, room: Room) -> dict[str, Any]:
    latencies = []
    cpu = time.process_time()
    started = time.perf_counter()
    for i in range(MESSAGES):
        t = time.perf_counter()
        await hs.roomserver.send(room.room_id, message(ALICE, f"sequential {i}"))
        latencies.append((time.perf_counter() - t) * 1000)
    elapsed = time.perf_counter() - started
    return {**percentiles(latencies),
            "cpu_ms_per_msg": round((time.process_time() - cpu) * 1000 / MESSAGES, 3),
            "per_s": round(MESSAGES / elapsed, 1)}


async def send_state(hs: Services, room: Room) -> dict[str, Any]:
    """``STATE_EVENTS`` topic changes from Alice, one at a time (a state event: the room's
    state moves, unlike a message's)."""
    latencies = []
    cpu = time.process_time()
    for i in range(STATE_EVENTS):
        t = time.perf_counter()
        await hs.roomserver.send(room.room_id, NewEvent("m.room.topic", ALICE,
                                                        {"topic": f"topic {i}"}, state_key=""))
        latencies.append((time.perf_counter() - t) * 1000)
    return {**percentiles(latencies),
            "cpu_ms_per_event": round((time.process_time() - cpu) * 1000 / STATE_EVENTS, 3)}


async def send_concurrent(hs: Services, room: Room) -> dict[str, Any]:
    latencies: list[float] = []
    per_sender = MESSAGES // len(SENDERS)

    async def sender(user: str) -> None:
        for i in range(per_sender):
            t = time.perf_counter()
            await hs.roomserver.send(room.room_id, message(user, f"concurrent {i}"))
            latencies.append((time.perf_counter() - t) * 1000)

    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(sender(u) for u in SENDERS))
    elapsed = time.perf_counter() - started
    return {"per_s": round(len(latencies) / elapsed, 1), **percentiles(latencies),
            "cpu_ms_per_msg": round((time.process_time() - cpu) * 1000 / len(latencies), 3)}


@contextlib.contextmanager
def profiled(directory: Path | None, name: str) -> Any:
    if directory is None:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        directory.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(str(directory / f"{name}.prof"))


# -- the fork -------------------------------------------------------------------------------


@dataclass
class Fork:
    a: list[Event] = field(default_factory=list)
    b: list[Event] = field(default_factory=list)


def _branch_spec(admin: str, levels: dict[str, Any], bans: list[str], kicks: list[str],
                 joins: list[str], topic: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    spec: list[tuple[str, str, str, dict[str, Any]]] = [
        ("m.room.power_levels", admin, "", levels)]
    spec += [("m.room.member", admin, u, {"membership": "ban", "reason": "bench"})
             for u in bans]
    spec += [("m.room.member", admin, u, {"membership": "leave", "reason": "bench"})
             for u in kicks]
    spec += [("m.room.member", u, u, {"membership": "join"}) for u in joins]
    spec.append(("m.room.topic", admin, "", {"topic": topic}))
    return spec


async def build_fork(hs: Services, room: Room, label: str) -> Fork:
    """Two chains of 22 events on the room's head, neither knowing the other."""
    rs = hs.roomserver
    head = await rs.room_head(room.room_id)
    assert head is not None
    state = dict(head.state)
    levels = dict(await rs.state_content(room.room_id, ("m.room.power_levels", "")) or {})
    # Remote members still joined (the newest ones), as the branches' targets.
    t = [room.filler(n) for n in range(room.fillers - 1, room.fillers - 40, -1)]
    t = [u for u in t if u in head.joined][:28]
    assert len(t) == 28
    levels_a = {**levels, "kick": 60,
                "users": {**levels.get("users", {}), t[20]: 50, t[21]: 50, t[22]: 50}}
    levels_b = {**levels, "ban": 60,
                "users": {**levels.get("users", {}), t[23]: 50, t[24]: 50, t[25]: 50}}
    spec_a = _branch_spec(ADMIN_A, levels_a, bans=t[0:7], kicks=t[7:14],
                          joins=[f"@new{i}_{label}:a.example" for i in range(6)],
                          topic=f"branch A {label}")
    spec_b = _branch_spec(ADMIN_B, levels_b, bans=[*t[7:11], *t[14:17]],
                          kicks=[*t[0:3], *t[17:20], t[26]],
                          joins=[f"@new{i}_{label}:b.example" for i in range(6)],
                          topic=f"branch B {label}")
    key = load_signing_key(hs.config.signing_key_path)
    now = int(time.time() * 1000)

    def chain(spec: list[tuple[str, str, str, dict[str, Any]]], server: str,
              ts: int) -> list[Event]:
        branch_state = dict(state)
        prevs = list(head.extremities[-10:])
        out = []
        for i, (type_, sender, state_key, content) in enumerate(spec):
            keys = auth_types_for_event(room.version, type_, state_key, sender, content)
            auth = sorted(branch_state[k] for k in keys if k in branch_state)
            event = build_event(room.version, type=type_, sender=sender, content=content,
                                room_id=room.room_id, state_key=state_key, prev_events=prevs,
                                auth_events=auth, depth=head.depth + 1 + i,
                                origin_server_ts=ts + i, server_name=server, signing_key=key)
            branch_state[(type_, state_key)] = event.event_id
            prevs = [event.event_id]
            out.append(event)
        return out

    return Fork(chain(spec_a, "a.example", now), chain(spec_b, "b.example", now + 3))


async def receive_branch(hs: Services, events: list[Event]) -> dict[str, Any]:
    timings = []
    outcomes: dict[str, int] = {}
    cpu = time.process_time()
    for event in events:
        t = time.perf_counter()
        outcome = await hs.roomserver.receive(event)
        timings.append((time.perf_counter() - t) * 1000)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {"total_ms": round(sum(timings), 1), "p50_ms": _median(timings),
            "max_ms": round(max(timings), 3),
            "cpu_ms": round((time.process_time() - cpu) * 1000, 1), "outcomes": outcomes}


async def run_order(backend: Backend, workdir: Path, room: Room, fork: Fork, order: str,
                    profile: Path | None, profile_name: str
                    ) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    """On a copy of the room's database, one branch then the other; returns the timings of
    each and the resolved current state."""
    label = f"fork_{order}"
    url = await backend.clone(label)
    node = Node(workdir, url)
    hs = await node.start()
    try:
        await hs.roomserver.room_head(room.room_id)  # the snapshot loaded, as in a live room
        first, second = (fork.a, fork.b) if order == "ab" else (fork.b, fork.a)
        first_figures = await receive_branch(hs, first)
        with profiled(profile, profile_name):
            second_figures = await receive_branch(hs, second)
        state = await hs.roomserver.current_state(room.room_id)
        assert state is not None
        stored = await hs.db.state.current_state(room.room_id)
        table = {(e.type, e.state_key): e.event_id for e in stored}
        assert table == state, f"{order}: current_state table differs from the roomserver's"
        head = await hs.roomserver.room_head(room.room_id)
        assert head is not None
        return {"first_branch": first_figures, "second_branch": second_figures,
                "extremities": len(head.extremities), "joined_after": len(head.joined)}, state
    finally:
        await node.stop()
        await backend.drop(label)


# -- in process -----------------------------------------------------------------------------


async def bench_backend(backend: Backend, version: RoomVersion, sizes: list[int], rounds: int,
                        profile: Path | None) -> list[dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="ktchat-bench-roomsize-"))
    await backend.setup()
    node = Node(workdir, backend.main)
    results: list[dict[str, Any]] = []
    try:
        hs = await node.start()
        room = await create_room(hs, version)
        control = await create_control_room(hs, version, CONTROL_MEMBERS)
        log(f"[{backend.name} v{version.identifier}] room {room.room_id}, "
            f"{room.joined} members")
        for size in sizes:
            with profiled(profile, f"{backend.name}-v{version.identifier}-{size}-join"):
                joins = await fill(hs, room, size)
            log(f"[{backend.name} v{version.identifier}] {size} members "
                f"({joins['seconds']} s to join {joins['joined']})")
            # Warm: every sender's transaction IDs loaded, the room's snapshot in memory.
            for target in (room, control):
                await asyncio.gather(*(hs.roomserver.send(target.room_id,
                                                          message(user, "warm-up"))
                                       for user in (ALICE, *SENDERS)))
            sequential, concurrent, states_sent = [], [], []
            control_sequential, control_concurrent = [], []
            for r in range(rounds):
                # The control room's sends first every other round.
                for target in ((room, control) if r % 2 == 0 else (control, room)):
                    if target is control:
                        control_sequential.append(await send_sequential(hs, control))
                        control_concurrent.append(await send_concurrent(hs, control))
                        continue
                    with profiled(profile if r == rounds - 1 else None,
                                  f"{backend.name}-v{version.identifier}-{size}-send"):
                        sequential.append(await send_sequential(hs, room))
                    concurrent.append(await send_concurrent(hs, room))
                states_sent.append(await send_state(hs, room))
            fork = await build_fork(hs, room, str(size))
            await node.stop()
            orders: dict[str, Any] = {}
            states = {}
            for order in ("ab", "ba"):
                orders[order], states[order] = await run_order(
                    backend, workdir, room, fork, order, profile,
                    f"{backend.name}-v{version.identifier}-{size}-fork-{order}")
            converged = states["ab"] == states["ba"]
            assert converged, (
                f"fork at {size} members: the two orders resolved different states: "
                f"{sorted(set(states['ab'].items()) ^ set(states['ba'].items()))[:10]}")
            hs = await node.start()
            figures = {
                "bench": "room_size",
                "backend": backend.name,
                "room_version": version.identifier,
                "members": room.joined,
                "state_entries": len(states["ab"]),
                "join": joins,
                "rounds": rounds,
                "message": {
                    "p50_ms": _median([s["p50_ms"] for s in sequential]),
                    "p99_ms": _median([s["p99_ms"] for s in sequential]),
                    "cpu_ms_per_msg": _median([s["cpu_ms_per_msg"] for s in sequential]),
                    "p50_ms_rounds": [s["p50_ms"] for s in sequential],
                },
                # The same sends in the 100-member control room, alternating with the above.
                "control_room": {
                    "members": control.joined,
                    "message_p50_ms": _median([s["p50_ms"] for s in control_sequential]),
                    "message_cpu_ms_per_msg": _median([s["cpu_ms_per_msg"]
                                                       for s in control_sequential]),
                    "concurrent_msg_per_s": _median([c["per_s"] for c in control_concurrent]),
                },
                "state_event": {  # a topic change: the cost of moving the room's state
                    "p50_ms": _median([s["p50_ms"] for s in states_sent]),
                    "cpu_ms_per_event": _median([s["cpu_ms_per_event"] for s in states_sent]),
                },
                "concurrent_30_senders": {
                    "msg_per_s": _median([c["per_s"] for c in concurrent]),
                    "p50_ms": _median([c["p50_ms"] for c in concurrent]),
                    "p99_ms": _median([c["p99_ms"] for c in concurrent]),
                    "cpu_ms_per_msg": _median([c["cpu_ms_per_msg"] for c in concurrent]),
                    "msg_per_s_rounds": [c["per_s"] for c in concurrent],
                },
                "fork": {
                    "events_per_branch": len(fork.a),
                    # B received after A: every B event resolved against A's head.
                    "resolve_b_after_a": orders["ab"]["second_branch"],
                    "resolve_a_after_b": orders["ba"]["second_branch"],
                    "first_branch_ms": {o: orders[o]["first_branch"]["total_ms"]
                                        for o in orders},
                    "extremities_after": orders["ab"]["extremities"],
                    "joined_after": orders["ab"]["joined_after"],
                    "converged": converged,
                },
            }
            emit(figures)
            results.append(figures)
    finally:
        await node.stop()
        await backend.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


# -- over HTTP: KT-Chat and Synapse ---------------------------------------------------------


class FastSynapse(SynapseBenchServer):
    """The Synapse baseline with ``bcrypt_rounds: 4`` (registering many users)."""

    def _configure(self, database_url: str | None) -> list[str]:
        command = super()._configure(database_url)
        path = self.dir / "homeserver.yaml"
        config = yaml.safe_load(path.read_text())
        config["bcrypt_rounds"] = 4
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return command


async def _bounded(jobs: list[Callable[[], Awaitable[Any]]], workers: int,
                   deadline: float) -> int:
    queue = iter(jobs)
    done = 0

    async def worker() -> None:
        nonlocal done
        for job in queue:
            if time.monotonic() > deadline:
                return
            await job()
            done += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return done


async def _call(session: aiohttp.ClientSession, method: str, url: str, token: str,
                body: Any = None) -> dict[str, Any]:
    async with session.request(method, url, json=body,
                               headers={"Authorization": f"Bearer {token}"}) as resp:
        data = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"{method} {url}: {resp.status} {data}")
        return data  # type: ignore[no-any-return]


async def http_sends(server: FedBenchServer, session: aiohttp.ClientSession, room_id: str,
                     token: str, rounds: int) -> dict[str, Any]:
    """``rounds`` times 300 sends, fewer when a round takes over ``HTTP_ROUND_SECONDS``
    (Synapse in a large room)."""
    url = f"{server.base}{V3}/rooms/{quote(room_id, safe='')}/send/m.room.message/"
    runs = []
    started = time.monotonic()
    cpu = server.cpu_seconds()
    for r in range(rounds):
        if r and time.monotonic() - started > HTTP_ROUND_SECONDS * r:
            break
        latencies = []
        for i in range(MESSAGES):
            t = time.perf_counter()
            await _call(session, "PUT", url + f"r{r}m{i}-{secrets.token_hex(4)}", token,
                        {"msgtype": "m.text", "body": f"message {i}"})
            latencies.append((time.perf_counter() - t) * 1000)
        runs.append(percentiles(latencies))
    return {"p50_ms": _median([r["p50_ms"] for r in runs]),
            "p99_ms": _median([r["p99_ms"] for r in runs]),
            # The server's CPU time (all its threads) per send: steadier than latency.
            "server_cpu_ms_per_send": round((server.cpu_seconds() - cpu) * 1000
                                            / (MESSAGES * len(runs)), 3),
            "p50_ms_rounds": [r["p50_ms"] for r in runs]}


async def http_bench(kind: str, members: int, version: str, rounds: int,
                     seconds: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"ktchat-bench-roomsize-{kind}-"))
    server: FedBenchServer = FastSynapse(root, kind, None) if kind == "synapse" \
        else FedBenchServer(root, kind, None)
    out: dict[str, Any] = {"implementation": kind}
    if kind == "synapse":
        out["version"] = FastSynapse.version()
    deadline = time.monotonic() + seconds
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64),
                timeout=aiohttp.ClientTimeout(total=120)) as session:
            started = time.perf_counter()
            creator = await server.register(session, "creator")
            tokens: list[str] = []

            async def register(n: int) -> None:
                tokens.append((await server.register(session, f"member{n}"))["access_token"])

            registered = await _bounded([partial(register, n) for n in range(members - 1)],
                                        8, deadline)
            out["register_s"] = round(time.perf_counter() - started, 1)
            room = await _call(session, "POST", f"{server.base}{V3}/createRoom",
                               creator["access_token"],
                               {"preset": "public_chat", "room_version": version})
            room_id = room["room_id"]
            join_url = f"{server.base}{V3}/join/{quote(room_id, safe='')}"
            joined = 1
            out["join_s"] = 0.0
            for target in sorted({min(100, members), members}):
                started = time.perf_counter()
                batch = tokens[joined - 1:target - 1]
                done = await _bounded([partial(_call, session, "POST", join_url, t, {})
                                       for t in batch], 10, deadline)
                joined += done
                out["join_s"] = round(out["join_s"] + time.perf_counter() - started, 1)
                if joined < target:
                    out["note"] = (f"set-up over {seconds:.0f} s: {registered} registered, "
                                   f"{joined} joined; stopped")
                    break
                log(f"[http {kind}] {joined} members; sending")
                # KTCHAT_BENCH_PYSPY=DIR: py-spy samples the server's first 30 s of sends.
                sampler = server.sample(30) if target == members else None
                out[f"send_at_{target}"] = await http_sends(server, session, room_id,
                                                            creator["access_token"], rounds)
                if sampler is not None:
                    sampler.wait()
            members_now = await _call(
                session, "GET", f"{server.base}{V3}/rooms/{quote(room_id, safe='')}"
                "/joined_members", creator["access_token"])
            out["members"] = len(members_now["joined"])
    finally:
        out["cpu_s"] = server.cpu_seconds()
        out["peak_rss_mib"] = server.peak_rss_mib()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return out


async def compare_http(members: int, version: str, rounds: int, synapse: bool,
                       synapse_seconds: float) -> dict[str, Any]:
    figures: dict[str, Any] = {"bench": "room_size_http", "members": members,
                               "room_version": version, "rounds": rounds}
    figures["ktchat"] = await http_bench("ktchat", members, version, rounds, 900)
    if not synapse:
        figures["synapse"] = {"skipped": "--no-synapse"}
    else:
        try:
            FastSynapse.version()
        except Exception as e:
            figures["synapse"] = {"skipped": f"Synapse not available: {e}"}
        else:
            try:
                figures["synapse"] = await http_bench("synapse", members, version, rounds,
                                                      synapse_seconds)
            except Exception as e:
                figures["synapse"] = {"skipped": f"Synapse failed: {e!r}"[:500]}
    ours, theirs = figures["ktchat"], figures["synapse"]
    ratios = {}
    for key in ("send_at_100", f"send_at_{members}"):
        if key in ours and key in theirs:
            ratios[key] = {"p50_ktchat_over_synapse":
                           round(ours[key]["p50_ms"] / theirs[key]["p50_ms"], 3),
                           "p99_ktchat_over_synapse":
                           round(ours[key]["p99_ms"] / theirs[key]["p99_ms"], 3)}
    for kind in ("ktchat", "synapse"):
        f = figures[kind]
        if "send_at_100" in f and f"send_at_{members}" in f and members != 100:
            ratios[f"{kind}_p50_{members}_over_100"] = round(
                f[f"send_at_{members}"]["p50_ms"] / f["send_at_100"]["p50_ms"], 3)
            ratios[f"{kind}_server_cpu_{members}_over_100"] = round(
                f[f"send_at_{members}"]["server_cpu_ms_per_send"]
                / f["send_at_100"]["server_cpu_ms_per_send"], 3)
    figures["ratios"] = ratios
    figures["machine"] = machine()
    return figures


# -- main -----------------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--room-version", action="append", choices=sorted(KNOWN_ROOM_VERSIONS),
                        help="repeatable; default 12")
    parser.add_argument("--postgres", metavar="URL",
                        help="also on PostgreSQL: a cluster URL where databases may be created")
    parser.add_argument("--sqlite", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--http", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--http-members", type=int, default=1000)
    parser.add_argument("--synapse", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--synapse-seconds", type=float, default=600,
                        help="give up on Synapse's set-up (registration, joins) after this")
    parser.add_argument("--profile", type=Path, metavar="DIR")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    versions = args.room_version or ["12"]
    started = time.monotonic()
    backends: list[Callable[[], Backend]] = []
    if args.sqlite:
        backends.append(SqliteBackend)
    if args.postgres:
        backends.append(lambda: PostgresBackend(args.postgres))
    for make in backends:
        for v in versions:
            backend = make()
            results = await bench_backend(backend, KNOWN_ROOM_VERSIONS[v], sizes, args.rounds,
                                          args.profile)
            small, large = results[0], results[-1]
            emit({
                "bench": "room_size_summary",
                "backend": backend.name,
                "room_version": v,
                f"message_p50_{large['members']}_over_{small['members']}": round(
                    large["message"]["p50_ms"] / small["message"]["p50_ms"], 3),
                # Sends in the large room / in the 100-member control room, same rounds.
                f"message_p50_{large['members']}_over_control_interleaved": round(
                    large["message"]["p50_ms"] / large["control_room"]["message_p50_ms"], 3),
                f"message_cpu_{large['members']}_over_control_interleaved": round(
                    large["message"]["cpu_ms_per_msg"]
                    / large["control_room"]["message_cpu_ms_per_msg"], 3),
                f"concurrent_msg_per_s_{large['members']}_over_control_interleaved": round(
                    large["concurrent_30_senders"]["msg_per_s"]
                    / large["control_room"]["concurrent_msg_per_s"], 3),
                f"message_cpu_{large['members']}_over_{small['members']}": round(
                    large["message"]["cpu_ms_per_msg"] / small["message"]["cpu_ms_per_msg"], 3),
                f"concurrent_msg_per_s_{large['members']}_over_{small['members']}": round(
                    large["concurrent_30_senders"]["msg_per_s"]
                    / small["concurrent_30_senders"]["msg_per_s"], 3),
                f"state_event_cpu_{large['members']}_over_{small['members']}": round(
                    large["state_event"]["cpu_ms_per_event"]
                    / small["state_event"]["cpu_ms_per_event"], 3),
                "fork_b_after_a_ms": {r["members"]: {
                    k: r["fork"]["resolve_b_after_a"][k] for k in ("total_ms", "cpu_ms")}
                    for r in results},
                "machine": machine(),
            })
    if args.http:
        emit(await compare_http(args.http_members, versions[0], args.rounds, args.synapse,
                                args.synapse_seconds))
    log(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    asyncio.run(main())
