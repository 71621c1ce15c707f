"""A chatty afternoon on two federated servers: what a message costs with typing notices, read
receipts and presence around it, and how fast it reaches the other members.

Servers A and B (real processes, TLS federation on loopback) each get ``--users``/2 users.
``--rooms`` group rooms (created alternately on A and B; every user is in
``--rooms-per-user`` of them, members from both servers) and ``--dms`` direct chats (a user
of A with a user of B). Half the users follow their rooms on long-poll /sync, half on the SSE
sync stream (KT-Chat's extension), with a lazy-loading filter as Element-class clients use.

Each user, every ``--min-gap``..``--max-gap`` seconds: starts typing in one of their rooms,
types for 1-3 s, sends a message, stops typing. Each user has one of their rooms on screen
(another every 20-60 s, read up to its newest message when opened): a message arriving there
gets a read receipt 0.2-1.5 s later (``--receipts all``: every message in every room does).
Every user changes presence (online/unavailable) about once a minute. After ``--warmup``
seconds, ``--seconds`` are measured:

* ``cpu_ms_per_message``, the issue's figure (#13: "the busier server spent 204 ms of CPU
  per message sent ... for 5.6 messages a second", 5.6/s being the whole workload's rate):
  the CPU seconds (user + system, all threads) of the busier of the two server processes in
  the measured window, divided by the messages sent in that window by all users of both
  servers (every message reaches both servers: each room has members on both). Per server
  also: the same (``cpu_ms_per_message``), per message its own users sent
  (``cpu_ms_per_own_message``, about twice as much), and per request its clients made;
* delivery latency, from the start of the send request to a receiver's sync holding the
  message, split into receivers on the sender's server and on the other server;
* messages lost (sent but not received by a member by the end, after a 10 s drain);
* the sync responses the clients received in the window (long polls and SSE messages), by
  what they carried: timeline events, or only ephemeral events and presence.

``--typing off`` leaves typing notices out (the same workload otherwise), for comparison.
Prints one JSON line. Every loop is bounded by the run time.

    python bench/soak.py [--users 60] [--rooms 10] [--dms 5] [--seconds 120] [--warmup 20]
                         [--typing on|off] [--implementation ktchat|synapse]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, percentiles
from _servers import Client, FedBenchServer, SynapseBenchServer, q

SYNC_FILTER = json.dumps({"room": {"state": {"lazy_load_members": True},
                                   "timeline": {"limit": 20}}})
SSE_PATH = "/_matrix/client/unstable/org.ktchat.sse/sync"


class User:
    """One simulated person: a client, the rooms they are in, and their sync connection."""

    def __init__(self, index: int, client: Client, user_id: str, server: str, sse: bool
                 ) -> None:
        self.index = index
        self.client = client
        self.user_id = user_id
        self.server = server
        self.sse = sse
        self.rooms: list[str] = []
        self.requests = 0
        # The room on screen (receipts go only there, as clients send them) and the
        # newest message seen in each room.
        self.focus: str | None = None
        self.last_seen: dict[str, str] = {}

    async def call(self, method: str, path: str, body: Any = None,
                   params: Any = None) -> dict[str, Any]:
        self.requests += 1
        return await self.client.call(method, path, body, params)


class Soak:
    def __init__(self, users: list[User], args: argparse.Namespace) -> None:
        self.users = users
        self.by_id = {u.user_id: u for u in users}
        self.args = args
        self.sent: dict[str, tuple[float, str, str]] = {}  # bench id -> (time, server, room)
        self.received: dict[tuple[str, str], float] = {}  # (bench id, user) -> latency ms
        self.members: dict[str, list[User]] = {}
        self.measuring = False
        self.window_sent = 0
        self.errors = 0
        self.stop_at = 0.0
        self.tasks: set[asyncio.Task[None]] = set()
        # Sync responses in the measured window: per connection kind, and by what they
        # carry (with timeline events, or the ephemeral types and presence alone).
        self.responses: Counter[str] = Counter()

    # -- receiving --------------------------------------------------------------------------

    def _take(self, user: User, body: dict[str, Any], now: float) -> list[tuple[str, str]]:
        """Records the bench messages in a sync body; returns (room, event) to acknowledge:
        the newest of each room (``--receipts all``) or of the room on screen."""
        acks = []
        self._count_response(user, body)
        for room_id, room in (body.get("rooms", {}).get("join") or {}).items():
            last = None
            for event in (room.get("timeline") or {}).get("events") or []:
                bench_id = (event.get("content") or {}).get("bench_id")
                if not isinstance(bench_id, str) or event.get("sender") == user.user_id:
                    continue
                sent = self.sent.get(bench_id)
                if sent is not None and (bench_id, user.user_id) not in self.received:
                    self.received[(bench_id, user.user_id)] = (now - sent[0]) * 1000
                last = event["event_id"]
            if last is not None:
                user.last_seen[room_id] = last
                if self.args.receipts == "all" or room_id == user.focus:
                    acks.append((room_id, last))
        return acks

    def _count_response(self, user: User, body: dict[str, Any]) -> None:
        """Counts the sync responses of the measured window by what they carry."""
        if not self.measuring or time.monotonic() >= self.stop_at:
            return
        rooms = (body.get("rooms") or {}).get("join") or {}
        kinds = {"timeline" if (room.get("timeline") or {}).get("events") else None
                 for room in rooms.values()}
        for room in rooms.values():
            for event in (room.get("ephemeral") or {}).get("events") or []:
                kinds.add(event.get("type"))
        if (body.get("presence") or {}).get("events"):
            kinds.add("m.presence")
        kinds.discard(None)
        self.responses["sse" if user.sse else "long_poll"] += 1
        self.responses["with_events" if "timeline" in kinds else
                       "+".join(sorted(kinds)) if kinds else "empty"] += 1

    async def _ack(self, user: User, acks: list[tuple[str, str]]) -> None:
        await asyncio.sleep(random.uniform(0.2, 1.5))
        for room_id, event_id in acks:
            if time.monotonic() < self.stop_at:
                await self._try(user.call("POST", f"/rooms/{q(room_id)}/receipt/m.read/"
                                                  f"{q(event_id)}", {}))

    def _spawn(self, job: Any) -> None:
        task = asyncio.create_task(job)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _try(self, request: Any) -> None:
        try:
            await request
        except Exception:  # counted; a soak goes on
            self.errors += 1

    async def _long_poll(self, user: User) -> None:
        since = (await user.call("GET", "/sync", params={"filter": SYNC_FILTER}))["next_batch"]
        while time.monotonic() < self.stop_at:
            try:
                body = await user.call("GET", "/sync", params={
                    "filter": SYNC_FILTER, "since": since, "timeout": "30000"})
            except Exception:
                self.errors += 1
                await asyncio.sleep(0.5)
                continue
            since = body["next_batch"]
            acks = self._take(user, body, time.perf_counter())
            if acks:
                self._spawn(self._ack(user, acks))

    async def _sse(self, user: User) -> None:
        client = user.client
        user.requests += 1
        async with client.session.get(
                client.base + SSE_PATH, params={"filter": SYNC_FILTER},
                headers=client.headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"SSE: {resp.status}")
            async for line in resp.content:
                if time.monotonic() >= self.stop_at:
                    return
                if line.startswith(b"data:"):
                    acks = self._take(user, json.loads(line[5:]), time.perf_counter())
                    if acks:
                        self._spawn(self._ack(user, acks))

    # -- sending ----------------------------------------------------------------------------

    async def _chat(self, user: User, index: int) -> None:
        await asyncio.sleep(random.uniform(0, self.args.max_gap))
        n = 0
        while time.monotonic() < self.stop_at - 5:
            # One message every min-gap..max-gap seconds, typing included (the issue's "a
            # message every 5-15 s"), not a gap after the typing and the send.
            next_turn = time.monotonic() + random.uniform(self.args.min_gap, self.args.max_gap)
            room_id = random.choice(user.rooms)
            if self.args.typing == "on":
                await self._try(user.call("PUT", f"/rooms/{q(room_id)}/typing/"
                                                 f"{q(user.user_id)}",
                                          {"typing": True, "timeout": 30000}))
            await asyncio.sleep(random.uniform(1, min(3, self.args.min_gap)))
            bench_id = f"{index}-{n}"
            n += 1
            start = time.perf_counter()
            self.sent[bench_id] = (start, user.server, room_id)
            if self.measuring:
                self.window_sent += 1
            await self._try(user.call(
                "PUT", f"/rooms/{q(room_id)}/send/m.room.message/{bench_id}",
                {"msgtype": "m.text", "body": f"message {n} from {user.user_id}",
                 "bench_id": bench_id}))
            if self.args.typing == "on":
                await self._try(user.call("PUT", f"/rooms/{q(room_id)}/typing/"
                                                 f"{q(user.user_id)}", {"typing": False}))
            await asyncio.sleep(max(0.0, next_turn - time.monotonic()))

    async def _look_around(self, user: User) -> None:
        """Now and then the user opens another of their rooms, and reads it."""
        while time.monotonic() < self.stop_at - 5:
            user.focus = random.choice(user.rooms)
            seen = user.last_seen.get(user.focus)
            if seen is not None:
                self._spawn(self._ack(user, [(user.focus, seen)]))
            await asyncio.sleep(random.uniform(20, 60))

    async def _presence(self, user: User) -> None:
        state = "online"
        await asyncio.sleep(random.uniform(0, 60))
        while time.monotonic() < self.stop_at - 5:
            state = "unavailable" if state == "online" else "online"
            await self._try(user.call("PUT", f"/presence/{q(user.user_id)}/status",
                                      {"presence": state}))
            await asyncio.sleep(random.uniform(45, 75))

    # -- the run ----------------------------------------------------------------------------

    async def run(self, servers: list[FedBenchServer]) -> dict[str, Any]:
        args = self.args
        started = time.monotonic()
        self.stop_at = started + args.warmup + args.seconds
        receivers = [asyncio.create_task(self._sse(u) if u.sse else self._long_poll(u))
                     for u in self.users]
        await asyncio.sleep(2)
        workers = [asyncio.create_task(self._chat(u, i)) for i, u in enumerate(self.users)]
        workers += [asyncio.create_task(self._presence(u)) for u in self.users]
        workers += [asyncio.create_task(self._look_around(u)) for u in self.users]
        await asyncio.sleep(args.warmup)
        self.measuring = True
        cpu_before = [s.cpu_seconds() for s in servers]
        system_before = [s.cpu_split()[1] for s in servers]
        samplers = [s.sample(self.stop_at - time.monotonic()) for s in servers]
        requests_before = {s.label: self._requests(s.label) for s in servers}
        first_measured = len(self.sent)
        await asyncio.sleep(max(0.0, self.stop_at - time.monotonic()))
        cpu = [round(s.cpu_seconds() - before, 2) for s, before in zip(servers, cpu_before,
                                                                      strict=True)]
        system = [round(s.cpu_split()[1] - before, 2) for s, before in zip(
            servers, system_before, strict=True)]
        requests = {s.label: self._requests(s.label) - requests_before[s.label]
                    for s in servers}
        measured = set(list(self.sent)[first_measured:])
        for sampler in samplers:
            if sampler is not None:
                sampler.wait()
        await asyncio.gather(*workers, return_exceptions=True)
        await asyncio.sleep(10)  # drain
        for task in receivers:
            task.cancel()
        await asyncio.gather(*receivers, return_exceptions=True)
        same, other, lost = [], [], 0
        for bench_id in measured:
            _, server, room_id = self.sent[bench_id]
            sender = int(bench_id.split("-")[0])
            for member in self.members[room_id]:
                if member.index == sender:
                    continue
                latency = self.received.get((bench_id, member.user_id))
                if latency is None:
                    lost += 1
                elif member.server == server:
                    same.append(latency)
                else:
                    other.append(latency)
        messages = max(1, self.window_sent)
        own = {s.label: sum(1 for bench_id in measured if self.sent[bench_id][1] == s.label)
               for s in servers}
        return {
            "messages": self.window_sent,
            "messages_per_s": round(self.window_sent / args.seconds, 2),
            "cpu_ms_per_message": round(max(cpu) * 1000 / messages, 1),
            "servers": {s.label: {
                "cpu_seconds": cpu[i],
                "cpu_system_seconds": system[i],
                "cpu_ms_per_message": round(cpu[i] * 1000 / messages, 1),
                "messages_sent_here": own[s.label],
                "cpu_ms_per_own_message": round(cpu[i] * 1000 / max(1, own[s.label]), 1),
                "client_requests": requests[s.label],
                "cpu_ms_per_request": round(cpu[i] * 1000 / max(1, requests[s.label]), 2),
                "peak_rss_mib": s.peak_rss_mib()} for i, s in enumerate(servers)},
            "delivery_same_server": {**percentiles(same), "count": len(same)},
            "delivery_other_server": {**percentiles(other), "count": len(other)},
            "sync_responses": dict(self.responses.most_common()),
            "lost_deliveries": lost,
            "client_errors": self.errors,
        }

    def _requests(self, label: str) -> int:
        return sum(u.requests for u in self.users if u.server == label)


async def _setup(session: aiohttp.ClientSession, servers: list[FedBenchServer],
                 args: argparse.Namespace) -> Soak:
    users: list[User] = []
    for i in range(args.users):
        server = servers[i % 2]
        registered = await server.register(session, f"user{i}")
        users.append(User(i, Client(session, server.base, registered["access_token"]),
                          registered["user_id"], server.label, sse=(i // 2) % 2 == 1
                          and server.implementation == "ktchat"))
    soak = Soak(users, args)

    async def make_room(owner: User, members: list[User], direct: bool) -> None:
        body: dict[str, Any] = {"preset": "private_chat" if direct else "public_chat",
                                "name": "" if direct else "soak room"}
        if direct:
            body["is_direct"] = True
            body["invite"] = [m.user_id for m in members if m is not owner]
        room_id = (await owner.call("POST", "/createRoom", body))["room_id"]
        owner_server = next(s for s in servers if s.label == owner.server)
        for member in members:
            if member is owner:
                continue
            params = None if member.server == owner.server else [
                ("server_name", owner_server.server_name)]
            await member.call("POST", f"/join/{q(room_id)}", {}, params=params)
        for member in members:
            member.rooms.append(room_id)
        soak.members[room_id] = members

    rng = random.Random(7)
    memberships: list[list[User]] = [[] for _ in range(args.rooms)]
    for user in users:
        for room in rng.sample(range(args.rooms), min(args.rooms_per_user, args.rooms)):
            memberships[room].append(user)
    for r, members in enumerate(memberships):
        owners = [u for u in members if u.server == servers[r % 2].label] or members
        await make_room(owners[0], members, direct=False)
    for d in range(args.dms):
        await make_room(users[2 * d], [users[2 * d], users[2 * d + 1]], direct=True)
    return soak


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--rooms-per-user", type=int, default=2)
    parser.add_argument("--dms", type=int, default=5)
    parser.add_argument("--min-gap", type=float, default=5.0)
    parser.add_argument("--max-gap", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=120.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--typing", choices=["on", "off"], default="on")
    parser.add_argument("--receipts", choices=["focused", "all"], default="focused",
                        help="read receipts for the room on screen only (as clients send "
                             "them), or for every message of every room")
    parser.add_argument("--implementation", choices=["ktchat", "synapse"], default="ktchat")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args()
    args.users = max(2, args.users - args.users % 2)
    args.dms = min(args.dms, args.users // 2)
    server_class = SynapseBenchServer if args.implementation == "synapse" else FedBenchServer
    root = Path(tempfile.mkdtemp(prefix="ktchat-bench-soak-"))
    servers: list[FedBenchServer] = []
    ok = False
    try:
        for label in ("a", "b"):
            servers.append(server_class(root, label, None))
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=timeout) as session:
            soak = await _setup(session, servers, args)
            results = await soak.run(servers)
        ok = True
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.stop()
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"server data and logs kept in {root}", file=sys.stderr)
    emit({"bench": "soak", "implementation": args.implementation, "users": args.users,
          "rooms": args.rooms, "dms": args.dms, "typing": args.typing,
          "receipts": args.receipts,
          "sse_users": sum(u.sse for u in soak.users), "seconds": args.seconds,
          **results, "machine": machine()})


if __name__ == "__main__":
    asyncio.run(main())
