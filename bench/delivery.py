"""Delivery latency: how long a message takes from a send to the waiting /sync of each member,
on KT-Chat and on Synapse, one after the other in the same invocation, on the same workload.

For each implementation (``--implementations``, default both) one server is started (SQLite,
rate limits off) and two workloads run on it:

* ``one_to_one``: one sender, one receiver in a room of their own; ``--messages-1`` messages
  (300) at ``--rate-1`` (20) a second;
* ``fanout``: ``--senders`` (5) senders and ``--receivers`` (20) receivers in one room;
  ``--messages-n`` messages (500) between the senders at ``--rate-n`` (10) a second in all.

Sends follow a fixed schedule (each sender's messages evenly spaced, senders out of step), not
the answers: both servers get the same offered load, below what either can take, so the
figures are delivery latency rather than queueing (a server that falls behind shows it).

Every receiver keeps a /sync long-poll open (a filter that lets only the room's messages
through); a sample is the time from the start of a send request to the moment a receiver
has parsed the sync response holding that message, for every (message, receiver) pair.
KT-Chat additionally runs ``one_to_one`` with the receiver on the SSE sync stream.
Printed: p50/p99/max per workload and implementation, the ratios KT-Chat / Synapse, the send
rate reached, and each server's CPU seconds and peak RSS. One JSON line.

    python bench/delivery.py [--implementations ktchat,synapse] [--messages-1 300]
                             [--rate-1 20] [--messages-n 500] [--rate-n 10] [--senders 5]
                             [--receivers 20] [--seconds 900]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_root, emit, machine, percentiles
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
                    messages: int, rate: float, label: str, deadline: float
                    ) -> dict[str, Any]:
    """The senders send ``messages`` between them at ``rate`` a second in all, each on its
    own schedule; returns the delivery figures over every (message, receiver) pair."""
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

    async def send_one(sender: Client, bench_id: str, n: int) -> None:
        start = time.perf_counter()
        tracking = asyncio.create_task(track(bench_id, start))
        pending.append(tracking)
        await sender.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/{bench_id}",
                          {"msgtype": "m.text", "body": f"delivery {n}", "bench_id": bench_id})
        send_ms.append((time.perf_counter() - start) * 1000)

    async def sender_loop(index: int, sender: Client, count: int) -> None:
        interval = len(senders) / rate
        # Senders start out of step, as people do, then keep their own pace.
        first = time.perf_counter() + random.uniform(0, interval)
        sends = []
        for n in range(count):
            wait = first + n * interval - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if time.monotonic() >= deadline:
                break
            sends.append(asyncio.create_task(send_one(sender, f"{label}-{index}-{n}", n)))
        await asyncio.gather(*sends)

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
                    [one_sender], [collector], one_room, args.messages_1, args.rate_1, "one",
                    deadline)
            finally:
                await collector.stop()

            collectors = [Collector(r, {fan_room}) for r in receivers]
            await asyncio.gather(*(c.start() for c in collectors))
            try:
                figures["fanout"] = await _workload(
                    senders, collectors, fan_room, args.messages_n, args.rate_n, "fan",
                    deadline)
            finally:
                await asyncio.gather(*(c.stop() for c in collectors))

            if implementation == "ktchat":
                sse_room = await _room(one_sender, [sse_receiver])
                sse = SseCollector(sse_receiver, {sse_room})
                await sse.start()
                try:
                    figures["one_to_one_sse"] = await _workload(
                        [one_sender], [sse], sse_room, args.messages_1, args.rate_1, "sse",
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
    parser.add_argument("--rate-1", type=float, default=20.0,
                        help="messages a second in the one-to-one workload")
    parser.add_argument("--rate-n", type=float, default=10.0,
                        help="messages a second in the fan-out workload (all senders)")
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
    results: dict[str, dict[str, Any]] = {}
    with data_root("ktchat-bench-delivery-", args.keep) as root:
        for implementation in implementations:
            results[implementation] = await _run(implementation, root, args, deadline)
    figures: dict[str, Any] = {"bench": "delivery", "rate_1": args.rate_1,
                               "rate_n": args.rate_n, **results}
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
