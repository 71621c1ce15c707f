"""Push rule evaluation: what a message costs in a 1,000-member room against a 10-member room
(issue 17). Every member is a local user with the default push rules, so every message is
evaluated for each of them; what most of them get is one row per message (``push_events``),
a member whose verdict differs gets their own (``push_actions``).

In process, on SQLite (``--postgres URL`` for PostgreSQL instead): Alice creates two public
rooms, ``--members`` local users join the large one and ``--small`` of them the small one.
Then ``--rounds`` times: ``--messages`` messages from Alice into each room, one at a time,
alternating rooms (the same machine load for both), each waiting until push rule evaluation
has written its results. Figures per room size: the process CPU time per message (send,
commit, evaluation and its write: the server's whole cost), the CPU time inside the
evaluation alone (rules, per-room facts, the batched write), and the latency p50/p99; then
``ratio`` = large / small for both CPU figures (the target: within 2x). Last, the rotation
of every result (push_rotation.py, as if a day had passed): rows deleted, CPU and wall time.

    python bench/push.py [--members 1000] [--small 10] [--messages 100] [--rounds 3]
                         [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, machine, percentiles

from core.crypto.signing_keys import generate_key_file
from homeserver.config import parse_config
from homeserver.services.container import Services, build_services
from homeserver.services.rooms import CreateRoomRequest
from roomserver.api import NewEvent
from storage import Database

SERVER_NAME = "bench.local"
ALICE = f"@alice:{SERVER_NAME}"


async def start(workdir: Path, url: str) -> Services:
    key_path = workdir / "signing.key"
    generate_key_file(key_path)
    config = parse_config({
        "server_name": SERVER_NAME, "public_baseurl": "http://127.0.0.1:8008/",
        "signing_key_path": str(key_path), "database": {"url": url},
        "registration": {"enabled": False}, "rate_limits": {"enabled": False},
        "presence": {"enabled": False},
        "media": {"store_path": str(workdir / "media")}, "logging": {"level": "WARNING"},
    }, workdir)
    services = build_services(config, db=Database(url))
    await services.start()
    return services


class EvaluationClock:
    """CPU time spent inside the push evaluator's batches (wraps its method)."""

    def __init__(self, hs: Services) -> None:
        self.cpu = 0.0
        inner: Callable[[Sequence[str], int], Awaitable[None]] = hs.push._evaluate

        async def timed(event_ids: Sequence[str], up_to: int) -> None:
            started = time.process_time()
            try:
                await inner(event_ids, up_to)
            finally:
                self.cpu += time.process_time() - started

        hs.push._evaluate = timed  # type: ignore[method-assign]


async def send(hs: Services, room_id: str, body: str) -> float:
    started = time.perf_counter()
    event = await hs.roomserver.send(room_id, NewEvent(
        "m.room.message", ALICE, {"msgtype": "m.text", "body": body}))
    stored = await hs.db.events.get_event(event.event_id)
    assert stored is not None and stored.stream_ordering is not None
    await hs.push.wait_for(stored.stream_ordering, timeout_s=60)
    return (time.perf_counter() - started) * 1000


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ktchat-bench-push-"))
    url = args.postgres or f"sqlite+aiosqlite:///{workdir / 'homeserver.db'}"
    hs = await start(workdir, url)
    try:
        await hs.accounts.register("alice", None)
        users = [await hs.accounts.register(f"user{i}", None)
                 for i in range(args.members - 1)]
        large, _ = await hs.rooms.create_room(CreateRoomRequest(creator=ALICE,
                                                                preset="public_chat"))
        small, _ = await hs.rooms.create_room(CreateRoomRequest(creator=ALICE,
                                                                preset="public_chat"))
        set_up = time.perf_counter()
        for i, user in enumerate(users):
            await hs.membership.join(user, large)
            if i < args.small - 1:
                await hs.membership.join(user, small)
        set_up_s = time.perf_counter() - set_up
        clock = EvaluationClock(hs)
        rooms = {"small": small, "large": large}
        cpu: dict[str, list[float]] = {r: [] for r in rooms}
        evaluation: dict[str, list[float]] = {r: [] for r in rooms}
        latencies: dict[str, list[float]] = {r: [] for r in rooms}
        for _ in range(args.rounds):
            totals = {r: 0.0 for r in rooms}
            evals = {r: 0.0 for r in rooms}
            for i in range(args.messages):
                for name, room_id in rooms.items():
                    started, evaluated = time.process_time(), clock.cpu
                    latencies[name].append(await send(hs, room_id, f"message {i}"))
                    totals[name] += time.process_time() - started
                    evals[name] += clock.cpu - evaluated
            for name in rooms:
                cpu[name].append(totals[name] * 1000 / args.messages)
                evaluation[name].append(evals[name] * 1000 / args.messages)
        figures: dict[str, Any] = {"bench": "push", "backend": "postgres" if args.postgres
                                   else "sqlite", "messages": args.messages,
                                   "rounds": args.rounds, "join_setup_s": round(set_up_s, 1)}
        for name, members in (("small", args.small), ("large", args.members)):
            figures[f"{name}_members"] = members
            figures[f"{name}_cpu_ms_per_msg"] = round(statistics.median(cpu[name]), 3)
            figures[f"{name}_evaluation_cpu_ms_per_msg"] = round(
                statistics.median(evaluation[name]), 3)
            figures[f"{name}_latency"] = percentiles(latencies[name])
        figures["cpu_ratio"] = round(figures["large_cpu_ms_per_msg"]
                                     / figures["small_cpu_ms_per_msg"], 2)
        figures["evaluation_cpu_ratio"] = round(
            figures["large_evaluation_cpu_ms_per_msg"]
            / max(figures["small_evaluation_cpu_ms_per_msg"], 1e-6), 2)
        # Rotation of everything sent (as if a day had passed): the summaries of every
        # member of both rooms, the rows deleted.
        started, wall = time.process_time(), time.perf_counter()
        figures["rotation_rows_deleted"] = await hs.push_rotation.rotate(
            up_to=hs.push.position)
        figures["rotation_cpu_ms"] = round((time.process_time() - started) * 1000, 1)
        figures["rotation_wall_ms"] = round((time.perf_counter() - wall) * 1000, 1)
        figures["machine"] = machine()
        emit(figures)
    finally:
        await hs.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", default=None)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
