"""One server for a whole test module: ``Harness`` services (SQLite, or a throwaway PostgreSQL
schema) behind a real HTTP ``TestClient``, for module-scoped fixtures.

A module whose tests each build their own server spends most of its time building servers.
Where the tests can share one (each test's checks made against its own before-snapshot, or
against users and rooms of its own with unique names), the module says::

    pytestmark = pytest.mark.asyncio(loop_scope="module")

    @pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgres"])
    async def server(request, tmp_path_factory) -> AsyncIterator[ModuleServer]:
        async with module_server(request.param, tmp_path_factory.mktemp("name")) as s:
            yield s
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from homeserver.app import build_app
from homeserver.services.container import Services
from tests.helpers.harness import Harness


@dataclass
class ModuleServer:
    harness: Harness
    client: TestClient

    @property
    def services(self) -> Services:
        assert self.harness.services is not None
        return self.harness.services


@asynccontextmanager
async def module_server(kind: str, tmp_path: Path, overrides: dict[str, Any] | None = None
                        ) -> AsyncIterator[ModuleServer]:
    """Services on ``kind`` ("sqlite" or "postgres", as the ``harness`` fixture) in
    ``tmp_path``, and a client of their client and federation resources (as the ``client``
    fixture)."""
    harness = Harness(kind, tmp_path, overrides)
    try:
        services = await harness.setup()
        client = TestClient(TestServer(build_app(services)))
        await client.start_server()
        try:
            yield ModuleServer(harness, client)
        finally:
            await client.close()
    finally:
        await harness.teardown()
