"""Workers: fan-out with one process and with two client workers, and what a write that
crosses to another process costs.

Both set-ups run on PostgreSQL (a database created for the run) and Redis
(``KTCHAT_BENCH_POSTGRES_URL`` / ``KTCHAT_BENCH_REDIS_URL``, or the test services'
variables, or the local defaults). S senders and R receivers share one room; every receiver
long-polls /sync; each message carries its send time, so delivery latency runs from the
start of the send request to the receiver parsing the batch with it. With workers, receivers
are spread over the workers (each session sticks to one, as the proxy would route it) and
senders send through the workers (their events are written by the main process, the
persister). Then sequential sends measure one write's latency directly at the main process
and through a worker. Prints one JSON line; every loop is bounded in count and time.

    python bench/workers.py [--senders 5] [--receivers 200] [--messages 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, data_root, emit, free_port, machine, percentiles
from _servers import ThrowawayPostgres
from fanout import PASSWORD, Tally, _filter, _long_poll_receiver, _send

WORKERS = ("sync1", "sync2")


class Cluster:
    """A main process and ``workers`` client workers from one generated config."""

    def __init__(self, root: Path, database_url: str, redis_url: str, workers: int) -> None:
        self.root = root
        self.port = free_port()
        self.names = list(WORKERS[:workers])
        self.ports = {name: free_port() for name in self.names}
        subprocess.run(
            [sys.executable, "-m", "homeserver", "generate-config", "--server-name",
             f"bench{os.getpid()}.local", "--data-dir", str(root), "--client-port",
             str(self.port), "--federation-port", str(free_port())],
            check=True, capture_output=True, cwd=REPO)
        path = root / "homeserver.yaml"
        config = yaml.safe_load(path.read_text())
        config.update({
            "rate_limits": {"enabled": False},
            "registration": {"enabled": True, "require_token": False},
            "logging": {"level": "WARNING"},
            "federation": {"enabled": False},
            "database": {"url": database_url},
            "listeners": [{"port": self.port, "resources": ["client"], "x_forwarded": True}],
        })
        if self.names:
            config["listeners"].append({"port": free_port(), "resources": ["replication"]})
            config["redis"] = {"url": redis_url}
            config["workers"] = {n: {"roles": ["client"], "listeners": [
                {"port": p, "resources": ["client"]}]} for n, p in self.ports.items()}
        path.write_text(yaml.safe_dump(config))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # KTCHAT_BENCH_PROFILE=DIR: every process under cProfile (DIR/NAME.prof on exit).
        profile = os.environ.get("KTCHAT_BENCH_PROFILE")
        for name in ["main", *self.names]:
            extra = [] if name == "main" else ["--worker", name]
            runner = ["-m", "cProfile", "-o", f"{profile}/{name}.prof"] if profile else []
            self.procs[name] = subprocess.Popen(
                [sys.executable, *runner, "-m", "homeserver", "run", "-c", str(path), *extra],
                cwd=REPO, stdout=subprocess.DEVNULL,
                stderr=open(root / f"{name}.log", "w"))
            self._wait(self.port if name == "main" else self.ports[name])

    def _wait(self, port: int) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nothing listening on {port}")

    @property
    def main(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def entry(self, i: int) -> str:
        """Where session ``i`` goes: a worker (sticky), or the main process alone."""
        if not self.names:
            return self.main
        return f"http://127.0.0.1:{self.ports[self.names[i % len(self.names)]]}"

    def cpu_by_process(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return out

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_process().values())

    def peak_rss_mib(self) -> float:
        total = 0.0
        for proc in self.procs.values():
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        return round(total, 1)

    def stop(self) -> None:
        for name in [*self.names, "main"]:
            proc = self.procs[name]
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _register(session: aiohttp.ClientSession, base: str, name: str) -> str:
    body: dict[str, Any] = {"username": name, "password": PASSWORD}
    async with session.post(f"{base}/_matrix/client/v3/register", json=body) as resp:
        flow = await resp.json()
    body["auth"] = {"type": "m.login.dummy", "session": flow["session"]}
    async with session.post(f"{base}/_matrix/client/v3/register", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"register failed: {await resp.text()}")
        return str((await resp.json())["access_token"])


async def _setup(session: aiohttp.ClientSession, cluster: Cluster, users: int
                 ) -> tuple[list[str], str]:
    tokens = []
    for start in range(0, users, 20):  # bounded concurrency (password hashing)
        tokens += await asyncio.gather(*(_register(session, cluster.main, f"u{i}")
                                         for i in range(start, min(users, start + 20))))
    headers = {"Authorization": f"Bearer {tokens[0]}"}
    async with session.post(f"{cluster.main}/_matrix/client/v3/createRoom",
                            json={"preset": "public_chat"}, headers=headers) as resp:
        room_id = str((await resp.json())["room_id"])
    for token in tokens[1:]:
        async with session.post(f"{cluster.main}/_matrix/client/v3/join/{room_id}",
                                headers={"Authorization": f"Bearer {token}"}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"join failed: {await resp.text()}")
    return tokens, room_id


async def _fanout(session: aiohttp.ClientSession, cluster: Cluster, senders: list[str],
                  receivers: list[str], room_id: str, messages: int, seconds: float
                  ) -> dict[str, Any]:
    async with session.get(f"{cluster.main}/_matrix/client/v3/sync",
                           params={"filter": _filter(room_id)},
                           headers={"Authorization": f"Bearer {receivers[0]}"}) as resp:
        since = (await resp.json())["next_batch"]
    tally = Tally(messages)
    tally.receivers = len(receivers)
    deadline = time.monotonic() + seconds
    tasks = [asyncio.create_task(_long_poll_receiver(
        session, cluster.entry(i), token, room_id, since, tally, deadline))
        for i, token in enumerate(receivers)]
    await asyncio.sleep(1.5)  # every receiver waiting
    cpu_before = cluster.cpu_by_process()
    started = time.monotonic()
    # Senders split over the entries: each group sends its share through one of them.
    groups: dict[str, list[str]] = {}
    for i, token in enumerate(senders):
        groups.setdefault(cluster.entry(i), []).append(token)
    share = messages // len(groups)
    results = await asyncio.gather(*(
        _send(session, base, tokens, room_id, share, deadline, prefix=f"f{n}-")
        for n, (base, tokens) in enumerate(groups.items())))
    sent = sum(count for count, _ in results)
    tally.expected = sent
    send_s = time.monotonic() - started
    try:
        await asyncio.wait_for(tally.done.wait(), max(0.1, deadline - time.monotonic()))
    except TimeoutError:
        pass
    delivered_s = time.monotonic() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "sent": sent,
        "send_msgs_per_s": round(sent / send_s, 1),
        "deliveries": tally.received,
        "deliveries_expected": sent * len(receivers),
        "deliveries_per_s": round(tally.received / delivered_s, 1),
        "sync_batches": tally.batches,
        "duplicates": tally.duplicates,
        "delivery_latency": percentiles(tally.latencies_ms),
        "send_latency": percentiles([lat for _, lats in results for lat in lats]),
        "cpu_s": round(cluster.cpu_seconds() - sum(cpu_before.values()), 2),
        "cpu_s_by_process": {name: round(cpu - cpu_before[name], 2)
                             for name, cpu in cluster.cpu_by_process().items()},
    }


async def _write_latency(session: aiohttp.ClientSession, base: str, token: str,
                         room_id: str, count: int, prefix: str) -> dict[str, float]:
    latencies = []
    for i in range(count):
        start = time.perf_counter()
        async with session.put(
                f"{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{prefix}{i}",
                json={"msgtype": "m.text", "body": "x"},
                headers={"Authorization": f"Bearer {token}"}) as resp:
            await resp.read()
        latencies.append((time.perf_counter() - start) * 1000)
    return percentiles(latencies)


async def _run(label: str, root: Path, database_url: str, redis_url: str, workers: int,
               args: argparse.Namespace) -> dict[str, Any]:
    db = ThrowawayPostgres(database_url)
    await db.create()
    cluster = Cluster(root / label, db.url, redis_url, workers) if (root / label).mkdir() \
        is None else None
    assert cluster is not None
    try:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=90)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tokens, room_id = await _setup(session, cluster, args.senders + args.receivers)
            figures = await _fanout(session, cluster, tokens[:args.senders],
                                    tokens[args.senders:], room_id, args.messages,
                                    args.seconds)
            figures["write_at_main"] = await _write_latency(
                session, cluster.main, tokens[0], room_id, args.writes, "m")
            if workers:
                figures["write_through_worker"] = await _write_latency(
                    session, cluster.entry(0), tokens[0], room_id, args.writes, "w")
        figures["peak_rss_mib"] = cluster.peak_rss_mib()
        return {"setup": label, "processes": 1 + workers, **figures}
    finally:
        cluster.stop()
        await db.drop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--senders", type=int, default=5)
    parser.add_argument("--receivers", type=int, default=200)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--writes", type=int, default=200, help="sequential sends timed")
    parser.add_argument("--seconds", type=float, default=120.0, help="bound per round")
    args = parser.parse_args()
    database_url = os.environ.get("KTCHAT_BENCH_POSTGRES_URL") or os.environ.get(
        "KTCHAT_TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/test"
    redis_url = os.environ.get("KTCHAT_BENCH_REDIS_URL") or os.environ.get(
        "KTCHAT_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"
    with data_root("ktchat-bench-workers-") as root:
        rounds = [await _run("one_process", root, database_url, redis_url, 0, args),
                  await _run("two_sync_workers", root, database_url, redis_url, 2, args)]
    emit({"bench": "workers", "senders": args.senders, "receivers": args.receivers,
          "messages": args.messages, "rounds": rounds, "machine": machine()})


if __name__ == "__main__":
    asyncio.run(main())
