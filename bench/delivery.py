"""Delivery latency: how long a message takes from a send to the waiting /sync of each member,
on KT-Chat and on Synapse, one after the other in the same invocation, on the same workload.

For each implementation (``--implementations``, default both) one server is started (SQLite,
rate limits off) and two workloads run on it:

* ``one_to_one``: one sender, one receiver in a room of their own; ``--messages-1`` messages
  (300) sent one at a time, each ``--gap-ms`` after the previous send answered;
* ``fanout``: ``--senders`` (5) senders and ``--receivers`` (20) receivers in one room;
  ``--messages-n`` messages (500) between the senders, each sender sending one at a time
  with the same gap.

Every receiver keeps a /sync long-poll open (a filter that lets only the room's messages
through); a sample is the time from the start of a send request to the moment a receiver
has parsed the sync response holding that message, for every (message, receiver) pair.
KT-Chat additionally runs ``one_to_one`` with the receiver on the SSE sync stream.
Printed: p50/p99/max per workload and implementation, the ratios KT-Chat / Synapse, the send
rate reached, and each server's CPU seconds and peak RSS. One JSON line.

    python bench/delivery.py [--implementations ktchat,synapse] [--messages-1 300]
                             [--messages-n 500] [--senders 5] [--receivers 20]
                             [--gap-ms 20] [--seconds 900]
"""

from __future__ import annotations

import argparse
import asyncio
import random
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
    Client,
    Collector,
    FedBenchServer,
    SseCollector,
    SynapseBenchServer,
    q,
)

SERVERS: dict[str, type[FedBenchServer]] = {"ktchat": FedBenchServer,
                                            "synapse": SynapseBenchServer}


async def _users(server: FedBenchServer, session: aiohttp.ClientSession, prefix: str,
                 count: int) -> list[Client]:
    out = []
    for i in range(count):
        user = await server.register(session, f"{prefix}{i}")
        out.append(Client(session, server.base, user["access_token"]))
    return out


async def _room(owner: Client, members: list[Client]) -> str:
    room_id: str = (await owner.call("POST", "/createRoom", {
        "preset": "public_chat", "name": "delivery bench"}))["room_id"]
    for member in members:
        await member.call("POST", f"/join/{q(room_id)}", {})
    return room_id


async def _workload(senders: list[Client], receivers: list[Collector], room_id: str,
                    messages: int, gap_s: float, label: str, deadline: float
                    ) -> dict[str, Any]:
    """Each sender sends its share one at a time, ``gap_s`` after the previous answer;
    returns the delivery figures over every (message, receiver) pair."""
    samples: list[float] = []
    lost = 0
    send_ms: list[float] = []
    pending: list[asyncio.Task[None]] = []

    async def track(bench_id: str, start: float) -> None:
        nonlocal lost
        for collector in receivers:
            try:
                wait = max(0.1, min(30.0, deadline - time.monotonic()))
                arrived = await asyncio.wait_for(collector.expect(bench_id), wait)
                samples.append((arrived - start) * 1000)
            except TimeoutError:
                lost += 1
                collector.waiters.pop(bench_id, None)

    async def sender_loop(index: int, sender: Client, count: int) -> None:
        # Senders start out of step, as people do.
        await asyncio.sleep(random.uniform(0, gap_s))
        for n in range(count):
            if time.monotonic() >= deadline:
                return
            bench_id = f"{label}-{index}-{n}"
            start = time.perf_counter()
            await sender.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/{bench_id}",
                              {"msgtype": "m.text", "body": f"delivery {n}",
                               "bench_id": bench_id})
            send_ms.append((time.perf_counter() - start) * 1000)
            pending.append(asyncio.create_task(track(bench_id, start)))
            await asyncio.sleep(gap_s)

    shares = [messages // len(senders) + (1 if i < messages % len(senders) else 0)
              for i in range(len(senders))]
    started = time.perf_counter()
    await asyncio.gather(*(sender_loop(i, s, n) for i, (s, n) in
                           enumerate(zip(senders, shares, strict=True))))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*pending)
    return {"messages": len(send_ms), "receivers": len(receivers),
            "deliveries": len(samples), "lost": lost,
            "send_per_s": round(len(send_ms) / elapsed, 1) if elapsed else 0.0,
            "send_request": percentiles(send_ms),
            **percentiles(samples),
            "mean_ms": round(statistics.fmean(samples), 3) if samples else 0.0,
            "max_ms": round(max(samples), 3) if samples else 0.0}


