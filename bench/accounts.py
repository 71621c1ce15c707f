"""Login and whoami throughput at 50 concurrent clients against a real server on SQLite.

Prints one JSON line: requests per second, p50/p99 latency, server CPU seconds and peak RSS.
Every loop is bounded in count and in time.

    python bench/accounts.py [--clients 50] [--seconds 10] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchServer, emit, machine, run_load

PASSWORD = "benchmark password"


async def _load(clients: int, seconds: float, max_requests: int, request: Any
                ) -> dict[str, Any]:
    figures = await run_load(clients, seconds, max_requests, request)
    return {"requests": figures.pop("done"), "errors": figures.pop("errors"),
            "rps": figures.pop("per_s"), **figures}


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
            login_figures = await _load(args.clients, args.seconds, args.max_requests,
                                        lambda i: login(session, i))
            cpu1 = server.cpu_seconds()
            whoami_figures = await _load(args.clients, args.seconds, args.max_requests,
                                         lambda i: whoami(session, i))
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
