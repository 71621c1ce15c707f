"""Fixtures for federation tests: real ``ktchat`` processes federating over TLS on loopback.

``fed_pair``: servers A and B (SQLite), alice@A and bob@B, shared by a module (each test makes
its own rooms); a server a test stopped is started again before the next one, and both users'
sync waits start afresh with each test.
``fed_pair_pg``: the same with B on PostgreSQL (skips without ``KTCHAT_TEST_POSTGRES_URL``,
except under ``CI=true``). ``fed_servers``: a factory of servers for one test.
``interop``: one KT-Chat (``a``, alice) and one Synapse (``b``, sam as ``bob``) shared by a
module, the same way (skips without the Synapse virtualenv, except under ``CI=true``).
When a test fails, its report gets each server's log from that test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.conftest import postgres_url
from tests.helpers.federation import FedPair, FedServer, PostgresDatabase
from tests.helpers.synapse import SynapseServer

_LOG_MARKS = pytest.StashKey[dict[int, int]]()


class FedServers:
    """Makes servers for one test or module; ``close()`` stops them and drops their
    databases."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: list[FedServer] = []
        self.databases: list[PostgresDatabase] = []

    def __call__(self, label: str, *, start: bool = True, **kwargs: Any) -> FedServer:
        server = FedServer(self.root, label, **kwargs)
        self.servers.append(server)
        if start:
            server.start()
        return server

    async def postgres(self, label: str, *, start: bool = True, **kwargs: Any) -> FedServer:
        url = postgres_url()
        assert url is not None
        db = PostgresDatabase(url)
        await db.create()
        self.databases.append(db)
        return self(label, start=start, database_url=db.url, **kwargs)

    async def close(self) -> None:
        for server in self.servers:
            server.stop()
        for db in self.databases:
            await db.drop()


@pytest_asyncio.fixture(loop_scope="function")
async def fed_servers(tmp_path: Path) -> AsyncIterator[FedServers]:
    servers = FedServers(tmp_path)
    try:
        yield servers
    finally:
        await servers.close()


async def _pair(servers: FedServers, b_on_postgres: bool) -> FedPair:
    a = servers("A")
    b = await servers.postgres("B") if b_on_postgres else servers("B")
    alice = await a.register("alice")
    bob = await b.register("bob")
    return FedPair(a, b, alice, bob)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def _fed_pair_module(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FedPair]:
    servers = FedServers(tmp_path_factory.mktemp("fed"))
    try:
        yield await _pair(servers, b_on_postgres=False)
    finally:
        await servers.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def _fed_pair_pg_module(tmp_path_factory: pytest.TempPathFactory
                              ) -> AsyncIterator[FedPair]:
    servers = FedServers(tmp_path_factory.mktemp("fedpg"))
    try:
        yield await _pair(servers, b_on_postgres=True)
    finally:
        await servers.close()


async def _ready(pair: FedPair) -> FedPair:
    """Both servers up (a test may have stopped one), and both users' waits starting from
    this test: nothing an earlier test left in their syncs can match."""
    pair.ensure_running()
    await pair.catch_up()
    return pair


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def _interop_module(tmp_path_factory: pytest.TempPathFactory
                          ) -> AsyncIterator[FedPair]:
    root = tmp_path_factory.mktemp("interop")
    synapse = SynapseServer(root, "synapse")  # skips (or fails under CI) without Synapse
    ktchat = FedServer(root, "ktchat")
    try:
        ktchat.start()
        synapse.start()
        alice = await ktchat.register("alice")
        sam = await synapse.register("sam")
        # a = KT-Chat with alice, b = Synapse with sam ("bob" in FedPair's terms).
        yield FedPair(ktchat, synapse, alice, sam)  # type: ignore[arg-type]
    finally:
        synapse.stop()
        ktchat.stop()


@pytest_asyncio.fixture
async def interop(_interop_module: FedPair) -> FedPair:
    return await _ready(_interop_module)


@pytest_asyncio.fixture
async def fed_pair(_fed_pair_module: FedPair) -> FedPair:
    return await _ready(_fed_pair_module)


@pytest_asyncio.fixture
async def fed_pair_pg(_fed_pair_pg_module: FedPair) -> FedPair:
    return await _ready(_fed_pair_pg_module)


# -- server logs in failure reports -------------------------------------------------------


def _servers_of(item: pytest.Item) -> list[FedServer]:
    found: dict[int, FedServer] = {}
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, FedServer):
            candidates = [value]
        elif isinstance(value, FedPair | FedServers):
            candidates = list(value.servers)
        else:
            continue
        for server in candidates:
            found.setdefault(id(server), server)
    return list(found.values())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    report: pytest.TestReport = yield  # type: ignore[misc]
    servers = _servers_of(item)
    if report.when == "setup":
        item.stash[_LOG_MARKS] = {id(s): s.log_size() for s in servers}
    elif report.failed and servers:
        marks = item.stash.get(_LOG_MARKS, {})
        for server in servers:
            since = marks.get(id(server), 0)
            tail = server.log_tail(since=since) or "(nothing logged during this test)"
            report.sections.append(
                (f"ktchat {server.label} ({server.server_name}, "
                 f"{'running' if server.running else 'not running'}) log during "
                 f"{report.when}", tail))
    return report  # type: ignore[return-value]
