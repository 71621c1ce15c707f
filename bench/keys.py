"""End-to-end key endpoints at the size of a large encrypted room: /keys/query and /keys/claim.

Setup: ``--users`` users (500) with ``--devices`` devices each (3: the one shared-secret
registration makes, then password logins), each device uploading its identity keys as a client
does (an ed25519 and a curve25519 key, signed with the ed25519 key by ``signedjson``). One
device per user (``--claim-devices`` of them, 500) also uploads signed_curve25519 one-time keys,
each signed too: one per claim round plus the warm-up, so no claim falls back.

Measured, one request at a time (after ``--warmup`` unmeasured ones), on a real ``ktchat run``
process:

1. ``POST /keys/query`` for every user at once (1,500 devices in the answer), ``--query-rounds``;
2. ``POST /keys/query`` for one user with 3 devices (a different user each time),
   ``--single-rounds``;
3. ``POST /keys/claim`` of one key from each of the 500 devices in one request,
   ``--claim-rounds``.

Each: p50/p99 latency, the first (cold) request's latency, and the server's CPU milliseconds
per request (its /proc stat over the phase; on PostgreSQL the database's own CPU is not
counted). Prints one JSON line on stdout and the same as a
small table on stderr. Every loop is bounded in count and in time.

    python bench/keys.py [--users 500] [--devices 3] [--postgres URL]

``--postgres URL`` runs the server on a throwaway database of that PostgreSQL cluster (created
for the run, dropped after).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from nacl.public import PrivateKey
from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import sign_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchServer, emit, machine, percentiles
from _servers import ThrowawayPostgres

PASSWORD = "benchmark password"
CLIENT_V3 = "/_matrix/client/v3"
ALGORITHMS = ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"]
MAX_KEYS_PER_UPLOAD = 1000  # the server's bound on one /keys/upload


def b64(raw: bytes) -> str:
    """Unpadded standard base64, as Matrix keys are written."""
    return base64.b64encode(raw).decode().rstrip("=")


class Device:
    """One logged-in device with its own ed25519 signing key and curve25519 identity key."""

    def __init__(self, user_id: str, device_id: str, token: str) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.headers = {"Authorization": f"Bearer {token}"}
        self.signing_key = generate_signing_key(device_id)  # key ID "ed25519:<device_id>"

    def device_keys(self) -> dict[str, Any]:
        ed25519 = b64(get_verify_key(self.signing_key).encode())
        curve25519 = b64(bytes(PrivateKey.generate().public_key))
        return sign_json({
            "user_id": self.user_id, "device_id": self.device_id, "algorithms": ALGORITHMS,
            "keys": {f"curve25519:{self.device_id}": curve25519,
                     f"ed25519:{self.device_id}": ed25519},
        }, self.user_id, self.signing_key)

    def one_time_keys(self, first: int, count: int) -> dict[str, Any]:
        """``count`` signed_curve25519 keys (random 32-byte public keys, as a curve25519 public
        key is any 32 bytes), each signed with the device's ed25519 key."""
        return {f"signed_curve25519:{n:06d}": sign_json({"key": b64(os.urandom(32))},
                                                         self.user_id, self.signing_key)
                for n in range(first, first + count)}


async def _bounded(jobs: list[Callable[[], Awaitable[None]]], workers: int, deadline: float
                   ) -> None:
    """Run every job, ``workers`` at a time; fail if the setup outlasts its deadline."""
    semaphore = asyncio.Semaphore(workers)

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        async with semaphore:
            if time.monotonic() > deadline:
                raise RuntimeError("setup did not finish in --setup-seconds")
            await job()

    await asyncio.gather(*(run(job) for job in jobs))


async def _post(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None,
                body: Any) -> dict[str, Any]:
    async with session.post(url, json=body, headers=headers) as resp:
        data = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"POST {url}: {resp.status} {str(data)[:500]}")
        return data  # type: ignore[no-any-return]


