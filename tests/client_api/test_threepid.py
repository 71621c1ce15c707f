"""Third-party identifiers: none are kept and none can be added (no email, SMS or identity
server; ``m.3pid_changes`` is false). The answers are Synapse's with ``enable_3pid_changes:
false`` and no email or SMS configured: Matrix errors, never 404 for the spec's endpoints."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers.room_api import V3, User, api, assert_error
from tests.helpers.spec import assert_matches_spec

MSISDN = {"client_secret": "secret", "send_attempt": 1, "country": "GB",
          "phone_number": "07700900001"}
EMAIL = {"client_secret": "secret", "send_attempt": 1, "email": "alice@example.org"}


async def test_no_threepids(client: TestClient, alice: User) -> None:
    status, body = await api(client, "GET", "/account/3pid", alice)
    assert (status, body) == (200, {"threepids": []})


@pytest.mark.parametrize("path", ["/account/3pid", "/account/3pid/add",
                                  "/account/3pid/bind", "/account/3pid/delete",
                                  "/account/3pid/unbind"])
async def test_needs_auth(client: TestClient, path: str) -> None:
    status, body = await api(client, "GET" if path == "/account/3pid" else "POST", path, None,
                             None if path == "/account/3pid" else {})
    assert_error(status, body, 401, "M_MISSING_TOKEN")


async def test_adding_is_refused(client: TestClient, alice: User) -> None:
    status, body = await api(client, "POST", "/account/3pid", alice,
                             {"three_pid_creds": {"sid": "1", "client_secret": "s"}})
    assert_error(status, body, 400, "M_FORBIDDEN")
    status, body = await api(client, "POST", "/account/3pid/add", alice,
                             {"sid": "1", "client_secret": "s"})
    assert_error(status, body, 400, "M_FORBIDDEN")
    status, body = await api(client, "POST", "/account/3pid/bind", alice,
                             {"sid": "1", "client_secret": "s", "id_server": "id.example.org",
                              "id_access_token": "t"})
    assert_error(status, body, 403, "M_FORBIDDEN")
    status, body = await api(client, "GET", "/account/3pid", alice)
    assert body == {"threepids": []}


async def test_delete_is_refused_and_unbind_has_nothing_to_do(client: TestClient,
                                                              alice: User) -> None:
    threepid = {"medium": "email", "address": "alice@example.org"}
    status, body = await api(client, "POST", "/account/3pid/delete", alice, threepid)
    assert_error(status, body, 400, "M_FORBIDDEN")
    status, body = await api(client, "POST", "/account/3pid/unbind", alice, threepid)
    assert (status, body) == (200, {"id_server_unbind_result": "no-support"})


@pytest.mark.parametrize(("path", "body", "errcode"), [
    ("/account/3pid/add", {"sid": "1"}, "M_MISSING_PARAM"),
    ("/account/3pid/add", {"sid": 1, "client_secret": "s"}, "M_BAD_JSON"),
    ("/account/3pid/bind", {"sid": "1", "client_secret": "s"}, "M_MISSING_PARAM"),
    ("/account/3pid/delete", {"medium": "pigeon", "address": "x"}, "M_BAD_JSON"),
    ("/account/3pid/unbind", {"medium": "email"}, "M_MISSING_PARAM"),
    ("/account/3pid/unbind", {"medium": "email", "address": ["x"]}, "M_BAD_JSON"),
    ("/account/3pid", [], "M_BAD_JSON"),
])
async def test_bad_bodies(client: TestClient, alice: User, path: str, body: Any,
                          errcode: str) -> None:
    status, answer = await api(client, "POST", path, alice, body)
    assert_error(status, answer, 400, errcode)


async def test_not_json(client: TestClient, alice: User) -> None:
    resp = await client.post(f"{V3}/account/3pid/unbind", data=b"{",
                             headers={"Authorization": f"Bearer {alice.token}"})
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_NOT_JSON"


@pytest.mark.parametrize(("path", "body", "errcode"), [
    ("/account/3pid/email/requestToken", EMAIL, "M_FORBIDDEN"),
    ("/account/3pid/msisdn/requestToken", MSISDN, "M_THREEPID_MEDIUM_NOT_SUPPORTED"),
    ("/register/email/requestToken", EMAIL, "M_UNKNOWN"),
    ("/register/msisdn/requestToken", MSISDN, "M_UNKNOWN"),
    ("/account/password/email/requestToken", EMAIL, "M_UNKNOWN"),
    ("/account/password/msisdn/requestToken", MSISDN, "M_UNKNOWN"),
])
async def test_request_token_is_refused_without_auth(client: TestClient, path: str,
                                                     body: dict[str, Any],
                                                     errcode: str) -> None:
    status, answer = await api(client, "POST", path, None, body)
    assert_error(status, answer, 400, errcode)
    if path != "/account/password/msisdn/requestToken":
        assert_matches_spec("client-server", "POST", path, 400, answer)


@pytest.mark.parametrize("path", ["/account/3pid/msisdn/requestToken",
                                  "/register/msisdn/requestToken",
                                  "/account/password/msisdn/requestToken"])
async def test_request_token_bad_body(client: TestClient, path: str) -> None:
    status, answer = await api(client, "POST", path, None, {**MSISDN, "send_attempt": "1"})
    assert_error(status, answer, 400, "M_BAD_JSON")
    status, answer = await api(client, "POST", path, None, {"client_secret": "s"})
    assert_error(status, answer, 400, "M_MISSING_PARAM")
