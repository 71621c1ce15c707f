"""A third device added mid-conversation receives the room key for new messages, across two
of our servers: alice on A and bob on B (matrix-nio, encryption on) talk in an encrypted room;
bob logs in a second device on B. A learns of it from B's ``m.device_list_update`` EDU and
puts bob in alice's ``device_lists.changed``; her client's /keys/query on A asks B
(``/user/keys/query``) and finds the new device, claims one of its one-time keys through B,
and shares her next message's room key with it. Both of bob's devices decrypt that message;
the new one cannot decrypt what was said before it existed (the scenario is
``third_device_joins`` in tests/test_e2e_nio_third_device.py). Both servers on SQLite, then
with B on PostgreSQL.

A message may reach a device's sync before its room key does: one transaction carrying the
encrypted event and the ``m.direct_to_device`` EDU with its key is handled PDUs first, then
EDUs (federation/inbound/transaction.py), so a waiting sync can answer with the event alone
and bring the key in the next response. Clients decrypt such an event again once the key is
there; nio does not by itself, and ``tests.test_e2e_nio.receive`` only looks at events as they
arrive, so ``receive_late_keys`` below retries held events after each sync."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import nio
import pytest

from tests.federation.test_e2e_nio_federation import nio_client
from tests.helpers.federation import PASSWORD, FedPair
from tests.test_e2e_nio import turn
from tests.test_e2e_nio_third_device import third_device_joins

if not nio.crypto.ENCRYPTION_ENABLED:  # pragma: no cover
    pytest.skip("matrix-nio was installed without its e2e extra", allow_module_level=True)


async def receive_late_keys(client: nio.AsyncClient, room_id: str, body: str,
                            seconds: float = 20) -> None:
    """Sync until ``body`` is decrypted in the room: as it arrives, or after a later sync
    brought the key of an event held undecrypted."""
    assert client.olm is not None
    deadline = time.monotonic() + seconds
    held: list[nio.MegolmEvent] = []
    while time.monotonic() < deadline:
        resp = await turn(client, 1000)
        room = resp.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if isinstance(event, nio.RoomMessageText) and event.body == body:
                assert event.decrypted, "the message was not encrypted"
                return
            if isinstance(event, nio.MegolmEvent):
                held.append(event)
        for event in list(held):
            try:
                decrypted = client.olm.decrypt_megolm_event(event, room_id)
            except nio.EncryptionError:
                continue  # no key for it (yet)
            held.remove(event)
            if isinstance(decrypted, nio.RoomMessageText) and decrypted.body == body:
                return
    raise AssertionError(f"{client.user_id} never decrypted {body!r} "
                         f"({len(held)} events still undecryptable)")


async def test_third_device_on_the_other_server_gets_the_new_room_key(
        fed_pair: FedPair, tmp_path: Path) -> None:
    await _scenario(fed_pair, tmp_path)


async def test_third_device_on_the_other_server_gets_the_new_room_key_postgres(
        fed_pair_pg: FedPair, tmp_path: Path) -> None:
    """The same with B (bob's server, which announces his new device) on PostgreSQL."""
    await _scenario(fed_pair_pg, tmp_path)


async def _scenario(pair: FedPair, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    for name in ("alice", "bob", "bob2"):
        (tmp_path / name).mkdir()
    alice = await nio_client(pair.a, f"nioalice{tag}", tmp_path / "alice")
    bob = await nio_client(pair.b, f"niobob{tag}", tmp_path / "bob")

    async def new_bob_device() -> nio.AsyncClient:
        """bob (already registered) logs in once more on B: a new device."""
        client = nio.AsyncClient(pair.b.client_url, bob.user_id,
                                 store_path=str(tmp_path / "bob2"),
                                 config=nio.AsyncClientConfig(encryption_enabled=True,
                                                              store_sync_tokens=False))
        login = await client.login(PASSWORD, device_name="bob's second nio")
        assert isinstance(login, nio.LoginResponse), login
        return client

    try:
        await third_device_joins(alice, bob, new_bob_device, receive_late_keys)
    finally:
        await alice.close()
        await bob.close()
