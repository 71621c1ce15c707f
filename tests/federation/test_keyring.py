"""The keyring against real key servers and notaries (aiohttp on loopback, TLS) and real
databases (SQLite and PostgreSQL).

Also holds the small key-server harness that test_notary and test_inbound_auth share.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json, verify_signed_json
from signedjson.types import SigningKey

from core.crypto.signing_keys import key_id
from core.crypto.tls import generate_self_signed
from federation.keys import notary
from federation.keys.keyring import KeyNotFound, Keyring
from federation.keys.server import signed_key_response
from federation.transport.client import FederationClient
from homeserver.config import FederationConfig
from homeserver.http.middleware import error_middleware
from storage import Database
from storage.stores.server_keys import ServerKey, ServerKeyStore
from tests.conftest import open_database

OUR_NAME = "us.test"
DAY_MS = 24 * 60 * 60 * 1000

Handler = Callable[[web.Request], Any]


class FakeClock:
    """Real time moved forward by ``advance``."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def time_ms(self) -> int:
        return int((time.time() + self.offset_s) * 1000)

    def monotonic(self) -> float:
        return time.monotonic() + self.offset_s

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds


class KeyServer:
    """A server on loopback (TLS) with its own signing key, serving
    ``/_matrix/key/v2/server`` (and whatever else a test adds), counting requests."""

    def __init__(self, clock: FakeClock, version: str = "k1") -> None:
        self.clock = clock
        self.signing_key = generate_signing_key(version)
        self.server_name = ""  # known once started
        self.requests: Counter[str] = Counter()
        self.failing = False
        self.delay_s = 0.0
        # What /_matrix/key/v2/server answers; the default is a correct response.
        self.key_response: Callable[[], Any] = self.signed_response
        self.app = web.Application()
        self.app.router.add_get("/_matrix/key/v2/server", self._get_keys)

    @property
    def key_id(self) -> str:
        return key_id(self.signing_key)

    @property
    def verify_key_b64(self) -> str:
        return encode_verify_key_base64(get_verify_key(self.signing_key))

    def signed_response(self, **changes: Any) -> dict[str, Any]:
        """Our key response, with ``changes`` applied before signing."""
        body = signed_key_response(self.server_name, self.signing_key, self.clock.time_ms())
        del body["signatures"]
        body.update(changes)
        return sign_json(body, self.server_name, self.signing_key)

    async def _get_keys(self, request: web.Request) -> web.Response:
        self.requests[request.path] += 1
        await asyncio.sleep(self.delay_s)
        if self.failing:
            return web.json_response({"errcode": "M_UNKNOWN", "error": "down"}, status=500)
        return web.json_response(self.key_response())

    async def start(self, aiohttp_server: Any, tls: ssl.SSLContext) -> KeyServer:
        server = await aiohttp_server(self.app, ssl=tls)
        self.server_name = f"127.0.0.1:{server.port}"
        return self


def federation_config(*trusted: str) -> FederationConfig:
    return FederationConfig(verify_tls=False, ip_range_allowlist=(ip_network("127.0.0.0/8"),),
                            trusted_key_servers=trusted)


@asynccontextmanager
async def make_keyring(store: ServerKeyStore, clock: FakeClock, *, server_name: str = OUR_NAME,
                       signing_key: SigningKey | None = None,
                       trusted: tuple[str, ...] = ()) -> AsyncIterator[Keyring]:
    if signing_key is None:
        signing_key = generate_signing_key("ours")
    client = FederationClient(server_name, signing_key, federation_config(*trusted))
    await client.start()
    keyring = Keyring(store, client, clock, server_name, signing_key, trusted)
    try:
        yield keyring
    finally:
        await keyring.close()
        await client.close()


