"""The federation side of one homeserver process, built once from its ``Services``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from signedjson.types import SigningKey

from federation.backfill import Backfiller
from federation.inbound.limits import OriginLimiter
from federation.inbound.membership import ResidentMembership
from federation.inbound.pdus import PduHandler
from federation.inbound.transaction import TransactionHandler
from federation.keys.keyring import Keyring
from federation.remote_directory import RemoteDirectoryClient
from federation.remote_rooms import RemoteRoomsClient
from federation.sender.queue import FederationSender
from federation.transport.client import FederationClient
from homeserver.services.container import Services

logger = logging.getLogger(__name__)

_TXN_MEMORY_MS = 24 * 3600 * 1000


@dataclass
class Federation:
    server_name: str
    signing_key: SigningKey
    services: Services
    client: FederationClient
    keyring: Keyring
    sender: FederationSender
    pdus: PduHandler
    transactions: TransactionHandler
    resident: ResidentMembership
    remote: RemoteRoomsClient
    backfiller: Backfiller
    directory: RemoteDirectoryClient
    limits: OriginLimiter = field(default_factory=OriginLimiter)
    _cleanup: asyncio.Task[None] | None = field(default=None)

    async def start(self) -> None:
        await self.client.start()
        self.services.membership.remote = self.remote
        self.services.rooms.remote = self.remote
        self.services.profiles.remote = self.remote
        self.services.directory.remote = self.directory
        self.services.rooms.invite_remote = self._invite
        self.services.to_device.remote_queue = self.sender.queue_to_device
        self.services.messages.backfill = self.backfiller.backfill
        await self.sender.start()
        self._cleanup = asyncio.create_task(self._forget_old_transactions())

    async def _forget_old_transactions(self) -> None:
        """Answers to transactions are kept a day: long enough for any retry."""
        while True:
            try:
                await self.services.db.federation.forget_txns_before(
                    self.services.clock.time_ms() - _TXN_MEMORY_MS)
            except Exception:
                logger.exception("Forgetting old federation transactions failed")
            await asyncio.sleep(3600)

    async def _invite(self, inviter: str, room_id: str, target: str, is_direct: bool) -> None:
        await self.services.membership.invite(inviter, room_id, target, is_direct=is_direct)

    async def stop(self) -> None:
        if self._cleanup is not None:
            self._cleanup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleanup
        await self.sender.stop()
        await self.keyring.close()
        await self.client.close()


def build_federation(services: Services) -> Federation:
    config = services.config
    client = FederationClient(config.server_name, services.signing_key, config.federation)
    keyring = Keyring(services.db.server_keys, client, services.clock, config.server_name,
                      services.signing_key, config.federation.trusted_key_servers)
    sender = FederationSender(services.db.federation, client, services, config)
    services.roomserver.add_commit_listener(sender)
    pdus = PduHandler(services, keyring, client)
    return Federation(config.server_name, services.signing_key, services, client, keyring,
                      sender, pdus, TransactionHandler(services, pdus),
                      ResidentMembership(services, pdus), RemoteRoomsClient(services, client, pdus),
                      Backfiller(services, client, pdus), RemoteDirectoryClient(client))