async def _setup(server: BenchServer, session: aiohttp.ClientSession, args: argparse.Namespace
                 ) -> list[list[Device]]:
    """Register the users, log in their other devices, upload every device's keys; the first
    ``--claim-devices`` users' device ``user index % devices`` also uploads one-time keys."""
    deadline = time.monotonic() + args.setup_seconds
    tag = uuid.uuid4().hex[:6]  # a database kept from an earlier run holds other users
    devices: list[list[Device]] = [[] for _ in range(args.users)]
    login_url = f"{server.base}{CLIENT_V3}/login"
    upload_url = f"{server.base}{CLIENT_V3}/keys/upload"
    one_time_each = args.claim_rounds + args.warmup

    def account(i: int) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            localpart = f"keys{tag}u{i}"
            user = await server.register(session, localpart, PASSWORD)
            devices[i].append(Device(user["user_id"], user["device_id"], user["access_token"]))
            for _ in range(args.devices - 1):
                login = await _post(session, login_url, None, {
                    "type": "m.login.password", "password": PASSWORD,
                    "identifier": {"type": "m.id.user", "user": localpart}})
                devices[i].append(Device(login["user_id"], login["device_id"],
                                         login["access_token"]))
        return job

    def upload(i: int, device: Device, one_time: int) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            body: dict[str, Any] = {"device_keys": device.device_keys()}
            first = 0
            while True:
                count = min(one_time - first, MAX_KEYS_PER_UPLOAD)
                if count > 0:
                    body["one_time_keys"] = device.one_time_keys(first, count)
                counts = (await _post(session, upload_url, device.headers, body)
                          )["one_time_key_counts"]
                first += max(count, 0)
                if first >= one_time:
                    break
                body = {}
            if counts.get("signed_curve25519", 0) != one_time:
                raise RuntimeError(f"{device.device_id}: {counts} after {one_time} keys")
        return job

    started = time.monotonic()
    await _bounded([account(i) for i in range(args.users)], args.concurrency, deadline)
    print(f"{args.users} users with {args.devices} devices each in "
          f"{time.monotonic() - started:.0f} s; uploading keys", file=sys.stderr, flush=True)
    started = time.monotonic()
    jobs = []
    for i, mine in enumerate(devices):
        for d, device in enumerate(mine):
            claimed = i < args.claim_devices and d == i % args.devices
            jobs.append(upload(i, device, one_time_each if claimed else 0))
    await _bounded(jobs, args.concurrency, deadline)
    print(f"{len(jobs)} key uploads in {time.monotonic() - started:.0f} s", file=sys.stderr,
          flush=True)
    return devices


async def _measure(server: BenchServer, rounds: int, warmup: int, seconds: float,
                   request: Callable[[int], Awaitable[None]]) -> dict[str, Any]:
    """``warmup`` unmeasured requests, then up to ``rounds`` measured ones one at a time
    (bounded by ``seconds``): latency percentiles and server CPU per measured request."""
    first_ms = None
    for n in range(warmup):
        start = time.perf_counter()
        await request(-1 - n)
        if first_ms is None:
            first_ms = (time.perf_counter() - start) * 1000
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    cpu0 = server.cpu_seconds()
    for n in range(rounds):
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        await request(n)
        latencies.append((time.perf_counter() - start) * 1000)
    cpu = server.cpu_seconds() - cpu0
    return {"requests": len(latencies), **percentiles(latencies),
            "first_ms": round(first_ms, 3) if first_ms is not None else None,
            "server_cpu_ms_per_request": round(cpu * 1000 / max(1, len(latencies)), 2)}


