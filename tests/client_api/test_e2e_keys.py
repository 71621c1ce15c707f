"""End-to-end encryption keys over real HTTP, on one server: /keys/upload, /keys/query,
/keys/claim (one-time keys each handed out once, also under concurrent claims; then the
fallback key), /keys/changes, the device lists and key counts of /sync (and its long polls),
deleting a device, and cross-signing (/keys/device_signing/upload with user-interactive auth,
/keys/signatures/upload). Responses are checked against the spec's OpenAPI files. Once on
SQLite, once on PostgreSQL.

The refusals share one server and alice per backend (``env``): they store nothing, and none
of them reads what another left. The other tests have a fresh server each (``client``)."""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from signedjson.types import SigningKey

from tests.client_api import test_sync_fanout
from tests.client_api.test_account import PASSWORD
from tests.client_api.test_sync import sync
from tests.client_api.test_to_device import device
from tests.helpers.harness import SharedServer, shared_server
from tests.helpers.room_api import (
    User,
    api,
    assert_error,
    create_room,
    join,
    new_user,
)

Json = dict[str, Any]


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Presence off: its updates would end long polls of their own."""
    return {"presence": {"enabled": False}}


services = test_sync_fanout.services  # every test here runs on SQLite and on PostgreSQL

# The tests on the module's shared server (``env``) run in the module's event loop.
shared = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Env:
    client: TestClient
    alice: User


server = shared_server("e2e-keys", overrides={"presence": {"enabled": False}})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(server: SharedServer) -> Env:
    """One server per backend and alice on it, shared by the refusals."""
    client = server[1]
    return Env(client, await new_user(client, "alice"))


# -- helpers ----------------------------------------------------------------------------------


def device_keys(user: User, key: SigningKey | None = None) -> tuple[Json, SigningKey]:
    """Signed device keys for the user's device (its ed25519 key signs them)."""
    key = key or generate_signing_key(user.device_id)
    obj = {"user_id": user.user_id, "device_id": user.device_id,
           "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
           "keys": {f"ed25519:{user.device_id}": encode_verify_key_base64(get_verify_key(key)),
                    f"curve25519:{user.device_id}": "c" * 43}}
    return sign_json(obj, user.user_id, key), key


def one_time_keys(user: User, key: SigningKey, ids: list[str], *, fallback: bool = False
                  ) -> Json:
    out = {}
    for key_id in ids:
        obj: Json = {"key": f"otk-{key_id}".ljust(43, "x")}
        if fallback:
            obj["fallback"] = True
        out[f"signed_curve25519:{key_id}"] = sign_json(obj, user.user_id, key)
    return out


async def upload(client: TestClient, user: User, body: Json) -> Json:
    status, data = await api(client, "POST", "/keys/upload", user, body)
    assert status == 200, data
    return data  # type: ignore[no-any-return]


async def query(client: TestClient, user: User, wanted: Json) -> Json:
    status, data = await api(client, "POST", "/keys/query", user, {"device_keys": wanted})
    assert status == 200, data
    return data  # type: ignore[no-any-return]


async def claim(client: TestClient, user: User, wanted: Json) -> Json:
    status, data = await api(client, "POST", "/keys/claim", user, {"one_time_keys": wanted})
    assert status == 200, data
    return data  # type: ignore[no-any-return]


async def shared_room(client: TestClient, *users: User) -> str:
    room_id = await create_room(client, users[0], preset="public_chat")
    for user in users[1:]:
        await join(client, user, room_id)
    return room_id


def cross_signing_key(user: User, usage: str, signer: tuple[str, SigningKey] | None = None
                      ) -> tuple[Json, SigningKey]:
    """A cross-signing key object (signed by ``signer``: (its key ID, its key))."""
    key = generate_signing_key("x")
    public = encode_verify_key_base64(get_verify_key(key))
    key.version = public
    obj: Json = {"user_id": user.user_id, "usage": [usage], "keys": {f"ed25519:{public}": public}}
    if signer is not None:
        obj = sign_json(obj, user.user_id, signer[1])
    return obj, key


# -- upload and query -------------------------------------------------------------------------


