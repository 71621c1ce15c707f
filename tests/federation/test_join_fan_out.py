"""One join, many servers: a real ``ktchat`` process asked to join a room it does not know
through 1,000 distinct ``via`` servers.

The first dozen are names of one counting TLS server (``127.0.0.N:port``, loopback addresses
reaching a listener on every address), which answers each ``make_join`` with ``404
M_NOT_FOUND`` as a server not in the room would; the rest are the shortest server names there
are (``a``, ``b``, ..., ``zz``: the request line holds at most 8 KiB), which no one answers.
The server tries a bounded number of them (``federation.remote_rooms.MAX_SERVERS_TRIED``),
each at most once, answers the client ``404 M_NOT_FOUND`` at once, and writes a few log
lines, not one or more per server.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from core.crypto.tls import generate_self_signed
from core.errors import NotFound
from federation.remote_rooms import MAX_SERVERS_TRIED, TRY_FOR_S, RemoteRoomsClient
from federation.transport.client import RemoteUnreachable
from tests.federation.conftest import FedServers
from tests.helpers.federation import FedServer, q
from tests.helpers.processes import free_port

VIA = 1000
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def short_names(count: int) -> list[str]:
    """``count`` distinct server names of one or two characters."""
    names = [*_ALPHABET, *(a + b for a in _ALPHABET for b in _ALPHABET)]
    return names[:count]


class CountingServer:
    """A TLS listener on every address that answers ``make_join`` with 404 and records the
    ``Host`` (the server name asked) of every request."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.hosts: list[str] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        cert, key = self.dir / "tls.crt", self.dir / "tls.key"
        generate_self_signed("127.0.0.1", cert, key)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._anything)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "0.0.0.0", self.port, ssl_context=tls).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _anything(self, request: web.Request) -> web.Response:
        self.hosts.append(request.headers.get("Host", ""))
        return web.json_response({"errcode": "M_NOT_FOUND", "error": "Unknown room"},
                                 status=404)

    def names(self, count: int) -> list[str]:
        """``count`` distinct server names of this listener."""
        return [f"127.0.{i // 250}.{i % 250 + 1}:{self.port}" for i in range(count)]


@pytest_asyncio.fixture
async def counting(tmp_path: Path) -> AsyncIterator[CountingServer]:
    server = CountingServer(tmp_path / "counting")
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_a_thousand_via_servers_are_a_bounded_few_tries(
        fed_servers: FedServers, counting: CountingServer) -> None:
    server: FedServer = fed_servers("hs")
    alice = await server.register("alice")
    names = counting.names(MAX_SERVERS_TRIED + 2)
    names += short_names(VIA - len(names))
    room_id = "!" + "u" * 43  # a room ID of room version 12: no server in it
    log_before = server.log_size()
    started = time.monotonic()
    status, body = await alice.raw(
        "POST", f"/join/{q(room_id)}", {},
        params=[("via", n) for n in names], timeout=120)
    elapsed = time.monotonic() - started
    assert isinstance(body, dict), (status, body[:300])
    assert (status, body.get("errcode")) == (404, "M_NOT_FOUND"), body
    # No more than the cap, the first ones, each once.
    assert len(counting.hosts) == len(set(counting.hosts)), counting.hosts
    assert counting.hosts == names[:MAX_SERVERS_TRIED], counting.hosts
    assert elapsed < 20, elapsed
    lines = server.log()[log_before:].splitlines()
    assert len(lines) <= 3 * MAX_SERVERS_TRIED, "\n".join(lines[:50])


async def test_duplicate_via_servers_are_tried_once(
        fed_servers: FedServers, counting: CountingServer) -> None:
    server: FedServer = fed_servers("hs")
    alice = await server.register("alice")
    name, other = counting.names(2)
    status, body = await alice.raw(
        "POST", f"/join/{q('!' + 'v' * 43)}", {},
        params=[*(("via", name) for _ in range(100)), ("server_name", other),
                *(("server_name", name) for _ in range(100))])
    assert isinstance(body, dict), (status, body[:300])
    assert (status, body.get("errcode")) == (404, "M_NOT_FOUND"), body
    assert counting.hosts == [name, other], counting.hosts


# -- the time bound, with a clock that servers which never answer move on --------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time_ms(self) -> int:
        return int(self.now * 1000)


class _SilentServers:
    """A ``FederationClient`` stand-in: every request waits 50 s and gets no answer."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.asked: list[str] = []

    async def get_json(self, destination: str, path: str, **_kwargs: Any) -> Any:
        self.asked.append(destination)
        self.clock.now += 50
        raise RemoteUnreachable(f"{destination}: no response within 50 s")


async def test_no_server_is_tried_after_the_time_bound(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    clock = _Clock()
    client = _SilentServers(clock)
    remote = RemoteRoomsClient(None, client, None, clock, "hs.test",  # type: ignore[arg-type]
                               None)  # type: ignore[arg-type]
    servers = [f"s{i}.test" for i in range(MAX_SERVERS_TRIED)]
    with caplog.at_level(logging.DEBUG, logger="federation.remote_rooms"), \
            pytest.raises(NotFound):
        await remote.join("@alice:hs.test", "!room:s0.test", servers, {"membership": "join"})
    # Started at 0, 50 and 100 s; at 150 s the bound (TRY_FOR_S) has passed.
    assert TRY_FOR_S == 120
    assert client.asked == servers[:3]
    summary = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(summary) == 1, [r.getMessage() for r in summary]
    assert "failed through 3 servers" in summary[0].getMessage()
