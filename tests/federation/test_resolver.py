"""Server discovery (https://spec.matrix.org/v1.16/server-server-api/#resolving-server-names)
against real servers: a TLS well-known server and a name server on loopback."""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import dns.asyncresolver
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from dns.rdtypes.IN.SRV import SRV

from core.crypto.tls import generate_self_signed
from federation.transport.resolver import Resolved, ServerResolver, _order_srv

HOUR = 3600.0


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time_ms(self) -> int:
        return int(self.now * 1000)

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


class NameServer(asyncio.DatagramProtocol):
    """A DNS server on 127.0.0.1 answering SRV queries from ``srv`` (name -> records as
    (priority, weight, port, target)); SERVFAIL for names in ``servfail``; NXDOMAIN otherwise."""

    def __init__(self) -> None:
        self.srv: dict[str, list[tuple[int, int, int, str]]] = {}
        self.servfail: set[str] = set()
        self.queries: list[str] = []
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        self.queries.append(name)
        response = dns.message.make_response(query)
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name in self.srv and question.rdtype == dns.rdatatype.SRV:
            rrset = response.find_rrset(response.answer, question.name, dns.rdataclass.IN,
                                        dns.rdatatype.SRV, create=True)
            for priority, weight, port, target in self.srv[name]:
                rrset.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SRV,
                                              f"{priority} {weight} {port} {target}",
                                              origin=dns.name.root, relativize=False), 300)
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self._transport is not None
        self._transport.sendto(response.to_wire(), addr)

    def resolver(self) -> dns.asyncresolver.Resolver:
        """A dnspython resolver asking only this server."""
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        resolver.lifetime = 2.0
        return resolver


@pytest.fixture
async def name_server() -> AsyncIterator[NameServer]:
    transport, server = await asyncio.get_running_loop().create_datagram_endpoint(
        NameServer, local_addr=("127.0.0.1", 0))
    yield server
    transport.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for localhost and 127.0.0.1."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "tls.crt", directory / "tls.key"
    generate_self_signed("localhost", cert, key)
    return cert, key


def server_tls_context(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    return context


@dataclass
class WellKnownAnswer:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


class WellKnownServer:
    """Serves ``/.well-known/matrix/server`` over TLS, per requested host name."""

    def __init__(self) -> None:
        self.answers: dict[str, WellKnownAnswer] = {}
        self.hits: Counter[str] = Counter()
        self.port = 0

    async def serve(self, request: web.Request) -> web.StreamResponse:
        host = request.host.rsplit(":", 1)[0]
        self.hits[host] += 1
        answer = self.answers.get(host, WellKnownAnswer(404, {"errcode": "M_NOT_FOUND"}))
        if answer.raw is not None:
            return web.Response(status=answer.status, body=answer.raw, headers=answer.headers)
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["to"])


AiohttpServer = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def well_known(aiohttp_server: AiohttpServer,
                     tls_files: tuple[Path, Path]) -> WellKnownServer:
    server = WellKnownServer()
    app = web.Application()
    app.router.add_get("/.well-known/matrix/server", server.serve)
    app.router.add_get("/redirect", server.redirect)
    test_server = await aiohttp_server(app, ssl=server_tls_context(tls_files))
    assert test_server.port is not None
    server.port = test_server.port
    return server