async def test_upload_and_query_device_keys(client: TestClient, alice: User, bob: User
                                            ) -> None:
    keys, signing = device_keys(alice)
    body = await upload(client, alice, {
        "device_keys": keys, "one_time_keys": one_time_keys(alice, signing, ["A1", "A2"]),
        "fallback_keys": one_time_keys(alice, signing, ["F1"], fallback=True)})
    assert body == {"one_time_key_counts": {"signed_curve25519": 2}}
    await api(client, "PUT", f"/devices/{alice.device_id}", alice, {"display_name": "Phone"})

    data = await query(client, bob, {alice.user_id: [], "@nobody:test.local": [],
                                     "@someone:elsewhere.example": []})
    got = data["device_keys"][alice.user_id][alice.device_id]
    assert got["unsigned"] == {"device_display_name": "Phone"}
    del got["unsigned"]
    assert got == keys  # as uploaded, signatures and all
    assert data["device_keys"]["@nobody:test.local"] == {}
    assert "@someone:elsewhere.example" not in data["device_keys"]
    assert data["failures"] == {}
    # Only the devices asked for.
    data = await query(client, bob, {alice.user_id: ["OTHER"]})
    assert data["device_keys"][alice.user_id] == {}

    # The same keys again are fine; different identity keys are refused.
    assert (await upload(client, alice, {"device_keys": keys}))["one_time_key_counts"] == \
        {"signed_curve25519": 2}
    other, _ = device_keys(alice)
    status, err = await api(client, "POST", "/keys/upload", alice, {"device_keys": other})
    assert_error(status, err, 400, "M_INVALID_PARAM")
    # Another user's or device's keys are refused.
    status, err = await api(client, "POST", "/keys/upload", bob, {"device_keys": keys})
    assert_error(status, err, 400, "M_INVALID_PARAM")
    # A one-time key ID uploaded again with another key.
    status, err = await api(client, "POST", "/keys/upload", alice, {
        "one_time_keys": one_time_keys(alice, generate_signing_key("z"), ["A1"])})
    assert_error(status, err, 400, "M_INVALID_PARAM")


