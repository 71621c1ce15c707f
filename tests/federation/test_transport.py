"""The outbound federation client against real TLS servers on loopback: signing, errors,
limits, the IP range policy, TLS verification and server discovery."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from signedjson.key import generate_signing_key, get_verify_key

from federation.transport.client import (
    FederationClient,
    FederationRequestError,
    RemoteUnreachable,
    is_ip_allowed,
)
from federation.transport.x_matrix import parse_authorization, verify_request
from homeserver.config import DEFAULT_IP_RANGE_DENYLIST, FederationConfig
from tests.federation.test_resolver import (
    NameServer,
    WellKnownAnswer,
    WellKnownServer,
    name_server,
    tls_files,
    well_known,
)

__all__ = ["name_server", "tls_files", "well_known"]  # fixtures shared with test_resolver

ORIGIN = "origin.test"
KEY = generate_signing_key("k1")
DENYLIST = tuple(ipaddress.ip_network(n) for n in DEFAULT_IP_RANGE_DENYLIST)
LOOPBACK_ALLOWED = FederationConfig(verify_tls=False, ip_range_denylist=DENYLIST,
                                    ip_range_allowlist=(ipaddress.ip_network("127.0.0.0/8"),))
AiohttpServer = Callable[..., Awaitable[TestServer]]


@dataclass
class Received:
    method: str
    raw_path: str
    host: str
    sni: str | None
    authorization: str | None
    body: Any


@dataclass
class FederationServer:
    """A TLS server answering every path; ``respond`` decides the answer."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    sni_names: list[str | None] = field(default_factory=list)
    respond: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.received.append(Received(
            request.method, request.raw_path, request.host, self.sni_names[-1],
            request.headers.get("Authorization"), await request.json() if raw else None))
        if self.respond is not None:
            return await self.respond(request)
        return web.json_response({"ok": True})


@pytest.fixture
async def remote(aiohttp_server: AiohttpServer, tls_files: tuple[Path, Path]) -> FederationServer:
    server = FederationServer()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)

    def record_sni(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        server.sni_names.append(name)

    context.sni_callback = record_sni
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    test_server = await aiohttp_server(app, ssl=context)
    assert test_server.port is not None
    server.port = test_server.port
    return server


async def started(config: FederationConfig, **options: Any) -> FederationClient:
    client = FederationClient(ORIGIN, KEY, config, **options)
    await client.start()
    return client


@pytest.fixture
async def client() -> AsyncIterator[FederationClient]:
    client = await started(LOOPBACK_ALLOWED)
    yield client
    await client.close()


def verify(received: Received, destination: str) -> None:
    assert received.authorization is not None
    auth = parse_authorization(received.authorization)
    assert (auth.origin, auth.destination, auth.key_id) == (ORIGIN, destination, "ed25519:k1")
    verify_request(auth, get_verify_key(KEY), received.method, received.raw_path, destination,
                   received.body)


async def test_signed_get_with_query_verifies_on_the_server(
        client: FederationClient, remote: FederationServer) -> None:
    path = "/_matrix/federation/v1/state/%21room%3Aexample.org"
    answer = await client.get_json(remote.name, path,
                                   query={"event_id": "$ev/1+2", "v": ["1", "ü"]})
    assert answer == {"ok": True}
    [received] = remote.received
    assert received.raw_path == f"{path}?event_id=%24ev%2F1%2B2&v=1&v=%C3%BC"
    assert received.host == remote.name
    assert received.sni is None  # no SNI for an IP literal
    verify(received, remote.name)


async def test_signed_put_with_body_verifies_on_the_server(
        client: FederationClient, remote: FederationServer) -> None:
    body = {"pdus": [], "edus": [{"content": {"text": "ünïcode", "n": 1}}]}
    path = "/_matrix/federation/v1/send/txn%2F1"
    assert await client.put_json(remote.name, path, body) == {"ok": True}
    [received] = remote.received
    assert (received.method, received.raw_path, received.body) == ("PUT", path, body)
    verify(received, remote.name)


async def test_unsigned_request_has_no_authorization(client: FederationClient,
                                                     remote: FederationServer) -> None:
    await client.post_json(remote.name, "/_matrix/key/v2/query", {"server_keys": {}},
                           signed=False)
    [received] = remote.received
    assert received.authorization is None
    assert received.body == {"server_keys": {}}


async def test_matrix_error_becomes_federation_request_error(
        client: FederationClient, remote: FederationServer) -> None:
    async def not_found(request: web.Request) -> web.Response:
        return web.json_response({"errcode": "M_NOT_FOUND", "error": "No such room"},
                                 status=404)

    remote.respond = not_found
    with pytest.raises(FederationRequestError) as caught:
        await client.get_json(remote.name, "/_matrix/federation/v1/state/x")
    error = caught.value
    assert (error.status, error.errcode, error.error) == (404, "M_NOT_FOUND", "No such room")
    assert error.body == {"errcode": "M_NOT_FOUND", "error": "No such room"}


@pytest.mark.parametrize(("status", "body"), [
    (500, b"<html>Internal Server Error</html>"),
    (502, b'{"errcode": 5}'),
    (302, b""),  # redirects are not followed for federation requests
])
async def test_non_matrix_error_responses(client: FederationClient, remote: FederationServer,
                                          status: int, body: bytes) -> None:
    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers={"Location": "/elsewhere"})

    remote.respond = fail
    with pytest.raises(FederationRequestError) as caught:
        await client.get_json(remote.name, "/_matrix/federation/v1/version")
    assert (caught.value.status, caught.value.errcode, caught.value.error) == (status, None, None)
    assert len(remote.received) == 1


