"""Federation between two real servers: how fast room events replicate from A to B.

Starts servers A and B (server names ``127.0.0.1:<federation port>``, TLS federation listener
with certificate checks off, loopback allowed), registers ``--senders`` users on A and bob on
B; the first sender creates ``--rooms`` public rooms, the other senders join them on A, and
bob joins each of them over federation (``POST /join/{roomId}?server_name=A``). Bob keeps one
/sync long-poll open on B for the whole run. Then:

* throughput: ``--messages`` messages sent on A as fast as the client API takes them
  (``--concurrency`` requests in flight, spread over the senders and rooms); reported are the
  send rate on A and the replication rate A->B, counted from the first send to the moment
  bob's /sync on B has returned the last of them, with per-message send-to-arrival p50/p99;
* latency: ``--latency-samples`` messages one at a time, each timed from the start of the
  send request on A to bob's long-poll /sync on B returning it (p50/p99/max); samples are
  ``--latency-gap`` apart (default 150 ms), because sync holds a device's next response
  until 75 ms after its previous one (``SyncService.MIN_INTERVAL_S``, batching busy rooms):
  back-to-back samples would measure that hold, not federation;
* the peak RSS and CPU seconds of both server processes.

Prints one JSON line. Every loop is bounded in count, and the whole run by ``--seconds``.
``--backend postgres`` puts each server on a throwaway database of the PostgreSQL cluster
named by ``KTCHAT_TEST_POSTGRES_URL`` (dropped afterwards).

``--implementation synapse`` runs the same workload, measured by the same code, on two
Synapse processes instead (the baseline to compare with): Synapse from ``.venv-synapse`` (or
``$KTCHAT_TEST_SYNAPSE_PYTHON``), SQLite only, users registered through its shared-secret
admin API, rate limits raised and federation retry backoff shortened as for KT-Chat. The
output then says ``"implementation": "synapse"`` and gives ``synapse_version``. (Synapse
holds no sync response back, so the latency gap only spaces its samples.)

    python bench/federation.py [--messages 2000] [--latency-samples 200] [--senders 1]
                               [--rooms 1] [--concurrency 16] [--seconds 300]
                               [--backend sqlite|postgres] [--implementation ktchat|synapse]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit, free_port, machine, percentiles

PASSWORD = "benchmark password"
SHARED_SECRET = "bench-secret"
CLIENT_V3 = "/_matrix/client/v3"
POSTGRES_URL_ENV = "KTCHAT_TEST_POSTGRES_URL"
# Room timelines only (500 is the server's cap), messages only; nothing else in the sync.
SYNC_FILTER = json.dumps({
    "room": {"timeline": {"limit": 500, "types": ["m.room.message"]},
             "state": {"types": []}, "ephemeral": {"types": []},
             "account_data": {"types": []}},
    "presence": {"types": []}, "account_data": {"types": []}})
LONG_POLL_MS = 30000


def q(value: str) -> str:
    return quote(value, safe="")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


class FedBenchServer:
    """A ``ktchat run`` process federating on loopback: its own data directory, a server name
    with an explicit port, TLS unchecked, rate limits off. ``SynapseBenchServer`` overrides
    only how the process is configured and started; measuring it is shared."""

    implementation = "ktchat"

    def __init__(self, root: Path, label: str, database_url: str | None,
                 start_timeout: float = 60) -> None:
        self.label = label
        self.dir = root / label
        self.client_port = free_port()
        self.federation_port = free_port()
        while self.federation_port == self.client_port:
            self.federation_port = free_port()
        self.server_name = f"127.0.0.1:{self.federation_port}"
        self.base = f"http://127.0.0.1:{self.client_port}"
        self._peak_rss = 0.0
        command = self._configure(database_url)
        self._log = open(self.dir / "server.log", "w")
        self.proc = subprocess.Popen(
            command, cwd=self._cwd(), stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            self._wait_ready(time.monotonic() + start_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, deadline: float) -> None:
        for port in (self.client_port, self.federation_port):
            self._wait_for_port(port, deadline)

    def _cwd(self) -> Path:
        return REPO

    def _configure(self, database_url: str | None) -> list[str]:
        """Writes the configuration; returns the command that runs the server."""
        subprocess.run(
            [sys.executable, "-m", "homeserver", "generate-config", "--server-name",
             self.server_name, "--data-dir", str(self.dir), "--client-port",
             str(self.client_port), "--federation-port", str(self.federation_port)],
            check=True, capture_output=True, cwd=REPO, timeout=60)
        config_path = self.dir / "homeserver.yaml"
        config = yaml.safe_load(config_path.read_text())
        _merge(config, {
            "federation": {"enabled": True, "verify_tls": False,
                           "ip_range_allowlist": ["127.0.0.0/8"],
                           "retry_initial_interval": "500ms", "retry_max_interval": "5s"},
            "rate_limits": {"enabled": False},
            "registration": {"shared_secret": SHARED_SECRET},
            "logging": {"level": "WARNING"},
        })
        if database_url:
            config["database"] = {"url": database_url}
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return [sys.executable, "-m", "homeserver", "run", "-c", str(config_path)]

    def _wait_for_port(self, port: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}; "
                                   f"see {self.dir / 'server.log'}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.label}: nothing listening on {port} in time; "
                           f"see {self.dir / 'server.log'}")

    def _status(self, field: str) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(field):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return 0.0

    def peak_rss_mib(self) -> float:
        """VmHWM (the kernel's high-water mark), remembered in case the process is gone."""
        self._peak_rss = max(self._peak_rss, self._status("VmHWM:"))
        return self._peak_rss

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)

    async def register(self, session: aiohttp.ClientSession, username: str) -> dict[str, Any]:
        async with session.get(f"{self.base}/_synapse/admin/v1/register") as resp:
            nonce = (await resp.json())["nonce"]
        mac = hmac.new(SHARED_SECRET.encode(), digestmod=hashlib.sha1)
        mac.update(f"{nonce}\0{username}\0{PASSWORD}\0notadmin".encode())
        async with session.post(f"{self.base}/_synapse/admin/v1/register", json={
                "nonce": nonce, "username": username, "password": PASSWORD,
                "admin": False, "mac": mac.hexdigest()}) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{self.label}: register {username}: {resp.status} {body}")
            return body  # type: ignore[no-any-return]

    def terminate(self) -> None:
        self.peak_rss_mib()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        if self.proc.poll() is None:
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


