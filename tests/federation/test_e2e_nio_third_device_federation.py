"""A third device added mid-conversation receives the room key for new messages, across two
of our servers: alice on A and bob on B (matrix-nio, encryption on) talk in an encrypted room;
bob logs in a second device on B. A learns of it from B's ``m.device_list_update`` EDU and
puts bob in alice's ``device_lists.changed``; her client's /keys/query on A asks B
(``/user/keys/query``) and finds the new device, claims one of its one-time keys through B,
and shares her next message's room key with it. Both of bob's devices decrypt that message;
the new one cannot decrypt what was said before it existed (the scenario is
``third_device_joins`` in tests/test_e2e_nio_third_device.py). Both servers on SQLite, then
with B on PostgreSQL.

(This test found that a transaction's room key could reach a sync after the message it
carried with it, which nio never decrypts then: keys now go first,
tests/federation/test_transaction_order.py.)"""

from __future__ import annotations

import uuid
from pathlib import Path

import nio
import pytest

from tests.federation.test_e2e_nio_federation import nio_client, nio_login
from tests.helpers.federation import FedPair
from tests.test_e2e_nio_third_device import third_device_joins

if not nio.crypto.ENCRYPTION_ENABLED:  # pragma: no cover
    pytest.skip("matrix-nio was installed without its e2e extra", allow_module_level=True)


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
        return await nio_login(pair.b, bob.user_id, tmp_path / "bob2", "bob's second nio")

    try:
        await third_device_joins(alice, bob, new_bob_device)
    finally:
        await alice.close()
        await bob.close()
