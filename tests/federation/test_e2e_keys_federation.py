"""End-to-end keys across two KT-Chat servers (real processes, TLS on loopback): a user on A
uploads device keys, one-time and fallback keys and cross-signing keys; bob on B queries and
claims them through B's client API (``/keys/query``, ``/keys/claim``), which asks A over
federation. Signatures arrive intact, each one-time key once; a server that cannot be reached
is in ``failures``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from signedjson.types import SigningKey

from homeserver.services.container import Services
from homeserver.services.device_list_announcer import DeviceListAnnouncer
from homeserver.services.e2e_keys import E2EKeyService
from homeserver.services.local_keys import LocalKeys
from homeserver.services.ports import RemoteKeysFailed
from homeserver.services.remote_device_lists import RemoteDeviceLists
from tests.helpers.federation import FedPair, User
from tests.helpers.processes import free_port

ALGORITHM = "m.olm.v1.curve25519-aes-sha2"


def _xkey() -> SigningKey:
    """A cross-signing key: its key ID is its public key."""
    key = generate_signing_key("x")
    key.version = encode_verify_key_base64(get_verify_key(key))
    return key


def _cross_signing(user_id: str, usage: str, key: SigningKey, signer: SigningKey
                   ) -> dict[str, Any]:
    public = encode_verify_key_base64(get_verify_key(key))
    return sign_json({"user_id": user_id, "usage": [usage],
                      "keys": {f"ed25519:{public}": public}}, user_id, signer)


async def upload_keys(user: User, otks: int = 3) -> dict[str, Any]:
    """Device keys, ``otks`` signed one-time keys, a fallback key, master and self-signing
    keys of ``user``'s device: what was uploaded."""
    device_key = generate_signing_key(user.device_id)
    device = sign_json({"user_id": user.user_id, "device_id": user.device_id,
                        "algorithms": [ALGORITHM],
                        "keys": {f"ed25519:{user.device_id}": encode_verify_key_base64(
                            get_verify_key(device_key)),
                            f"curve25519:{user.device_id}": uuid.uuid4().hex}},
                       user.user_id, device_key)
    one_time = {f"signed_curve25519:K{n}": sign_json({"key": uuid.uuid4().hex}, user.user_id,
                                                      device_key) for n in range(otks)}
    fallback = {"signed_curve25519:FB": sign_json({"key": uuid.uuid4().hex, "fallback": True},
                                                  user.user_id, device_key)}
    answer = await user.request("POST", "/keys/upload", {
        "device_keys": device, "one_time_keys": one_time, "fallback_keys": fallback})
    assert answer["one_time_key_counts"]["signed_curve25519"] == otks
    master_key = _xkey()
    master = _cross_signing(user.user_id, "master", master_key, device_key)
    self_signing = _cross_signing(user.user_id, "self_signing", _xkey(), master_key)
    user_signing = _cross_signing(user.user_id, "user_signing", _xkey(), master_key)
    await user.request("POST", "/keys/device_signing/upload", {
        "master_key": master, "self_signing_key": self_signing,
        "user_signing_key": user_signing})
    return {"device": device, "one_time": one_time, "fallback": fallback, "master": master,
            "self_signing": self_signing}


async def test_query_and_claim_across_servers(fed_pair: FedPair) -> None:
    a, bob = fed_pair.a, fed_pair.bob
    carol = await a.register(f"carol{uuid.uuid4().hex[:8]}")
    uploaded = await upload_keys(carol)

    for wanted in ([], [carol.device_id]):
        body = await bob.request("POST", "/keys/query",
                                 {"device_keys": {carol.user_id: wanted}})
        assert body["failures"] == {}
        # Byte-exact objects: the signatures still verify (no display name over
        # federation, so nothing was added).
        assert body["device_keys"] == {carol.user_id: {carol.device_id: uploaded["device"]}}
        assert body["master_keys"] == {carol.user_id: uploaded["master"]}
        assert body["self_signing_keys"] == {carol.user_id: uploaded["self_signing"]}
        assert body.get("user_signing_keys", {}) == {}

    claimed = []
    for _ in range(len(uploaded["one_time"]) + 1):
        body = await bob.request("POST", "/keys/claim", {"one_time_keys": {
            carol.user_id: {carol.device_id: "signed_curve25519"}}})
        assert body["failures"] == {}
        assert list(body["one_time_keys"]) == [carol.user_id]
        claimed.append(body["one_time_keys"][carol.user_id][carol.device_id])
    # Each one-time key once, then the fallback key.
    assert sorted(map(str, claimed[:-1])) == sorted(
        str({k: v}) for k, v in uploaded["one_time"].items())
    assert claimed[-1] == uploaded["fallback"]
    # carol's device hears its count went down.
    counts = await carol.request("POST", "/keys/upload", {})
    assert counts["one_time_key_counts"]["signed_curve25519"] == 0


