"""A real Synapse homeserver process, for interoperability tests against KT-Chat.

Synapse lives in its own virtualenv (``.venv-synapse``, made from
``.ci/synapse-requirements.txt``) so its pins never meet ours; ``synapse_python()`` finds it,
and skips the test when it is missing (a failure under ``CI=true``, as with PostgreSQL).

``SynapseServer`` mirrors ``FedServer``: a server name with an explicit port
(``127.0.0.1:<federation port>``), a TLS federation listener with a self-signed certificate,
a plain-HTTP client listener, SQLite, loopback allowed for federation and certificates not
verified, rate limits out of the way. Its users are ``tests.helpers.federation.User``s: the
client-server API is the same on both servers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import yaml

from core.crypto.signing_keys import generate_key_file
from core.crypto.tls import generate_self_signed
from tests.helpers.federation import (
    CLIENT_V3,
    LOG_TAIL_LINES,
    PASSWORD,
    FedServer,
    JsonDict,
    User,
    _http,
    _merge,
)
from tests.helpers.processes import REPO, HarnessProcess, free_port, wait_for_port

SYNAPSE_PYTHON_ENV = "KTCHAT_TEST_SYNAPSE_PYTHON"
SYNAPSE_VENV_PYTHON = REPO / ".venv-synapse" / "bin" / "python"
START_TIMEOUT = 90
# Every rate limit Synapse has, far out of reach of a test.
_UNLIMITED = {"per_second": 10_000, "burst_count": 100_000}


def synapse_python() -> Path:
    """The interpreter of Synapse's virtualenv (``$KTCHAT_TEST_SYNAPSE_PYTHON`` or
    ``.venv-synapse/bin/python``); skips without it, except under ``CI=true``: fails."""
    path = Path(os.environ.get(SYNAPSE_PYTHON_ENV) or SYNAPSE_VENV_PYTHON)
    problem = None
    if not path.exists():
        problem = f"no Synapse virtualenv at {path} (make it: `make synapse-venv`)"
    else:
        probe = subprocess.run([str(path), "-c", "import synapse; print(synapse.__version__)"],
                               capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            problem = f"{path} cannot import synapse: {probe.stderr.strip()[-500:]}"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Synapse is required under CI=true: {problem}")
        pytest.skip(problem)
    return path


def _log_config(log_path: Path, level: str) -> JsonDict:
    return {
        "version": 1,
        "formatters": {"precise": {
            "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                      "%(request)s - %(message)s"}},
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter",
                                "request": ""}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_path),
                              "formatter": "precise", "filters": ["context"],
                              "encoding": "utf8"}},
        "loggers": {
            "synapse.storage.SQL": {"level": "INFO"},
            "twisted": {"level": "WARNING"},
        },
        "root": {"level": level, "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


class SynapseServer(HarnessProcess):
    """One Synapse process with its own config, keys, certificate and SQLite database.

    ``config`` is merged into the generated ``homeserver.yaml`` last. Synapse's own log goes
    to ``homeserver.log``; what the process prints (start-up errors) to ``console.log``.
    """

    def __init__(self, root: Path, label: str = "synapse", *, config: JsonDict | None = None,
                 log_level: str = "INFO") -> None:
        self.python = synapse_python()
        self.label = label
        self.dir = root / label
        self.dir.mkdir(parents=True, exist_ok=False)
        self.client_port = free_port()
        self.federation_port = free_port()
        while self.federation_port == self.client_port:
            self.federation_port = free_port()
        self.server_name = f"127.0.0.1:{self.federation_port}"
        self.client_url = f"http://127.0.0.1:{self.client_port}"
        self.federation_url = f"https://127.0.0.1:{self.federation_port}"
        self.config_path = self.dir / "homeserver.yaml"
        self.log_path = self.dir / "homeserver.log"
        self.console_path = self.dir / "console.log"
        self.output_path = self.console_path
        super().__init__()
        self.shared_secret = secrets.token_hex(16)

        generate_self_signed(self.server_name, self.dir / "tls.crt", self.dir / "tls.key")
        generate_key_file(self.dir / "signing.key")
        log_config = self.dir / "log.yaml"
        log_config.write_text(yaml.safe_dump(_log_config(self.log_path, log_level)))
        data: JsonDict = {
            "server_name": self.server_name,
            "public_baseurl": self.client_url + "/",
            "pid_file": str(self.dir / "homeserver.pid"),
            "listeners": [
                {"port": self.federation_port, "bind_addresses": ["127.0.0.1"], "type": "http",
                 "tls": True, "x_forwarded": False,
                 "resources": [{"names": ["federation"], "compress": False}]},
                {"port": self.client_port, "bind_addresses": ["127.0.0.1"], "type": "http",
                 "tls": False, "x_forwarded": False,
                 "resources": [{"names": ["client"], "compress": False}]},
            ],
            "tls_certificate_path": str(self.dir / "tls.crt"),
            "tls_private_key_path": str(self.dir / "tls.key"),
            "federation_verify_certificates": False,
            "federation_client_minimum_tls_version": "1.2",
            # Loopback is blocked by default. The allowlist wins over the blocklist for
            # names that resolve to an address, but a server name that *is* an IP literal
            # (ours: 127.0.0.1:PORT) is checked against the federation blocklist alone, so
            # that one must not hold loopback.
            "ip_range_whitelist": ["127.0.0.0/8"],
            "federation_ip_range_blacklist": [],
            "database": {"name": "sqlite3",
                         "args": {"database": str(self.dir / "homeserver.db")}},
            "log_config": str(log_config),
            "media_store_path": str(self.dir / "media"),
            "signing_key_path": str(self.dir / "signing.key"),
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "report_stats": False,
            "enable_registration": False,
            "registration_shared_secret": self.shared_secret,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "presence": {"enabled": True},
            "use_presence": True,
            "enable_metrics": False,
            "url_preview_enabled": False,
            "rc_message": _UNLIMITED,
            "rc_registration": _UNLIMITED,
            "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED,
                         "failed_attempts": _UNLIMITED},
            "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
            "rc_joins_per_room": _UNLIMITED,
            "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED,
                           "per_issuer": _UNLIMITED},
            "rc_admin_redaction": _UNLIMITED,
            "rc_presence": {"per_user": _UNLIMITED},
            "rc_room_creation": _UNLIMITED,
            "rc_key_requests": _UNLIMITED,
            "rc_third_party_invite": _UNLIMITED,
            "rc_delayed_event_mgmt": _UNLIMITED,
            "rc_reports": _UNLIMITED,
            "rc_user_directory": _UNLIMITED,
            "rc_federation": {"window_size": 1000, "sleep_limit": 10_000, "sleep_delay": 1,
                              "reject_limit": 100_000, "concurrent": 1000},
            "federation_rr_transactions_per_room_per_second": 10_000,
            # Its room directory open to anyone, and to other servers, as ours is.
            "room_list_publication_rules": [{"action": "allow"}],
            "allow_public_rooms_over_federation": True,
        }
        _merge(data, config or {})
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.config = data

    def __repr__(self) -> str:
        return f"<SynapseServer {self.label} {self.server_name} client={self.client_url}>"

    # -- process ------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Start Synapse and return once both listeners answer (``/health``)."""
        timeout = timeout or START_TIMEOUT
        proc = self._spawn([str(self.python), "-m", "synapse.app.homeserver", "-c",
                            str(self.config_path)], self.dir)
        deadline = time.monotonic() + timeout
        try:
            wait_for_port(self.client_port, proc, timeout)
            wait_for_port(self.federation_port, proc, max(deadline - time.monotonic(), 1))
            self._wait_healthy(deadline)
        except (RuntimeError, TimeoutError) as e:
            self.kill()
            raise RuntimeError(f"{self.label} did not start: {e}\n"
                               f"{self.console_path.read_text()[-4000:]}\n"
                               f"{self.log_tail(80)}") from e

    def _wait_healthy(self, deadline: float) -> None:
        assert self.proc is not None
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Synapse exited early with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.client_url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last = resp.status
            except (urllib.error.URLError, OSError) as e:
                last = e
            time.sleep(0.1)
        raise TimeoutError(f"{self.client_url}/health did not answer 200: {last!r}")

    # -- logs (the same calls as FedServer's, so failure reports include them) ----------

    def log(self) -> str:
        """Synapse's ``homeserver.log``, everything since the first start."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_size(self) -> int:
        return len(self.log())

    def log_tail(self, lines: int = LOG_TAIL_LINES, since: int = 0) -> str:
        return "\n".join(self.log()[since:].splitlines()[-lines:])

    # -- HTTP -----------------------------------------------------------------------------

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.dir / "tls.crt"))

    async def server_keys(self) -> JsonDict:
        async with aiohttp.ClientSession() as session, session.get(
                f"{self.federation_url}/_matrix/key/v2/server", ssl=self.tls_context(),
                timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()  # type: ignore[no-any-return]

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def alias(self, localpart: str) -> str:
        return f"#{localpart}:{self.server_name}"

    async def register(self, localpart: str, password: str = PASSWORD, *,
                       admin: bool = False) -> User:
        """Shared-secret registration (``/_synapse/admin/v1/register``, as
        ``register_new_matrix_user`` does), then a password login."""
        status, body = await _http("GET", f"{self.client_url}/_synapse/admin/v1/register")
        assert status == 200, f"{self.label}: GET nonce -> {status}: {body}"
        nonce = body["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                                 b"admin" if admin else b"notadmin"]))
        status, body = await _http("POST", f"{self.client_url}/_synapse/admin/v1/register",
                                   json_body={"nonce": nonce, "username": localpart,
                                              "password": password, "admin": admin,
                                              "mac": mac.hexdigest()})
        assert status == 200, f"{self.label}: register {localpart} -> {status}: {body}"
        assert body["user_id"] == self.user_id(localpart), body
        return await self.login(localpart, password)

    async def login(self, localpart: str, password: str = PASSWORD) -> User:
        status, body = await _http("POST", f"{self.client_url}{CLIENT_V3}/login", json_body={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
            "password": password, "initial_device_display_name": "interop test"})
        assert status == 200, f"{self.label}: login {localpart} -> {status}: {body}"
        # ``User`` only needs the server's ``client_url``; it is typed for ``FedServer``.
        return User(cast(FedServer, self), body["user_id"], body["access_token"],
                    body["device_id"], password)
