"""Dehydrated devices (MSC3814) over real HTTP, on SQLite and on PostgreSQL: a user puts a
dehydrated device with its keys; others find its keys and claim its one-time keys, and send
it to-device messages; a new login of the user reads them page by page, acknowledging each
page with its ``next_batch``; a new dehydrated device replaces the old one (its keys go);
errors are Matrix errors."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json

from tests.client_api import test_sync_fanout
from tests.client_api.test_e2e_keys import claim, one_time_keys, query
from tests.client_api.test_to_device import device
from tests.helpers.room_api import User, api, assert_error, bearer, txn

Json = dict[str, Any]
PREFIX = "/_matrix/client/unstable/org.matrix.msc3814.v1"
DATA = {"algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": "encrypted-pickle",
        "nonce": "n"}

services = test_sync_fanout.services  # every test here runs on SQLite and on PostgreSQL


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"presence": {"enabled": False}}


async def call(client: TestClient, method: str, path: str, user: User | None,
               body: Any = None, **query: str) -> tuple[int, Any]:
    resp = await client.request(method, PREFIX + path, json=body, params=query or None,
                                headers=bearer(user.token) if user else None)
    return resp.status, await resp.json()


def dehydrated(user: User, device_id: str, otks: list[str] = ()) -> Json:  # type: ignore[assignment]
    """A PUT body: the device's signed keys, one-time keys and a fallback key."""
    key = generate_signing_key(device_id)
    keys = sign_json({"user_id": user.user_id, "device_id": device_id,
                      "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                      "keys": {f"ed25519:{device_id}":
                               encode_verify_key_base64(get_verify_key(key)),
                               f"curve25519:{device_id}": "c" * 43},
                      "dehydrated": True}, user.user_id, key)
    owner = User(user.user_id, user.token, device_id)
    return {"device_id": device_id, "device_data": DATA,
            "initial_device_display_name": "Dehydrated device", "device_keys": keys,
            "one_time_keys": one_time_keys(owner, key, list(otks)),
            "fallback_keys": one_time_keys(owner, key, ["F"], fallback=True)}


async def send_to(client: TestClient, sender: User, user_id: str, device_id: str,
                  n: int) -> None:
    for i in range(n):
        status, body = await api(client, "PUT", f"/sendToDevice/m.test/{txn()}", sender,
                                 {"messages": {user_id: {device_id: {"n": i}}}})
        assert status == 200, body


async def test_dehydrated_device_lifecycle(client: TestClient, alice: User, bob: User
                                           ) -> None:
    status, body = await call(client, "GET", "/dehydrated_device", alice)
    assert_error(status, body, 404, "M_NOT_FOUND")

    status, body = await call(client, "PUT", "/dehydrated_device", alice,
                              dehydrated(alice, "DEHYDRATED1", ["A", "B"]))
    assert (status, body) == (200, {"device_id": "DEHYDRATED1"})
    status, body = await call(client, "GET", "/dehydrated_device", alice)
    assert (status, body) == (200, {"device_id": "DEHYDRATED1", "device_data": DATA})
    # A device like any other: listed, its keys found and its one-time keys claimed.
    # (nulls where nothing is known, as Synapse: see client_api/devices.py)
    status, devices = await api(client, "GET", "/devices", alice, spec=False)
    assert status == 200
    assert "DEHYDRATED1" in {d["device_id"] for d in devices["devices"]}
    found = await query(client, bob, {alice.user_id: []})
    assert found["device_keys"][alice.user_id]["DEHYDRATED1"]["dehydrated"] is True
    claimed = await claim(client, bob, {alice.user_id: {"DEHYDRATED1": "signed_curve25519"}})
    assert list(claimed["one_time_keys"][alice.user_id]["DEHYDRATED1"]) in (
        ["signed_curve25519:A"], ["signed_curve25519:B"])

    # bob sends it messages; alice's new login reads them a page at a time.
    await send_to(client, bob, alice.user_id, "DEHYDRATED1", 3)
    await send_to(client, bob, alice.user_id, "*", 1)
    laptop = await device(client, alice)
    seen: list[Any] = []
    token = None
    for _ in range(10):
        status, page = await call(client, "POST", "/dehydrated_device/DEHYDRATED1/events",
                                  laptop, {"next_batch": token} if token else {}, limit="2")
        assert status == 200, page
        assert isinstance(page["next_batch"], str)
        if not page["events"]:
            break
        assert len(page["events"]) <= 2
        seen += [(e["type"], e["sender"], e["content"]["n"]) for e in page["events"]]
        token = page["next_batch"]
    assert seen == [("m.test", bob.user_id, 0), ("m.test", bob.user_id, 1),
                    ("m.test", bob.user_id, 2), ("m.test", bob.user_id, 0)]
    # Acknowledged pages are gone.
    status, page = await call(client, "POST", "/dehydrated_device/DEHYDRATED1/events",
                              laptop, {})
    assert (status, page["events"]) == (200, [])

    # A new one replaces it: the old one's keys go with it.
    status, body = await call(client, "PUT", "/dehydrated_device", alice,
                              dehydrated(alice, "DEHYDRATED2"))
    assert (status, body) == (200, {"device_id": "DEHYDRATED2"})
    found = await query(client, bob, {alice.user_id: []})
    assert "DEHYDRATED1" not in found["device_keys"][alice.user_id]
    assert "DEHYDRATED2" in found["device_keys"][alice.user_id]
    status, body = await call(client, "POST", "/dehydrated_device/DEHYDRATED1/events",
                              laptop, {})
    assert_error(status, body, 403, "M_FORBIDDEN")

    status, body = await call(client, "DELETE", "/dehydrated_device", alice)
    assert (status, body) == (200, {"device_id": "DEHYDRATED2"})
    found = await query(client, bob, {alice.user_id: []})
    assert "DEHYDRATED2" not in found["device_keys"][alice.user_id]
    for method in ("GET", "DELETE"):
        status, body = await call(client, method, "/dehydrated_device", alice)
        assert_error(status, body, 404, "M_NOT_FOUND")