async def _run(implementation: str, root: Path, args: argparse.Namespace, deadline: float
               ) -> dict[str, Any]:
    server = SERVERS[implementation](root, implementation, None,
                                     start_timeout=max(1.0, min(90.0,
                                                                deadline - time.monotonic())))
    gap_s = args.gap_ms / 1000
    try:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=timeout) as session:
            one_sender, one_receiver, sse_receiver = await _users(server, session, "one", 3)
            senders = await _users(server, session, "sender", args.senders)
            receivers = await _users(server, session, "receiver", args.receivers)
            one_room = await _room(one_sender, [one_receiver])
            fan_room = await _room(senders[0], senders[1:] + receivers)
            figures: dict[str, Any] = {"implementation": implementation}

            collector = Collector(one_receiver, {one_room})
            await collector.start()
            try:
                figures["one_to_one"] = await _workload(
                    [one_sender], [collector], one_room, args.messages_1, gap_s, "one",
                    deadline)
            finally:
                await collector.stop()

            collectors = [Collector(r, {fan_room}) for r in receivers]
            await asyncio.gather(*(c.start() for c in collectors))
            try:
                figures["fanout"] = await _workload(
                    senders, collectors, fan_room, args.messages_n, gap_s, "fan", deadline)
            finally:
                await asyncio.gather(*(c.stop() for c in collectors))

            if implementation == "ktchat":
                sse_room = await _room(one_sender, [sse_receiver])
                sse = SseCollector(sse_receiver, {sse_room})
                await sse.start()
                try:
                    figures["one_to_one_sse"] = await _workload(
                        [one_sender], [sse], sse_room, args.messages_1, gap_s, "sse",
                        deadline)
                finally:
                    await sse.stop()
        if implementation == "synapse":
            figures["synapse_version"] = SynapseBenchServer.version()
        figures["server_cpu_seconds"] = server.cpu_seconds()
        figures["server_peak_rss_mib"] = server.peak_rss_mib()
        return figures
    finally:
        server.stop()


def _ratio(ours: dict[str, Any], theirs: dict[str, Any], workload: str, key: str
           ) -> float | None:
    a, b = ours.get(workload, {}).get(key), theirs.get(workload, {}).get(key)
    return round(a / b, 3) if a and b else None


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--implementations", default="ktchat,synapse")
    parser.add_argument("--messages-1", type=int, default=300)
    parser.add_argument("--messages-n", type=int, default=500)
    parser.add_argument("--senders", type=int, default=5)
    parser.add_argument("--receivers", type=int, default=20)
    parser.add_argument("--gap-ms", type=float, default=20.0,
                        help="pause of each sender after each answered send")
    parser.add_argument("--seconds", type=float, default=900.0, help="bound on the whole run")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args()
    implementations = [i.strip() for i in args.implementations.split(",") if i.strip()]
    for implementation in implementations:
        if implementation not in SERVERS:
            parser.error(f"unknown implementation {implementation!r}")
    args.senders, args.receivers = max(1, args.senders), max(1, args.receivers)
    started = time.monotonic()
    deadline = started + args.seconds
    root = Path(tempfile.mkdtemp(prefix="ktchat-bench-delivery-"))
    results: dict[str, dict[str, Any]] = {}
    ok = False
    try:
        for implementation in implementations:
            results[implementation] = await _run(implementation, root, args, deadline)
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"server data and logs kept in {root}", file=sys.stderr)
    figures: dict[str, Any] = {"bench": "delivery", "gap_ms": args.gap_ms, **results}
    if "ktchat" in results and "synapse" in results:
        ours, theirs = results["ktchat"], results["synapse"]
        figures["ktchat_over_synapse"] = {
            f"{workload}_{key}": _ratio(ours, theirs, workload, key)
            for workload in ("one_to_one", "fanout") for key in ("p50_ms", "p99_ms")}
    figures["elapsed_seconds"] = round(time.monotonic() - started, 1)
    figures["machine"] = machine()
    emit(figures)


if __name__ == "__main__":
    asyncio.run(main())
