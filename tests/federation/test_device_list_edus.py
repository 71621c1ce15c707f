"""Device-list and cross-signing changes travel between servers as EDUs
(``m.device_list_update``, ``m.signing_key_update``).

Two of our servers as real processes (alice on A, bob on B, sharing a room; on SQLite, then
both on PostgreSQL) and a fake peer (``FakePeer``: mallory, in a room of alice's only, none of
bob's). bob's new device, deleted device, cross-signing keys and signature over his device put
bob in alice's ``device_lists.changed``; an EDU about a user not of the server that sends it,
or malformed, changes nothing; the fake peer, sharing no room with bob, hears nothing of him
but hears of alice's devices (``stream_id``/``prev_id`` chained), also after being down for a
while (the durable queue), and of her cross-signing keys and signatures.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key
from signedjson.sign import sign_json
from signedjson.types import SigningKey

from tests.conftest import postgres_url
from tests.helpers.fake_peer import FakePeer
from tests.helpers.federation import PASSWORD, FedServer, PostgresDatabase, User

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALGORITHM = "m.olm.v1.curve25519-aes-sha2"


@dataclass
class Env:
    a: FedServer
    b: FedServer
    alice: User
    bob: User
    peer: FakePeer
    mallory: str


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgres"])
async def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp("devicelists")
    databases: list[PostgresDatabase] = []
    urls: list[str | None] = [None, None]
    if request.param == "postgres":  # both servers on PostgreSQL
        url = postgres_url()
        assert url is not None
        for i in range(2):
            db = PostgresDatabase(url)
            await db.create()
            databases.append(db)
            urls[i] = db.url
    a = FedServer(root, "A", database_url=urls[0])
    b = FedServer(root, "B", database_url=urls[1])
    peer = FakePeer(root / "fake")
    await peer.start()
    a.start()
    b.start()
    try:
        alice = await a.register("alice")
        bob = await b.register("bob")
        shared = await alice.create_room(preset="public_chat", name="shared")
        assert await bob.join(shared, via=[a.server_name]) == shared
        await alice.wait_for_membership(shared, bob.user_id, "join")
        # mallory (the fake peer) shares a room with alice, none with bob.
        alone = await alice.create_room(preset="public_chat", name="alice and mallory")
        mallory = peer.user_id("mallory")
        await peer.join(a, alone, mallory)
        assert mallory in await alice.joined_members(alone)
        yield Env(a, b, alice, bob, peer, mallory)
    finally:
        a.stop()
        b.stop()
        await peer.close()
        for db in databases:
            await db.drop()


def device_keys(user: User) -> dict[str, Any]:
    key = generate_signing_key(user.device_id)
    return sign_json({"user_id": user.user_id, "device_id": user.device_id,
                      "algorithms": [ALGORITHM],
                      "keys": {f"ed25519:{user.device_id}":
                               encode_verify_key_base64(get_verify_key(key)),
                               f"curve25519:{user.device_id}": uuid.uuid4().hex}},
                     user.user_id, key)


def _xkey() -> SigningKey:
    key = generate_signing_key("x")
    key.version = encode_verify_key_base64(get_verify_key(key))
    return key


def _cross_signing(user_id: str, usage: str, key: SigningKey, signer: SigningKey
                   ) -> dict[str, Any]:
    public = encode_verify_key_base64(get_verify_key(key))
    return sign_json({"user_id": user_id, "usage": [usage],
                      "keys": {f"ed25519:{public}": public}}, user_id, signer)


def changed(user_id: str) -> Any:
    def found(response: dict[str, Any]) -> bool:
        return user_id in response.get("device_lists", {}).get("changed", [])
    found.__qualname__ = f"{user_id} in device_lists.changed"
    return found


def peer_edus(peer: FakePeer, edu_type: str) -> list[dict[str, Any]]:
    """The contents of the EDUs of ``edu_type`` the fake peer received, in order."""
    return [edu["content"] for _, _, body in peer.received if isinstance(body, dict)
            for edu in body.get("edus", []) if edu.get("edu_type") == edu_type]


async def test_new_device_deleted_device_and_cross_signing_reach_remote_sync(env: Env
                                                                             ) -> None:
    alice, b = env.alice, env.b
    # A new device of bob's uploads its keys.
    await alice.catch_up()
    second = await b.login(env.bob.localpart)
    keys = device_keys(second)
    await second.request("POST", "/keys/upload", {"device_keys": keys})
    await alice.wait_for(changed(env.bob.user_id))
    # ... and A's /keys/query (asking B) has it.
    body = await alice.request("POST", "/keys/query",
                               {"device_keys": {env.bob.user_id: []}})
    assert body["device_keys"][env.bob.user_id][second.device_id] == keys

    # The device is deleted (logging out deletes it).
    await alice.catch_up()
    await second.request("POST", "/logout", {})
    await alice.wait_for(changed(env.bob.user_id))

    # bob uploads cross-signing keys (the first upload needs no user-interactive auth).
    await alice.catch_up()
    first_key = generate_signing_key(env.bob.device_id)
    master_key = _xkey()
    await env.bob.request("POST", "/keys/device_signing/upload", {
        "master_key": _cross_signing(env.bob.user_id, "master", master_key, first_key),
        "self_signing_key": _cross_signing(env.bob.user_id, "self_signing", _xkey(),
                                           master_key)})
    await alice.wait_for(changed(env.bob.user_id))

    # The fake peer shares no room with bob: it heard nothing of him.
    for edu_type in ("m.device_list_update", "m.signing_key_update"):
        assert not [c for c in peer_edus(env.peer, edu_type)
                    if c.get("user_id") == env.bob.user_id]


async def test_edu_about_a_user_not_of_its_origin_is_ignored(env: Env) -> None:
    alice, peer = env.alice, env.peer
    await alice.catch_up()
    seen: set[str] = set()

    def mallory_changed(response: dict[str, Any]) -> bool:
        seen.update(response.get("device_lists", {}).get("changed", []))
        return env.mallory in seen

    forged = [
        {"edu_type": "m.device_list_update",
         "content": {"user_id": env.bob.user_id, "device_id": "FORGED", "stream_id": 1,
                     "prev_id": [], "deleted": True}},
        {"edu_type": "m.signing_key_update", "content": {"user_id": env.bob.user_id}},
        {"edu_type": "m.device_list_update", "content": {"user_id": env.alice.user_id,
                                                         "device_id": "X", "stream_id": 1}},
        # Malformed: ignored, never an error.
        {"edu_type": "m.device_list_update", "content": {"user_id": env.mallory}},
        {"edu_type": "m.device_list_update", "content": {"user_id": env.mallory,
                                                         "device_id": "NOSTREAM"}},
        {"edu_type": "m.device_list_update", "content": {"user_id": env.mallory,
                                                         "device_id": ["no"]}},
        {"edu_type": "m.signing_key_update", "content": "nope"},
        {"edu_type": "m.device_list_update", "content": {"user_id": 7, "device_id": "D"}},
    ]
    status, answer = await peer.send_transaction(env.a, [], forged)
    assert status == 200, answer
    # The answer comes once the EDUs are applied: nothing changed for alice's sync.
    quiet = await alice.sync(alice.next_batch, 0)
    assert not {env.bob.user_id, env.alice.user_id, env.mallory} & set(
        quiet.get("device_lists", {}).get("changed", [])), quiet.get("device_lists")
    # Then a genuine one, about the peer's own user who shares a room with alice.
    genuine = {"edu_type": "m.device_list_update",
               "content": {"user_id": env.mallory, "device_id": "MALLORYDEV", "stream_id": 1,
                           "prev_id": [], "keys": {}}}
    status, answer = await peer.send_transaction(env.a, [], [genuine])
    assert status == 200, answer
    await alice.wait_for(mallory_changed)
    assert env.bob.user_id not in seen
    assert env.alice.user_id not in seen

    # A user of the peer's who shares no room here changes nothing either.
    await alice.catch_up()
    stranger = {"edu_type": "m.signing_key_update",
                "content": {"user_id": peer.user_id("stranger")}}
    status, answer = await peer.send_transaction(env.a, [], [stranger, genuine])
    assert status == 200, answer
    seen.clear()
    await alice.wait_for(mallory_changed)
    assert peer.user_id("stranger") not in seen


async def test_peer_sharing_a_room_gets_chained_updates_even_after_being_down(env: Env
                                                                             ) -> None:
    alice, peer, a = env.alice, env.peer, env.a

    def alice_updates() -> list[dict[str, Any]]:
        return [c for c in peer_edus(peer, "m.device_list_update")
                if c.get("user_id") == alice.user_id]

    async def until(predicate: Any, within: float = 20) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not predicate():
            assert loop.time() < deadline, peer_edus(peer, "m.device_list_update")
            await asyncio.sleep(0.1)

    before = len(alice_updates())
    first = await a.login(alice.localpart)
    first_keys = device_keys(first)
    await first.request("POST", "/keys/upload", {"device_keys": first_keys})
    await until(lambda: len(alice_updates()) > before)
    sent = alice_updates()[-1]
    assert sent["device_id"] == first.device_id and sent["keys"] == first_keys
    assert isinstance(sent["stream_id"], int) and "deleted" not in sent
    assert "device_display_name" not in sent

    # The peer is down while alice's device is deleted; it hears of it once back.
    await peer.close()
    try:
        await first.request("POST", "/logout", {})
        await asyncio.sleep(1)
    finally:
        for name in ("tls.crt", "tls.key"):  # start() makes them anew
            (peer.dir / name).unlink()
        await peer.start()
    await until(lambda: alice_updates()[-1].get("deleted") is True, within=30)
    gone = alice_updates()[-1]
    assert gone["device_id"] == first.device_id
    assert gone["prev_id"] == [sent["stream_id"]]
    assert gone["stream_id"] > sent["stream_id"]
    assert "keys" not in gone


async def test_cross_signing_and_signatures_reach_a_peer_sharing_a_room(env: Env) -> None:
    alice, peer, a = env.alice, env.peer, env.a

    def of_alice(edu_type: str) -> list[dict[str, Any]]:
        return [c for c in peer_edus(peer, edu_type) if c.get("user_id") == alice.user_id]

    async def until(predicate: Any) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not predicate():
            assert loop.time() < deadline, peer.received[-5:]
            await asyncio.sleep(0.1)

    device = await a.login(alice.localpart)
    device_key = generate_signing_key(device.device_id)
    keys = sign_json({"user_id": alice.user_id, "device_id": device.device_id,
                      "algorithms": [ALGORITHM],
                      "keys": {f"ed25519:{device.device_id}":
                               encode_verify_key_base64(get_verify_key(device_key)),
                               f"curve25519:{device.device_id}": uuid.uuid4().hex}},
                     alice.user_id, device_key)
    await device.request("POST", "/keys/upload", {"device_keys": keys})
    master_key, self_signing_key = _xkey(), _xkey()
    master = _cross_signing(alice.user_id, "master", master_key, device_key)
    self_signing = _cross_signing(alice.user_id, "self_signing", self_signing_key, master_key)
    before = len(of_alice("m.signing_key_update"))
    await device.request("POST", "/keys/device_signing/upload", {
        "master_key": master, "self_signing_key": self_signing,
        "user_signing_key": _cross_signing(alice.user_id, "user_signing", _xkey(),
                                           master_key)})
    await until(lambda: len(of_alice("m.signing_key_update")) > before)
    update = of_alice("m.signing_key_update")[-1]
    assert update["master_key"]["keys"] == master["keys"]
    assert update["self_signing_key"]["keys"] == self_signing["keys"]
    assert "user_signing_key" not in update

    # alice's self-signing key signs her device: the peer gets the device's keys with it.
    ssk_id = f"ed25519:{self_signing_key.version}"
    signed = sign_json(dict(keys), alice.user_id, self_signing_key)
    answer = await device.request("POST", "/keys/signatures/upload",
                                  {alice.user_id: {device.device_id: signed}})
    assert answer["failures"] == {}

    def signed_device() -> bool:
        return any(c.get("device_id") == device.device_id
                   and ssk_id in c.get("keys", {}).get("signatures", {}).get(alice.user_id, {})
                   for c in of_alice("m.device_list_update"))

    await until(signed_device)

    # bob's own signature over his device puts him in alice's device_lists.changed.
    bob = env.bob
    bob_device_key = generate_signing_key(bob.device_id)
    bob_keys = sign_json({"user_id": bob.user_id, "device_id": bob.device_id,
                          "algorithms": [ALGORITHM],
                          "keys": {f"ed25519:{bob.device_id}":
                                   encode_verify_key_base64(get_verify_key(bob_device_key)),
                                   f"curve25519:{bob.device_id}": uuid.uuid4().hex}},
                         bob.user_id, bob_device_key)
    await bob.request("POST", "/keys/upload", {"device_keys": bob_keys})
    bob_master, bob_ssk = _xkey(), _xkey()
    # bob's first upload was in the first test: replacing keys needs user-interactive auth.
    body = {"master_key": _cross_signing(bob.user_id, "master", bob_master, bob_device_key),
            "self_signing_key": _cross_signing(bob.user_id, "self_signing", bob_ssk,
                                               bob_master)}
    status, challenge = await bob.raw("POST", "/keys/device_signing/upload", body)
    if status == 401:
        body["auth"] = {"type": "m.login.password", "session": challenge["session"],
                        "identifier": {"type": "m.id.user", "user": bob.localpart},
                        "password": PASSWORD}
        await bob.request("POST", "/keys/device_signing/upload", body)
    # Those changes' EDUs reach A first (B sends them in order), then alice waits afresh.
    await alice.wait_for(changed(bob.user_id))
    await asyncio.sleep(1)
    await alice.catch_up()
    answer = await bob.request("POST", "/keys/signatures/upload", {
        bob.user_id: {bob.device_id: sign_json(dict(bob_keys), bob.user_id, bob_ssk)}})
    assert answer["failures"] == {}
    await alice.wait_for(changed(bob.user_id))
