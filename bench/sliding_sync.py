"""Simplified sliding sync (MSC4186) as Element X uses it, on an account in many rooms: KT-Chat
and Synapse one after the other in the same invocation, on the same workload.

For each implementation (``--implementations``, default both) one server is started (SQLite,
rate limits off). A server whose ``/versions`` does not advertise
``org.matrix.simplified_msc3575`` is reported ``"supported": false`` and nothing more.
Otherwise:

* set-up: a reader account in ``--rooms`` (500) rooms, each with ``--messages`` (2)
  messages; ``--talker-rooms`` (10) of them are a talker's, the reader joined, the rest the
  reader's own; made with ``--workers`` (8) concurrent requests;
* settling: until the server has digested the set-up (KT-Chat evaluates push rules after
  the commit, and after a burst of set-up is at it for seconds more, answering counts late):
  until the server process is idle (under 5% of a core over a second), not measured
  (``settle_seconds``; ``--no-settle`` skips it);
* ``first_response``: the initial request of Element X's room list (no ``pos``, list
  ``all_rooms`` with range 0-19, ``timeline_limit`` 1, the rust-sdk's required state with
  ``$LAZY``/``$ME``, the account data, receipts and typing extensions), ``--repeat`` (5)
  times, each on a connection of its own: the first (cold) and p50/min/max, in ms, and the
  server's CPU ms per request after the first (clock ticks: a larger ``--repeat`` gives a
  finer figure);
* ``full_load``: what Element X does next, the range grown by 100 rooms a request until all
  the rooms are loaded: requests and total ms;
* ``incremental``: the reader long-polls (``pos``, ``timeout`` 30 s, the whole range) while
  the talker sends ``--samples`` (100) messages round the talker rooms, one at a time (the
  next ``--pause`` (0.1) s after the previous was delivered: with ``timeline_limit`` 1 a
  second message into a room would replace an undelivered first); a sample is the time from
  the start of a send request to the moment the reader has parsed the sliding sync response
  carrying that message: p50/p99/max.

Printed: one JSON line with both implementations' figures, KT-Chat / Synapse ratios, and each
server's CPU seconds and peak RSS.

    python bench/sliding_sync.py [--implementations ktchat,synapse] [--rooms 500]
                                 [--messages 2] [--samples 100] [--pause 0.1] [--repeat 5]
                                 [--no-settle]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import data_root, emit, machine, percentiles, run_bounded
from _servers import PASSWORD, Client, FedBenchServer, SynapseBenchServer, q

from tests.helpers.sliding_sync_client import (
    ALL_ROOMS,
    UNSTABLE_FEATURE,
    Connection,
    ElementXClient,
    supports_sliding_sync,
)

# Settled: the server process uses under this share of a core over a step.
SETTLED_CPU = 0.05
SETTLE_STEP_S = 1.0

SERVERS: dict[str, type[FedBenchServer]] = {"ktchat": FedBenchServer,
                                            "synapse": SynapseBenchServer}


async def _populate(server: FedBenchServer, session: aiohttp.ClientSession,
                    args: argparse.Namespace, deadline: float) -> tuple[str, Client, list[str]]:
    """The reader in ``args.rooms`` rooms; returns its localpart, the talker and the talker's
    rooms."""
    reader_account = await server.register(session, "reader")
    talker_account = await server.register(session, "talker")
    reader = Client(session, server.base, reader_account["access_token"])
    talker = Client(session, server.base, talker_account["access_token"])
    talker_rooms: list[str] = []
    serial = iter(range(10**9))

    async def message(client: Client, room_id: str) -> None:
        n = next(serial)
        await client.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/setup{n}",
                          {"msgtype": "m.text", "body": f"setting up {n}"})

    async def talker_room() -> None:
        room_id = (await talker.call("POST", "/createRoom", {
            "preset": "private_chat", "name": f"talker room {len(talker_rooms)}",
            "invite": [reader_account["user_id"]]}))["room_id"]
        await reader.call("POST", f"/join/{q(room_id)}", {})
        for _ in range(args.messages):
            await message(talker, room_id)
        talker_rooms.append(room_id)

    async def own_room() -> None:
        room_id = (await reader.call("POST", "/createRoom", {
            "preset": "private_chat", "name": "a room of the reader's"}))["room_id"]
        for _ in range(args.messages):
            await message(reader, room_id)

    talkers = min(args.talker_rooms, args.rooms)
    jobs = [talker_room] * talkers + [own_room] * (args.rooms - talkers)
    done = await run_bounded(jobs, args.workers, deadline)
    if done < len(jobs):
        raise RuntimeError(f"{server.label}: set-up made {done} of {len(jobs)} rooms in time")
    return reader_account["user_id"][1:].split(":")[0], talker, talker_rooms


async def _first_responses(server: FedBenchServer, client: ElementXClient, rooms: int,
                           repeat: int) -> dict[str, Any]:
    """The initial room-list request, ``repeat`` times on fresh connections; with the
    server's CPU time per request after the first (a figure a busy machine disturbs less
    than the wall time; in clock ticks, so coarse for few requests)."""
    client.range = (0, 19)
    body = client.room_list_body()
    samples: list[float] = []
    sizes: list[int] = []
    cpu_before = (0.0, 0.0)
    for i in range(repeat):
        if i == 1:
            cpu_before = server.cpu_split()
        connection = Connection(client.http, f"bench-first-{i}")
        start = time.perf_counter()
        answer = await connection.request(body, 0)
        samples.append((time.perf_counter() - start) * 1000)
        listed = answer["lists"][ALL_ROOMS]
        if listed["count"] != rooms or len(answer.get("rooms", {})) != min(20, rooms):
            raise RuntimeError(f"first response: count {listed['count']}, "
                               f"{len(answer.get('rooms', {}))} rooms")
        sizes.append(len(str(answer)))
    warm_cpu_ms = (sum(server.cpu_split()) - sum(cpu_before)) * 1000 / (repeat - 1) \
        if repeat > 1 else None
    return {"cold_ms": round(samples[0], 3), **percentiles(samples),
            "min_ms": round(min(samples), 3), "max_ms": round(max(samples), 3),
            "rooms_in_response": min(20, rooms), "approx_chars": sizes[0],
            "warm_server_cpu_ms_per_request": round(warm_cpu_ms, 2)
            if warm_cpu_ms is not None else None}


async def _settle(server: FedBenchServer, deadline: float) -> float:
    """Until the server has digested the set-up (KT-Chat evaluates push rules after the
    commit, and is still at it for a while after a burst of set-up): until the server
    process uses under ``SETTLED_CPU`` of a core over ``SETTLE_STEP_S``. Seconds waited."""
    started = time.perf_counter()
    before = server.cpu_seconds()
    while time.monotonic() < deadline:
        await asyncio.sleep(SETTLE_STEP_S)
        now = server.cpu_seconds()
        if now - before < SETTLED_CPU * SETTLE_STEP_S:
            break
        before = now
    return round(time.perf_counter() - started, 1)


async def _incremental(client: ElementXClient, talker: Client, rooms: list[str],
                       args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """The reader long-polls; the talker sends one message at a time; send -> delivery."""
    arrived: dict[str, float] = {}
    waiters: dict[str, asyncio.Future[float]] = {}
    duplicates = 0
    responses = 0

    async def poll() -> None:
        nonlocal duplicates, responses
        while True:
            answer = await client.sync_room_list(30_000)
            now = time.perf_counter()
            responses += 1
            for room in answer.get("rooms", {}).values():
                for event in room.get("timeline", []):
                    bench_id = (event.get("content") or {}).get("bench_id")
                    if not isinstance(bench_id, str):
                        continue
                    if bench_id in arrived:
                        duplicates += 1
                        continue
                    arrived[bench_id] = now
                    waiter = waiters.pop(bench_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(now)

    samples: list[float] = []
    lost = 0

    async def send_one(n: int) -> None:
        nonlocal lost
        bench_id = f"inc-{n}"
        room_id = rooms[n % len(rooms)]
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        waiters[bench_id] = waiter
        start = time.perf_counter()
        await talker.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/{bench_id}",
                          {"msgtype": "m.text", "body": f"incremental {n}",
                           "bench_id": bench_id})
        try:
            samples.append((await asyncio.wait_for(waiter, 30) - start) * 1000)
        except TimeoutError:
            lost += 1

    poller = asyncio.create_task(poll())
    try:
        await asyncio.sleep(0.5)  # the first long poll is in flight
        for n in range(args.samples):
            if time.monotonic() > deadline:
                break
            await send_one(n)
            # Not on a schedule: with timeline_limit 1 a second message into a room before
            # the first was delivered would replace it (limited), so one at a time.
            await asyncio.sleep(args.pause)
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    return {"messages": len(samples) + lost, "delivered": len(samples), "lost": lost,
            "duplicates": duplicates, "responses": responses, **percentiles(samples),
            "max_ms": round(max(samples), 3) if samples else 0.0}


async def _run(implementation: str, root: Path, args: argparse.Namespace, deadline: float
               ) -> dict[str, Any]:
    server = SERVERS[implementation](root, implementation, None,
                                     start_timeout=max(1.0, min(90.0,
                                                                deadline - time.monotonic())))
    try:
        figures: dict[str, Any] = {"implementation": implementation}
        if implementation == "synapse":
            figures["synapse_version"] = SynapseBenchServer.version()
        if not await supports_sliding_sync(server.base):
            figures.update(supported=False, note=f"/versions does not advertise "
                           f"{UNSTABLE_FEATURE}: sliding sync not supported")
            return figures
        figures["supported"] = True
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=timeout) as session:
            started = time.perf_counter()
            reader, talker, talker_rooms = await _populate(server, session, args, deadline)
            figures["setup_seconds"] = round(time.perf_counter() - started, 1)
            client = await ElementXClient.login(server.base, reader, PASSWORD)
            try:
                if args.settle:
                    figures["settle_seconds"] = await _settle(server, deadline)
                figures["first_response"] = await _first_responses(server, client,
                                                                   args.rooms, args.repeat)
                started = time.perf_counter()
                await client.load_room_list()
                requests = len(client.room_list.responses)
                figures["full_load"] = {
                    "ms": round((time.perf_counter() - started) * 1000, 3),
                    "requests": requests, "rooms": len(client.list_room_ids)}
                figures["incremental"] = await _incremental(client, talker, talker_rooms,
                                                            args, deadline)
            finally:
                await client.close()
        figures["server_cpu_seconds"] = server.cpu_seconds()
        figures["server_peak_rss_mib"] = server.peak_rss_mib()
        return figures
    finally:
        server.stop()


def _ratio(ours: dict[str, Any], theirs: dict[str, Any], part: str, key: str) -> float | None:
    a, b = ours.get(part, {}).get(key), theirs.get(part, {}).get(key)
    return round(a / b, 3) if a and b else None


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--implementations", default="ktchat,synapse")
    parser.add_argument("--rooms", type=int, default=500)
    parser.add_argument("--talker-rooms", type=int, default=10)
    parser.add_argument("--messages", type=int, default=2, help="messages in each room")
    parser.add_argument("--workers", type=int, default=8, help="concurrent set-up requests")
    parser.add_argument("--repeat", type=int, default=5, help="first responses measured")
    parser.add_argument("--samples", type=int, default=100, help="incremental messages")
    parser.add_argument("--pause", type=float, default=0.1,
                        help="seconds between a delivery and the next incremental message")
    parser.add_argument("--no-settle", dest="settle", action="store_false",
                        help="measure at once after set-up, not once the server has "
                             "evaluated push rules for all of it")
    parser.add_argument("--seconds", type=float, default=1200.0, help="bound on the run")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args()
    implementations = [i.strip() for i in args.implementations.split(",") if i.strip()]
    for implementation in implementations:
        if implementation not in SERVERS:
            parser.error(f"unknown implementation {implementation!r}")
    args.rooms = max(1, args.rooms)
    args.talker_rooms = max(1, args.talker_rooms)
    args.repeat = max(1, args.repeat)
    started = time.monotonic()
    deadline = started + args.seconds
    results: dict[str, dict[str, Any]] = {}
    with data_root("ktchat-bench-sliding-sync-", args.keep) as root:
        for implementation in implementations:
            results[implementation] = await _run(implementation, root, args, deadline)
    figures: dict[str, Any] = {"bench": "sliding_sync", "rooms": args.rooms,
                               "messages_per_room": args.messages, **results}
    ours, theirs = results.get("ktchat", {}), results.get("synapse", {})
    if ours.get("supported") and theirs.get("supported"):
        figures["ktchat_over_synapse"] = {
            f"{part}_{key}": _ratio(ours, theirs, part, key)
            for part, key in (("first_response", "p50_ms"), ("first_response", "cold_ms"),
                              ("full_load", "ms"), ("incremental", "p50_ms"),
                              ("incremental", "p99_ms"))}
    figures["elapsed_seconds"] = round(time.monotonic() - started, 1)
    figures["machine"] = machine()
    emit(figures)


if __name__ == "__main__":
    asyncio.run(main())