SYNAPSE_PYTHON = Path(os.environ.get("KTCHAT_TEST_SYNAPSE_PYTHON")
                      or REPO / ".venv-synapse" / "bin" / "python")
# Every rate limit Synapse has, far out of reach of the bench.
_UNLIMITED = {"per_second": 1_000_000, "burst_count": 1_000_000}


class SynapseBenchServer(FedBenchServer):
    """The same, as a Synapse process (``--implementation synapse``; SQLite only): a TLS
    federation listener with a self-signed certificate that is not verified, loopback allowed,
    rate limits and federation retry backoff brought in line with the KT-Chat configuration."""

    implementation = "synapse"
    python = SYNAPSE_PYTHON

    @classmethod
    def version(cls) -> str:
        probe = subprocess.run(
            [str(cls.python), "-c",
             "import importlib.metadata as m; print(m.version('matrix-synapse'))"],
            capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            raise RuntimeError(f"no Synapse at {cls.python} (make synapse-venv): "
                               f"{probe.stderr.strip()[-500:]}")
        return probe.stdout.strip()

    def _cwd(self) -> Path:
        return self.dir

    def _configure(self, database_url: str | None) -> list[str]:
        from homeserver.crypto.signing_keys import generate_key_file
        from homeserver.crypto.tls import generate_self_signed

        if database_url:
            raise ValueError("the Synapse baseline runs on SQLite only")
        self.dir.mkdir(parents=True)
        generate_self_signed(self.server_name, self.dir / "tls.crt", self.dir / "tls.key")
        generate_key_file(self.dir / "signing.key")
        (self.dir / "log.yaml").write_text(yaml.safe_dump({
            "version": 1,
            "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "formatter": "plain",
                                  "filename": str(self.dir / "homeserver.log")}},
            "root": {"level": "WARNING", "handlers": ["file"]},
            "disable_existing_loggers": False}))
        listener = {"bind_addresses": ["127.0.0.1"], "type": "http", "x_forwarded": False}
        config = {
            "server_name": self.server_name,
            "public_baseurl": self.base + "/",
            "pid_file": str(self.dir / "homeserver.pid"),
            "listeners": [
                {**listener, "port": self.federation_port, "tls": True,
                 "resources": [{"names": ["federation"], "compress": False}]},
                {**listener, "port": self.client_port, "tls": False,
                 "resources": [{"names": ["client"], "compress": False}]}],
            "tls_certificate_path": str(self.dir / "tls.crt"),
            "tls_private_key_path": str(self.dir / "tls.key"),
            "federation_verify_certificates": False,
            # A server name that is an IP literal is checked against the blocklist alone.
            "ip_range_whitelist": ["127.0.0.0/8"],
            "federation_ip_range_blacklist": [],
            "federation": {"destination_min_retry_interval": 500,  # ms
                           "destination_max_retry_interval": 5000},
            "database": {"name": "sqlite3",
                         "args": {"database": str(self.dir / "homeserver.db")}},
            "log_config": str(self.dir / "log.yaml"),
            "media_store_path": str(self.dir / "media"),
            "signing_key_path": str(self.dir / "signing.key"),
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "report_stats": False,
            "enable_metrics": False,
            "url_preview_enabled": False,
            "enable_registration": False,
            "registration_shared_secret": SHARED_SECRET,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            **{key: _UNLIMITED for key in (
                "rc_message", "rc_registration", "rc_joins_per_room", "rc_admin_redaction",
                "rc_room_creation", "rc_key_requests", "rc_third_party_invite",
                "rc_delayed_event_mgmt", "rc_reports", "rc_user_directory")},
            "rc_login": dict.fromkeys(("address", "account", "failed_attempts"), _UNLIMITED),
            "rc_joins": dict.fromkeys(("local", "remote"), _UNLIMITED),
            "rc_invites": dict.fromkeys(("per_room", "per_user", "per_issuer"), _UNLIMITED),
            "rc_presence": {"per_user": _UNLIMITED},
            "rc_federation": {"window_size": 1000, "sleep_limit": 1_000_000, "sleep_delay": 1,
                              "reject_limit": 1_000_000, "concurrent": 1_000_000},
            "federation_rr_transactions_per_room_per_second": 1_000_000,
        }
        (self.dir / "homeserver.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return [str(self.python), "-m", "synapse.app.homeserver",
                "-c", str(self.dir / "homeserver.yaml")]

    def _wait_ready(self, deadline: float) -> None:
        super()._wait_ready(deadline)
        while time.monotonic() < deadline:  # listening is not yet serving
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}; "
                                   f"see {self.dir / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.label}: {self.base}/health not answering in time")


