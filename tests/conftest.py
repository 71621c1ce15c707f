"""Shared fixtures: configs, databases (SQLite always, PostgreSQL when configured), servers.

PostgreSQL tests read ``KTCHAT_TEST_POSTGRES_URL``; unset, they skip, except under ``CI=true``,
where a missing database is a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from core.crypto.passwords import PasswordHasher
from core.crypto.signing_keys import generate_key_file
from homeserver.app import build_app
from homeserver.config import HomeserverConfig, parse_config
from homeserver.services.container import Services, build_services
from storage import Database
from tests.helpers.scheduling import FileTimings, slow_first

SERVER_NAME = "test.local"
POSTGRES_URL_ENV = "KTCHAT_TEST_POSTGRES_URL"
TIMINGS_ENV = "KTCHAT_TEST_TIMINGS"


def pytest_configure(config: pytest.Config) -> None:
    timings = os.environ.get(TIMINGS_ENV)
    # Only the controlling process (or a run without xdist) records: workers' reports reach it.
    if timings and not hasattr(config, "workerinput"):
        config.pluginmanager.register(FileTimings(Path(timings)), "ktchat-file-timings")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    slow_first(items)


def postgres_url() -> str | None:
    """The asyncpg URL of the test PostgreSQL, or None (skip) outside CI."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{POSTGRES_URL_ENV} must be set under CI=true")
        pytest.skip(f"{POSTGRES_URL_ENV} is not set")
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


class PostgresSchema:
    """A throwaway schema in the test database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = "t_" + secrets.token_hex(6)

    def _dsn(self) -> str:
        return self.url.replace("postgresql+asyncpg://", "postgresql://")

    async def create(self) -> None:
        conn = await asyncpg.connect(self._dsn())
        try:
            await conn.execute(f'CREATE SCHEMA "{self.name}"')
        finally:
            await conn.close()

    async def drop(self) -> None:
        conn = await asyncpg.connect(self._dsn())
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
        finally:
            await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An opened, migrated database, once on SQLite and once on PostgreSQL."""
    async with open_database(request.param, tmp_path) as db:
        yield db


from contextlib import asynccontextmanager  # noqa: E402


@asynccontextmanager
async def open_database(kind: str, tmp_path: Path) -> AsyncIterator[Database]:
    if kind == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'homeserver.db'}")
        await db.open()
        try:
            yield db
        finally:
            await db.close()
        return
    url = postgres_url()
    assert url is not None
    schema = PostgresSchema(url)
    await schema.create()
    db = Database(url, postgres_search_path=schema.name)
    try:
        await db.open()
        yield db
    finally:
        await db.close()
        await schema.drop()


def test_hasher() -> PasswordHasher:
    """The password hasher of the in-process servers: argon2id as in production, at its
    lowest cost (1 MiB, one pass). Every test registers users, and the production cost
    (19 MiB, two passes: tens of milliseconds a hash) made that a good part of the suite's
    time; ``tests/core/test_crypto.py`` holds the production parameters, and the servers
    the tests run as processes use them."""
    return PasswordHasher(memory_kib=1024, time_cost=1)


test_hasher.__test__ = False  # type: ignore[attr-defined]  # (not a test: a helper)


def make_config(tmp_path: Path, **overrides: Any) -> HomeserverConfig:
    """A valid config for tests; ``overrides`` are top-level YAML keys (sections merge)."""
    key_path = tmp_path / "signing.key"
    if not key_path.exists():
        generate_key_file(key_path)
    data: dict[str, Any] = {
        "server_name": SERVER_NAME,
        "public_baseurl": "http://127.0.0.1:8008/",
        "signing_key_path": str(key_path),
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path / 'homeserver.db'}"},
        "registration": {"enabled": True, "shared_secret": "s3cret"},
        "rate_limits": {"enabled": False},
        "media": {"store_path": str(tmp_path / "media")},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data, tmp_path)


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Override in a test module to change the server's config."""
    return {}


@pytest.fixture(params=["sqlite", "postgres"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path,
                  config_overrides: dict[str, Any]) -> AsyncIterator[Any]:
    """Restartable services (``tests.helpers.harness.Harness``), once on SQLite and once on
    PostgreSQL, with the module's ``config_overrides``."""
    from tests.helpers.harness import Harness  # it imports this module

    h = Harness(request.param, tmp_path, config_overrides)
    try:
        await h.setup()
        yield h
    finally:
        await h.teardown()


@pytest.fixture
async def services(tmp_path: Path, config_overrides: dict[str, Any]
                   ) -> AsyncIterator[Services]:
    services = build_services(make_config(tmp_path, **config_overrides), hasher=test_hasher())
    await services.start()
    try:
        yield services
    finally:
        await services.stop()


@pytest.fixture
async def client(services: Services, aiohttp_client: Callable[..., Any]) -> TestClient:
    """An HTTP client talking to a real server (client and federation resources)."""
    return await aiohttp_client(build_app(services))


async def register_user(client: TestClient, username: str, password: str = "correct horse",
                        **extra: Any) -> dict[str, Any]:
    """Register through /register with the dummy stage; returns the login response."""
    resp = await client.post("/_matrix/client/v3/register",
                             json={"username": username, "password": password, **extra})
    assert resp.status == 401, await resp.text()
    session = (await resp.json())["session"]
    resp = await client.post("/_matrix/client/v3/register", json={
        "username": username, "password": password,
        "auth": {"type": "m.login.dummy", "session": session}, **extra})
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
