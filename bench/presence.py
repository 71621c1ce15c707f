"""Presence at scale: ``--users`` users, each with ``--friends`` friends (made through the
friends API), toggling their presence while ``--watchers`` of them long-poll /sync.

Reports the server's CPU seconds and RSS growth per 1,000 presence updates, and the delivery
latency from a PUT /presence to the moment a watching friend's sync holds it. Friendships form
a ring (user i befriends the next friends/2 users), so every user has the same number.
Prints one JSON line. Every loop is bounded in count and time.

    python bench/presence.py [--users 1000] [--friends 20] [--updates 2000] [--watchers 200]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchServer, emit, machine, percentiles, run_bounded

PASSWORD = "benchmark password"
FRIENDS = "/_matrix/client/unstable/org.ktchat.friends"
# Presence only: no rooms, no account data.
SYNC_FILTER = json.dumps({"room": {"rooms": []}, "account_data": {"not_types": ["*"]}})




async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--friends", type=int, default=20)
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--setup-seconds", type=float, default=900.0)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    half = max(1, args.friends // 2)

    server = BenchServer()
    try:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=timeout) as session:
            setup_started = time.monotonic()
            deadline = setup_started + args.setup_seconds
            tokens: list[str] = [""] * args.users
            ids: list[str] = [""] * args.users

            def registration(i: int) -> Any:
                async def job() -> None:
                    user = await server.register(session, f"p{i}", PASSWORD)
                    tokens[i], ids[i] = user["access_token"], user["user_id"]
                return job

            await run_bounded([registration(i) for i in range(args.users)], 8, deadline)

            async def post(path: str, token: str, body: Any) -> dict[str, Any]:
                async with session.post(server.base + path, json=body,
                                        headers={"Authorization": f"Bearer {token}"}) as resp:
                    data = await resp.json()
                    if resp.status != 200:
                        raise RuntimeError(f"{path}: {resp.status} {data}")
                    return data  # type: ignore[no-any-return]

            def friendship(i: int, j: int) -> Any:
                async def job() -> None:
                    await post(f"{FRIENDS}/requests", tokens[i], {"user_id": ids[j]})
                    await post(f"{FRIENDS}/requests/{quote(ids[i])}/accept", tokens[j], {})
                return job

            pairs = [(i, (i + k) % args.users) for i in range(args.users)
                     for k in range(1, half + 1)]
            made = await run_bounded([friendship(i, j) for i, j in pairs], 16, deadline)
            setup_s = time.monotonic() - setup_started

            # Watchers long-poll for presence; togglers change theirs.
            pending: dict[str, float] = {}  # status_msg -> when its PUT started
            latencies: list[float] = []
            stop = asyncio.Event()

            async def watch(i: int) -> None:
                headers = {"Authorization": f"Bearer {tokens[i]}"}
                async with session.get(f"{server.base}/_matrix/client/v3/sync",
                                       params={"filter": SYNC_FILTER},
                                       headers=headers) as resp:
                    since = (await resp.json())["next_batch"]
                while not stop.is_set():
                    async with session.get(f"{server.base}/_matrix/client/v3/sync", params={
                            "filter": SYNC_FILTER, "since": since, "timeout": "20000"},
                            headers=headers) as resp:
                        body = await resp.json()
                    now = time.perf_counter()
                    since = body["next_batch"]
                    for event in body["presence"]["events"]:
                        sent = pending.get(event["content"].get("status_msg", ""))
                        if sent is not None:
                            latencies.append((now - sent) * 1000)

            watchers = [asyncio.create_task(watch(i)) for i in range(min(args.watchers,
                                                                         args.users))]
            await asyncio.sleep(2)
            rss_before = server.current_rss_mib()
            cpu_before = server.cpu_seconds()
            counter = itertools.count()
            rng = random.Random(7)

            async def toggle() -> None:
                n = next(counter)
                i = rng.randrange(args.users)
                status = f"s{n}"
                pending[status] = time.perf_counter()
                async with session.put(
                        f"{server.base}/_matrix/client/v3/presence/{quote(ids[i])}/status",
                        json={"presence": "online" if n % 2 else "unavailable",
                              "status_msg": status},
                        headers={"Authorization": f"Bearer {tokens[i]}"}) as resp:
                    await resp.read()

            print(f"setup done in {setup_s:.0f} s; updating", file=sys.stderr, flush=True)
            started = time.monotonic()
            updates = await run_bounded([toggle for _ in range(args.updates)], 10,
                                     started + args.seconds)
            update_s = time.monotonic() - started
            await asyncio.sleep(2)  # the last deliveries
            cpu = server.cpu_seconds() - cpu_before
            rss_after = server.current_rss_mib()
            stop.set()
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        per_thousand = 1000 / max(1, updates)
        emit({"bench": "presence", "users": args.users, "friends_each": 2 * half,
              "friendships": made, "setup_seconds": round(setup_s, 1),
              "watchers": len(watchers), "updates": updates,
              "updates_per_s": round(updates / update_s, 1),
              "server_cpu_s_per_1000_updates": round(cpu * per_thousand, 3),
              "server_rss_mib_growth_per_1000_updates": round(
                  (rss_after - rss_before) * per_thousand, 2),
              "server_rss_mib": rss_after,
              "deliveries_to_watchers": len(latencies),
              "delivery_latency": percentiles(latencies),
              "server_peak_rss_mib": server.peak_rss_mib(), "machine": machine()})
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
