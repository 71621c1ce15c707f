"""Our notary endpoints (/_matrix/key/v2/query), served by a real aiohttp app, fetching from
real key servers on loopback (TLS), storing in real databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from signedjson.key import generate_signing_key, get_verify_key
from signedjson.sign import verify_signed_json
from signedjson.types import SigningKey

from core.crypto.signing_keys import key_id
from federation.keys import notary
from federation.keys.keyring import Keyring
from homeserver.http.middleware import error_middleware
from storage.stores.server_keys import ServerKeyStore
from tests.federation.test_keyring import (
    DAY_MS,
    KEYS_PATH,
    OUR_NAME,
    FakeClock,
    KeyServer,
    clock,
    make_keyring,
    remote,
    store,
    tls,
    unreachable_server_name,
)

__all__ = ["clock", "remote", "store", "tls"]  # fixtures shared with test_keyring

QUERY = "/_matrix/key/v2/query"


@pytest.fixture
def signing_key() -> SigningKey:
    return generate_signing_key("notary")


@pytest.fixture
async def notary_keyring(store: ServerKeyStore, clock: FakeClock, signing_key: SigningKey
                         ) -> AsyncIterator[Keyring]:
    async with make_keyring(store, clock, signing_key=signing_key) as keyring:
        yield keyring


@pytest.fixture
async def client(notary_keyring: Keyring, aiohttp_client: Any) -> TestClient:
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(notary.routes)
    app[notary.KEYRING] = notary_keyring
    return await aiohttp_client(app)  # type: ignore[no-any-return]


def assert_vouched(response: dict[str, Any], origin: str, origin_key: SigningKey,
                   signing_key: SigningKey) -> None:
    """Signed by the origin and by us."""
    assert response["server_name"] == origin
    verify_signed_json(response, origin, get_verify_key(origin_key))
    verify_signed_json(response, OUR_NAME, get_verify_key(signing_key))


async def test_get_our_own_keys(client: TestClient, signing_key: SigningKey) -> None:
    resp = await client.get(f"{QUERY}/{OUR_NAME}")
    assert resp.status == 200
    (response,) = (await resp.json())["server_keys"]
    assert_vouched(response, OUR_NAME, signing_key, signing_key)
    assert list(response["verify_keys"]) == [key_id(signing_key)]


async def test_get_fetches_then_serves_from_the_store(
        client: TestClient, remote: KeyServer, signing_key: SigningKey,
        clock: FakeClock) -> None:
    for _ in range(2):
        resp = await client.get(f"{QUERY}/{remote.server_name}")
        assert resp.status == 200
        (response,) = (await resp.json())["server_keys"]
        assert_vouched(response, remote.server_name, remote.signing_key, signing_key)
    assert remote.requests[KEYS_PATH] == 1

    # Wanted valid for longer than the stored response is: fetched again.
    resp = await client.get(f"{QUERY}/{remote.server_name}",
                            params={"minimum_valid_until_ts": clock.time_ms() + 2 * DAY_MS})
    assert resp.status == 200
    assert remote.requests[KEYS_PATH] == 2


async def test_post_answers_for_several_servers(
        client: TestClient, remote: KeyServer, signing_key: SigningKey,
        clock: FakeClock) -> None:
    resp = await client.post(QUERY, json={"server_keys": {
        OUR_NAME: {},
        remote.server_name: {remote.key_id: {"minimum_valid_until_ts": clock.time_ms()}},
        unreachable_server_name(): {},
    }})
    assert resp.status == 200
    by_server = {r["server_name"]: r for r in (await resp.json())["server_keys"]}
    assert set(by_server) == {OUR_NAME, remote.server_name}
    assert_vouched(by_server[OUR_NAME], OUR_NAME, signing_key, signing_key)
    assert_vouched(by_server[remote.server_name], remote.server_name, remote.signing_key,
                   signing_key)

    # Fresh enough in the store: not fetched again, with or without a minimum validity.
    for criteria in ({remote.key_id: {}}, {}):
        resp = await client.post(QUERY, json={"server_keys": {remote.server_name: criteria}})
        assert len((await resp.json())["server_keys"]) == 1
    assert remote.requests[KEYS_PATH] == 1

    resp = await client.post(QUERY, json={"server_keys": {}})
    assert await resp.json() == {"server_keys": []}


async def test_stored_keys_are_served_when_the_origin_is_down(
        client: TestClient, remote: KeyServer, signing_key: SigningKey,
        clock: FakeClock) -> None:
    await client.get(f"{QUERY}/{remote.server_name}")
    remote.failing = True
    clock.advance(2 * 24 * 3600)
    resp = await client.post(QUERY, json={"server_keys": {remote.server_name: {
        remote.key_id: {"minimum_valid_until_ts": clock.time_ms()}}}})
    assert resp.status == 200
    (response,) = (await resp.json())["server_keys"]
    assert_vouched(response, remote.server_name, remote.signing_key, signing_key)
    assert remote.requests[KEYS_PATH] == 2


async def test_unknown_key_id_of_a_known_server(client: TestClient, remote: KeyServer) -> None:
    resp = await client.post(QUERY, json={"server_keys": {remote.server_name: {
        "ed25519:unknown": {}}}})
    assert resp.status == 200
    assert await resp.json() == {"server_keys": []}
    assert remote.requests[KEYS_PATH] == 1


@pytest.mark.parametrize(("body", "errcode"), [
    (b"{not json", "M_NOT_JSON"),
    (b"[]", "M_BAD_JSON"),
    (b"{}", "M_BAD_JSON"),
    (b'{"server_keys": []}', "M_BAD_JSON"),
    (b'{"server_keys": {"a.example": []}}', "M_BAD_JSON"),
    (b'{"server_keys": {"a.example": {"ed25519:a": "soon"}}}', "M_BAD_JSON"),
    (b'{"server_keys": {"a.example": {"ed25519:a": {"minimum_valid_until_ts": "1"}}}}',
     "M_BAD_JSON"),
    (b'{"server_keys": {"a.example": {"ed25519:a": {"minimum_valid_until_ts": true}}}}',
     "M_BAD_JSON"),
])
async def test_malformed_post_bodies(client: TestClient, body: bytes, errcode: str) -> None:
    resp = await client.post(QUERY, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["errcode"] == errcode


async def test_malformed_get_parameter(client: TestClient) -> None:
    resp = await client.get(f"{QUERY}/a.example", params={"minimum_valid_until_ts": "soon"})
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_INVALID_PARAM"
