"""The servers the sliding sync client tests run against: Synapse (the reference) and
KT-Chat, each as a real process on loopback with a shared registration secret, so a test
makes the accounts it needs. ``SERVERS`` are the parameters of a module's ``target`` fixture;
the KT-Chat one fails at once when its ``/versions`` does not advertise
``org.matrix.simplified_msc3575``."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.nio_server import run_server
from tests.helpers.sliding_sync_client import UNSTABLE_FEATURE, register, supports_sliding_sync
from tests.helpers.synapse import SynapseServer

PASSWORD = "a long enough password"


@dataclass
class Target:
    """A homeserver under test: where it answers and how to make accounts on it."""

    name: str
    base: str
    shared_secret: str

    def unread(self, count: int) -> int:
        """The ``notification_count`` to expect: Synapse 1.163's sliding sync always sends 0
        (its handler hard-codes the counts; Element X counts unread messages itself from
        receipts); ours counts as ``/sync`` does."""
        return 0 if self.name == "synapse" else count

    async def account(self, prefix: str) -> str:
        """A new account (``prefix`` plus a random tail); returns its localpart."""
        localpart = f"{prefix}{secrets.token_hex(3)}"
        await register(self.base, self.shared_secret, localpart, PASSWORD)
        return localpart


def _synapse(root: Path) -> Iterator[Target]:
    server = SynapseServer(root, "synapse")  # skips (or fails under CI) without Synapse
    server.start()
    try:
        yield Target("synapse", server.client_url, server.shared_secret)
    finally:
        server.stop()


def _ktchat(root: Path) -> Iterator[Target]:
    secret = secrets.token_hex(16)
    runner = run_server(root, users=(), overrides={"registration_shared_secret": secret})
    base = next(runner)
    try:
        # Element X refuses a server that does not advertise it: a failure, never a skip.
        assert asyncio.run(supports_sliding_sync(base)), \
            f"KT-Chat's /versions does not advertise {UNSTABLE_FEATURE}"
        yield Target("ktchat", base, secret)
    finally:
        next(runner, None)  # stops the server; checks its log has no traceback


SERVERS = [pytest.param("synapse", marks=pytest.mark.slow), "ktchat"]


def start_target(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The body of a module-scoped ``target`` fixture parametrised with ``SERVERS``."""
    root = tmp_path_factory.mktemp(f"sliding-sync-{name}")
    yield from (_synapse(root) if name == "synapse" else _ktchat(root))
