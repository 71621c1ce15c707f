"""``Harness``: the homeserver's services on SQLite or on a throwaway PostgreSQL schema,
restartable on the same data (the ``harness``/``hs`` fixtures of ``tests/homeserver``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from homeserver.app import build_app
from homeserver.config import HomeserverConfig
from homeserver.services.container import Services, build_services
from storage import Database
from tests.conftest import PostgresSchema, make_config, postgres_url, test_hasher


class Harness:
    """Services on SQLite or on a throwaway PostgreSQL schema, restartable on the same data;
    ``overrides`` (top-level config keys) may change between lives."""

    def __init__(self, kind: str, tmp_path: Path,
                 overrides: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.overrides = overrides or {}
        self.schema: PostgresSchema | None = None
        self.services: Services | None = None

    async def setup(self) -> Services:
        if self.kind == "postgres":
            url = postgres_url()
            assert url is not None
            self.schema = PostgresSchema(url)
            await self.schema.create()
        return await self.start()

    def extras(self, config: HomeserverConfig) -> dict[str, Any]:
        """More keyword arguments of ``build_services`` (a subclass's real outbound clients)."""
        return {}

    def _build(self) -> Services:
        if self.schema is None:
            config = make_config(self.tmp_path, **self.overrides)
            return build_services(config, hasher=test_hasher(), **self.extras(config))
        config = make_config(self.tmp_path,
                             **{**self.overrides, "database": {"url": self.schema.url}})
        db = Database(self.schema.url, postgres_search_path=self.schema.name)
        return build_services(config, db=db, hasher=test_hasher(), **self.extras(config))

    async def start(self) -> Services:
        self.services = self._build()
        await self.services.start()
        return self.services

    async def stop(self) -> None:
        if self.services is not None:
            services, self.services = self.services, None
            await services.stop()

    async def restart(self) -> Services:
        await self.stop()
        return await self.start()

    async def teardown(self) -> None:
        await self.stop()
        if self.schema is not None:
            await self.schema.drop()


@pytest.fixture
def harness_services(harness: Harness) -> Services:
    """The services of ``harness`` (once on SQLite, once on PostgreSQL). A test module whose
    tests run on both says ``services = harness_services``: its ``client`` then talks to them."""
    assert harness.services is not None
    return harness.services


@asynccontextmanager
async def served(kind: str, tmp_path: Path, overrides: dict[str, Any] | None = None
                 ) -> AsyncIterator[tuple[Services, TestClient]]:
    """A ``Harness``'s services (``kind``: sqlite or postgres) behind a real HTTP server, and
    a client of it (as the ``client`` fixture has), for a fixture of a wider scope than one
    test: a module's tests that leave what is stored as they found it share one server."""
    h = Harness(kind, tmp_path, overrides)
    try:
        services = await h.setup()
        client = TestClient(TestServer(build_app(services)))
        await client.start_server()
        try:
            yield services, client
        finally:
            await client.close()
    finally:
        await h.teardown()


SharedServer = tuple[Services, TestClient]


def shared_server(name: str, *, kinds: tuple[str, ...] = ("sqlite", "postgres"),
                  overrides: dict[str, Any] | None = None) -> Any:
    """A module-scoped fixture yielding ``served``'s (services, client), once per backend of
    ``kinds``: a module says ``server = shared_server("name")`` and its tests (run in the
    module's event loop) share it."""

    @pytest_asyncio.fixture(scope="module", loop_scope="module",
                            params=list(kinds) if len(kinds) > 1 else None)
    async def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                     ) -> AsyncIterator[SharedServer]:
        kind = getattr(request, "param", kinds[0])
        async with served(kind, tmp_path_factory.mktemp(f"{name}-{kind}"), overrides) as s:
            yield s

    return server
