"""Profiles over real HTTP: /profile/{userId} and its displayname and avatar_url fields."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import SERVER_NAME, bearer, register_user
from tests.helpers.spec import assert_matches_spec

V3 = "/_matrix/client/v3"
ALICE = f"@alice:{SERVER_NAME}"
BOB = f"@bob:{SERVER_NAME}"
AVATAR = "mxc://test.local/SDGdghriugerRg"


def url(user_id: str, field: str | None = None) -> str:
    path = f"{V3}/profile/{quote(user_id)}"
    return f"{path}/{field}" if field else path


async def get(client: TestClient, user_id: str, field: str | None = None,
              token: str | None = None) -> tuple[int, dict[str, Any]]:
    resp = await client.get(url(user_id, field), headers=bearer(token) if token else None)
    return resp.status, await resp.json()


async def put(client: TestClient, token: str | None, user_id: str, field: str,
              body: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.put(url(user_id, field), json=body,
                            headers=bearer(token) if token else None)
    return resp.status, await resp.json()


@pytest.fixture
async def alice(client: TestClient) -> str:
    return (await register_user(client, "alice"))["access_token"]  # type: ignore[no-any-return]


# -- reading ----------------------------------------------------------------------------------

async def test_full_profile_defaults_displayname_to_localpart(client: TestClient, alice: str
                                                              ) -> None:
    status, body = await get(client, ALICE)
    assert status == 200, body
    assert_matches_spec("client-server", "GET", f"/profile/{ALICE}", 200, body)
    assert body == {"displayname": "alice"}


async def test_get_displayname(client: TestClient, alice: str) -> None:
    status, body = await get(client, ALICE, "displayname")
    assert status == 200, body
    assert_matches_spec("client-server", "GET", f"/profile/{ALICE}/displayname", 200, body)
    assert body == {"displayname": "alice"}


async def test_unset_avatar_url_is_404(client: TestClient, alice: str) -> None:
    status, body = await get(client, ALICE, "avatar_url")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body


async def test_profile_readable_by_others_and_anonymously(client: TestClient, alice: str
                                                          ) -> None:
    bob = (await register_user(client, "bob"))["access_token"]
    assert await get(client, ALICE, token=bob) == (200, {"displayname": "alice"})
    assert await get(client, ALICE) == (200, {"displayname": "alice"})


async def test_unknown_user(client: TestClient) -> None:
    for field in (None, "displayname", "avatar_url"):
        status, body = await get(client, f"@nobody:{SERVER_NAME}", field)
        assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), (field, body)
    assert_matches_spec("client-server", "GET", f"/profile/{ALICE}", 404, body)


async def test_remote_user_is_404(client: TestClient) -> None:
    status, body = await get(client, "@someone:elsewhere.example")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body


@pytest.mark.parametrize("user_id", ["alice", "@alice", "@:test.local", "@al ice:test.local",
                                     "@alice:bad_server!"])
async def test_malformed_user_id(client: TestClient, alice: str, user_id: str) -> None:
    status, body = await get(client, user_id)
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM"), body
    status, body = await get(client, user_id, "displayname")
    assert status == 400, body
    status, body = await put(client, alice, user_id, "displayname", {"displayname": "x"})
    assert status == 400, body


async def test_unknown_field_is_404(client: TestClient, alice: str) -> None:
    status, body = await get(client, ALICE, "m.nonsense")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body


# -- writing ----------------------------------------------------------------------------------

async def test_set_displayname(client: TestClient, alice: str) -> None:
    status, body = await put(client, alice, ALICE, "displayname",
                             {"displayname": "Alice Margatroid"})
    assert status == 200, body
    assert_matches_spec("client-server", "PUT", f"/profile/{ALICE}/displayname", 200, body)
    assert body == {}
    status, body = await get(client, ALICE, "displayname")
    assert (status, body) == (200, {"displayname": "Alice Margatroid"})
    assert_matches_spec("client-server", "GET", f"/profile/{ALICE}/displayname", 200, body)
    status, body = await get(client, ALICE)
    assert body == {"displayname": "Alice Margatroid"}


async def test_set_avatar_url(client: TestClient, alice: str) -> None:
    status, body = await put(client, alice, ALICE, "avatar_url", {"avatar_url": AVATAR})
    assert status == 200, body
    assert_matches_spec("client-server", "PUT", f"/profile/{ALICE}/avatar_url", 200, body)
    assert body == {}
    status, body = await get(client, ALICE, "avatar_url")
    assert (status, body) == (200, {"avatar_url": AVATAR})
    assert_matches_spec("client-server", "GET", f"/profile/{ALICE}/avatar_url", 200, body)
    status, body = await get(client, ALICE)
    assert_matches_spec("client-server", "GET", f"/profile/{ALICE}", 200, body)
    assert body == {"displayname": "alice", "avatar_url": AVATAR}


async def test_unicode_displayname(client: TestClient, alice: str) -> None:
    name = "Ålice 🐇 Λ"
    status, body = await put(client, alice, ALICE, "displayname", {"displayname": name})
    assert status == 200, body
    assert await get(client, ALICE, "displayname") == (200, {"displayname": name})


async def test_clearing_displayname(client: TestClient, alice: str) -> None:
    status, body = await put(client, alice, ALICE, "displayname", {"displayname": ""})
    assert status == 200, body
    status, body = await get(client, ALICE, "displayname")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
    # With no avatar either, there is no profile information at all (as Synapse says).
    status, body = await get(client, ALICE)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND"), body
    status, body = await put(client, alice, ALICE, "avatar_url", {"avatar_url": AVATAR})
    assert status == 200, body
    assert await get(client, ALICE) == (200, {"avatar_url": AVATAR})


async def test_set_for_another_user_is_forbidden(client: TestClient, alice: str) -> None:
    await register_user(client, "bob")
    status, body = await put(client, alice, BOB, "displayname", {"displayname": "Bobby"})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    status, body = await put(client, alice, BOB, "avatar_url", {"avatar_url": AVATAR})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), body
    assert await get(client, BOB) == (200, {"displayname": "bob"})


async def test_set_without_auth(client: TestClient, alice: str) -> None:
    status, body = await put(client, None, ALICE, "displayname", {"displayname": "x"})
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN"), body
    status, body = await put(client, "kta_bogus", ALICE, "displayname", {"displayname": "x"})
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN"), body
    assert await get(client, ALICE, "displayname") == (200, {"displayname": "alice"})


async def test_displayname_too_long(client: TestClient, alice: str) -> None:
    status, body = await put(client, alice, ALICE, "displayname", {"displayname": "x" * 257})
    assert status == 400, body
    assert body["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM", "M_TOO_LARGE"), body
    status, body = await put(client, alice, ALICE, "displayname", {"displayname": "x" * 256})
    assert status == 200, body


async def test_avatar_url_too_long(client: TestClient, alice: str) -> None:
    status, body = await put(client, alice, ALICE, "avatar_url",
                             {"avatar_url": "mxc://test.local/" + "x" * 1000})
    assert status == 400, body


@pytest.mark.parametrize("field,value", [
    ("displayname", 42), ("displayname", ["alice"]), ("displayname", {"a": 1}),
    ("avatar_url", 42), ("avatar_url", True),
])
async def test_wrong_type(client: TestClient, alice: str, field: str, value: Any) -> None:
    status, body = await put(client, alice, ALICE, field, {field: value})
    assert status == 400, body
    assert body["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), body
    assert await get(client, ALICE) == (200, {"displayname": "alice"})


async def test_missing_key(client: TestClient, alice: str) -> None:
    status, body = await put(client, alice, ALICE, "displayname", {"avatar_url": AVATAR})
    assert (status, body["errcode"]) == (400, "M_MISSING_PARAM"), body


async def test_body_not_json(client: TestClient, alice: str) -> None:
    resp = await client.put(url(ALICE, "displayname"), data=b"nope",
                            headers={**bearer(alice), "Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_NOT_JSON"


async def test_r0_prefix(client: TestClient, alice: str) -> None:
    resp = await client.put(f"/_matrix/client/r0/profile/{ALICE}/displayname",
                            headers=bearer(alice), json={"displayname": "Old client"})
    assert resp.status == 200
    resp = await client.get(f"/_matrix/client/r0/profile/{ALICE}")
    assert await resp.json() == {"displayname": "Old client"}
