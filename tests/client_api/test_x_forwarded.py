"""Behind a reverse proxy (DESIGN.md, ``listeners[].x_forwarded``): on a listener that trusts
``X-Forwarded-For``, each client has its own rate-limit bucket and its device shows its own
``last_seen_ip``; elsewhere the header is ignored, so no client picks its address."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestClient

from homeserver.app import build_app
from homeserver.services.container import Services
from tests.conftest import bearer, register_user
from tests.helpers.federation import FedServer

LOOSE = {"per_second": 100, "burst_count": 100}


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    # One login per IP address, for the length of a test.
    return {"rate_limits": {"enabled": True,
                            "login_per_ip": {"per_second": 0.0001, "burst_count": 1},
                            "registration_per_ip": LOOSE, "login_per_account": LOOSE,
                            "login_failed_per_account": LOOSE}}


@pytest.fixture(params=[True, False], ids=["x_forwarded", "direct"])
async def proxied(request: pytest.FixtureRequest, services: Services,
                  aiohttp_client: Callable[..., Any]) -> tuple[TestClient, bool]:
    trusted = bool(request.param)
    return await aiohttp_client(build_app(services, x_forwarded=trusted)), trusted


async def _login(client: TestClient, user: str, forwarded_for: str) -> tuple[int, Any]:
    resp = await client.post("/_matrix/client/v3/login", headers={
        "X-Forwarded-For": forwarded_for}, json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
        "password": "correct horse"})
    return resp.status, await resp.json()


async def test_rate_limits_per_forwarded_address(proxied: tuple[TestClient, bool]) -> None:
    client, trusted = proxied
    for name in ("alice", "bob", "carol"):
        await register_user(client, name)
    status, body = await _login(client, "alice", "203.0.113.7")
    assert status == 200, body
    # The same client again: its bucket is empty.
    status, body = await _login(client, "bob", "203.0.113.7, 10.0.0.1")
    assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED"), body
    # Another client behind the same proxy: a bucket of its own only on a trusted listener.
    status, body = await _login(client, "carol", "198.51.100.9")
    if trusted:
        assert status == 200, body
    else:
        assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED"), body


async def test_last_seen_ip_is_the_forwarded_address(proxied: tuple[TestClient, bool]) -> None:
    client, trusted = proxied
    await register_user(client, "alice")
    status, body = await _login(client, "alice", "203.0.113.7, 10.0.0.1")
    assert status == 200, body
    resp = await client.get("/_matrix/client/v3/devices", headers=bearer(body["access_token"]))
    devices = {d["device_id"]: d for d in (await resp.json())["devices"]}
    expected = "203.0.113.7" if trusted else "127.0.0.1"
    assert devices[body["device_id"]]["last_seen_ip"] == expected


@pytest.mark.parametrize("value", ["not an address", "", " , 203.0.113.7", "unknown"])
async def test_a_forwarded_value_that_is_no_address_is_ignored(
        services: Services, aiohttp_client: Callable[..., Any], value: str) -> None:
    client = await aiohttp_client(build_app(services, x_forwarded=True))
    await register_user(client, "alice")
    status, body = await _login(client, "alice", value)
    assert status == 200, body
    resp = await client.get("/_matrix/client/v3/devices", headers=bearer(body["access_token"]))
    assert (await resp.json())["devices"][-1]["last_seen_ip"] == "127.0.0.1"


def test_x_forwarded_is_per_listener(tmp_path: Path) -> None:
    """A real server: the access log of the trusting listener shows the forwarded address;
    the federation listener, which does not trust it, shows the peer's."""
    server = FedServer(tmp_path, "hs")
    data = yaml.safe_load(server.config_path.read_text())
    data["listeners"][0]["x_forwarded"] = True
    server.config_path.write_text(yaml.safe_dump(data))
    server.start()
    try:
        async def requests() -> None:
            async with aiohttp.ClientSession() as session:
                for url in (f"{server.client_url}/_matrix/client/versions",
                            f"{server.federation_url}/_matrix/federation/v1/version"):
                    async with session.get(url, ssl=False, headers={
                            "X-Forwarded-For": "203.0.113.7"}) as resp:
                        assert resp.status == 200

        asyncio.run(requests())
    finally:
        server.stop()
    lines = [line for line in server.log().splitlines() if "ktchat.access" in line]
    client_line = next(line for line in lines if "/_matrix/client/versions" in line)
    federation_line = next(line for line in lines if "/_matrix/federation/v1/version" in line)
    assert "ktchat.access: 203.0.113.7 " in client_line, client_line
    assert "ktchat.access: 127.0.0.1 " in federation_line, federation_line