class LoopbackResolver(AbstractResolver):
    """Every host name is 127.0.0.1, so any ``*.test`` name reaches the well-known server."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=False, resolver=LoopbackResolver())
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def resolver(http: aiohttp.ClientSession, well_known: WellKnownServer, name_server: NameServer,
             clock: FakeClock) -> ServerResolver:
    return ServerResolver(http, well_known_port=well_known.port,
                          dns_resolver=name_server.resolver(), clock=clock,
                          rng=random.Random(1))


def direct(name: str, port: int = 8448) -> list[Resolved]:
    return [Resolved(name, name, name, port)]


@pytest.mark.parametrize(("server_name", "expected"), [
    ("1.2.3.4", Resolved("1.2.3.4", "1.2.3.4", "1.2.3.4", 8448)),
    ("1.2.3.4:1234", Resolved("1.2.3.4:1234", "1.2.3.4", "1.2.3.4", 1234)),
    ("[2001:db8::1]", Resolved("[2001:db8::1]", "2001:db8::1", "2001:db8::1", 8448)),
    ("[2001:db8::1]:99", Resolved("[2001:db8::1]:99", "2001:db8::1", "2001:db8::1", 99)),
    ("matrix.test:1234", Resolved("matrix.test:1234", "matrix.test", "matrix.test", 1234)),
])
async def test_ip_literals_and_explicit_ports_need_no_discovery(
        resolver: ServerResolver, well_known: WellKnownServer, name_server: NameServer,
        server_name: str, expected: Resolved) -> None:
    assert await resolver.resolve(server_name) == [expected]
    assert not well_known.hits
    assert not name_server.queries


@pytest.mark.parametrize(("delegated", "expected"), [
    ("1.2.3.4", Resolved("1.2.3.4", "1.2.3.4", "1.2.3.4", 8448)),
    ("[2001:db8::2]:9000", Resolved("[2001:db8::2]:9000", "2001:db8::2", "2001:db8::2", 9000)),
    ("matrix.test:9000", Resolved("matrix.test:9000", "matrix.test", "matrix.test", 9000)),
    ("fed.test", Resolved("fed.test", "fed.test", "srv-target.test", 7000)),
    ("legacy.test", Resolved("legacy.test", "legacy.test", "legacy-target.test", 7001)),
    ("plain.test", Resolved("plain.test", "plain.test", "plain.test", 8448)),
])
async def test_well_known_delegation(resolver: ServerResolver, well_known: WellKnownServer,
                                     name_server: NameServer, delegated: str,
                                     expected: Resolved) -> None:
    """Steps 3.1-3.5: Host header and certificate name are the delegated name."""
    well_known.answers["example.test"] = WellKnownAnswer(body={"m.server": delegated})
    name_server.srv["_matrix-fed._tcp.fed.test"] = [(10, 5, 7000, "srv-target.test")]
    name_server.srv["_matrix._tcp.legacy.test"] = [(10, 5, 7001, "legacy-target.test")]
    assert await resolver.resolve("example.test") == [expected]
    assert well_known.hits == {"example.test": 1}


async def test_without_well_known_srv_records_of_the_name_are_used(
        resolver: ServerResolver, name_server: NameServer) -> None:
    """Step 4: targets in priority order; Host and certificate name stay the server name."""
    name_server.srv["_matrix-fed._tcp.example.test"] = [
        (20, 0, 8001, "backup.test"), (10, 0, 8000, "primary.test")]
    assert await resolver.resolve("example.test") == [
        Resolved("example.test", "example.test", "primary.test", 8000),
        Resolved("example.test", "example.test", "backup.test", 8001),
    ]


async def test_without_well_known_or_srv_port_8448_is_used(
        resolver: ServerResolver, well_known: WellKnownServer, name_server: NameServer) -> None:
    """Steps 4-6: both SRV services are asked, then the name's port 8448."""
    assert await resolver.resolve("example.test") == direct("example.test")
    assert well_known.hits == {"example.test": 1}
    assert name_server.queries == ["_matrix-fed._tcp.example.test", "_matrix._tcp.example.test"]


async def test_failing_dns_falls_back_to_port_8448(resolver: ServerResolver,
                                                   name_server: NameServer) -> None:
    name_server.servfail.add("_matrix-fed._tcp.example.test")
    assert await resolver.resolve("example.test") == direct("example.test")
    # A failing name server is not asked again for the deprecated service.
    assert "_matrix._tcp.example.test" not in name_server.queries


async def test_srv_target_dot_means_no_service(resolver: ServerResolver,
                                               name_server: NameServer) -> None:
    name_server.srv["_matrix-fed._tcp.example.test"] = [(0, 0, 0, ".")]
    assert await resolver.resolve("example.test") == direct("example.test")


@pytest.mark.parametrize("answer", [
    WellKnownAnswer(404, {"errcode": "M_NOT_FOUND"}),
    WellKnownAnswer(500, {"m.server": "other.test"}),
    WellKnownAnswer(raw=b"<html>not json</html>"),
    WellKnownAnswer(body={"server": "other.test"}),
    WellKnownAnswer(body={"m.server": 8448}),
    WellKnownAnswer(body={"m.server": "not a server name"}),
    WellKnownAnswer(body=["m.server"]),
    WellKnownAnswer(raw=b'{"m.server": "other.test", "pad": "' + b"x" * 60_000 + b'"}'),
])
async def test_invalid_well_known_means_no_delegation(
        resolver: ServerResolver, well_known: WellKnownServer, answer: WellKnownAnswer) -> None:
    well_known.answers["example.test"] = answer
    assert await resolver.resolve("example.test") == direct("example.test")


async def test_well_known_redirects_are_followed(resolver: ServerResolver,
                                                 well_known: WellKnownServer) -> None:
    target = f"https://moved.test:{well_known.port}/.well-known/matrix/server"
    well_known.answers["example.test"] = WellKnownAnswer(
        302, None, {"Location": f"https://example.test:{well_known.port}/redirect?to={target}"})
    well_known.answers["moved.test"] = WellKnownAnswer(body={"m.server": "matrix.test:443"})
    assert await resolver.resolve("example.test") == [
        Resolved("matrix.test:443", "matrix.test", "matrix.test", 443)]


async def test_well_known_redirect_loop_means_no_delegation(
        resolver: ServerResolver, well_known: WellKnownServer) -> None:
    well_known.answers["example.test"] = WellKnownAnswer(
        302, None, {"Location": f"https://example.test:{well_known.port}/.well-known/matrix/server"})
    assert await resolver.resolve("example.test") == direct("example.test")
    assert 1 < well_known.hits["example.test"] <= 6


