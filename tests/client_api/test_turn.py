"""GET /voip/turnServer: coturn REST API credentials from a shared secret, static ones, and
``{}`` when no TURN server is configured (as Synapse)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from homeserver.config import ConfigError
from tests.conftest import make_config
from tests.helpers.room_api import User, api, assert_error

URIS = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"]


@pytest.mark.parametrize("config_overrides", [
    {"turn": {"uris": URIS, "shared_secret": "hunter2", "user_lifetime_ms": 86_400_000}}])
async def test_shared_secret_credentials(client: TestClient, alice: User) -> None:
    before = int(time.time())
    status, body = await api(client, "GET", "/voip/turnServer", alice)
    assert status == 200, body
    assert body["uris"] == URIS
    assert body["ttl"] == 86_400
    expiry, user_id = body["username"].split(":", 1)
    assert user_id == alice.user_id
    assert before + 86_400 <= int(expiry) <= int(time.time()) + 86_400
    mac = hmac.new(b"hunter2", body["username"].encode(), hashlib.sha1).digest()
    assert body["password"] == base64.b64encode(mac).decode()


@pytest.mark.parametrize("config_overrides", [{"turn": {"uris": URIS[:1],
                                                         "shared_secret": "s"}}])
async def test_default_lifetime_is_an_hour(client: TestClient, alice: User) -> None:
    status, body = await api(client, "GET", "/voip/turnServer", alice)
    assert status == 200, body
    assert body["ttl"] == 3600
    assert int(body["username"].split(":", 1)[0]) <= int(time.time()) + 3600


@pytest.mark.parametrize("config_overrides", [
    {"turn": {"uris": URIS, "username": "static", "password": "pw"}}])
async def test_static_credentials(client: TestClient, alice: User) -> None:
    status, body = await api(client, "GET", "/voip/turnServer", alice)
    assert (status, body) == (200, {"username": "static", "password": "pw", "uris": URIS,
                                    "ttl": 3600})


@pytest.mark.parametrize("config_overrides", [
    {},
    {"turn": {"uris": URIS}},  # no credentials
    {"turn": {"shared_secret": "s"}},  # no URIs
    {"turn": {"uris": URIS, "username": "only-a-name"}},
])
async def test_unconfigured_is_empty(client: TestClient, alice: User) -> None:
    # Synapse answers 200 {} too; the spec's schema requires the fields, so no spec check.
    status, body = await api(client, "GET", "/voip/turnServer", alice, spec=False)
    assert (status, body) == (200, {})


async def test_needs_auth(client: TestClient) -> None:
    status, body = await api(client, "GET", "/voip/turnServer", None)
    assert_error(status, body, 401, "M_MISSING_TOKEN")


@pytest.mark.parametrize(("turn", "problem"), [
    ({"urls": []}, "turn.urls"),
    ({"uris": "turn:x"}, "turn.uris"),
    ({"uris": [""]}, "turn.uris[0]"),
    ({"shared_secret": 5}, "turn.shared_secret"),
    ({"user_lifetime_ms": 0}, "turn.user_lifetime_ms"),
])
def test_config_problems(tmp_path: Path, turn: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        make_config(tmp_path, turn=turn)
    assert [p.split(":", 1)[0] for p in excinfo.value.problems] == [problem]
