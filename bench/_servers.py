"""Servers the benchmarks start as real processes (KT-Chat, or Synapse as the baseline to
compare with), throwaway PostgreSQL databases, and a small client-server API client."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, free_port

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


def cpu_of(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` so far, all threads (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


class FedBenchServer:
    """A ``ktchat run`` process federating on loopback: its own data directory, a server name
    with an explicit port, TLS unchecked, rate limits off. ``SynapseBenchServer`` overrides
    only how the process is configured and started; measuring it is shared."""

    implementation = "ktchat"

    def __init__(self, root: Path, label: str, database_url: str | None,
                 start_timeout: float = 60) -> None:
        # KTCHAT_BENCH_LOG_LEVEL=INFO (or DEBUG) makes the servers' logs worth reading.
        self.log_level = os.environ.get("KTCHAT_BENCH_LOG_LEVEL", "WARNING")
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
            "logging": {"level": self.log_level},
        })
        # Where generate-config put it (older versions: under registration).
        if "registration_shared_secret" in config:
            config["registration_shared_secret"] = SHARED_SECRET
        else:
            _merge(config, {"registration": {"shared_secret": SHARED_SECRET}})
        if database_url:
            config["database"] = {"url": database_url}
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        # KTCHAT_BENCH_PROFILE=DIR runs each server under cProfile (DIR/<label>.prof on exit);
        # KTCHAT_BENCH_PYSPY=DIR samples the measured window instead (``sample``).
        profile = os.environ.get("KTCHAT_BENCH_PROFILE")
        runner = ["-m", "cProfile", "-o", str(Path(profile) / f"{self.label}.prof")] \
            if profile else []
        return [sys.executable, *runner, "-m", "homeserver", "run", "-c", str(config_path)]

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

    def sample(self, seconds: float) -> subprocess.Popen[bytes] | None:
        """With ``KTCHAT_BENCH_PYSPY=DIR``, samples the server with py-spy for ``seconds``
        (the measured window only, unlike cProfile's whole run) into DIR/<label>.txt, in
        py-spy's collapsed-stack format; returns the sampler (wait for it), else None."""
        where = os.environ.get("KTCHAT_BENCH_PYSPY")
        if not where:
            return None
        py_spy = Path(sys.executable).parent / "py-spy"
        return subprocess.Popen(
            [str(py_spy), "record", "--pid", str(self.proc.pid), "--duration",
             str(max(1, int(seconds))), "--rate", "200", "--format", "raw", "--output",
             str(Path(where) / f"{self.label}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cpu_seconds(self) -> float:
        user, system = self.cpu_split()
        return round(user + system, 2)

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the process so far, all threads."""
        return cpu_of(self.proc.pid)

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


class InboundWorkerBenchServer(FedBenchServer):
    """A ``ktchat`` main process with a ``federation_inbound`` worker (PostgreSQL and Redis,
    ``KTCHAT_TEST_REDIS_URL``): the port in the server name is the worker's, so everything
    other servers send arrives there; the main process's federation listener moves to a port
    of its own (the worker relays joins to it). CPU and memory count both processes."""

    worker: subprocess.Popen[bytes] | None = None

    def _configure(self, database_url: str | None) -> list[str]:
        if not database_url:
            raise SystemExit("a federation_inbound worker needs --backend postgres")
        command = super()._configure(database_url)
        config_path = self.dir / "homeserver.yaml"
        config = yaml.safe_load(config_path.read_text())
        self.main_federation_port = free_port()
        for listener in config["listeners"]:
            if "federation" in listener["resources"]:
                listener["port"] = self.main_federation_port
        config["listeners"].append({"port": free_port(), "bind": "127.0.0.1",
                                    "resources": ["replication"]})
        config["redis"] = {"url": os.environ.get("KTCHAT_TEST_REDIS_URL",
                                                 "redis://127.0.0.1:6379/0")}
        config["workers"] = {"inbound": {"roles": ["federation_inbound"], "listeners": [
            {"port": self.federation_port, "tls": True, "resources": ["federation"]}]}}
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        # (under KTCHAT_BENCH_PROFILE the worker's profile is a file of its own)
        self._worker_command = [f"{arg[:-len('.prof')]}-worker.prof"
                                if arg.endswith(".prof") else arg for arg in command]
        self._worker_command += ["--worker", "inbound"]
        return command

    def _wait_ready(self, deadline: float) -> None:
        self._wait_for_port(self.client_port, deadline)
        self._wait_for_port(self.main_federation_port, deadline)
        self.worker = subprocess.Popen(
            self._worker_command, cwd=self._cwd(), stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._wait_for_port(self.federation_port, deadline)

    def worker_cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the worker so far."""
        return cpu_of(self.worker.pid) if self.worker is not None else (0.0, 0.0)

    def cpu_split(self) -> tuple[float, float]:
        user, system = super().cpu_split()
        worker_user, worker_system = self.worker_cpu_split()
        return user + worker_user, system + worker_system

    def terminate(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
        super().terminate()

    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            try:
                self.worker.wait(20)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        super().stop()


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
        from core.crypto.signing_keys import generate_key_file
        from core.crypto.tls import generate_self_signed

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
            await self._take(body, time.perf_counter())

    async def _take(self, body: dict[str, Any], now: float) -> None:
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


class SseCollector(Collector):
    """The same, following KT-Chat's server-sent-events sync stream instead of long-polls."""

    SSE_PATH = "/_matrix/client/unstable/org.ktchat.sse/sync"

    async def start(self) -> None:
        self._first = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._loop())
        await asyncio.wait_for(asyncio.shield(self._first), 60)

    async def _loop(self) -> None:
        url = self.bob.base + self.SSE_PATH
        async with self.bob.session.get(
                url, params={"filter": SYNC_FILTER}, headers=self.bob.headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"SSE sync: {resp.status} {await resp.text()}")
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                await self._take(json.loads(line[5:]), time.perf_counter())
                if not self._first.done():
                    self._first.set_result(None)
