"""Messages per second into one room: one sender at a time, then ten concurrent senders.

Prints one JSON line: msg/s, p50/p99 latency per send, server CPU seconds and peak RSS.
Every loop is bounded in count and in time.

    python bench/send.py [--messages 2000] [--seconds 20] [--senders 10] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchServer, emit, machine, run_load

PASSWORD = "benchmark password"
_txn = itertools.count()


async def _send_loop(session: aiohttp.ClientSession, base: str, room_id: str,
                     tokens: list[str], total: int, seconds: float) -> dict[str, Any]:
    def send(i: int) -> Any:
        url = f"{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/b{next(_txn)}"
        return session.put(url, json={"msgtype": "m.text", "body": "hello world"},
                           headers={"Authorization": f"Bearer {tokens[i]}"})

    figures = await run_load(len(tokens), seconds, total, send)
    return {"messages": figures.pop("done"), "errors": figures.pop("errors"),
            "msg_per_s": figures.pop("per_s"), **figures}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--postgres", help="postgresql+asyncpg:// URL instead of SQLite")
    parser.add_argument("--sqlite-synchronous", default="FULL",
                        help="FULL (default: survives power loss) or NORMAL (survives kill -9)")
    args = parser.parse_args()

    server = BenchServer(args.postgres, sqlite_synchronous=args.sqlite_synchronous)
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=args.senders * 2)) as session:
            users = [await server.register(session, f"sender{i}", PASSWORD)
                     for i in range(args.senders)]
            owner = users[0]["access_token"]
            async with session.post(f"{server.base}/_matrix/client/v3/createRoom",
                                    json={"preset": "public_chat"},
                                    headers={"Authorization": f"Bearer {owner}"}) as resp:
                room_id = (await resp.json())["room_id"]
            for user in users[1:]:
                async with session.post(f"{server.base}/_matrix/client/v3/join/{room_id}",
                                        headers={"Authorization":
                                                 f"Bearer {user['access_token']}"}) as resp:
                    resp.raise_for_status()
            cpu0 = server.cpu_seconds()
            sequential = await _send_loop(session, server.base, room_id, [owner],
                                          args.messages, args.seconds)
            cpu1 = server.cpu_seconds()
            concurrent = await _send_loop(session, server.base, room_id,
                                          [u["access_token"] for u in users], args.messages,
                                          args.seconds)
            cpu2 = server.cpu_seconds()
        emit({
            "bench": "send",
            "database": "postgresql" if args.postgres else
                        f"sqlite (synchronous={args.sqlite_synchronous})",
            "one_sender": {**sequential, "server_cpu_s": round(cpu1 - cpu0, 2)},
            f"{args.senders}_senders": {**concurrent, "server_cpu_s": round(cpu2 - cpu1, 2)},
            "server_peak_rss_mib": server.peak_rss_mib(),
            "machine": machine(),
        })
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