@pytest.mark.parametrize("body", [b"<html>hello</html>", b"", b'{"a": NaN}', b"\xff\xfe"])
async def test_non_json_success_is_unusable(client: FederationClient, remote: FederationServer,
                                            body: bytes) -> None:
    async def html(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html")

    remote.respond = html
    with pytest.raises(RemoteUnreachable, match="not JSON"):
        await client.get_json(remote.name, "/_matrix/federation/v1/version")


async def test_timeout(client: FederationClient, remote: FederationServer) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.json_response({})

    remote.respond = slow
    started_at = time.monotonic()
    with pytest.raises(RemoteUnreachable, match=r"no response within 0\.3 s"):
        await client.get_json(remote.name, "/_matrix/federation/v1/version", timeout_s=0.3)
    assert time.monotonic() - started_at < 2


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_response_is_refused(client: FederationClient, remote: FederationServer,
                                             chunked: bool) -> None:
    body = b'{"pad": "' + b"x" * 5000 + b'"}'

    async def large(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 500):
            await response.write(body[start:start + 500])
        await response.write_eof()
        return response

    remote.respond = large
    with pytest.raises(RemoteUnreachable, match="limit"):
        await client.request(remote.name, "GET", "/x", max_response_bytes=4096)
    assert await client.request(remote.name, "GET", "/x", max_response_bytes=len(body)) == {
        "pad": "x" * 5000}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_denied_addresses_are_never_connected_to(remote: FederationServer,
                                                       host: str) -> None:
    """The default denylist holds loopback: an IP literal and a name resolving to it are
    both refused before connecting."""
    client = await started(FederationConfig(verify_tls=False, ip_range_denylist=DENYLIST))
    try:
        with pytest.raises(RemoteUnreachable, match="IP range policy"):
            await client.get_json(f"{host}:{remote.port}", "/_matrix/federation/v1/version")
    finally:
        await client.close()
    assert remote.sni_names == []  # not even a TLS handshake
    assert remote.received == []


async def test_well_known_fetch_obeys_the_ip_range_policy(
        remote: FederationServer, well_known: WellKnownServer) -> None:
    well_known.answers["localhost"] = WellKnownAnswer(body={"m.server": remote.name})
    client = await started(FederationConfig(verify_tls=False, ip_range_denylist=DENYLIST),
                           well_known_port=well_known.port)
    try:
        with pytest.raises(RemoteUnreachable):
            await client.get_json("localhost", "/_matrix/federation/v1/version")
    finally:
        await client.close()
    assert not well_known.hits
    assert remote.received == []


def test_ip_allowlist_overrides_denylist() -> None:
    assert not is_ip_allowed(ipaddress.ip_address("127.0.0.1"), FederationConfig(
        ip_range_denylist=DENYLIST))
    assert is_ip_allowed(ipaddress.ip_address("127.0.0.1"), LOOPBACK_ALLOWED)
    assert not is_ip_allowed(ipaddress.ip_address("10.1.2.3"), LOOPBACK_ALLOWED)
    assert not is_ip_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), LOOPBACK_ALLOWED)
    assert not is_ip_allowed(ipaddress.ip_address("fe80::1%2"), LOOPBACK_ALLOWED)
    assert is_ip_allowed(ipaddress.ip_address("2a00:1450::1"), LOOPBACK_ALLOWED)
    assert is_ip_allowed(ipaddress.ip_address("93.184.215.14"), LOOPBACK_ALLOWED)