def unreachable_server_name() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    directory = tmp_path_factory.mktemp("tls")
    generate_self_signed("127.0.0.1", directory / "tls.crt", directory / "tls.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    return context


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(database: Database) -> ServerKeyStore:
    return ServerKeyStore(database.engine)


@pytest.fixture
async def remote(aiohttp_server: Any, tls: ssl.SSLContext, clock: FakeClock) -> KeyServer:
    return await KeyServer(clock).start(aiohttp_server, tls)


@pytest.fixture
async def keyring(store: ServerKeyStore, clock: FakeClock) -> AsyncIterator[Keyring]:
    async with make_keyring(store, clock) as keyring:
        yield keyring


KEYS_PATH = "/_matrix/key/v2/server"


async def test_direct_fetch_is_cached_in_memory_and_database(
        keyring: Keyring, remote: KeyServer, store: ServerKeyStore, clock: FakeClock) -> None:
    now = clock.time_ms()
    key = await keyring.verify_key_for(remote.server_name, remote.key_id,
                                       min_valid_until_ts=now)
    assert encode_verify_key_base64(key) == remote.verify_key_b64
    assert remote.requests[KEYS_PATH] == 1

    await keyring.verify_key_for(remote.server_name, remote.key_id, min_valid_until_ts=now)
    assert remote.requests[KEYS_PATH] == 1

    (stored,) = await store.get_server_keys(remote.server_name)
    assert (stored.key_id, stored.verify_key, stored.expired_ts) == (
        remote.key_id, remote.verify_key_b64, None)
    verify_signed_json(json.loads(stored.key_json), remote.server_name, key)

    # A new process (empty memory) reads the database instead of asking again.
    async with make_keyring(store, clock) as fresh:
        key = await fresh.verify_key_for(remote.server_name, remote.key_id,
                                         min_valid_until_ts=now)
    assert encode_verify_key_base64(key) == remote.verify_key_b64
    assert remote.requests[KEYS_PATH] == 1


async def test_stale_key_is_refetched(keyring: Keyring, remote: KeyServer,
                                      clock: FakeClock) -> None:
    await keyring.verify_key_for(remote.server_name, remote.key_id,
                                 min_valid_until_ts=clock.time_ms())
    clock.advance(2 * 24 * 3600)  # past the response's one-day validity
    await keyring.verify_key_for(remote.server_name, remote.key_id,
                                 min_valid_until_ts=clock.time_ms())
    assert remote.requests[KEYS_PATH] == 2
    # A key needed for a later time than the cached response covers is refetched too.
    await keyring.verify_key_for(remote.server_name, remote.key_id,
                                 min_valid_until_ts=clock.time_ms() + DAY_MS // 2)
    assert remote.requests[KEYS_PATH] == 2
    remote.key_response = lambda: remote.signed_response(
        valid_until_ts=clock.time_ms() + 3 * DAY_MS)
    await keyring.verify_key_for(remote.server_name, remote.key_id,
                                 min_valid_until_ts=clock.time_ms() + DAY_MS + 60_000)
    assert remote.requests[KEYS_PATH] == 3


async def test_validity_is_capped_at_seven_days(keyring: Keyring, remote: KeyServer,
                                                clock: FakeClock) -> None:
    remote.key_response = lambda: remote.signed_response(
        valid_until_ts=clock.time_ms() + 365 * DAY_MS)
    now = clock.time_ms()
    await keyring.verify_key_for(remote.server_name, remote.key_id,
                                 min_valid_until_ts=now + 6 * DAY_MS)
    with pytest.raises(KeyNotFound):
        await keyring.verify_key_for(remote.server_name, remote.key_id,
                                     min_valid_until_ts=now + 8 * DAY_MS)


async def test_old_verify_keys_are_valid_until_they_expired(
        keyring: Keyring, remote: KeyServer, clock: FakeClock) -> None:
    old_key = generate_signing_key("old")
    expired_ts = clock.time_ms() - 3600_000
    remote.key_response = lambda: remote.signed_response(old_verify_keys={key_id(old_key): {
        "key": encode_verify_key_base64(get_verify_key(old_key)), "expired_ts": expired_ts}})

    key = await keyring.verify_key_for(remote.server_name, key_id(old_key),
                                       min_valid_until_ts=expired_ts - 1000)
    assert encode_verify_key_base64(key) == encode_verify_key_base64(get_verify_key(old_key))
    with pytest.raises(KeyNotFound):
        await keyring.verify_key_for(remote.server_name, key_id(old_key),
                                     min_valid_until_ts=expired_ts + 1000)
    # Both keys came in one response; the current one is still good for now.
    await keyring.verify_key_for(remote.server_name, remote.key_id,
                                 min_valid_until_ts=clock.time_ms())


def _tampered(remote: KeyServer) -> Any:
    response = remote.signed_response()
    response["valid_until_ts"] += 1
    return response


def _signed_by_other_key(remote: KeyServer) -> Any:
    response = remote.signed_response()
    del response["signatures"]
    return sign_json(response, remote.server_name, generate_signing_key(remote.signing_key.version))


def _unsigned(remote: KeyServer) -> Any:
    response = remote.signed_response()
    del response["signatures"]
    return response


@pytest.mark.parametrize("bad_response", [
    pytest.param(_tampered, id="tampered after signing"),
    pytest.param(_signed_by_other_key, id="signed by a key it does not list"),
    pytest.param(_unsigned, id="unsigned"),
    pytest.param(lambda r: r.signed_response(server_name="evil.example"), id="wrong server_name"),
    pytest.param(lambda r: r.signed_response(valid_until_ts="tomorrow"), id="valid_until_ts"),
    pytest.param(lambda r: r.signed_response(verify_keys={r.key_id: {"key": "@@@"}}),
                 id="key not base64"),
    pytest.param(lambda r: r.signed_response(verify_keys={r.key_id: {"key": "AAAA"}}),
                 id="key too short"),
    pytest.param(lambda r: r.signed_response(old_verify_keys={"ed25519:x": {"key": "AAAA"}}),
                 id="old key without expired_ts"),
    pytest.param(lambda r: [r.signed_response()], id="not an object"),
    # A key ID the database could not hold (PostgreSQL's text has no U+0000).
    pytest.param(lambda r: r.signed_response(old_verify_keys={
        "ed25519:x\u0000": {"key": r.verify_key_b64, "expired_ts": 1}}), id="NUL in a key ID"),
])
async def test_bad_responses_are_refused(keyring: Keyring, remote: KeyServer,
                                         store: ServerKeyStore, clock: FakeClock,
                                         bad_response: Callable[[KeyServer], Any]) -> None:
    remote.key_response = lambda: bad_response(remote)
    with pytest.raises(KeyNotFound):
        await keyring.verify_key_for(remote.server_name, remote.key_id,
                                     min_valid_until_ts=clock.time_ms())
    assert await store.get_server_keys(remote.server_name) == []
    assert await store.get_server_keys("evil.example") == []


async def test_concurrent_lookups_share_one_fetch(keyring: Keyring, remote: KeyServer,
                                                  clock: FakeClock) -> None:
    remote.delay_s = 0.2
    now = clock.time_ms()
    keys = await asyncio.gather(
        *(keyring.verify_key_for(remote.server_name, remote.key_id, min_valid_until_ts=now)
          for _ in range(20)),
        keyring.verify_keys([(remote.server_name, remote.key_id, now)] * 5))
    assert len(keys) == 21
    assert remote.requests[KEYS_PATH] == 1


async def test_batch_lookup(keyring: Keyring, remote: KeyServer, aiohttp_server: Any,
                            tls: ssl.SSLContext, clock: FakeClock) -> None:
    other = await KeyServer(clock, "o1").start(aiohttp_server, tls)
    now = clock.time_ms()
    found = await keyring.verify_keys([
        (remote.server_name, remote.key_id, now),
        (other.server_name, other.key_id, now),
        (other.server_name, "ed25519:unknown", now),
        (unreachable_server_name(), "ed25519:k1", now),
        ("not a server name", "ed25519:k1", now),
    ])
    assert set(found) == {(remote.server_name, remote.key_id), (other.server_name, other.key_id)}
    assert remote.requests[KEYS_PATH] == other.requests[KEYS_PATH] == 1


async def test_failing_server_is_not_asked_again_for_a_while(
        keyring: Keyring, remote: KeyServer, clock: FakeClock) -> None:
    remote.failing = True

    async def lookup() -> None:
        await keyring.verify_key_for(remote.server_name, remote.key_id,
                                     min_valid_until_ts=clock.time_ms())

    for _ in range(5):
        with pytest.raises(KeyNotFound):
            await lookup()
    assert remote.requests[KEYS_PATH] == 1

    clock.advance(31)
    with pytest.raises(KeyNotFound):
        await lookup()
    assert remote.requests[KEYS_PATH] == 2

    clock.advance(31)  # the back-off doubled to 60 s
    remote.failing = False
    with pytest.raises(KeyNotFound):
        await lookup()
    assert remote.requests[KEYS_PATH] == 2
    clock.advance(30)
    await lookup()
    assert remote.requests[KEYS_PATH] == 3


async def test_missing_key_is_not_asked_for_again_for_a_while(
        keyring: Keyring, remote: KeyServer, clock: FakeClock) -> None:
    for _ in range(3):
        with pytest.raises(KeyNotFound):
            await keyring.verify_key_for(remote.server_name, "ed25519:nope",
                                         min_valid_until_ts=clock.time_ms())
    assert remote.requests[KEYS_PATH] == 1
    # The server answered, so its real key came with that answer.
    await keyring.verify_key_for(remote.server_name, remote.key_id,
                                 min_valid_until_ts=clock.time_ms())
    assert remote.requests[KEYS_PATH] == 1
    clock.advance(31)
    with pytest.raises(KeyNotFound):
        await keyring.verify_key_for(remote.server_name, "ed25519:nope",
                                     min_valid_until_ts=clock.time_ms())
    assert remote.requests[KEYS_PATH] == 2


async def test_our_own_key_needs_no_io(store: ServerKeyStore, clock: FakeClock) -> None:
    ours = generate_signing_key("mine")
    async with make_keyring(store, clock, signing_key=ours) as keyring:
        key = await keyring.verify_key_for(OUR_NAME, key_id(ours), min_valid_until_ts=2**62)
        assert encode_verify_key_base64(key) == encode_verify_key_base64(get_verify_key(ours))
        with pytest.raises(KeyNotFound):
            await keyring.verify_key_for(OUR_NAME, "ed25519:other", min_valid_until_ts=0)
    assert await store.get_server_keys(OUR_NAME) == []


async def test_store_keeps_the_longest_valid_response(store: ServerKeyStore) -> None:
    def key(server_name: str, key_id: str, valid_until_ts: int) -> ServerKey:
        return ServerKey(server_name, key_id, "AAAA", valid_until_ts, None, 1,
                         json.dumps({"valid_until_ts": valid_until_ts}))

    await store.store_keys([key("a.test", "ed25519:1", 200), key("a.test", "ed25519:1", 100),
                            key("a.test", "ed25519:2", 100), key("b.test", "ed25519:1", 100)])
    await store.store_keys([key("a.test", "ed25519:1", 150), key("a.test", "ed25519:2", 300)])
    found = await store.get_keys([("a.test", "ed25519:1"), ("a.test", "ed25519:2"),
                                  ("b.test", "ed25519:1"), ("b.test", "ed25519:2")])
    assert {pair: k.valid_until_ts for pair, k in found.items()} == {
        ("a.test", "ed25519:1"): 200, ("a.test", "ed25519:2"): 300, ("b.test", "ed25519:1"): 100}
    assert json.loads(found[("a.test", "ed25519:2")].key_json) == {"valid_until_ts": 300}
    assert [k.key_id for k in await store.get_server_keys("a.test")] == ["ed25519:1",
                                                                         "ed25519:2"]


# -- notaries ---------------------------------------------------------------------------


@asynccontextmanager
async def running_notary(aiohttp_server: Any, tls: ssl.SSLContext, clock: FakeClock,
                         tmp_path: Path) -> AsyncIterator[KeyServer]:
    """A notary built from our own notary routes, with its own database and keyring."""
    server = KeyServer(clock, "n1")
    server.app.middlewares.append(error_middleware)
    server.app.add_routes(notary.routes)

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != KEYS_PATH:
            server.requests[request.path] += 1
        return await handler(request)  # type: ignore[no-any-return]

    server.app.middlewares.append(count)
    # The keyring needs the notary's server name, so its port is chosen before it listens.
    server.server_name = unreachable_server_name()
    async with open_database("sqlite", tmp_path / "notary") as db, \
            make_keyring(ServerKeyStore(db.engine), clock, server_name=server.server_name,
                         signing_key=server.signing_key) as notary_keyring:
        server.app[notary.KEYRING] = notary_keyring
        port = int(server.server_name.rsplit(":", 1)[1])
        await aiohttp_server(server.app, port=port, ssl=tls)
        yield server


async def test_keys_through_a_notary(store: ServerKeyStore, remote: KeyServer,
                                     aiohttp_server: Any, tls: ssl.SSLContext,
                                     clock: FakeClock, tmp_path: Path) -> None:
    async with running_notary(aiohttp_server, tls, clock, tmp_path) as notary_server, \
            make_keyring(store, clock, trusted=(notary_server.server_name,)) as trusting:
        key = await trusting.verify_key_for(remote.server_name, remote.key_id,
                                            min_valid_until_ts=clock.time_ms())
        assert encode_verify_key_base64(key) == remote.verify_key_b64
        assert notary_server.requests["/_matrix/key/v2/query"] == 1
        # The notary asked the origin; we asked the notary for its own key, not the origin.
        assert remote.requests[KEYS_PATH] == 1
        assert notary_server.requests[KEYS_PATH] == 1
        (stored,) = await store.get_server_keys(remote.server_name)
        assert notary_server.server_name in json.loads(stored.key_json)["signatures"]


def forging_notary(clock: FakeClock, origin: KeyServer,
                   forge: Callable[[KeyServer, dict[str, Any]], dict[str, Any]]) -> KeyServer:
    """A notary answering queries about ``origin`` with ``forge(notary, origin's response)``."""
    server = KeyServer(clock, "n1")

    async def query(request: web.Request) -> web.Response:
        server.requests[request.path] += 1
        return web.json_response({"server_keys": [forge(server, origin.signed_response())]})

    server.app.router.add_post("/_matrix/key/v2/query", query)
    return server


def _notary_signed(notary_server: KeyServer, response: dict[str, Any]) -> dict[str, Any]:
    return sign_json(response, notary_server.server_name, notary_server.signing_key)


def _signed_by_unknown_notary_key(notary_server: KeyServer, response: dict[str, Any]
                                  ) -> dict[str, Any]:
    return sign_json(response, notary_server.server_name, generate_signing_key("n1"))


def _altered_then_notary_signed(notary_server: KeyServer, response: dict[str, Any]
                                ) -> dict[str, Any]:
    response["valid_until_ts"] += DAY_MS
    return _notary_signed(notary_server, response)


def _forged_origin_key(notary_server: KeyServer, response: dict[str, Any]) -> dict[str, Any]:
    # The origin's signature kept, its key swapped for one the notary controls.
    fake = generate_signing_key("k1")
    response["verify_keys"] = {key_id(fake): {
        "key": encode_verify_key_base64(get_verify_key(fake))}}
    return _notary_signed(notary_server, response)


@pytest.mark.parametrize("forge", [
    pytest.param(lambda n, r: r, id="not signed by the notary"),
    pytest.param(_signed_by_unknown_notary_key, id="signed by a key the notary does not have"),
    pytest.param(_altered_then_notary_signed, id="origin's response altered"),
    pytest.param(_forged_origin_key, id="origin's key swapped"),
])
async def test_forged_notary_answers_are_refused(
        store: ServerKeyStore, remote: KeyServer, aiohttp_server: Any, tls: ssl.SSLContext,
        clock: FakeClock,
        forge: Callable[[KeyServer, dict[str, Any]], dict[str, Any]]) -> None:
    origin_name = remote.server_name
    notary_server = await forging_notary(clock, remote, forge).start(aiohttp_server, tls)
    async with make_keyring(store, clock, trusted=(notary_server.server_name,)) as trusting:
        # With the origin reachable, the keyring falls back to it...
        key = await trusting.verify_key_for(origin_name, remote.key_id,
                                            min_valid_until_ts=clock.time_ms())
        assert encode_verify_key_base64(key) == remote.verify_key_b64
        assert notary_server.requests["/_matrix/key/v2/query"] == 1
        assert remote.requests[KEYS_PATH] == 1
        (stored,) = await store.get_server_keys(origin_name)
        assert notary_server.server_name not in json.loads(stored.key_json)["signatures"]

    # ...and with the origin down, the forged answer alone gets nothing.
    remote.failing = True
    clock.advance(8 * 24 * 3600)
    async with make_keyring(store, clock, trusted=(notary_server.server_name,)) as trusting:
        with pytest.raises(KeyNotFound):
            await trusting.verify_key_for(origin_name, remote.key_id,
                                          min_valid_until_ts=clock.time_ms())
    assert notary_server.requests["/_matrix/key/v2/query"] == 2


async def test_correct_notary_answer_is_used_when_the_origin_is_down(
        store: ServerKeyStore, remote: KeyServer, aiohttp_server: Any, tls: ssl.SSLContext,
        clock: FakeClock) -> None:
    notary_server = await forging_notary(clock, remote, _notary_signed).start(aiohttp_server,
                                                                              tls)
    remote.failing = True
    async with make_keyring(store, clock, trusted=(notary_server.server_name,)) as trusting:
        key = await trusting.verify_key_for(remote.server_name, remote.key_id,
                                            min_valid_until_ts=clock.time_ms())
    assert encode_verify_key_base64(key) == remote.verify_key_b64
    assert remote.requests[KEYS_PATH] == 0


async def test_unreachable_notary_falls_back_to_the_origin(
        store: ServerKeyStore, remote: KeyServer, clock: FakeClock) -> None:
    async with make_keyring(store, clock, trusted=(unreachable_server_name(),)) as trusting:
        await trusting.verify_key_for(remote.server_name, remote.key_id,
                                      min_valid_until_ts=clock.time_ms())
    assert remote.requests[KEYS_PATH] == 1
