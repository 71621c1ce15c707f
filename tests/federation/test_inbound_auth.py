"""X-Matrix authentication of incoming requests: a real aiohttp endpoint calling
``authenticate``, the origin's key served by a real key server on loopback (TLS)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from signedjson.key import generate_signing_key
from signedjson.types import SigningKey
from yarl import URL

from federation.keys.keyring import Keyring
from federation.transport.inbound_auth import authenticate
from federation.transport.x_matrix import sign_request
from homeserver.http.middleware import error_middleware
from storage.stores.server_keys import ServerKeyStore
from tests.federation.test_keyring import (
    KEYS_PATH,
    OUR_NAME,
    FakeClock,
    KeyServer,
    clock,
    make_keyring,
    remote,
    store,
    tls,
)

__all__ = ["clock", "remote", "store", "tls"]  # fixtures shared with test_keyring

PATH = "/_matrix/federation/v1/test/a%20b"
URI = PATH + "?limit=10&v=%2F"
BODY = {"pdus": [{"type": "m.room.message"}]}


@pytest.fixture
async def keyring(store: ServerKeyStore, clock: FakeClock) -> AsyncIterator[Keyring]:
    async with make_keyring(store, clock) as keyring:
        yield keyring


@pytest.fixture
async def client(keyring: Keyring, aiohttp_client: Any) -> TestClient:
    async def endpoint(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        return web.json_response({"origin": await authenticate(request, keyring, OUR_NAME,
                                                               body)})

    app = web.Application(middlewares=[error_middleware])
    app.router.add_route("*", "/_matrix/federation/v1/test/{x}", endpoint)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


def x_matrix(remote: KeyServer, method: str, uri: str = URI, body: Any = None, *,
             destination: str = OUR_NAME, origin: str | None = None,
             signing_key: SigningKey | None = None) -> str:
    """An Authorization header from ``remote`` (or as ``origin``, signed with ``signing_key``)."""
    return sign_request(origin or remote.server_name, signing_key or remote.signing_key,
                        method, uri, destination, body)


async def send(client: TestClient, method: str, headers: list[tuple[str, str]],
               body: Any = None, uri: str = URI) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    # encoded=True: sent exactly as signed (yarl would otherwise normalise "%2F" to "/").
    resp = await client.request(method, URL(uri, encoded=True), data=data, headers=[
        ("Content-Type", "application/json"), *headers])
    return resp.status, await resp.json()


async def test_signed_requests_are_accepted(client: TestClient, remote: KeyServer) -> None:
    assert await send(client, "GET", [("Authorization", x_matrix(remote, "GET"))]) == (
        200, {"origin": remote.server_name})
    assert await send(client, "PUT", [("Authorization", x_matrix(remote, "PUT", body=BODY))],
                      BODY) == (200, {"origin": remote.server_name})
    assert remote.requests[KEYS_PATH] == 1


async def test_one_valid_header_among_several_is_enough(client: TestClient,
                                                        remote: KeyServer) -> None:
    headers = [("Authorization", "Bearer abc"), ("Authorization", "X-Matrix nonsense"),
               ("Authorization", x_matrix(remote, "GET", destination="elsewhere.example")),
               ("Authorization", x_matrix(remote, "GET"))]
    assert await send(client, "GET", headers) == (200, {"origin": remote.server_name})


async def test_header_without_destination_is_accepted(client: TestClient,
                                                      remote: KeyServer) -> None:
    header = x_matrix(remote, "GET").replace(f'destination="{OUR_NAME}",', "")
    assert "destination" not in header
    assert await send(client, "GET", [("Authorization", header)]) == (
        200, {"origin": remote.server_name})


def _no_header(remote: KeyServer) -> list[tuple[str, str]]:
    return []


def _wrong_signing_key(remote: KeyServer) -> list[tuple[str, str]]:
    return [("Authorization", x_matrix(remote, "PUT", body=BODY,
                                       signing_key=generate_signing_key("k1")))]


def _other_body(remote: KeyServer) -> list[tuple[str, str]]:
    return [("Authorization", x_matrix(remote, "PUT", body={"pdus": []}))]


def _other_uri(remote: KeyServer) -> list[tuple[str, str]]:
    return [("Authorization", x_matrix(remote, "PUT", uri=PATH + "?limit=11&v=%2F", body=BODY))]


def _other_method(remote: KeyServer) -> list[tuple[str, str]]:
    return [("Authorization", x_matrix(remote, "POST", body=BODY))]


def _wrong_destination(remote: KeyServer) -> list[tuple[str, str]]:
    return [("Authorization", x_matrix(remote, "PUT", body=BODY, destination="other.example"))]


def _unknown_key(remote: KeyServer) -> list[tuple[str, str]]:
    return [("Authorization", x_matrix(remote, "PUT", body=BODY,
                                       signing_key=generate_signing_key("unknown")))]


def _claims_another_origin(remote: KeyServer) -> list[tuple[str, str]]:
    return [("Authorization", x_matrix(remote, "PUT", body=BODY, origin="127.0.0.1:1"))]


def _malformed(remote: KeyServer) -> list[tuple[str, str]]:
    return [("Authorization", x_matrix(remote, "PUT", body=BODY).replace('key="', 'key=",'))]


def _not_x_matrix(remote: KeyServer) -> list[tuple[str, str]]:
    return [("Authorization", "Bearer syt_abc")]


@pytest.mark.parametrize("headers", [
    _no_header, _wrong_signing_key, _other_body, _other_uri, _other_method, _wrong_destination,
    _unknown_key, _claims_another_origin, _malformed, _not_x_matrix,
])
async def test_unauthenticated_requests_are_refused(client: TestClient, remote: KeyServer,
                                                    headers: Any) -> None:
    status, body = await send(client, "PUT", headers(remote), BODY)
    assert status == 401
    assert body["errcode"] == "M_UNAUTHORIZED"