async def test_unreachable_server_in_failures(fed_pair: FedPair) -> None:
    a, bob = fed_pair.a, fed_pair.bob
    carol = await a.register(f"carol{uuid.uuid4().hex[:8]}")
    uploaded = await upload_keys(carol, otks=1)
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    ghost = f"@ghost:{down}"

    body = await bob.request("POST", "/keys/query", {
        "device_keys": {carol.user_id: [], ghost: []}, "timeout": 5000})
    assert body["device_keys"] == {carol.user_id: {carol.device_id: uploaded["device"]}}
    assert list(body["failures"]) == [down]
    assert body["failures"][down]["status"] == 503

    body = await bob.request("POST", "/keys/claim", {"one_time_keys": {
        carol.user_id: {carol.device_id: "signed_curve25519"},
        ghost: {"DEV": "signed_curve25519"}}, "timeout": 5000})
    assert body["one_time_keys"] == {carol.user_id: {carol.device_id: uploaded["one_time"]}}
    assert list(body["failures"]) == [down]
    assert body["failures"][down]["status"] == 503


async def test_server_down_then_back(fed_pair: FedPair) -> None:
    """A that is stopped is a failure for B's clients (the fixture starts it again)."""
    a, bob = fed_pair.a, fed_pair.bob
    carol = await a.register(f"carol{uuid.uuid4().hex[:8]}")
    await upload_keys(carol, otks=1)
    a.stop()
    body = await bob.request("POST", "/keys/query", {
        "device_keys": {carol.user_id: []}, "timeout": 3000})
    assert body["device_keys"] == {}
    assert body["failures"][a.server_name]["status"] == 503


# -- what other servers answer: only what was asked is kept ------------------------------

EVIL = "evil.example"
OTHER = "other.example"


