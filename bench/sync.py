"""Initial sync of a big account, and what an idle long-poll connection costs.

Fills a server with ``--rooms`` rooms of ``--messages`` messages each (one user in all of
them), then times initial /sync (timeline limit 10, lazy-loaded members) and an incremental
/sync, and opens ``--idle`` long-polling /syncs to measure RSS per idle connection.
Prints one JSON line. Every loop is bounded in count and time.

    python bench/sync.py [--rooms 500] [--messages 50] [--idle 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchServer, emit, machine

PASSWORD = "benchmark password"
FILTER = json.dumps({"room": {"timeline": {"limit": 10},
                              "state": {"lazy_load_members": True}}})


async def _fill(session: aiohttp.ClientSession, base: str, token: str, rooms: int,
                messages: int, deadline: float) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    sent = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(rooms):
        queue.put_nowait(i)

    async def worker() -> None:
        nonlocal sent
        while not queue.empty() and time.monotonic() < deadline:
            i = queue.get_nowait()
            async with session.post(f"{base}/_matrix/client/v3/createRoom",
                                    json={"name": f"room {i}"}, headers=headers) as resp:
                created = await resp.json()
                if "room_id" not in created:
                    raise RuntimeError(f"createRoom failed: {resp.status} {created}")
                room_id = created["room_id"]
            for m in range(messages):
                url = f"{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/f{i}-{m}"
                async with session.put(url, json={"msgtype": "m.text", "body": f"m{m}"},
                                       headers=headers) as resp:
                    await resp.read()
                    sent += resp.status == 200

    await asyncio.gather(*(worker() for _ in range(20)))
    return sent


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rooms", type=int, default=500)
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--fill-seconds", type=float, default=300.0)
    args = parser.parse_args()

    server = BenchServer()
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=args.idle + 50)) as session:
            user = await server.register(session, "syncer", PASSWORD)
            headers = {"Authorization": f"Bearer {user['access_token']}"}
            started = time.monotonic()
            sent = await _fill(session, server.base, user["access_token"], args.rooms,
                               args.messages, started + args.fill_seconds)
            fill_s = time.monotonic() - started

            timings = []
            body: dict[str, Any] = {}
            size = 0
            for _ in range(3):
                t = time.perf_counter()
                async with session.get(f"{server.base}/_matrix/client/v3/sync",
                                       params={"filter": FILTER}, headers=headers) as resp:
                    raw = await resp.read()
                timings.append((time.perf_counter() - t) * 1000)
                size = len(raw)
                body = json.loads(raw)
            t = time.perf_counter()
            async with session.get(f"{server.base}/_matrix/client/v3/sync",
                                   params={"since": body["next_batch"], "filter": FILTER},
                                   headers=headers) as resp:
                await resp.read()
            incremental_ms = (time.perf_counter() - t) * 1000

            rss_before = server.peak_rss_mib()
            current_before = _current_rss(server)
            waiters = [asyncio.create_task(session.get(
                f"{server.base}/_matrix/client/v3/sync",
                params={"since": body["next_batch"], "timeout": "20000"}, headers=headers))
                for _ in range(args.idle)]
            await asyncio.sleep(3)
            current_during = _current_rss(server)
            for task in waiters:
                task.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        emit({
            "bench": "sync",
            "rooms": len(body.get("rooms", {}).get("join", {})),
            "messages_sent": sent,
            "fill_seconds": round(fill_s, 1),
            "initial_sync_ms": {"median": round(statistics.median(timings), 1),
                                "all": [round(x, 1) for x in timings]},
            "initial_sync_bytes": size,
            "incremental_sync_ms": round(incremental_ms, 1),
            "idle_long_polls": args.idle,
            "rss_kib_per_idle_long_poll": round((current_during - current_before) * 1024
                                                / max(1, args.idle), 1),
            "server_peak_rss_mib": max(rss_before, server.peak_rss_mib()),
            "machine": machine(),
        })
    finally:
        server.stop()


def _current_rss(server: BenchServer) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    asyncio.run(main())