@pytest.mark.parametrize("body", [
    {"device_keys": "x"}, {"device_keys": {"user_id": 1}}, {"one_time_keys": []},
    {"one_time_keys": {"no-colon": "k"}}, {"one_time_keys": {"a:b": 5}},
    {"fallback_keys": {"a:1": "k", "a:2": "k"}},
    {"one_time_keys": {f"signed_curve25519:{i}": "k" for i in range(1001)}},
])
@shared
async def test_bad_uploads_are_matrix_errors(env: Env, body: Json) -> None:
    status, err = await api(env.client, "POST", "/keys/upload", env.alice, body)
    assert status == 400 and err["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), err


@pytest.mark.parametrize(("path", "body"), [
    ("/keys/query", {}), ("/keys/query", {"device_keys": []}),
    ("/keys/query", {"device_keys": {"@a:test.local": "x"}}),
    ("/keys/query", {"device_keys": {"@a:test.local": [1]}}),
    ("/keys/claim", {}), ("/keys/claim", {"one_time_keys": {"@a:test.local": []}}),
    ("/keys/claim", {"one_time_keys": {"@a:test.local": {"D": 1}}}),
    ("/keys/signatures/upload", {"@a:test.local": "x"}),
    ("/keys/device_signing/upload", {"master_key": "x"}),
])
@shared
async def test_bad_requests_are_matrix_errors(env: Env, path: str, body: Json) -> None:
    status, err = await api(env.client, "POST", path, env.alice, body)
    assert status == 400 and err["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM",
                                                "M_MISSING_PARAM"), err


@shared
async def test_keys_need_a_token(env: Env) -> None:
    status, err = await api(env.client, "POST", "/keys/query", None, {"device_keys": {}})
    assert_error(status, err, 401, "M_MISSING_TOKEN")


# -- claim ------------------------------------------------------------------------------------


async def test_claim_hands_out_each_key_once_then_the_fallback(
        client: TestClient, alice: User, bob: User) -> None:
    keys, signing = device_keys(alice)
    otks = one_time_keys(alice, signing, ["K1"])
    await upload(client, alice, {"device_keys": keys, "one_time_keys": otks})
    await upload(client, alice, {"one_time_keys": one_time_keys(alice, signing, ["K2"])})
    fallback = one_time_keys(alice, signing, ["F1"], fallback=True)
    await upload(client, alice, {"fallback_keys": fallback})
    first = await sync(client, alice)
    assert first["device_one_time_keys_count"] == {"signed_curve25519": 2}
    assert first["device_unused_fallback_key_types"] == ["signed_curve25519"]

    wanted = {alice.user_id: {alice.device_id: "signed_curve25519"}, "@x:elsewhere.example":
              {"D": "signed_curve25519"}, "@nobody:test.local": {"D": "signed_curve25519"}}
    got = [await claim(client, bob, wanted) for _ in range(4)]
    # Oldest first, each once; then the fallback key (marked fallback: true) again and again.
    assert got[0]["one_time_keys"] == {alice.user_id: {alice.device_id: otks}}
    assert list(got[1]["one_time_keys"][alice.user_id][alice.device_id]) == \
        ["signed_curve25519:K2"]
    for body in got[2:]:
        assert body["one_time_keys"] == {alice.user_id: {alice.device_id: fallback}}
        assert body["failures"] == {}
    after = await sync(client, alice, since=first["next_batch"])
    assert after["device_one_time_keys_count"] == {"signed_curve25519": 0}
    assert after["device_unused_fallback_key_types"] == []
    # A new fallback key is unused again.
    await upload(client, alice, {"fallback_keys": one_time_keys(alice, signing, ["F2"],
                                                                fallback=True)})
    assert (await sync(client, alice))["device_unused_fallback_key_types"] == \
        ["signed_curve25519"]


async def test_concurrent_claims_never_share_a_key(client: TestClient, alice: User,
                                                   bob: User) -> None:
    keys, signing = device_keys(alice)
    ids = [f"C{i}" for i in range(5)]
    await upload(client, alice, {"device_keys": keys,
                                 "one_time_keys": one_time_keys(alice, signing, ids),
                                 "fallback_keys": one_time_keys(alice, signing, ["F"],
                                                                fallback=True)})
    wanted = {alice.user_id: {alice.device_id: "signed_curve25519"}}
    results = await asyncio.gather(*(claim(client, bob, wanted) for _ in range(20)))
    handed = [next(iter(r["one_time_keys"][alice.user_id][alice.device_id])) for r in results]
    one_time = [k for k in handed if k != "signed_curve25519:F"]
    assert sorted(one_time) == sorted(f"signed_curve25519:{i}" for i in ids)
    assert handed.count("signed_curve25519:F") == 15


async def test_concurrent_claims_of_several_devices(client: TestClient, alice: User,
                                                    bob: User, carol: User) -> None:
    sessions = [alice] + [await device(client, alice) for _ in range(3)]
    for session in sessions:
        keys, signing = device_keys(session)
        await upload(client, session, {"device_keys": keys, "one_time_keys": one_time_keys(
            session, signing, [f"{session.device_id}-{i}" for i in range(5)])})
    # Claims naming the devices in different orders, from two users, all at once.
    orders = [sessions, sessions[::-1], sessions[1:] + sessions[:1]]
    results = await asyncio.gather(*(
        claim(client, (bob, carol)[n % 2],
              {alice.user_id: {s.device_id: "signed_curve25519" for s in orders[n % 3]}})
        for n in range(12)))
    for session in sessions:
        handed = [k for r in results
                  for k in r["one_time_keys"].get(alice.user_id, {}).get(session.device_id, {})]
        # 12 claims, 5 keys, no fallback: each key once, then nothing.
        assert sorted(handed) == sorted(f"signed_curve25519:{session.device_id}-{i}"
                                        for i in range(5))


async def test_claim_for_many_devices_at_once(client: TestClient, alice: User, bob: User
                                              ) -> None:
    sessions = [await device(client, alice) for _ in range(3)]
    for session in sessions:
        keys, signing = device_keys(session)
        await upload(client, session, {"device_keys": keys, "one_time_keys": one_time_keys(
            session, signing, ["1", "2"])})
    wanted = {alice.user_id: {s.device_id: "signed_curve25519" for s in sessions}}
    body = await claim(client, bob, wanted)
    assert sorted(body["one_time_keys"][alice.user_id]) == sorted(s.device_id
                                                                  for s in sessions)
    data = await query(client, bob, {alice.user_id: []})
    assert sorted(data["device_keys"][alice.user_id]) == sorted(s.device_id for s in sessions)


# -- device lists -----------------------------------------------------------------------------


async def test_sync_reports_device_list_changes_of_room_mates(
        client: TestClient, alice: User, bob: User, carol: User) -> None:
    room_id = await shared_room(client, alice, bob)
    start = (await sync(client, bob))["next_batch"]
    carol_start = (await sync(client, carol))["next_batch"]

    # A long poll wakes on a room mate's new device keys.
    poll = asyncio.ensure_future(sync(client, bob, since=start, timeout_ms=10_000))
    await asyncio.sleep(0.3)
    began = time.monotonic()
    await upload(client, alice, {"device_keys": device_keys(alice)[0]})
    body = await asyncio.wait_for(poll, 5)
    assert time.monotonic() - began < 3
    assert body["device_lists"]["changed"] == [alice.user_id]
    # Carol shares no room with alice: nothing for her.
    quiet = await sync(client, carol, since=carol_start, timeout_ms=300)
    assert quiet["device_lists"] == {"changed": [], "left": []}

    status, changes = await api(client, "GET", "/keys/changes", bob,
                                query={"from": start, "to": body["next_batch"]})
    assert status == 200 and changes == {"changed": [alice.user_id], "left": []}

    # Carol joins: bob hears of her; she hears of both.
    since = body["next_batch"]
    await join(client, carol, room_id)
    body = await sync(client, bob, since=since)
    assert carol.user_id in body["device_lists"]["changed"]
    carol_body = await sync(client, carol, since=carol_start)
    assert {alice.user_id, bob.user_id} <= set(carol_body["device_lists"]["changed"])

    # Carol leaves: bob no longer shares a room with her.
    since = body["next_batch"]
    status, _ = await api(client, "POST", f"/rooms/{room_id}/leave", carol, {})
    assert status == 200
    body = await sync(client, bob, since=since)
    assert body["device_lists"]["left"] == [carol.user_id]


async def test_deleting_a_device_deletes_its_keys_and_tells_room_mates(
        client: TestClient, services: Any, alice: User, bob: User) -> None:
    await shared_room(client, alice, bob)
    other = await device(client, alice)
    keys, signing = device_keys(other)
    await upload(client, other, {"device_keys": keys,
                                 "one_time_keys": one_time_keys(other, signing, ["1"]),
                                 "fallback_keys": one_time_keys(other, signing, ["F"],
                                                                fallback=True)})
    since = (await sync(client, bob))["next_batch"]
    status, uia = await api(client, "DELETE", f"/devices/{other.device_id}", alice, {})
    assert status == 401
    status, _ = await api(client, "DELETE", f"/devices/{other.device_id}", alice, {"auth": {
        "type": "m.login.password", "session": uia["session"], "password": PASSWORD,
        "identifier": {"type": "m.id.user", "user": alice.user_id}}})
    assert status == 200
    body = await sync(client, bob, since=since)
    assert body["device_lists"]["changed"] == [alice.user_id]
    assert (await query(client, bob, {alice.user_id: []}))["device_keys"][alice.user_id] == {}
    assert (await claim(client, bob, {alice.user_id: {other.device_id: "signed_curve25519"}})
            )["one_time_keys"] == {}
    assert await services.db.e2e_keys.key_counts(alice.user_id, other.device_id) == ({}, [])


async def test_a_new_sync_token_and_an_old_one(client: TestClient, alice: User) -> None:
    token = (await sync(client, alice))["next_batch"]
    assert token.count("_") == 6
    old = "_".join(token.split("_")[:6])  # a token from before the device-list stream
    body = await sync(client, alice, since=old)
    assert body["next_batch"].count("_") == 6


# -- cross-signing ----------------------------------------------------------------------------


async def setup_cross_signing(client: TestClient, user: User) -> dict[str, Any]:
    master, master_key = cross_signing_key(user, "master")
    master_id = next(iter(master["keys"]))
    ssk, ssk_key = cross_signing_key(user, "self_signing", (master_id, master_key))
    usk, usk_key = cross_signing_key(user, "user_signing", (master_id, master_key))
    status, body = await api(client, "POST", "/keys/device_signing/upload", user, {
        "master_key": master, "self_signing_key": ssk, "user_signing_key": usk})
    assert (status, body) == (200, {}), body
    return {"master": master, "master_key": master_key, "ssk": ssk, "ssk_key": ssk_key,
            "usk": usk, "usk_key": usk_key}


async def test_cross_signing_keys_and_signatures(client: TestClient, alice: User, bob: User
                                                 ) -> None:
    await shared_room(client, alice, bob)
    keys, _ = device_keys(alice)
    await upload(client, alice, {"device_keys": keys})
    since = (await sync(client, bob))["next_batch"]
    a = await setup_cross_signing(client, alice)
    b = await setup_cross_signing(client, bob)
    body = await sync(client, bob, since=since)
    assert alice.user_id in body["device_lists"]["changed"]

    seen_by_bob = await query(client, bob, {alice.user_id: [], bob.user_id: []})
    assert seen_by_bob["master_keys"][alice.user_id] == a["master"]
    assert seen_by_bob["self_signing_keys"][alice.user_id] == a["ssk"]
    # A user-signing key only to its owner.
    assert seen_by_bob["user_signing_keys"] == {bob.user_id: b["usk"]}

    # Alice's self-signing key signs her device; her user-signing key signs bob's master key.
    signed_device = sign_json(copy.deepcopy(keys), alice.user_id, a["ssk_key"])
    signed_master = sign_json(copy.deepcopy(b["master"]), alice.user_id, a["usk_key"])
    forged = sign_json(copy.deepcopy(b["master"]), alice.user_id, generate_signing_key("f"))
    status, result = await api(client, "POST", "/keys/signatures/upload", alice, {
        alice.user_id: {alice.device_id: signed_device, "NOSUCH": signed_device},
        bob.user_id: {next(iter(b["master"]["keys"].values())): signed_master}})
    assert status == 200, result
    assert set(result["failures"].get(alice.user_id, {})) == {"NOSUCH"}
    assert bob.user_id not in result["failures"]
    status, result = await api(client, "POST", "/keys/signatures/upload", alice, {
        bob.user_id: {next(iter(b["master"]["keys"].values())): forged}})
    assert status == 200
    failure = next(iter(result["failures"][bob.user_id].values()))
    assert failure["errcode"] == "M_INVALID_SIGNATURE"

    ssk_id = next(iter(a["ssk"]["keys"]))
    device_sigs = (await query(client, bob, {alice.user_id: []}))["device_keys"][
        alice.user_id][alice.device_id]["signatures"][alice.user_id]
    assert ssk_id in device_sigs and f"ed25519:{alice.device_id}" in device_sigs
    # Alice's verdict on bob's master key is hers: she sees it, bob's other contacts not.
    usk_id = next(iter(a["usk"]["keys"]))
    by_alice = (await query(client, alice, {bob.user_id: []}))["master_keys"][bob.user_id]
    assert usk_id in by_alice["signatures"][alice.user_id]
    carol_view = (await query(client, bob, {bob.user_id: []}))["master_keys"][bob.user_id]
    assert alice.user_id not in carol_view.get("signatures", {}) or \
        bob.user_id == alice.user_id


async def test_replacing_the_master_key_needs_auth(client: TestClient, alice: User) -> None:
    a = await setup_cross_signing(client, alice)
    # The same keys again: no auth (a retry).
    status, body = await api(client, "POST", "/keys/device_signing/upload", alice, {
        "master_key": a["master"], "self_signing_key": a["ssk"]})
    assert (status, body) == (200, {}), body
    new_master, _ = cross_signing_key(alice, "master")
    status, uia = await api(client, "POST", "/keys/device_signing/upload", alice,
                            {"master_key": new_master})
    assert status == 401 and uia["flows"] == [{"stages": ["m.login.password"]}], uia
    status, body = await api(client, "POST", "/keys/device_signing/upload", alice, {
        "master_key": new_master, "auth": {
            "type": "m.login.password", "session": uia["session"], "password": PASSWORD,
            "identifier": {"type": "m.id.user", "user": alice.user_id}}})
    assert (status, body) == (200, {}), body
    got = (await query(client, alice, {alice.user_id: []}))["master_keys"][alice.user_id]
    assert got == new_master


async def test_a_self_signing_key_must_be_signed_by_the_master_key(
        client: TestClient, alice: User) -> None:
    status, body = await api(client, "POST", "/keys/device_signing/upload", alice, {
        "self_signing_key": cross_signing_key(alice, "self_signing")[0]})
    assert_error(status, body, 400, "M_MISSING_PARAM")
    master, _ = cross_signing_key(alice, "master")
    unsigned, _ = cross_signing_key(alice, "self_signing")
    status, body = await api(client, "POST", "/keys/device_signing/upload", alice, {
        "master_key": master, "self_signing_key": unsigned})
    assert_error(status, body, 400, "M_INVALID_SIGNATURE")
    bobs, _ = cross_signing_key(User("@bob:test.local", "", ""), "master")
    status, body = await api(client, "POST", "/keys/device_signing/upload", alice, {
        "master_key": bobs})
    assert_error(status, body, 400, "M_INVALID_PARAM")
