"""A real ``ktchat run`` process with users, for matrix-nio tests (module-scoped fixtures)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nio
import yaml

from tests.helpers.processes import ServerProcess, free_port, ktchat, wait_for_port

PASSWORD = "a long enough password"


def run_server(tmp: Path, users: tuple[str, ...] = ("alice", "bob"),
               overrides: dict[str, Any] | None = None) -> Iterator[str]:
    """Generate a config (rate limits off, ``overrides`` merged into its top-level sections),
    register ``users``, serve; yields the base URL and, at the end, checks the server stopped
    cleanly with no traceback (its log is ``tmp/server.log``)."""
    port = free_port()
    data = tmp / "data"
    ktchat("generate-config", "--server-name", "localhost", "--data-dir", str(data),
           "--client-port", str(port), "--federation-port", str(free_port()))
    config_path = data / "homeserver.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["rate_limits"] = {"enabled": False}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    config_path.write_text(yaml.safe_dump(config))
    for user in users:
        ktchat("register-user", "-c", str(config_path), "--user", user, "--password", PASSWORD)
    proc = ServerProcess(config_path, tmp / "server.log")
    wait_for_port(port, proc.proc)
    yield f"http://127.0.0.1:{port}"
    assert proc.stop() == 0
    assert "Traceback" not in proc.log()


async def nio_client(base: str, user: str) -> nio.AsyncClient:
    """A logged-in matrix-nio client without encryption."""
    client = nio.AsyncClient(base, f"@{user}:localhost",
                             config=nio.AsyncClientConfig(encryption_enabled=False))
    login = await client.login(PASSWORD)
    assert isinstance(login, nio.LoginResponse), login
    return client


async def nio_pair(base: str) -> AsyncIterator[tuple[nio.AsyncClient, nio.AsyncClient]]:
    """Alice's and Bob's clients for a test (the body of the ``alice_bob`` fixtures)."""
    alice, bob = await nio_client(base, "alice"), await nio_client(base, "bob")
    try:
        yield alice, bob
    finally:
        await alice.close()
        await bob.close()