@pytest.mark.parametrize(("change", "status", "errcode"), [
    ({"device_keys": None}, 400, "M_MISSING_PARAM"),
    ({"device_data": None}, 400, "M_MISSING_PARAM"),
    ({"device_data": "pickle"}, 400, "M_BAD_JSON"),
    ({"device_data": {"no": "algorithm"}}, 400, "M_BAD_JSON"),
    ({"device_id": 7}, 400, "M_INVALID_PARAM"),
    ({"device_id": "x" * 300}, 400, "M_INVALID_PARAM"),
    ({"initial_device_display_name": 5}, 400, "M_BAD_JSON"),
    ({"device_keys": "junk"}, 400, "M_BAD_JSON"),
])
async def test_bad_puts_are_matrix_errors(client: TestClient, alice: User, change: Json,
                                          status: int, errcode: str) -> None:
    body = {**dehydrated(alice, "D"), **change}
    body = {k: v for k, v in body.items() if v is not None}
    got, answer = await call(client, "PUT", "/dehydrated_device", alice, body)
    assert_error(got, answer, status, errcode)
    # Nothing was left behind.
    got, answer = await call(client, "GET", "/dehydrated_device", alice)
    assert_error(got, answer, 404, "M_NOT_FOUND")
    _, devices = await api(client, "GET", "/devices", alice, spec=False)
    assert [d["device_id"] for d in devices["devices"]] == [alice.device_id]


async def test_keys_of_another_device_and_taken_ids_are_refused(client: TestClient,
                                                                alice: User) -> None:
    body = dehydrated(alice, "D")
    body["device_id"] = "OTHER"  # the keys name device D
    status, answer = await call(client, "PUT", "/dehydrated_device", alice, body)
    assert status == 400, answer
    status, answer = await call(client, "PUT", "/dehydrated_device", alice,
                                dehydrated(alice, alice.device_id))
    assert_error(status, answer, 400, "M_INVALID_PARAM")
    status, answer = await call(client, "GET", "/dehydrated_device", alice)
    assert_error(status, answer, 404, "M_NOT_FOUND")


async def test_events_errors(client: TestClient, alice: User) -> None:
    status, body = await call(client, "PUT", "/dehydrated_device", alice, dehydrated(alice, "D"))
    assert status == 200, body
    for next_batch in ("x1", 5, "d-1"):
        status, body = await call(client, "POST", "/dehydrated_device/D/events", alice,
                                  {"next_batch": next_batch})
        assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await call(client, "POST", "/dehydrated_device/D/events", alice, {},
                              limit="0")
    assert_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await call(client, "POST", "/dehydrated_device/D/events", alice, [])
    assert status == 400 and body["errcode"] in ("M_BAD_JSON", "M_NOT_JSON"), body
    status, body = await call(client, "GET", "/dehydrated_device", None)
    assert_error(status, body, 401, "M_MISSING_TOKEN")


async def test_versions_advertise_it(client: TestClient) -> None:
    resp = await client.get("/_matrix/client/versions")
    assert (await resp.json())["unstable_features"]["org.matrix.msc3814"] is True
