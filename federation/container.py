"""The federation side of one homeserver process, built by the composition root in two steps.

1. :func:`build_outbound`, before the services: what services ask of other servers (joining
   their rooms, their directories and profiles, their users' keys, to-device messages,
   backfill) and the
   durable outbound queue. It needs only the roomserver, storage and the keys.
2. :func:`build_federation`, after them: the server-server API's handlers, given the local
   services they answer from, one by one (never the services container).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from signedjson.types import SigningKey

from core.clock import Clock
from federation.backfill import Backfiller
from federation.inbound.limits import OriginLimiter
from federation.inbound.membership import ResidentMembership
from federation.inbound.pdus import PduHandler
from federation.inbound.transaction import ForwardTransaction, InboundEdus, TransactionHandler
from federation.keys.keyring import Keyring
from federation.remote_directory import RemoteDirectoryClient
from federation.remote_hierarchy import RemoteHierarchyClient
from federation.remote_keys import RemoteKeysClient
from federation.remote_media import RemoteMediaClient
from federation.remote_rooms import RemoteRoomsClient
from federation.sender.queue import FederationSender, Shard
from federation.sender.relayed import RelayedSender
from federation.transport.client import FederationClient
from homeserver.config import HomeserverConfig
from homeserver.services.devices import DeviceService
from homeserver.services.directory import DirectoryService
from homeserver.services.e2e_keys import E2EKeyService
from homeserver.services.media import MediaService
from homeserver.services.membership import MembershipService
from homeserver.services.ports import FederationPorts, Replication
from homeserver.services.profile import ProfileService
from homeserver.services.rooms import RoomService
from homeserver.services.server_visibility import ServerVisibility
from homeserver.services.spaces import SpaceHierarchyService
from roomserver.api import FederatedRooms
from storage import Database
from storage.stores.users import UserStore

logger = logging.getLogger(__name__)

_TXN_MEMORY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Outbound:
    """Federation's clients: built before the services, which get :meth:`ports`."""

    client: FederationClient
    keyring: Keyring
    pdus: PduHandler
    remote: RemoteRoomsClient
    directory: RemoteDirectoryClient
    backfiller: Backfiller
    sender: FederationSender
    keys: RemoteKeysClient
    media: RemoteMediaClient

    def ports(self) -> FederationPorts:
        return FederationPorts(rooms=self.remote, directory=self.directory,
                               to_device=self.sender.queue_to_device,
                               backfill=self.backfiller.backfill, edus=self.sender,
                               keys=self.keys, device_lists=self.sender, media=self.media,
                               hierarchy=RemoteHierarchyClient(self.client),
                               retry=self.sender)


def build_outbound(config: HomeserverConfig, db: Database, clock: Clock,
                   signing_key: SigningKey, rooms: FederatedRooms,
                   sender_worker: Replication | None = None) -> Outbound:
    """``sender_worker``: a federation_sender worker sends; it hears there what to."""
    server_name = config.server_name
    client = FederationClient(server_name, signing_key, config.federation)
    keyring = Keyring(db.server_keys, client, clock, server_name, signing_key,
                      config.federation.trusted_key_servers)
    pdus = PduHandler(rooms, keyring, client)
    sender = FederationSender(db.federation, client, rooms, clock, config) \
        if sender_worker is None else \
        RelayedSender(db.federation, client, rooms, clock, config, sender_worker)
    return Outbound(client, keyring, pdus,
                    RemoteRoomsClient(rooms, client, pdus, clock, server_name, signing_key),
                    RemoteDirectoryClient(client),
                    Backfiller(rooms, client, pdus, clock, server_name), sender,
                    RemoteKeysClient(client), RemoteMediaClient(client))


@dataclass(frozen=True)
class Served:
    """The local services the server-server API answers from."""

    profiles: ProfileService
    aliases: RoomService
    directory: DirectoryService
    devices: DeviceService
    membership: MembershipService
    edus: InboundEdus
    visibility: ServerVisibility
    keys: E2EKeyService
    media: MediaService | None = None
    spaces: SpaceHierarchyService | None = None


@dataclass
class Federation:
    server_name: str
    signing_key: SigningKey
    clock: Clock
    users: UserStore
    rooms: FederatedRooms
    served: Served
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
        await self.sender.start()
        if not self.transactions.forwards:  # (the persister keeps the answers)
            self._cleanup = asyncio.create_task(self._forget_old_transactions())

    async def _forget_old_transactions(self) -> None:
        """Answers to transactions are kept a day: long enough for any retry."""
        while True:
            try:
                await self.transactions.forget_answers_before(
                    self.clock.time_ms() - _TXN_MEMORY_MS)
            except Exception:
                logger.exception("Forgetting old federation transactions failed")
            await asyncio.sleep(3600)

    async def stop(self) -> None:
        if self._cleanup is not None:
            self._cleanup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleanup
        await self.sender.stop()
        await self.keyring.close()
        await self.client.close()


def build_federation(config: HomeserverConfig, db: Database, clock: Clock,
                     signing_key: SigningKey, rooms: FederatedRooms, outbound: Outbound,
                     served: Served, forward: ForwardTransaction | None = None) -> Federation:
    """``forward``: a federation_inbound worker's. Its reads are answered there (``rooms``
    is the worker's roomserver, kept current by the bus); each transaction's PDUs are
    checked there and ``forward``ed with its EDUs to the persister; whatever else writes
    (send_join, invites, key claims) the worker relays to the main process unchanged. It
    sends nothing: its ``outbound`` was built with the bus as ``sender_worker``, so its
    sender only passes on that an origin is up."""
    server_name = config.server_name
    return Federation(
        server_name, signing_key, clock, db.users, rooms, served, outbound.client,
        outbound.keyring, outbound.sender, outbound.pdus,
        TransactionHandler(rooms, db.federation, clock, outbound.pdus, served.edus, forward),
        ResidentMembership(rooms, served.membership, db.users, db.rooms, clock, outbound.pdus,
                           server_name, signing_key),
        outbound.remote, outbound.backfiller, outbound.directory)


def build_sender_worker(config: HomeserverConfig, db: Database, clock: Clock,
                        signing_key: SigningKey, rooms: FederatedRooms, shard: Shard
                        ) -> tuple[FederationClient, FederationSender]:
    """A federation_sender worker's client and sender (the main process queues); it sends
    to the destinations of its ``shard``."""
    client = FederationClient(config.server_name, signing_key, config.federation)
    return client, FederationSender(db.federation, client, rooms, clock, config, shard)

