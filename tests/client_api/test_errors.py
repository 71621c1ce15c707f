"""The error contract (DESIGN.md, "Errors") and CORS, on real HTTP.

Every error is ``{"errcode": "M_...", "error": "..."}`` as application/json with the spec's
status, and none of the requests here may ever produce a 500.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.errors import Forbidden
from homeserver.http.middleware import add_cors_headers, cors_middleware, error_middleware
from tests.conftest import bearer, register_user
from tests.helpers.harness import SharedServer, shared_server
from tests.helpers.spec import assert_matches_spec

V3 = "/_matrix/client/v3"
PASSWORD = "correct horse"

# Keys an error body may carry beside errcode and error, by errcode.
ALLOWED_EXTRA_KEYS = {
    "M_UNKNOWN_TOKEN": {"soft_logout"},
    "M_LIMIT_EXCEEDED": {"retry_after_ms"},
}


async def assert_error(resp: Any, status: int, errcode: str | set[str]) -> dict[str, Any]:
    """Check one error response against the contract; returns its body."""
    text = await resp.text()
    assert resp.status == status, f"{resp.method} {resp.url}: {resp.status} {text}"
    assert resp.content_type == "application/json", text
    body = json.loads(text)
    assert isinstance(body, dict)
    assert isinstance(body.get("errcode"), str) and body["errcode"].startswith("M_"), body
    assert isinstance(body.get("error"), str), body
    codes = {errcode} if isinstance(errcode, str) else errcode
    assert body["errcode"] in codes, body
    extra = set(body) - {"errcode", "error"}
    assert extra <= ALLOWED_EXTRA_KEYS.get(body["errcode"], set()), body
    assert resp.headers.get("Access-Control-Allow-Origin") == "*"
    return body


def login_body(user: str = "alice", password: str = PASSWORD, **extra: Any) -> dict[str, Any]:
    return {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": password, **extra}


# The tests of the default config that store nothing another test reads share one server
# (``server``, on SQLite as the others): the users they register have names of their own
# (``register_someone``), never the "alice" (nor "nobody") the logins below name. The tests
# of other configs, and those that log in as alice, have a fresh server each (``client``).
shared = pytest.mark.asyncio(loop_scope="module")


shared_errors_server = shared_server("errors", kinds=("sqlite",))


@pytest.fixture(scope="module")
def server(shared_errors_server: SharedServer) -> TestClient:
    return shared_errors_server[1]


_numbers = itertools.count()


async def register_someone(client: TestClient) -> dict[str, Any]:
    """Register a user no other test has (never alice); returns the login response."""
    return await register_user(client, f"someone{next(_numbers)}")


async def token_for(client: TestClient, needs_auth: bool) -> dict[str, str]:
    if not needs_auth:
        return {}
    return bearer((await register_someone(client))["access_token"])


# -- routing --------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/"),
    ("GET", "/favicon.ico"),
    ("GET", "/_matrix"),
    ("GET", "/_matrix/client"),
    ("GET", f"{V3}/nonexistent"),
    ("POST", f"{V3}/nonexistent"),
    ("GET", f"{V3}/login/"),
    ("GET", "/_matrix/client/v4/login"),
    ("GET", "/_matrix/client/unstable/org.example.nothing/thing"),
    ("PUT", f"{V3}/rooms/!room:test.local/not_an_endpoint/txn1"),
    ("DELETE", f"{V3}/account/whoami/extra"),
    ("GET", "/_matrix/federation/v1/nonexistent"),
    ("GET", "/_matrix/key/v2/nonexistent"),
    ("GET", "/_synapse/admin/v1/nonexistent"),
    ("GET", "/.well-known/matrix/nonexistent"),
])
@shared
async def test_unknown_endpoint_is_unrecognized(server: TestClient, method: str, path: str
                                                ) -> None:
    resp = await server.request(method, path)
    await assert_error(resp, 404, "M_UNRECOGNIZED")


@pytest.mark.parametrize("method, path", [
    ("DELETE", f"{V3}/login"),
    ("PUT", f"{V3}/login"),
    ("PATCH", f"{V3}/login"),
    ("GET", f"{V3}/logout"),
    ("GET", f"{V3}/refresh"),
    ("POST", f"{V3}/account/whoami"),
    ("POST", "/_matrix/client/versions"),
    ("DELETE", "/.well-known/matrix/client"),
    ("GET", f"{V3}/delete_devices"),
    ("POST", f"{V3}/devices/ABCDEF"),
    ("GET", "/_matrix/client/r0/logout/all"),
])
@shared
async def test_wrong_method_is_unrecognized_405(server: TestClient, method: str, path: str
                                                ) -> None:
    resp = await server.request(method, path)
    await assert_error(resp, 405, "M_UNRECOGNIZED")
    allowed = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert allowed and method not in allowed


# -- request bodies -------------------------------------------------------------------------

# Each (method, path, needs auth) reads a JSON object from its body.
BODY_ENDPOINTS = [
    pytest.param("POST", f"{V3}/login", False, id="login"),
    pytest.param("POST", "/_matrix/client/r0/login", False, id="login-r0"),
    pytest.param("POST", f"{V3}/register", False, id="register"),
    pytest.param("POST", f"{V3}/refresh", False, id="refresh"),
    pytest.param("POST", f"{V3}/account/password", True, id="password"),
    pytest.param("POST", f"{V3}/account/deactivate", True, id="deactivate"),
    pytest.param("POST", f"{V3}/delete_devices", True, id="delete-devices"),
    pytest.param("PUT", f"{V3}/devices/SOMEDEVICE", True, id="put-device"),
]

NOT_JSON_BODIES = [
    pytest.param(b"{", id="truncated"),
    pytest.param(b'{"type": "m.login.password",', id="truncated-after-comma"),
    pytest.param(b"not json at all", id="text"),
    pytest.param(b"{'type': 'm.login.password'}", id="single-quotes"),
    pytest.param(b'{"type": "m.login.password",}', id="trailing-comma"),
    pytest.param(b'{"a": 1} {"b": 2}', id="trailing-data"),
    pytest.param(b'{"a": NaN}', id="nan"),
    pytest.param(b'{"a": Infinity}', id="infinity"),
    pytest.param(b'{"a": -Infinity}', id="minus-infinity"),
    pytest.param(b"NaN", id="bare-nan"),
    pytest.param(b'{"type": "m.login.\xff"}', id="invalid-utf8-in-string"),
    pytest.param(b"\xff\xfe{\x00}\x00", id="utf16-bom"),
    pytest.param(b'{"a": "\xc3"}', id="truncated-utf8-sequence"),
    pytest.param(b'{"a": 1' + b"0" * 5000 + b"}", id="huge-integer"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested"),
    pytest.param(b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, id="deeply-nested-object"),
]


@pytest.mark.parametrize("raw", NOT_JSON_BODIES)
@shared
async def test_malformed_json_login(server: TestClient, raw: bytes) -> None:
    resp = await server.post(f"{V3}/login", data=raw,
                             headers={"Content-Type": "application/json"})
    await assert_error(resp, 400, "M_NOT_JSON")


@pytest.mark.parametrize("method, path, needs_auth", BODY_ENDPOINTS)
@shared
async def test_malformed_json_everywhere(server: TestClient, method: str, path: str,
                                         needs_auth: bool) -> None:
    headers = await token_for(server, needs_auth)
    for raw in (b"{", b'{"a": NaN}', b'{"a": "\xff"}', b"[" * 100_000):
        resp = await server.request(method, path, data=raw,
                                    headers={**headers, "Content-Type": "application/json"})
        await assert_error(resp, 400, "M_NOT_JSON")


@shared
async def test_empty_body_is_not_json(server: TestClient) -> None:
    resp = await server.post(f"{V3}/login", data=b"")
    await assert_error(resp, 400, "M_NOT_JSON")


NOT_OBJECTS = [b"[]", b'[{"type": "m.login.password"}]', b'"a string"', b"42", b"-1.5",
               b"null", b"true"]


@pytest.mark.parametrize("method, path, needs_auth", BODY_ENDPOINTS)
@shared
async def test_json_that_is_not_an_object(server: TestClient, method: str, path: str,
                                          needs_auth: bool) -> None:
    headers = await token_for(server, needs_auth)
    for raw in NOT_OBJECTS:
        resp = await server.request(method, path, data=raw,
                                    headers={**headers, "Content-Type": "application/json"})
        await assert_error(resp, 400, "M_BAD_JSON")


async def test_content_type_is_not_required(client: TestClient) -> None:
    """Like Synapse, the body is JSON whatever the Content-Type says."""
    await register_user(client, "alice")
    resp = await client.post(f"{V3}/login", data=json.dumps(login_body()).encode(),
                             headers={"Content-Type": "text/plain"})
    assert resp.status == 200, await resp.text()


LOGIN_WRONG_TYPES = [
    pytest.param({"password": 123}, id="password-int"),
    pytest.param({"password": ["a"]}, id="password-list"),
    pytest.param({"refresh_token": "yes"}, id="refresh_token-string"),
    pytest.param({"refresh_token": 1}, id="refresh_token-int"),
    pytest.param({"identifier": "alice"}, id="identifier-string"),
    pytest.param({"identifier": ["m.id.user", "alice"]}, id="identifier-list"),
    pytest.param({"identifier": {"type": "m.id.user", "user": 123}}, id="identifier-user-int"),
    pytest.param({"identifier": {"type": "m.id.user", "user": {"a": 1}}},
                 id="identifier-user-object"),
    pytest.param({"type": 5}, id="type-int"),
    pytest.param({"type": None}, id="type-null"),
    pytest.param({"device_id": 5}, id="device_id-int"),
    pytest.param({"device_id": "D" * 513}, id="device_id-too-long"),
    pytest.param({"initial_device_display_name": {}}, id="display-name-object"),
    pytest.param({"identifier": None, "user": 7}, id="legacy-user-int"),
]


@pytest.mark.parametrize("change", LOGIN_WRONG_TYPES)
@shared
async def test_login_wrong_field_types(server: TestClient, change: dict[str, Any]) -> None:
    resp = await server.post(f"{V3}/login", json={**login_body(), **change})
    await assert_error(resp, 400, {"M_BAD_JSON", "M_INVALID_PARAM"})


@pytest.mark.parametrize("method, path, needs_auth, body", [
    pytest.param("POST", f"{V3}/refresh", False, {"refresh_token": 5}, id="refresh-int"),
    pytest.param("POST", f"{V3}/refresh", False, {"refresh_token": None}, id="refresh-null"),
    pytest.param("POST", f"{V3}/register", False, {"username": 5, "password": PASSWORD},
                 id="register-username-int"),
    pytest.param("POST", f"{V3}/register", False,
                 {"username": "bob", "password": PASSWORD, "inhibit_login": "yes"},
                 id="register-inhibit-login-string"),
    pytest.param("POST", f"{V3}/register", False, {"auth": "dummy"},
                 id="register-auth-string"),
    pytest.param("POST", f"{V3}/account/password", True, {"new_password": 12345678},
                 id="password-int"),
    pytest.param("POST", f"{V3}/account/password", True,
                 {"new_password": "a new password", "logout_devices": "no"},
                 id="password-logout-devices-string"),
    pytest.param("POST", f"{V3}/delete_devices", True, {"devices": "ABC"},
                 id="delete-devices-string"),
    pytest.param("POST", f"{V3}/delete_devices", True, {"devices": [1, 2]},
                 id="delete-devices-ints"),
    pytest.param("PUT", f"{V3}/devices/SOMEDEVICE", True, {"display_name": 5},
                 id="device-name-int"),
    pytest.param("POST", f"{V3}/account/deactivate", True, {"erase": "yes"},
                 id="deactivate-erase-string"),
])
@shared
async def test_wrong_field_types_elsewhere(server: TestClient, method: str, path: str,
                                           needs_auth: bool, body: dict[str, Any]) -> None:
    headers = await token_for(server, needs_auth)
    resp = await server.request(method, path, json=body, headers=headers)
    await assert_error(resp, 400, {"M_BAD_JSON", "M_INVALID_PARAM"})


@pytest.mark.parametrize("method, path, needs_auth, body", [
    pytest.param("POST", f"{V3}/login", False, {}, id="login-empty"),
    pytest.param("POST", f"{V3}/login", False, {"user": "alice", "password": PASSWORD},
                 id="login-no-type"),
    pytest.param("POST", f"{V3}/login", False,
                 {"type": "m.login.password", "password": PASSWORD}, id="login-no-identifier"),
    pytest.param("POST", f"{V3}/login", False,
                 {"type": "m.login.password", "identifier": {"type": "m.id.user"},
                  "password": PASSWORD}, id="login-identifier-no-user"),
    pytest.param("POST", f"{V3}/login", False,
                 {"type": "m.login.password", "identifier": {"type": "m.id.user",
                                                             "user": "alice"}},
                 id="login-no-password"),
    pytest.param("POST", f"{V3}/refresh", False, {}, id="refresh-empty"),
    pytest.param("POST", f"{V3}/account/password", True, {}, id="password-empty"),
    pytest.param("POST", f"{V3}/delete_devices", True, {}, id="delete-devices-empty"),
])
@shared
async def test_missing_fields(server: TestClient, method: str, path: str, needs_auth: bool,
                              body: dict[str, Any]) -> None:
    headers = await token_for(server, needs_auth)
    resp = await server.request(method, path, json=body, headers=headers)
    await assert_error(resp, 400, "M_MISSING_PARAM")


@shared
async def test_login_errors_match_the_spec(server: TestClient) -> None:
    resp = await server.post(f"{V3}/login", data=b"{")
    body = await assert_error(resp, 400, "M_NOT_JSON")
    assert_matches_spec("client-server", "POST", "/login", 400, body)
    resp = await server.post(f"{V3}/login", json={"type": "m.login.password"})
    body = await assert_error(resp, 400, "M_MISSING_PARAM")
    assert_matches_spec("client-server", "POST", "/login", 400, body)


# -- body size ------------------------------------------------------------------------------

SMALL_BODY_LIMIT = {"http": {"max_request_body_bytes": 1024}}


def padded_login(size: int) -> bytes:
    """A login body of exactly ``size`` bytes (the padding is an ignored field)."""
    base = login_body(padding="")
    raw = json.dumps(base).encode()
    return json.dumps({**base, "padding": "x" * (size - len(raw))}).encode()


@pytest.mark.parametrize("config_overrides", [SMALL_BODY_LIMIT])
@pytest.mark.parametrize("method, path, needs_auth", BODY_ENDPOINTS)
async def test_oversized_body_is_too_large(client: TestClient, method: str, path: str,
                                           needs_auth: bool) -> None:
    headers = await token_for(client, needs_auth)
    resp = await client.request(method, path, data=padded_login(1025),
                                headers={**headers, "Content-Type": "application/json"})
    await assert_error(resp, 413, "M_TOO_LARGE")


@pytest.mark.parametrize("config_overrides", [SMALL_BODY_LIMIT])
async def test_body_at_the_limit_is_accepted(client: TestClient) -> None:
    await register_user(client, "alice")
    raw = padded_login(1024)
    assert len(raw) == 1024
    resp = await client.post(f"{V3}/login", data=raw)
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("config_overrides", [SMALL_BODY_LIMIT])
async def test_oversized_chunked_body_is_too_large(client: TestClient) -> None:
    """No Content-Length: the limit holds while streaming."""
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"type": "m.login.password", "padding": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    resp = await client.post(f"{V3}/login", data=chunks(),
                             headers={"Content-Type": "application/json"})
    await assert_error(resp, 413, "M_TOO_LARGE")


@pytest.mark.parametrize("config_overrides", [SMALL_BODY_LIMIT])
async def test_too_large_matches_the_spec_and_server_keeps_working(client: TestClient) -> None:
    resp = await client.post(f"{V3}/login", data=b"[" + b"1," * 2000 + b"1]")
    await assert_error(resp, 413, "M_TOO_LARGE")
    resp = await client.get("/_matrix/client/versions")
    assert resp.status == 200


# -- access tokens --------------------------------------------------------------------------

AUTHED_GETS = [f"{V3}/account/whoami", f"{V3}/devices", f"{V3}/capabilities",
               "/_matrix/client/r0/account/whoami"]


@pytest.mark.parametrize("path", AUTHED_GETS)
@shared
async def test_missing_token(server: TestClient, path: str) -> None:
    resp = await server.get(path)
    await assert_error(resp, 401, "M_MISSING_TOKEN")


@pytest.mark.parametrize("path", AUTHED_GETS)
@shared
async def test_unknown_token(server: TestClient, path: str) -> None:
    for token in ("garbage", "kta_" + "A" * 43, "x" * 2000, "ktr_refresh_not_access", "%00",
                  "'; DROP TABLE access_tokens; --"):
        resp = await server.get(path, headers=bearer(token))
        body = await assert_error(resp, 401, "M_UNKNOWN_TOKEN")
        assert body.get("soft_logout", False) is False


@pytest.mark.parametrize("header", [
    "Basic YWxpY2U6cGFzc3dvcmQ=",
    "Bearer",
    "Bearer ",
    "Bearer    ",
    "Token abc",
    "abc",
    "",
])
@shared
async def test_malformed_authorization_header(server: TestClient, header: str) -> None:
    await register_someone(server)
    resp = await server.get(f"{V3}/account/whoami", headers={"Authorization": header})
    await assert_error(resp, 401, "M_MISSING_TOKEN")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
@shared
async def test_bearer_scheme_is_case_insensitive(server: TestClient, scheme: str) -> None:
    token = (await register_someone(server))["access_token"]
    resp = await server.get(f"{V3}/account/whoami", headers={"Authorization": f"{scheme} {token}"})
    assert resp.status == 200, await resp.text()


@shared
async def test_logged_out_token_is_unknown(server: TestClient) -> None:
    token = (await register_someone(server))["access_token"]
    assert (await server.get(f"{V3}/account/whoami", headers=bearer(token))).status == 200
    resp = await server.post(f"{V3}/logout", headers=bearer(token))
    assert resp.status == 200
    for path in AUTHED_GETS:
        resp = await server.get(path, headers=bearer(token))
        body = await assert_error(resp, 401, "M_UNKNOWN_TOKEN")
        assert body.get("soft_logout", False) is False


@shared
async def test_access_token_query_parameter(server: TestClient) -> None:
    registered = await register_someone(server)
    resp = await server.get(f"{V3}/account/whoami",
                            params={"access_token": registered["access_token"]})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["user_id"] == registered["user_id"]

    resp = await server.get(f"{V3}/account/whoami", params={"access_token": "garbage"})
    await assert_error(resp, 401, "M_UNKNOWN_TOKEN")
    resp = await server.get(f"{V3}/account/whoami", params={"access_token": ""})
    await assert_error(resp, 401, "M_MISSING_TOKEN")


@shared
async def test_token_is_checked_before_the_body(server: TestClient) -> None:
    resp = await server.post(f"{V3}/account/password", data=b"{")
    await assert_error(resp, 401, "M_MISSING_TOKEN")


SHORT_LIVED_TOKENS = {"auth": {"refreshable_access_token_lifetime_ms": 1}}


@pytest.mark.parametrize("config_overrides", [SHORT_LIVED_TOKENS])
async def test_expired_access_token_is_a_soft_logout(client: TestClient) -> None:
    await register_user(client, "alice")
    resp = await client.post(f"{V3}/login", json=login_body(refresh_token=True))
    assert resp.status == 200
    session = await resp.json()
    assert session["expires_in_ms"] == 1
    await asyncio.sleep(0.02)

    resp = await client.get(f"{V3}/account/whoami", headers=bearer(session["access_token"]))
    body = await assert_error(resp, 401, "M_UNKNOWN_TOKEN")
    assert body["soft_logout"] is True
    assert_matches_spec("client-server", "GET", "/account/whoami", 401, body)
    # Still expired the second time (no cache resurrects it).
    resp = await client.get(f"{V3}/account/whoami", headers=bearer(session["access_token"]))
    assert (await assert_error(resp, 401, "M_UNKNOWN_TOKEN"))["soft_logout"] is True

    # The client refreshes, as soft_logout invites it to.
    resp = await client.post(f"{V3}/refresh", json={"refresh_token": session["refresh_token"]})
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("config_overrides", [SHORT_LIVED_TOKENS])
async def test_tokens_without_refresh_do_not_expire(client: TestClient) -> None:
    registered = await register_user(client, "alice")
    assert "expires_in_ms" not in registered
    await asyncio.sleep(0.02)
    resp = await client.get(f"{V3}/account/whoami", headers=bearer(registered["access_token"]))
    assert resp.status == 200


# -- CORS -----------------------------------------------------------------------------------

def assert_cors_preflight_headers(headers: Any) -> None:
    assert headers.get("Access-Control-Allow-Origin") == "*"
    methods = {m.strip() for m in headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert {"GET", "POST", "PUT", "DELETE", "OPTIONS"} <= methods
    allowed = {h.strip().lower() for h in
               headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert {"x-requested-with", "content-type", "authorization"} <= allowed


@pytest.mark.parametrize("path", [
    f"{V3}/login",
    f"{V3}/account/whoami",
    f"{V3}/devices/SOMEDEVICE",
    "/_matrix/client/versions",
    "/.well-known/matrix/client",
    f"{V3}/nonexistent",
    "/_matrix/federation/v1/version",
    "/totally/unknown",
    "/",
])
@shared
async def test_options_preflight(server: TestClient, path: str) -> None:
    resp = await server.options(path, headers={
        "Origin": "https://app.example.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })
    assert 200 <= resp.status < 300, await resp.text()
    assert_cors_preflight_headers(resp.headers)


@shared
async def test_cors_on_success(server: TestClient) -> None:
    resp = await server.get("/_matrix/client/versions", headers={"Origin": "https://x.example"})
    assert resp.status == 200
    assert_cors_preflight_headers(resp.headers)


@pytest.mark.parametrize("method, path, data, status", [
    ("GET", f"{V3}/nonexistent", None, 404),
    ("DELETE", f"{V3}/login", None, 405),
    ("GET", f"{V3}/account/whoami", None, 401),
    ("POST", f"{V3}/login", b"{", 400),
    ("POST", f"{V3}/login", b"[]", 400),
    ("POST", f"{V3}/login", json.dumps(login_body("nobody")).encode(), 403),
])
@shared
async def test_cors_on_errors(server: TestClient, method: str, path: str, data: bytes | None,
                              status: int) -> None:
    resp = await server.request(method, path, data=data, headers={"Origin": "https://x.example"})
    assert resp.status == status
    assert_cors_preflight_headers(resp.headers)


# -- unexpected exceptions ------------------------------------------------------------------

def _exploding_app() -> web.Application:
    async def explode(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals at /srv/ktchat/db.py password=hunter2")

    async def key_error(request: web.Request) -> web.Response:
        known: dict[str, str] = {}
        return web.json_response(known[request.match_info["key"]])

    async def forbidden(request: web.Request) -> web.Response:
        raise Forbidden("Not for you")

    app = web.Application(middlewares=[cors_middleware, error_middleware])
    app.on_response_prepare.append(add_cors_headers)
    app.router.add_get("/explode", explode)
    app.router.add_get("/key/{key}", key_error)
    app.router.add_get("/forbidden", forbidden)
    return app


@pytest.mark.parametrize("path", ["/explode", "/key/secret_internal_key"])
async def test_unexpected_exception_is_500_without_internals(
        aiohttp_client: Callable[..., Any], caplog: pytest.LogCaptureFixture, path: str) -> None:
    client = await aiohttp_client(_exploding_app())
    with caplog.at_level(logging.ERROR, logger="homeserver.http.middleware"):
        resp = await client.get(path)
    text = await resp.text()
    body = await assert_error(resp, 500, "M_UNKNOWN")
    for secret in ("secret", "hunter2", "/srv/", "RuntimeError", "KeyError", "Traceback"):
        assert secret not in text
    assert set(body) == {"errcode", "error"}
    # Logged, with its traceback.
    records = [r for r in caplog.records if r.exc_info is not None]
    assert records, "the exception was not logged with its traceback"


async def test_matrix_errors_pass_through_the_middleware(aiohttp_client: Callable[..., Any]
                                                         ) -> None:
    client = await aiohttp_client(_exploding_app())
    resp = await client.get("/forbidden")
    body = await assert_error(resp, 403, "M_FORBIDDEN")
    assert body == {"errcode": "M_FORBIDDEN", "error": "Not for you"}
    resp = await client.get("/nope")
    await assert_error(resp, 404, "M_UNRECOGNIZED")


# -- rate limits ----------------------------------------------------------------------------

async def assert_rate_limited(resp: Any) -> None:
    body = await assert_error(resp, 429, "M_LIMIT_EXCEEDED")
    assert type(body["retry_after_ms"]) is int and body["retry_after_ms"] > 0
    assert int(resp.headers["Retry-After"]) >= 1
    assert_matches_spec("client-server", "POST", "/login", 429, body)


@pytest.mark.parametrize("config_overrides", [
    {"rate_limits": {"enabled": True, "login_per_ip": {"per_second": 0.1, "burst_count": 2}}}])
async def test_login_per_ip_limit(client: TestClient) -> None:
    await register_user(client, "alice")
    resp = await client.post(f"{V3}/login", json=login_body())
    assert resp.status == 200
    resp = await client.post(f"{V3}/login", json=login_body("nobody", "wrong"))
    assert resp.status == 403
    # The burst is spent: whatever comes next from this address waits.
    resp = await client.post(f"{V3}/login", json=login_body())
    await assert_rate_limited(resp)
    resp = await client.post(f"{V3}/login", data=b"{")
    await assert_rate_limited(resp)
    # Other endpoints are not affected.
    resp = await client.get(f"{V3}/login")
    assert resp.status == 200


FAILED_LOGIN_LIMIT = {"rate_limits": {
    "enabled": True,
    "login_per_ip": {"per_second": 100, "burst_count": 100},
    "login_failed_per_account": {"per_second": 0.1, "burst_count": 2},
}}


@pytest.mark.parametrize("config_overrides", [FAILED_LOGIN_LIMIT])
async def test_failed_logins_per_account_limit(client: TestClient) -> None:
    await register_user(client, "alice")
    await register_user(client, "bob")
    for _ in range(2):
        resp = await client.post(f"{V3}/login", json=login_body("alice", "wrong password"))
        await assert_error(resp, 403, "M_FORBIDDEN")
    # Now even the right password must wait, however the account is named.
    for user in ("alice", "ALICE", "@alice:test.local"):
        resp = await client.post(f"{V3}/login", json=login_body(user))
        await assert_rate_limited(resp)
    # Other accounts are unaffected.
    resp = await client.post(f"{V3}/login", json=login_body("bob"))
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("config_overrides", [FAILED_LOGIN_LIMIT])
async def test_successful_logins_do_not_count_as_failures(client: TestClient) -> None:
    await register_user(client, "alice")
    for _ in range(4):
        resp = await client.post(f"{V3}/login", json=login_body())
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("config_overrides", [{"rate_limits": {
    "enabled": True,
    "login_per_ip": {"per_second": 100, "burst_count": 100},
    "login_per_account": {"per_second": 0.1, "burst_count": 2},
}}])
async def test_logins_per_account_limit(client: TestClient) -> None:
    await register_user(client, "alice")
    await register_user(client, "bob")
    for _ in range(2):
        resp = await client.post(f"{V3}/login", json=login_body())
        assert resp.status == 200, await resp.text()
    resp = await client.post(f"{V3}/login", json=login_body())
    await assert_rate_limited(resp)
    resp = await client.post(f"{V3}/login", json=login_body("bob"))
    assert resp.status == 200, await resp.text()


async def test_rate_limits_disabled_by_config(client: TestClient) -> None:
    """The suite's default config has ``rate_limits.enabled: false``."""
    await register_user(client, "alice")
    for _ in range(8):
        resp = await client.post(f"{V3}/login", json=login_body("alice", "wrong password"))
        await assert_error(resp, 403, "M_FORBIDDEN")


@shared
async def test_float_overflowing_to_infinity_is_not_json(server: TestClient) -> None:
    resp = await server.post("/_matrix/client/v3/login", data='{"type": 1e999}')
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_NOT_JSON"
