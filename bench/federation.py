"""Federation between two real servers: how fast room events replicate from A to B.

Starts servers A and B (server names ``127.0.0.1:<federation port>``, TLS federation listener
with certificate checks off, loopback allowed), registers ``--senders`` users on A and bob on
B; the first sender creates ``--rooms`` public rooms, the other senders join them on A, and
bob joins each of them over federation (``POST /join/{roomId}?server_name=A``). Bob keeps one
/sync long-poll open on B for the whole run. Then:

* throughput: ``--messages`` messages sent on A as fast as the client API takes them
  (``--concurrency`` requests in flight, spread over the senders and rooms); reported are the
  send rate on A and the replication rate A->B, counted from the first send to the moment
  bob's /sync on B has returned the last of them, with per-message send-to-arrival p50/p99;
* latency: ``--latency-samples`` messages one at a time, each timed from the start of the
  send request on A to bob's long-poll /sync on B returning it (p50/p99/max); samples are
  ``--latency-gap`` apart (default 50 ms);
* the peak RSS and CPU seconds of both server processes.

Prints one JSON line. Every loop is bounded in count, and the whole run by ``--seconds``.
``--backend postgres`` puts each server on a throwaway database of the PostgreSQL cluster
named by ``KTCHAT_TEST_POSTGRES_URL`` (dropped afterwards).

``--implementations ktchat,synapse`` runs the same workload, measured by the same code, on two
Synapse processes after the two KT-Chat ones (the baseline to compare with) and prints the
ratios: Synapse from ``.venv-synapse`` (or ``$KTCHAT_TEST_SYNAPSE_PYTHON``), SQLite only,
users registered through its shared-secret admin API, rate limits raised and federation retry
backoff shortened as for KT-Chat; its figures give ``synapse_version``.

    python bench/federation.py [--messages 2000] [--latency-samples 200] [--senders 1]
                               [--rooms 1] [--concurrency 16] [--seconds 300]
                               [--backend sqlite|postgres]
                               [--implementations ktchat|synapse|ktchat,synapse]
                               [--b-inbound-worker]

``--b-inbound-worker`` (KT-Chat, PostgreSQL): B receives through a ``federation_inbound``
worker, which checks each transaction and hands it to B's main process (the hop's cost).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, percentiles
from _servers import (
    POSTGRES_URL_ENV,
    Client,
    Collector,
    FedBenchServer,
    InboundWorkerBenchServer,
    SynapseBenchServer,
    ThrowawayPostgres,
    q,
)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def _setup(session: aiohttp.ClientSession, a: FedBenchServer, b: FedBenchServer,
                 args: argparse.Namespace) -> tuple[list[Client], Client, list[str]]:
    senders = []
    for i in range(args.senders):
        user = await a.register(session, f"alice{i}" if i else "alice")
        senders.append(Client(session, a.base, user["access_token"]))
    bob_user = await b.register(session, "bob")
    bob = Client(session, b.base, bob_user["access_token"])
    rooms = []
    for i in range(args.rooms):
        created = await senders[0].call("POST", "/createRoom", {
            "preset": "public_chat", "name": f"federation bench {i}"})
        rooms.append(created["room_id"])
    for room_id in rooms:
        for sender in senders[1:]:
            await sender.call("POST", f"/join/{q(room_id)}", {})
        await bob.call("POST", f"/join/{q(room_id)}", {},
                       params=[("server_name", a.server_name), ("via", a.server_name)],
                       limit_s=120)
    return senders, bob, rooms


async def _throughput(senders: list[Client], rooms: list[str], collector: Collector,
                      args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    send_start: dict[str, float] = {}
    send_ms: list[float] = []
    errors = 0
    issued = itertools.count()
    pairs = [(s, r) for s in senders for r in rooms]

    async def worker() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            n = next(issued)
            if n >= args.messages:
                return
            sender, room_id = pairs[n % len(pairs)]
            bench_id = f"t{n}"
            start = time.perf_counter()
            send_start[bench_id] = start
            try:
                await sender.call(
                    "PUT", f"/rooms/{q(room_id)}/send/m.room.message/{bench_id}",
                    {"msgtype": "m.text", "body": f"throughput {n}", "bench_id": bench_id})
            except Exception:  # counted
                errors += 1
                del send_start[bench_id]
                continue
            send_ms.append((time.perf_counter() - start) * 1000)

    first_send = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    last_send_done = time.perf_counter()
    sent = set(send_start)
    while time.monotonic() < deadline and not sent <= collector.arrived.keys():
        collector.progress.clear()
        if sent <= collector.arrived.keys():
            break
        try:
            await asyncio.wait_for(collector.progress.wait(),
                                   max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            break
    arrived = [collector.arrived[i] for i in sent if i in collector.arrived]
    lag_ms = [(collector.arrived[i] - send_start[i]) * 1000
              for i in sent if i in collector.arrived]
    last_arrival = max(arrived) if arrived else time.perf_counter()
    replicate_s = last_arrival - first_send
    send_s = last_send_done - first_send
    return {
        "sent": len(sent), "send_errors": errors, "arrived": len(arrived),
        "complete": len(arrived) == len(sent) == args.messages,
        "send_seconds": round(send_s, 3),
        "send_per_s": round(len(sent) / send_s, 1) if send_s else 0.0,
        "send_request": percentiles(send_ms),
        "replicate_seconds": round(replicate_s, 3),
        "replicated_per_s": round(len(arrived) / replicate_s, 1) if replicate_s else 0.0,
        "drain_after_last_send_ms": _ms(max(0.0, last_arrival - last_send_done)),
        "send_to_arrival": {**percentiles(lag_ms),
                            "max_ms": round(max(lag_ms), 3) if lag_ms else 0.0},
    }


async def _latency(sender: Client, room_id: str, collector: Collector,
                   args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    samples: list[float] = []
    timeouts = 0
    for n in range(args.latency_samples):
        if time.monotonic() >= deadline:
            break
        if n:
            await asyncio.sleep(args.latency_gap)
        bench_id = f"l{n}"
        arrival = collector.expect(bench_id)
        start = time.perf_counter()
        try:
            await sender.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/{bench_id}",
                              {"msgtype": "m.text", "body": f"latency {n}",
                               "bench_id": bench_id})
            wait = max(0.1, min(30.0, deadline - time.monotonic()))
            samples.append((await asyncio.wait_for(arrival, wait) - start) * 1000)
        except (TimeoutError, RuntimeError, aiohttp.ClientError):
            timeouts += 1
            collector.waiters.pop(bench_id, None)
    return {"samples": len(samples), "failed": timeouts, **percentiles(samples),
            "mean_ms": round(statistics.fmean(samples), 3) if samples else 0.0,
            "max_ms": round(max(samples), 3) if samples else 0.0}


async def _run(implementation: str, args: argparse.Namespace) -> dict[str, Any]:
    """The whole workload on two servers of ``implementation``; its figures."""
    server_class: type[FedBenchServer] = FedBenchServer
    version: dict[str, str] = {}
    if implementation == "synapse":
        server_class = SynapseBenchServer
        version["synapse_version"] = SynapseBenchServer.version()
    started = time.monotonic()
    deadline = started + args.seconds

    databases: list[ThrowawayPostgres] = []
    if args.backend == "postgres":
        base_url = os.environ.get(POSTGRES_URL_ENV)
        if not base_url:
            sys.exit(f"--backend postgres needs {POSTGRES_URL_ENV}")
        databases = [ThrowawayPostgres(base_url), ThrowawayPostgres(base_url)]
        for database in databases:
            await database.create()

    root = Path(tempfile.mkdtemp(prefix="ktchat-bench-federation-"))
    servers: list[FedBenchServer] = []
    ok = False
    try:
        for label, database in itertools.zip_longest(("a", "b"), databases):
            if label == "b" and args.b_inbound_worker:
                servers.append(InboundWorkerBenchServer(
                    root, label, database.url if database else None,
                    start_timeout=max(1.0, min(90.0, deadline - time.monotonic()))))
                continue
            servers.append(server_class(
                root, label, database.url if database else None,
                start_timeout=max(1.0, min(90.0, deadline - time.monotonic()))))
        a, b = servers
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=timeout) as session:
            senders, bob, rooms = await asyncio.wait_for(
                _setup(session, a, b, args), max(1.0, deadline - time.monotonic()))
            setup_s = time.monotonic() - started
            collector = Collector(bob, set(rooms))
            await collector.start()
            try:
                # The throughput phase leaves a quarter of what remains to the latency one.
                remaining = deadline - time.monotonic()
                throughput = await _throughput(senders, rooms, collector, args,
                                               deadline - remaining / 4)
                latency = await _latency(senders[0], rooms[0], collector, args, deadline)
            finally:
                await collector.stop()
        figures = {
            "implementation": implementation, **version,
            "setup_seconds": round(setup_s, 1),
            "throughput": throughput,
            "latency": latency,
            "receiver_syncs": collector.syncs, "receiver_limited_timelines": collector.limited,
            "receiver_sync_errors": collector.errors,
            "server_a_peak_rss_mib": a.peak_rss_mib(), "server_b_peak_rss_mib": b.peak_rss_mib(),
            "server_a_cpu_seconds": a.cpu_seconds(), "server_b_cpu_seconds": b.cpu_seconds(),
            **({"server_b_worker_cpu_seconds": round(sum(b.worker_cpu_split()), 2)}
               if isinstance(b, InboundWorkerBenchServer) else {}),
            "elapsed_seconds": round(time.monotonic() - started, 1),
        }
        ok = True
        return figures
    finally:
        for server in servers:  # both shut down at once
            server.terminate()
        for server in servers:
            server.stop()
        for database in databases:
            try:
                await database.drop()
            except Exception as e:  # reported, the figures still count
                print(f"could not drop {database.name}: {e}", file=sys.stderr)
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"server data and logs kept in {root}", file=sys.stderr)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--latency-gap", type=float, default=0.05,
                        help="seconds between latency samples")
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16,
                        help="send requests in flight during the throughput phase")
    parser.add_argument("--seconds", type=float, default=300.0,
                        help="bound on each implementation's run, setup included")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite",
                        help="postgres: KT-Chat only (the Synapse baseline is SQLite only)")
    parser.add_argument("--implementations", default="ktchat",
                        help="what servers A and B run, one run each in this order: ktchat, "
                             "synapse (from .venv-synapse, or $KTCHAT_TEST_SYNAPSE_PYTHON), "
                             "or both (ktchat,synapse), which also prints the ratios")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--b-inbound-worker", action="store_true",
                        help="B receives through a federation_inbound worker (needs --backend "
                             "postgres and Redis at KTCHAT_TEST_REDIS_URL)")
    args = parser.parse_args()
    args.senders, args.rooms = max(1, args.senders), max(1, args.rooms)
    args.concurrency = max(1, args.concurrency)
    implementations = [i.strip() for i in args.implementations.split(",") if i.strip()]
    for implementation in implementations:
        if implementation not in ("ktchat", "synapse"):
            parser.error(f"unknown implementation {implementation!r}")
    if "synapse" in implementations and args.backend != "sqlite":
        parser.error("synapse runs with --backend sqlite only")
    results = {i: await _run(i, args) for i in implementations}
    figures: dict[str, Any] = {
        "bench": "federation", "database": args.backend, "senders": args.senders,
        "b_inbound_worker": args.b_inbound_worker,
        "rooms": args.rooms, "concurrency": args.concurrency, "messages": args.messages,
        **results}
    if "ktchat" in results and "synapse" in results:
        ours, theirs = results["ktchat"], results["synapse"]
        figures["ktchat_over_synapse"] = {
            f"latency_{key}": round(ours["latency"][key] / theirs["latency"][key], 3)
            for key in ("p50_ms", "p99_ms") if theirs["latency"][key]}
        figures["ktchat_over_synapse"]["replicated_per_s"] = round(
            ours["throughput"]["replicated_per_s"] /
            max(0.1, theirs["throughput"]["replicated_per_s"]), 2)
    figures["machine"] = machine()
    emit(figures)


if __name__ == "__main__":
    asyncio.run(main())