class FakeRemoteKeys:
    """Answers per server as given: a JSON value, an exception to raise, or a wait."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str, dict[str, Any], float]] = []

    async def _answer(self, what: str, server: str, body: Mapping[str, Any],
                      timeout_s: float) -> Any:
        self.asked.append((what, server, dict(body), timeout_s))
        answer = self.answers[server]
        if isinstance(answer, BaseException):
            raise answer
        if answer == "hang":
            await asyncio.sleep(3600)
        return answer

    async def query(self, server: str, body: Mapping[str, Any], timeout_s: float) -> Any:
        return await self._answer("query", server, body, timeout_s)

    async def claim(self, server: str, body: Mapping[str, Any], timeout_s: float) -> Any:
        return await self._answer("claim", server, body, timeout_s)

    async def devices(self, server: str, user_id: str, timeout_s: float) -> Any:
        return await self._answer("devices", server, {"user_id": user_id}, timeout_s)


def _service(services: Services, remote: FakeRemoteKeys) -> E2EKeyService:
    lists = RemoteDeviceLists(services.db.remote_device_lists, services.members,
                              services.roomserver, remote, services.notifier, services.clock,
                              services.config.server_name)
    local = LocalKeys(services.db.e2e_keys)
    return E2EKeyService(services.db.e2e_keys, services.db.sync, services.members,
                         services.notifier, services.clock, services.config.server_name,
                         local, DeviceListAnnouncer(services.db.e2e_keys, local, None),
                         remote=remote, remote_lists=lists)


def _device(user_id: str, device_id: str) -> dict[str, Any]:
    return {"user_id": user_id, "device_id": device_id, "algorithms": [ALGORITHM],
            "keys": {f"ed25519:{device_id}": "pub"}, "signatures": {user_id: {
                f"ed25519:{device_id}": "sig"}}}


def _master(user_id: str, usage: str = "master") -> dict[str, Any]:
    return {"user_id": user_id, "usage": [usage], "keys": {"ed25519:K": "K"}}


async def test_remote_query_keeps_only_what_was_asked(services: Services) -> None:
    eve, eve2, mallory = f"@eve:{EVIL}", f"@eve2:{EVIL}", f"@mallory:{OTHER}"
    local = f"@alice:{services.config.server_name}"
    remote = FakeRemoteKeys({
        EVIL: {
            "device_keys": {
                eve: {"D1": _device(eve, "D1"),
                      "D2": _device(eve, "D2"),  # not asked for
                      "D3": _device(eve, "OTHER"),  # names another device
                      "D4": _device(mallory, "D4"),  # names another user
                      "D5": "junk"},
                eve2: {"E1": _device(eve2, "E1")},  # all devices asked for
                mallory: {"M1": _device(mallory, "M1")},  # another server's user
                local: {"L1": _device(local, "L1")},  # ours
                "@notasked:evil.example": {"N": _device("@notasked:evil.example", "N")},
            },
            "master_keys": {eve: _master(eve), mallory: _master(mallory),
                            eve2: _master(eve)},  # names another user
            "self_signing_keys": {eve: _master(eve, "master")},  # the wrong usage
            "user_signing_keys": {eve: _master(eve, "user_signing")},
        },
        OTHER: RemoteKeysFailed(503, f"{OTHER} could not be reached"),
    })
    keys = _service(services, remote)
    body = await keys.query(local, {"device_keys": {eve: ["D1", "D3", "D4", "D5"], eve2: [],
                                                    mallory: []}, "timeout": 2500})
    assert body["device_keys"] == {eve: {"D1": _device(eve, "D1")},
                                   eve2: {"E1": _device(eve2, "E1")}}
    assert body["master_keys"] == {eve: _master(eve)}
    assert body["self_signing_keys"] == {}
    assert body["user_signing_keys"] == {}
    assert body["failures"] == {OTHER: {"status": 503,
                                        "message": f"{OTHER} could not be reached"}}
    # One request per server, with only its users, and the client's timeout.
    assert sorted(remote.asked, key=lambda a: a[1]) == [
        ("query", EVIL, {"device_keys": {eve: ["D1", "D3", "D4", "D5"], eve2: []}}, 2.5),
        ("query", OTHER, {"device_keys": {mallory: []}}, 2.5)]


async def test_remote_claim_keeps_only_what_was_asked(services: Services) -> None:
    eve, mallory = f"@eve:{EVIL}", f"@mallory:{OTHER}"
    key = {"key": "k", "signatures": {eve: {"ed25519:D1": "sig"}}}
    remote = FakeRemoteKeys({
        EVIL: {"one_time_keys": {
            eve: {"D1": {"signed_curve25519:A": key, "signed_curve25519:B": key},  # one kept
                  "D2": {"curve25519:X": "wrong-algorithm"},
                  "D9": {"signed_curve25519:C": key}},  # not asked for
            mallory: {"M1": {"signed_curve25519:M": key}},  # another server's user
        }},
        OTHER: "hang",
    })
    keys = _service(services, remote)
    body = await keys.claim({"one_time_keys": {
        eve: {"D1": "signed_curve25519", "D2": "signed_curve25519"},
        mallory: {"M1": "signed_curve25519"}}, "timeout": 200})
    assert body["one_time_keys"] == {eve: {"D1": {"signed_curve25519:A": key}}}
    assert list(body["failures"]) == [OTHER]
    assert body["failures"][OTHER]["status"] == 503


@pytest.mark.parametrize("answer", [["not", "an", "object"], {"device_keys": []}, {}])
async def test_remote_query_junk(services: Services, answer: Any) -> None:
    eve = f"@eve:{EVIL}"
    keys = _service(services, FakeRemoteKeys({EVIL: answer}))
    body = await keys.query(f"@alice:{services.config.server_name}",
                            {"device_keys": {eve: []}})
    assert body["device_keys"] == {}
    if isinstance(answer, list):
        assert body["failures"][EVIL]["status"] == 502
    else:
        assert body["failures"] == {}
    body = await keys.claim({"one_time_keys": {eve: {"D": "signed_curve25519"}}})
    assert body["one_time_keys"] == {}


async def test_bad_timeout(services: Services) -> None:
    keys = _service(services, FakeRemoteKeys({}))
    for timeout in ("soon", -1, True):
        with pytest.raises(Exception, match="timeout"):
            await keys.query("@a:b", {"device_keys": {}, "timeout": timeout})
