"""Login and whoami throughput at 50 concurrent clients against a real server on SQLite.

Prints one JSON line: requests per second, p50/p99 latency, server CPU seconds and peak RSS.
Every loop is bounded in count and in time.

    python bench/accounts.py [--clients 50] [--seconds 10] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchServer, emit, machine, percentiles

PASSWORD = "benchmark password"


async def _load(session: aiohttp.ClientSession, clients: int, seconds: float, max_requests: int,
                make_request: Any) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def worker(i: int) -> None:
        nonlocal errors
        while time.monotonic() < deadline and len(latencies) + errors < max_requests:
            start = time.perf_counter()
            async with make_request(session, i) as resp:
                await resp.read()
                if resp.status == 200:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:
                    errors += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.monotonic() - started
    return {"requests": len(latencies), "errors": errors,
            "rps": round(len(latencies) / elapsed, 1), **percentiles(latencies)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--postgres", help="postgresql+asyncpg:// URL instead of SQLite")
    args = parser.parse_args()

    server = BenchServer(args.postgres)
    try:
        connector = aiohttp.TCPConnector(limit=args.clients)
        async with aiohttp.ClientSession(connector=connector) as session:
            users = [await server.register(session, f"bench{i}", PASSWORD)
                     for i in range(args.clients)]
            login_url = f"{server.base}/_matrix/client/v3/login"
            whoami_url = f"{server.base}/_matrix/client/v3/account/whoami"

            def login(s: aiohttp.ClientSession, i: int) -> Any:
                return s.post(login_url, json={
                    "type": "m.login.password", "password": PASSWORD,
                    "identifier": {"type": "m.id.user", "user": f"bench{i}"},
                    "device_id": "BENCH"})

            def whoami(s: aiohttp.ClientSession, i: int) -> Any:
                return s.get(whoami_url,
                             headers={"Authorization": f"Bearer {users[i]['access_token']}"})

            cpu0 = server.cpu_seconds()
            login_figures = await _load(session, args.clients, args.seconds, args.max_requests,
                                        login)
            cpu1 = server.cpu_seconds()
            whoami_figures = await _load(session, args.clients, args.seconds, args.max_requests,
                                         whoami)
            cpu2 = server.cpu_seconds()
        emit({
            "bench": "accounts",
            "database": "postgresql" if args.postgres else "sqlite",
            "clients": args.clients,
            "login": {**login_figures, "server_cpu_s": round(cpu1 - cpu0, 2)},
            "whoami": {**whoami_figures, "server_cpu_s": round(cpu2 - cpu1, 2)},
            "server_peak_rss_mib": server.peak_rss_mib(),
            "machine": machine(),
        })
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