async def test_well_known_redirect_to_plain_http_is_refused(
        resolver: ServerResolver, well_known: WellKnownServer,
        aiohttp_server: AiohttpServer) -> None:
    async def delegate_elsewhere(request: web.Request) -> web.Response:
        return web.json_response({"m.server": "evil.test:1"})

    plain = web.Application()
    plain.router.add_get("/.well-known/matrix/server", delegate_elsewhere)
    plain_server = await aiohttp_server(plain)
    well_known.answers["example.test"] = WellKnownAnswer(302, None, {
        "Location": f"http://example.test:{plain_server.port}/.well-known/matrix/server"})
    assert await resolver.resolve("example.test") == direct("example.test")


@pytest.mark.parametrize(("cache_control", "still_cached_s", "expired_s"), [
    (None, 21 * HOUR, 27 * HOUR),                  # default 24 h, +-10 % jitter
    ("public, max-age=3600", 3500, 3700),
    ("max-age=10", 290, 310),                      # at least 5 minutes
    ("no-store", 290, 310),
    ("max-age=31536000", 47 * HOUR, 49 * HOUR),    # at most 48 hours
])
async def test_well_known_is_cached_per_cache_control(
        resolver: ServerResolver, well_known: WellKnownServer, clock: FakeClock,
        cache_control: str | None, still_cached_s: float, expired_s: float) -> None:
    headers = {"Cache-Control": cache_control} if cache_control else {}
    well_known.answers["example.test"] = WellKnownAnswer(
        body={"m.server": "matrix.test:8000"}, headers=headers)
    expected = [Resolved("matrix.test:8000", "matrix.test", "matrix.test", 8000)]
    assert await resolver.resolve("example.test") == expected
    clock.advance(still_cached_s)
    assert await resolver.resolve("example.test") == expected
    assert well_known.hits["example.test"] == 1
    clock.advance(expired_s - still_cached_s)
    assert await resolver.resolve("example.test") == expected
    assert well_known.hits["example.test"] == 2


async def test_missing_well_known_is_cached_for_about_an_hour(
        resolver: ServerResolver, well_known: WellKnownServer, clock: FakeClock) -> None:
    assert await resolver.resolve("example.test") == direct("example.test")
    clock.advance(50 * 60)
    await resolver.resolve("example.test")
    assert well_known.hits["example.test"] == 1
    clock.advance(20 * 60)
    await resolver.resolve("example.test")
    assert well_known.hits["example.test"] == 2


async def test_valid_delegation_survives_a_temporary_failure(
        resolver: ServerResolver, well_known: WellKnownServer, clock: FakeClock) -> None:
    """Like Synapse: after a valid well-known, a 5xx keeps the delegation and is retried in
    minutes, not an hour; an answer without delegation ends it."""
    delegated = [Resolved("matrix.test:8000", "matrix.test", "matrix.test", 8000)]
    well_known.answers["example.test"] = WellKnownAnswer(
        body={"m.server": "matrix.test:8000"}, headers={"Cache-Control": "max-age=600"})
    assert await resolver.resolve("example.test") == delegated

    clock.advance(601)
    well_known.answers["example.test"] = WellKnownAnswer(503, {"errcode": "M_UNKNOWN"})
    assert await resolver.resolve("example.test") == delegated
    assert well_known.hits["example.test"] == 2

    clock.advance(3 * 60)
    del well_known.answers["example.test"]  # now a 404
    assert await resolver.resolve("example.test") == direct("example.test")
    assert well_known.hits["example.test"] == 3


async def test_unreachable_well_known_means_no_delegation(
        http: aiohttp.ClientSession, name_server: NameServer) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    resolver = ServerResolver(http, well_known_port=closed_port,
                              dns_resolver=name_server.resolver())
    assert await resolver.resolve("example.test") == direct("example.test")


async def test_invalid_server_name_is_refused(resolver: ServerResolver) -> None:
    with pytest.raises(ValueError):
        await resolver.resolve("not a server name")


def test_srv_records_are_ordered_by_priority_then_weight() -> None:
    records = [cast(SRV, dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SRV,
                                             f"{priority} {weight} 8448 {target}."))
               for priority, weight, target in [(10, 0, "last"), (5, 10, "light"),
                                                (5, 90, "heavy"), (5, 0, "zero")]]
    rng = random.Random(7)
    firsts: Counter[str] = Counter()
    for _ in range(2000):
        ordered = [r.target.to_text(omit_final_dot=True) for r in _order_srv(records, rng)]
        assert sorted(ordered[:3]) == ["heavy", "light", "zero"]
        assert ordered[3] == "last"
        firsts[ordered[0]] += 1
    # Weighted random within a priority: ~90/101, ~10/101, ~1/101.
    assert 1700 < firsts["heavy"] < 1850
    assert 120 < firsts["light"] < 280
    assert 0 < firsts["zero"] < 60
