"""End-to-end encryption across servers with real clients: matrix-nio with
encryption on, alice on A and bob on B (real processes, TLS between them), in an encrypted
room. Each finds the other's device through its own server's ``/keys/query``, which asks the
other server (``/user/keys/query``), claims a one-time key the same way, and each decrypts
the other's messages (nio asks for the keys of an encrypted room's members when it first
sees them; later changes come as device-list EDUs, tests/federation/test_device_list_edus.py).

The same between our server and Synapse, each inviting the other's user.

As users start a direct chat: alice invites bob, bob accepts the invite on his own server
(an earlier sync bug gave a room joined this way an empty state, so nio never learned the
room was encrypted nor that alice was in it)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import nio
import pytest

from tests.helpers.federation import PASSWORD, FedPair
from tests.test_e2e_nio import encrypted_chat

if not nio.crypto.ENCRYPTION_ENABLED:  # pragma: no cover
    pytest.skip("matrix-nio was installed without its e2e extra", allow_module_level=True)


async def nio_client(server: Any, localpart: str, store: Path) -> nio.AsyncClient:
    """A new user of ``server``, logged in with encryption on."""
    await server.register(localpart)
    return await nio_login(server, server.user_id(localpart), store, f"{localpart}'s nio")


async def nio_login(server: Any, user_id: str, store: Path, device_name: str
                    ) -> nio.AsyncClient:
    """A new device of a user of ``server``, encryption on (``store``: its keys)."""
    client = nio.AsyncClient(server.client_url, user_id, store_path=str(store),
                             config=nio.AsyncClientConfig(encryption_enabled=True,
                                                          store_sync_tokens=False))
    login = await client.login(PASSWORD, device_name=device_name)
    assert isinstance(login, nio.LoginResponse), login
    return client


async def _clients(host: Any, guest: Any, tmp_path: Path
                   ) -> tuple[nio.AsyncClient, nio.AsyncClient]:
    tag = uuid.uuid4().hex[:8]
    for name in ("alice", "bob"):
        (tmp_path / name).mkdir()
    return (await nio_client(host, f"nioalice{tag}", tmp_path / "alice"),
            await nio_client(guest, f"niobob{tag}", tmp_path / "bob"))


async def _encrypted_chat(host: Any, guest: Any, tmp_path: Path) -> None:
    """alice on ``host`` invites bob on ``guest`` to an encrypted room; each decrypts the
    other's message."""
    alice, bob = await _clients(host, guest, tmp_path)
    try:
        await encrypted_chat(alice, bob)
    finally:
        await alice.close()
        await bob.close()


async def test_nio_clients_on_two_servers_exchange_encrypted_messages(
        fed_pair: FedPair, tmp_path: Path) -> None:
    await _encrypted_chat(fed_pair.a, fed_pair.b, tmp_path)


@pytest.mark.parametrize("direction", ["ours_invites_synapse", "synapse_invites_ours"])
async def test_nio_clients_on_our_server_and_synapse_exchange_encrypted_messages(
        interop: FedPair, direction: str, tmp_path: Path) -> None:
    ours, synapse = interop.a, interop.b
    host, guest = (ours, synapse) if direction == "ours_invites_synapse" else (synapse, ours)
    await _encrypted_chat(host, guest, tmp_path)
