"""Shared pieces of the benchmarks: a real server from a generated config, load loops bounded
in count and time, figures as one JSON line."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    if not samples_ms:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    ordered = sorted(samples_ms)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50_ms": round(statistics.median(ordered), 3), "p99_ms": round(p99, 3)}


class BenchServer:
    """A ``ktchat run`` process on SQLite (or ``database_url``), rate limits off."""

    def __init__(self, database_url: str | None = None, *, sqlite_synchronous: str = "FULL"
                 ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ktchat-bench-"))
        self.port = free_port()
        subprocess.run(
            [sys.executable, "-m", "homeserver", "generate-config", "--server-name", "bench.local",
             "--data-dir", str(self.dir), "--client-port", str(self.port),
             "--federation-port", str(free_port())],
            check=True, capture_output=True, cwd=REPO)
        config_path = self.dir / "homeserver.yaml"
        config = yaml.safe_load(config_path.read_text())
        config["rate_limits"] = {"enabled": False}
        # Where generate-config put it (older versions: under registration).
        if "registration_shared_secret" in config:
            config["registration_shared_secret"] = "bench-secret"
        else:
            config["registration"]["shared_secret"] = "bench-secret"
        config["logging"] = {"level": "WARNING"}
        if os.environ.get("KTCHAT_BENCH_METRICS"):
            # KTCHAT_BENCH_METRICS=1: with a metrics listener (requests, events... counted).
            config["listeners"].append({"port": free_port(), "resources": ["metrics"]})
        if database_url:
            config["database"] = {"url": database_url}
        else:
            config["database"]["sqlite_synchronous"] = sqlite_synchronous
        config_path.write_text(yaml.safe_dump(config))
        # KTCHAT_BENCH_PROFILE=FILE runs the server under cProfile (stats written on exit).
        profile = os.environ.get("KTCHAT_BENCH_PROFILE")
        runner = ["-m", "cProfile", "-o", profile] if profile else []
        self.proc = subprocess.Popen(
            [sys.executable, *runner, "-m", "homeserver", "run", "-c", str(config_path)],
            cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "server.log", "w"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("server did not start")
        self.base = f"http://127.0.0.1:{self.port}"

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def current_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    async def register(self, session: aiohttp.ClientSession, username: str, password: str
                       ) -> dict[str, Any]:
        async with session.get(f"{self.base}/_synapse/admin/v1/register") as resp:
            nonce = (await resp.json())["nonce"]
        mac = hmac.new(b"bench-secret", digestmod=hashlib.sha1)
        mac.update(f"{nonce}\0{username}\0{password}\0notadmin".encode())
        async with session.post(f"{self.base}/_synapse/admin/v1/register", json={
                "nonce": nonce, "username": username, "password": password,
                "admin": False, "mac": mac.hexdigest()}) as resp:
            resp.raise_for_status()
            return await resp.json()  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def emit(figures: dict[str, Any]) -> None:
    print(json.dumps(figures, sort_keys=False))


async def run_load(workers: int, seconds: float, total: int,
                   request: Callable[[int], Any]) -> dict[str, Any]:
    """``workers`` loops each sending ``request(worker_index)`` (an aiohttp request context)
    until ``total`` requests or ``seconds`` pass; returns count, errors, rate, p50/p99."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    issued = itertools.count()

    async def worker(i: int) -> None:
        nonlocal errors
        while time.monotonic() < deadline and next(issued) < total:
            start = time.perf_counter()
            async with request(i) as resp:
                await resp.read()
                if resp.status == 200:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:
                    errors += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(workers)))
    elapsed = time.monotonic() - started
    return {"done": len(latencies), "errors": errors,
            "per_s": round(len(latencies) / elapsed, 1), **percentiles(latencies)}


async def run_bounded(jobs: list[Any], workers: int, deadline: float) -> int:
    """Run coroutine factories with ``workers`` at a time until done or the deadline."""
    queue = iter(jobs)
    done = 0

    async def worker() -> None:
        nonlocal done
        for job in queue:
            if time.monotonic() > deadline:
                return
            await job()
            done += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return done


@contextlib.contextmanager
def data_root(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary directory for the servers' data and logs: removed after a run that went
    well (unless ``keep``), kept and named on stderr otherwise."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    except BaseException:
        print(f"server data and logs kept in {root}", file=sys.stderr)
        raise
    if keep:
        print(f"server data and logs kept in {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