class ThrowawayPostgres:
    """One database of its own per server on the cluster of ``base_url``."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url.replace("postgresql+asyncpg://", "postgresql://", 1)
                         .replace("postgres://", "postgresql://", 1))
        self.name = "ktbench_fed_" + secrets.token_hex(6)
        self.admin_dsn = urlunsplit(parts)
        self.url = urlunsplit(parts._replace(scheme="postgresql+asyncpg", path="/" + self.name))

    async def create(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()

    async def drop(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()


class Client:
    """Client-server requests for one access token."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session = session
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None,
                   params: Any = None, limit_s: float = 60) -> dict[str, Any]:
        async with self.session.request(
                method, self.base + CLIENT_V3 + path, json=body, params=params,
                headers=self.headers, timeout=aiohttp.ClientTimeout(total=limit_s)) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return data  # type: ignore[no-any-return]


class Collector:
    """Bob's continuous /sync long-poll on B: the arrival time of every bench message
    (``content.bench_id``), and a future per awaited id for the latency phase."""

    def __init__(self, bob: Client, rooms: set[str]) -> None:
        self.bob = bob
        self.rooms = rooms
        self.arrived: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.syncs = 0
        self.limited = 0
        self.errors = 0
        self.since: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.progress = asyncio.Event()  # set after every sync response

    async def start(self) -> None:
        first = await self.bob.call("GET", "/sync", params={"filter": SYNC_FILTER})
        self.since = first["next_batch"]
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def _record(self, events: list[dict[str, Any]], now: float) -> bool:
        """Records new bench ids; False once an already seen one turns up."""
        fresh = True
        for event in events:
            bench_id = (event.get("content") or {}).get("bench_id")
            if not isinstance(bench_id, str):
                continue
            if bench_id in self.arrived:
                fresh = False
                continue
            self.arrived[bench_id] = now
            waiter = self.waiters.pop(bench_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(now)
        return fresh

    async def _backfill(self, room_id: str, token: str | None, now: float) -> None:
        """A limited timeline skipped events: page back with /messages until ones already
        seen (bounded to 50 pages). They had reached B by the time this sync returned."""
        for _ in range(50):
            if not token:
                return
            page = await self.bob.call(
                "GET", f"/rooms/{q(room_id)}/messages",
                params={"dir": "b", "from": token, "limit": "500",
                        "filter": json.dumps({"types": ["m.room.message"]})})
            chunk = page.get("chunk") or []
            if not chunk or not self._record(chunk, now):
                return
            token = page.get("end")

    async def _loop(self) -> None:
        while True:
            try:
                body = await self.bob.call(
                    "GET", "/sync", limit_s=LONG_POLL_MS / 1000 + 30,
                    params={"filter": SYNC_FILTER, "since": self.since or "",
                            "timeout": str(LONG_POLL_MS)})
            except asyncio.CancelledError:
                raise
            except Exception:  # counted and retried; the run is time-bounded
                self.errors += 1
                await asyncio.sleep(0.2)
                continue
            now = time.perf_counter()
            self.syncs += 1
            self.since = body["next_batch"]
            for room_id, room in (body.get("rooms", {}).get("join", {}) or {}).items():
                timeline = room.get("timeline") or {}
                self._record(timeline.get("events") or [], now)
                if timeline.get("limited") and room_id in self.rooms:
                    self.limited += 1
                    await self._backfill(room_id, timeline.get("prev_batch"), now)
            self.progress.set()

    def expect(self, bench_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if bench_id in self.arrived:
            future.set_result(self.arrived[bench_id])
        else:
            self.waiters[bench_id] = future
        return future


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def _setup(session: aiohttp.ClientSession, a: FedBenchServer, b: FedBenchServer,
                 args: argparse.Namespace) -> tuple[list[Client], Client, list[str]]:
    senders = []
    for i in range(args.senders):
        user = await a.register(session, f"alice{i}" if i else "alice")
        senders.append(Client(session, a.base, user["access_token"]))
    bob_user = await b.register(session, "bob")
    bob = Client(session, b.base, bob_user["access_token"])
    rooms = []
    for i in range(args.rooms):
        created = await senders[0].call("POST", "/createRoom", {
            "preset": "public_chat", "name": f"federation bench {i}"})
        rooms.append(created["room_id"])
    for room_id in rooms:
        for sender in senders[1:]:
            await sender.call("POST", f"/join/{q(room_id)}", {})
        await bob.call("POST", f"/join/{q(room_id)}", {},
                       params=[("server_name", a.server_name), ("via", a.server_name)],
                       limit_s=120)
    return senders, bob, rooms


async def _throughput(senders: list[Client], rooms: list[str], collector: Collector,
                      args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    send_start: dict[str, float] = {}
    send_ms: list[float] = []
    errors = 0
    issued = itertools.count()
    pairs = [(s, r) for s in senders for r in rooms]

    async def worker() -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            n = next(issued)
            if n >= args.messages:
                return
            sender, room_id = pairs[n % len(pairs)]
            bench_id = f"t{n}"
            start = time.perf_counter()
            send_start[bench_id] = start
            try:
                await sender.call(
                    "PUT", f"/rooms/{q(room_id)}/send/m.room.message/{bench_id}",
                    {"msgtype": "m.text", "body": f"throughput {n}", "bench_id": bench_id})
            except Exception:  # counted
                errors += 1
                del send_start[bench_id]
                continue
            send_ms.append((time.perf_counter() - start) * 1000)

    first_send = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    last_send_done = time.perf_counter()
    sent = set(send_start)
    while time.monotonic() < deadline and not sent <= collector.arrived.keys():
        collector.progress.clear()
        if sent <= collector.arrived.keys():
            break
        try:
            await asyncio.wait_for(collector.progress.wait(),
                                   max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            break
    arrived = [collector.arrived[i] for i in sent if i in collector.arrived]
    lag_ms = [(collector.arrived[i] - send_start[i]) * 1000
              for i in sent if i in collector.arrived]
    last_arrival = max(arrived) if arrived else time.perf_counter()
    replicate_s = last_arrival - first_send
    send_s = last_send_done - first_send
    return {
        "sent": len(sent), "send_errors": errors, "arrived": len(arrived),
        "complete": len(arrived) == len(sent) == args.messages,
        "send_seconds": round(send_s, 3),
        "send_per_s": round(len(sent) / send_s, 1) if send_s else 0.0,
        "send_request": percentiles(send_ms),
        "replicate_seconds": round(replicate_s, 3),
        "replicated_per_s": round(len(arrived) / replicate_s, 1) if replicate_s else 0.0,
        "drain_after_last_send_ms": _ms(max(0.0, last_arrival - last_send_done)),
        "send_to_arrival": {**percentiles(lag_ms),
                            "max_ms": round(max(lag_ms), 3) if lag_ms else 0.0},
    }


async def _latency(sender: Client, room_id: str, collector: Collector,
                   args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    samples: list[float] = []
    timeouts = 0
    for n in range(args.latency_samples):
        if time.monotonic() >= deadline:
            break
        if n:
            await asyncio.sleep(args.latency_gap)
        bench_id = f"l{n}"
        arrival = collector.expect(bench_id)
        start = time.perf_counter()
        try:
            await sender.call("PUT", f"/rooms/{q(room_id)}/send/m.room.message/{bench_id}",
                              {"msgtype": "m.text", "body": f"latency {n}",
                               "bench_id": bench_id})
            wait = max(0.1, min(30.0, deadline - time.monotonic()))
            samples.append((await asyncio.wait_for(arrival, wait) - start) * 1000)
        except (TimeoutError, RuntimeError, aiohttp.ClientError):
            timeouts += 1
            collector.waiters.pop(bench_id, None)
    return {"samples": len(samples), "failed": timeouts, **percentiles(samples),
            "mean_ms": round(statistics.fmean(samples), 3) if samples else 0.0,
            "max_ms": round(max(samples), 3) if samples else 0.0}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--latency-gap", type=float, default=0.15,
                        help="seconds between latency samples")
    parser.add_argument("--senders", type=int, default=1)
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16,
                        help="send requests in flight during the throughput phase")
    parser.add_argument("--seconds", type=float, default=300.0,
                        help="bound on the whole run, setup included")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite",
                        help="postgres: KT-Chat only (the Synapse baseline is SQLite only)")
    parser.add_argument("--implementation", choices=["ktchat", "synapse"], default="ktchat",
                        help="what servers A and B run: KT-Chat, or Synapse as a baseline "
                             "(from .venv-synapse, or $KTCHAT_TEST_SYNAPSE_PYTHON)")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    args = parser.parse_args()
    args.senders, args.rooms = max(1, args.senders), max(1, args.rooms)
    args.concurrency = max(1, args.concurrency)
    server_class = FedBenchServer
    version: dict[str, str] = {}
    if args.implementation == "synapse":
        if args.backend != "sqlite":
            parser.error("--implementation synapse supports --backend sqlite only")
        server_class = SynapseBenchServer
        version["synapse_version"] = SynapseBenchServer.version()
    started = time.monotonic()
    deadline = started + args.seconds

    databases: list[ThrowawayPostgres] = []
    if args.backend == "postgres":
        base_url = os.environ.get(POSTGRES_URL_ENV)
        if not base_url:
            sys.exit(f"--backend postgres needs {POSTGRES_URL_ENV}")
        databases = [ThrowawayPostgres(base_url), ThrowawayPostgres(base_url)]
        for database in databases:
            await database.create()

    root = Path(tempfile.mkdtemp(prefix="ktchat-bench-federation-"))
    servers: list[FedBenchServer] = []
    ok = False
    try:
        for label, database in itertools.zip_longest(("a", "b"), databases):
            servers.append(server_class(
                root, label, database.url if database else None,
                start_timeout=max(1.0, min(90.0, deadline - time.monotonic()))))
        a, b = servers
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=timeout) as session:
            senders, bob, rooms = await asyncio.wait_for(
                _setup(session, a, b, args), max(1.0, deadline - time.monotonic()))
            setup_s = time.monotonic() - started
            collector = Collector(bob, set(rooms))
            await collector.start()
            try:
                # The throughput phase leaves a quarter of what remains to the latency one.
                remaining = deadline - time.monotonic()
                throughput = await _throughput(senders, rooms, collector, args,
                                               deadline - remaining / 4)
                latency = await _latency(senders[0], rooms[0], collector, args, deadline)
            finally:
                await collector.stop()
        figures = {
            "bench": "federation",
            "implementation": args.implementation, **version,
            "database": args.backend,
            "senders": args.senders, "rooms": args.rooms, "concurrency": args.concurrency,
            "messages": args.messages,
            "setup_seconds": round(setup_s, 1),
            "throughput": throughput,
            "latency": latency,
            "receiver_syncs": collector.syncs, "receiver_limited_timelines": collector.limited,
            "receiver_sync_errors": collector.errors,
            "server_a_peak_rss_mib": a.peak_rss_mib(), "server_b_peak_rss_mib": b.peak_rss_mib(),
            "server_a_cpu_seconds": a.cpu_seconds(), "server_b_cpu_seconds": b.cpu_seconds(),
            "elapsed_seconds": round(time.monotonic() - started, 1),
            "machine": machine(),
        }
        ok = True
    finally:
        for server in servers:  # both shut down at once
            server.terminate()
        for server in servers:
            server.stop()
        for database in databases:
            try:
                await database.drop()
            except Exception as e:  # reported, the figures still count
                print(f"could not drop {database.name}: {e}", file=sys.stderr)
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"server data and logs kept in {root}", file=sys.stderr)
    emit(figures)


if __name__ == "__main__":
    asyncio.run(main())