async def test_self_signed_certificate_fails_verification(remote: FederationServer) -> None:
    config = FederationConfig(verify_tls=True, ip_range_allowlist=(
        ipaddress.ip_network("127.0.0.0/8"),))
    client = await started(config)
    try:
        with pytest.raises(RemoteUnreachable, match=r"(?i)certificate"):
            await client.get_json(remote.name, "/_matrix/federation/v1/version")
    finally:
        await client.close()
    assert remote.received == []


async def test_well_known_delegation_end_to_end(
        remote: FederationServer, well_known: WellKnownServer) -> None:
    """The request goes to the delegated server with its Host header and SNI; the signature
    names the original server name as destination."""
    delegated = f"localhost:{remote.port}"
    well_known.answers["localhost"] = WellKnownAnswer(body={"m.server": delegated})
    client = await started(LOOPBACK_ALLOWED, well_known_port=well_known.port)
    try:
        for _ in range(2):
            await client.get_json("localhost", "/_matrix/federation/v1/version")
    finally:
        await client.close()
    assert well_known.hits == {"localhost": 1}  # cached
    for received in remote.received:
        assert (received.host, received.sni) == (delegated, "localhost")
        verify(received, "localhost")


async def test_srv_targets_are_tried_in_order(remote: FederationServer,
                                              name_server: NameServer) -> None:
    """No well-known (nothing listens on its port): SRV records; the first target refuses
    connections, so the second is used. Host and SNI are the server name."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    name_server.srv["_matrix-fed._tcp.localhost"] = [
        (10, 0, closed_port, "localhost"), (20, 0, remote.port, "localhost")]
    client = await started(LOOPBACK_ALLOWED, well_known_port=closed_port,
                           dns_resolver=name_server.resolver())
    try:
        await client.get_json("localhost", "/_matrix/federation/v1/version")
    finally:
        await client.close()
    [received] = remote.received
    assert (received.host, received.sni) == ("localhost", "localhost")
    verify(received, "localhost")


async def test_unreachable_destinations(client: FederationClient) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    for destination in (f"127.0.0.1:{closed_port}", "not a server name", "nothing.invalid:1"):
        with pytest.raises(RemoteUnreachable, match=destination):
            await client.get_json(destination, "/_matrix/federation/v1/version")


async def test_request_before_start_is_an_error() -> None:
    client = FederationClient(ORIGIN, KEY, LOOPBACK_ALLOWED)
    with pytest.raises(RuntimeError):
        await client.get_json("example.org", "/_matrix/federation/v1/version")
