"""Fan-out: S senders and R receivers in one room, and what idle syncers cost.

Every receiver follows the room on long-poll /sync (then, in a second round, on the SSE
stream); senders send ``--messages`` messages between them as fast as the server takes
them. Each message carries its send time, so delivery latency is measured from the start of
the send request to the moment a receiver has parsed the sync batch holding it. Then
``--idle`` long-polling /syncs are opened and left idle to measure RSS per connection.
Prints one JSON line. Every loop is bounded in count and time.

    python bench/fanout.py [--senders 5] [--receivers 100] [--messages 2000] [--idle 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchServer, emit, machine, percentiles

PASSWORD = "benchmark password"


def _filter(room_id: str) -> str:
    return json.dumps({"room": {"rooms": [room_id], "timeline": {"limit": 500},
                                "state": {"lazy_load_members": True}},
                       "presence": {"not_types": ["*"]}, "account_data": {"not_types": ["*"]}})


class Tally:
    """What the receivers saw: latency samples and counts."""

    def __init__(self, expected_per_receiver: int) -> None:
        self.expected = expected_per_receiver
        self.latencies_ms: list[float] = []
        self.received = 0
        self.duplicates = 0
        self.gaps = 0
        self.done = asyncio.Event()
        self.finished_receivers = 0
        self.receivers = 0
        self.batches = 0

    def take(self, seen: set[str], body: dict[str, Any], room_id: str) -> bool:
        room = body.get("rooms", {}).get("join", {}).get(room_id)
        now = time.time()
        self.batches += 1
        if room:
            timeline = room["timeline"]
            if timeline.get("limited") and seen:
                self.gaps += 1
            for event in timeline["events"]:
                content = event.get("content") or {}
                if event.get("type") != "m.room.message" or "sent_at_us" not in content:
                    continue
                if event["event_id"] in seen:
                    self.duplicates += 1
                    continue
                seen.add(event["event_id"])
                self.received += 1
                self.latencies_ms.append((now * 1e6 - content["sent_at_us"]) / 1000)
        if len(seen) >= self.expected:
            self.finished_receivers += 1
            if self.finished_receivers >= self.receivers:
                self.done.set()
            return True
        return False


async def _long_poll_receiver(session: aiohttp.ClientSession, base: str, token: str,
                              room_id: str, since: str, tally: Tally, deadline: float) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    seen: set[str] = set()
    params = {"filter": _filter(room_id), "timeout": "30000", "since": since}
    while time.monotonic() < deadline:
        async with session.get(f"{base}/_matrix/client/v3/sync", params=params,
                               headers=headers) as resp:
            body = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"sync failed: {resp.status} {body}")
        params["since"] = body["next_batch"]
        if tally.take(seen, body, room_id):
            return


async def _sse_receiver(session: aiohttp.ClientSession, base: str, token: str, room_id: str,
                        since: str, tally: Tally, deadline: float) -> None:
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    seen: set[str] = set()
    params = {"filter": _filter(room_id), "since": since}
    timeout = aiohttp.ClientTimeout(total=max(1.0, deadline - time.monotonic()))
    async with session.get(f"{base}/_matrix/client/unstable/org.ktchat.sse/sync",
                           params=params, headers=headers, timeout=timeout) as resp:
        if resp.status != 200:
            raise RuntimeError(f"SSE failed: {resp.status} {await resp.text()}")
        data: list[str] = []
        async for raw in resp.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif not line and data:
                body = json.loads("\n".join(data))
                data = []
                if tally.take(seen, body, room_id):
                    return


async def _send(session: aiohttp.ClientSession, base: str, tokens: list[str], room_id: str,
                total: int, deadline: float, prefix: str) -> tuple[int, list[float]]:
    counter = iter(range(total))
    latencies: list[float] = []

    async def sender(token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        for i in counter:
            if time.monotonic() > deadline:
                return
            start = time.perf_counter()
            url = f"{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{prefix}{i}"
            async with session.put(url, headers=headers, json={
                    "msgtype": "m.text", "body": f"message {i}",
                    "sent_at_us": time.time_ns() // 1000}) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"send failed: {resp.status}")
            latencies.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(sender(t) for t in tokens))
    return len(latencies), latencies


async def _round(mode: str, session: aiohttp.ClientSession, server: BenchServer,
                 senders: list[str], receivers: list[str], room_id: str, messages: int,
                 seconds: float) -> dict[str, Any]:
    # Every receiver starts from "now", so the round counts only its own messages.
    async with session.get(f"{server.base}/_matrix/client/v3/sync",
                           params={"filter": _filter(room_id)},
                           headers={"Authorization": f"Bearer {receivers[0]}"}) as resp:
        since = (await resp.json())["next_batch"]
    tally = Tally(messages)
    tally.receivers = len(receivers)
    deadline = time.monotonic() + seconds
    receive = _long_poll_receiver if mode == "long_poll" else _sse_receiver
    tasks = [asyncio.create_task(receive(session, server.base, token, room_id, since, tally,
                                         deadline)) for token in receivers]
    await asyncio.sleep(1.0)  # let every receiver reach its waiting state
    rss_before = server.peak_rss_mib()
    cpu_before = server.cpu_seconds()
    client_cpu_before = _own_cpu_seconds()
    started = time.monotonic()
    sent, send_latencies = await _send(session, server.base, senders, room_id, messages,
                                       deadline, prefix=mode)
    send_s = time.monotonic() - started
    try:
        await asyncio.wait_for(tally.done.wait(), max(0.1, deadline - time.monotonic()))
    except TimeoutError:
        pass
    delivered_s = time.monotonic() - started
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [repr(r) for r in results if isinstance(r, BaseException)
                and not isinstance(r, asyncio.CancelledError)]
    return {
        "mode": mode,
        "sent": sent,
        "send_msgs_per_s": round(sent / send_s, 1),
        "delivered_msgs_per_s": round(sent / delivered_s, 1),
        "deliveries": tally.received,
        "deliveries_expected": sent * len(receivers),
        "sync_batches": tally.batches,
        "duplicates": tally.duplicates,
        "gappy_batches": tally.gaps,
        "delivery_latency": percentiles(tally.latencies_ms),
        "send_latency": percentiles(send_latencies),
        "server_cpu_s": round(server.cpu_seconds() - cpu_before, 2),
        "load_generator_cpu_s": round(_own_cpu_seconds() - client_cpu_before, 2),
        "server_peak_rss_mib": max(rss_before, server.peak_rss_mib()),
        "receiver_failures": failures[:3],
    }


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _idle(session: aiohttp.ClientSession, server: BenchServer, tokens: list[str],
                count: int) -> dict[str, Any]:
    async with session.get(f"{server.base}/_matrix/client/v3/sync",
                           headers={"Authorization": f"Bearer {tokens[0]}"}) as resp:
        since = (await resp.json())["next_batch"]
    before = server.current_rss_mib()
    waiters = [asyncio.create_task(session.get(
        f"{server.base}/_matrix/client/v3/sync", params={"since": since, "timeout": "60000"},
        headers={"Authorization": f"Bearer {tokens[i % len(tokens)]}"}))
        for i in range(count)]
    await asyncio.sleep(5)
    during = server.current_rss_mib()
    cpu_before = server.cpu_seconds()
    await asyncio.sleep(5)
    idle_cpu = server.cpu_seconds() - cpu_before
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    return {"idle_syncers": count, "server_rss_mib_before_idle": round(before, 1),
            "server_rss_mib_with_idle": round(during, 1),
            "rss_kib_per_idle_syncer": round((during - before) * 1024 / max(1, count), 1),
            "server_cpu_s_per_idle_second": round(idle_cpu / 5, 3)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--senders", type=int, default=5)
    parser.add_argument("--receivers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=120.0, help="bound per round")
    parser.add_argument("--modes", default="long_poll,sse")
    parser.add_argument("--sqlite-synchronous", default="FULL", choices=["FULL", "NORMAL"])
    args = parser.parse_args()

    server = BenchServer(sqlite_synchronous=args.sqlite_synchronous)
    try:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=90)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            users = await asyncio.gather(*(server.register(session, f"u{i}", PASSWORD)
                                           for i in range(args.senders + args.receivers)))
            tokens = [u["access_token"] for u in users]
            senders, receivers = tokens[:args.senders], tokens[args.senders:]
            async with session.post(f"{server.base}/_matrix/client/v3/createRoom",
                                    json={"preset": "public_chat"},
                                    headers={"Authorization": f"Bearer {tokens[0]}"}) as resp:
                room_id = (await resp.json())["room_id"]
            for token in tokens[1:]:
                async with session.post(f"{server.base}/_matrix/client/v3/join/{room_id}",
                                        headers={"Authorization": f"Bearer {token}"}) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"join failed: {await resp.text()}")
            # Idle first, on a server that has done nothing but set up the room.
            idle = await _idle(session, server, receivers or tokens, args.idle)
            rounds = [await _round(mode, session, server, senders, receivers, room_id,
                                   args.messages, args.seconds)
                      for mode in args.modes.split(",")]
        emit({"bench": "fanout", "senders": args.senders, "receivers": args.receivers,
              "messages": args.messages, "rounds": rounds, **idle,
              "server_peak_rss_mib": server.peak_rss_mib(), "machine": machine()})
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