async def _run(server: BenchServer, args: argparse.Namespace) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=args.concurrency * 2),
            timeout=timeout) as session:
        started = time.monotonic()
        devices = await _setup(server, session, args)
        setup_s = time.monotonic() - started
        print(f"setup done in {setup_s:.0f} s; measuring", file=sys.stderr, flush=True)
        querier = devices[0][0]
        user_ids = [mine[0].user_id for mine in devices]
        query_url = f"{server.base}{CLIENT_V3}/keys/query"
        claim_url = f"{server.base}{CLIENT_V3}/keys/claim"
        expected_devices = args.users * args.devices

        async def query_all(_: int) -> None:
            answer = await _post(session, query_url, querier.headers,
                                 {"device_keys": {u: [] for u in user_ids}})
            got = sum(len(d) for d in answer["device_keys"].values())
            if got != expected_devices or answer.get("failures"):
                raise RuntimeError(f"/keys/query for all: {got} devices, "
                                   f"failures {answer.get('failures')}")

        async def query_one(n: int) -> None:
            user_id = user_ids[n % len(user_ids)]
            answer = await _post(session, query_url, querier.headers,
                                 {"device_keys": {user_id: []}})
            if len(answer["device_keys"].get(user_id, {})) != args.devices:
                raise RuntimeError(f"/keys/query for {user_id}: {answer['device_keys']}")

        claimed_devices = [devices[i][i % args.devices] for i in range(args.claim_devices)]
        wanted = {d.user_id: {d.device_id: "signed_curve25519"} for d in claimed_devices}

        async def claim(_: int) -> None:
            answer = await _post(session, claim_url, querier.headers,
                                 {"one_time_keys": wanted})
            keys = answer["one_time_keys"]
            got = sum(len(by_device) for by_device in keys.values())
            if got != len(claimed_devices) or answer.get("failures"):
                raise RuntimeError(f"/keys/claim: {got} keys, failures {answer.get('failures')}")

        query_all_figures = await _measure(server, args.query_rounds, args.warmup,
                                           args.seconds, query_all)
        query_one_figures = await _measure(server, args.single_rounds, args.warmup,
                                           args.seconds, query_one)
        claim_figures = await _measure(server, args.claim_rounds, args.warmup, args.seconds,
                                       claim)
    return {
        "setup_seconds": round(setup_s, 1),
        f"query_{args.users}_users": {"devices_answered": expected_devices,
                                      **query_all_figures},
        "query_1_user": {"devices_answered": args.devices, **query_one_figures},
        f"claim_{args.claim_devices}_devices": {"keys_claimed": args.claim_devices,
                                                **claim_figures},
    }


def _table(figures: dict[str, Any]) -> str:
    rows = [(name, f) for name, f in figures.items()
            if isinstance(f, dict) and "p50_ms" in f]
    head = f"{'request':<22} {'n':>5} {'first ms':>9} {'p50 ms':>8} {'p99 ms':>8} " \
           f"{'CPU ms/req':>10}"
    lines = [head, "-" * len(head)]
    for name, f in rows:
        lines.append(f"{name:<22} {f['requests']:>5} {f['first_ms']:>9.1f} {f['p50_ms']:>8.1f} "
                     f"{f['p99_ms']:>8.1f} {f['server_cpu_ms_per_request']:>10.1f}")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--devices", type=int, default=3, help="per user")
    parser.add_argument("--claim-devices", type=int, default=500,
                        help="devices claimed from in one /keys/claim (one per user)")
    parser.add_argument("--query-rounds", type=int, default=100)
    parser.add_argument("--single-rounds", type=int, default=500)
    parser.add_argument("--claim-rounds", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured requests per phase")
    parser.add_argument("--concurrency", type=int, default=16, help="setup requests at a time")
    parser.add_argument("--setup-seconds", type=float, default=600.0)
    parser.add_argument("--seconds", type=float, default=120.0, help="bound per phase")
    parser.add_argument("--postgres", help="PostgreSQL URL: a throwaway database on it")
    args = parser.parse_args()
    if not 0 < args.claim_devices <= args.users:
        parser.error("--claim-devices must be between 1 and --users")

    database = ThrowawayPostgres(args.postgres) if args.postgres else None
    if database is not None:
        await database.create()
    try:
        server = BenchServer(database.url if database else None)
        try:
            figures = await _run(server, args)
            peak_rss = server.peak_rss_mib()
        finally:
            server.stop()
    finally:
        if database is not None:
            await database.drop()
    figures = {"bench": "keys", "database": "postgresql" if args.postgres else "sqlite",
               "users": args.users, "devices_per_user": args.devices, **figures,
               "server_peak_rss_mib": peak_rss, "machine": machine()}
    emit(figures)
    print(_table(figures), file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
