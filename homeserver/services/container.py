"""The services of one homeserver process, built once from the config."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from signedjson.types import SigningKey

from core.clock import Clock, SystemClock
from core.crypto.passwords import PasswordHasher
from core.crypto.signing_keys import load_signing_key
from core.events.room_versions import KNOWN_ROOM_VERSIONS
from homeserver.config import HomeserverConfig, RateLimit
from homeserver.ratelimit import RateLimiter
from homeserver.services.account_data import AccountDataService
from homeserver.services.accounts import AccountService
from homeserver.services.admin_federation import AdminFederationService
from homeserver.services.admin_rooms import AdminRoomService
from homeserver.services.admin_users import AdminUserService
from homeserver.services.auth import AuthService
from homeserver.services.censor import RedactionCensor
from homeserver.services.dehydrated_devices import DehydratedDeviceService
from homeserver.services.device_list_announcer import DeviceListAnnouncer
from homeserver.services.devices import DeviceService
from homeserver.services.directory import DirectoryService
from homeserver.services.e2e_keys import E2EKeyService
from homeserver.services.filters import FilterService
from homeserver.services.friends import FriendsService
from homeserver.services.history import ClearedHistory, HistoryService
from homeserver.services.ignored_users import IgnoredUsers
from homeserver.services.key_backup import KeyBackupService
from homeserver.services.local_keys import LocalKeys
from homeserver.services.media import MediaService
from homeserver.services.member_cache import MembershipCache
from homeserver.services.membership import MembershipService
from homeserver.services.messages import MessageService
from homeserver.services.notifier import Notifier
from homeserver.services.ports import ALONE, FederationPorts, Replication
from homeserver.services.presence import PresenceService
from homeserver.services.profile import ProfileService
from homeserver.services.purge import PurgeService
from homeserver.services.push import PushEvaluator, UnreadCounts
from homeserver.services.push_rotation import PushRotation
from homeserver.services.push_rules import PushRuleService
from homeserver.services.pushers import PushDelivery, PusherService, PushGateway
from homeserver.services.receipts import ReceiptService
from homeserver.services.relations import RelationAggregator, RelationService
from homeserver.services.remote_device_lists import RemoteDeviceLists
from homeserver.services.reports import ReportService
from homeserver.services.rooms import RoomService
from homeserver.services.search import SearchService
from homeserver.services.serialize import EventSerializer
from homeserver.services.sliding_sync import SlidingSyncDeps, SlidingSyncService
from homeserver.services.sliding_sync.cache import SlidingSyncCache
from homeserver.services.spaces import SpaceHierarchyService
from homeserver.services.sync import SyncService
from homeserver.services.to_device import ToDeviceService
from homeserver.services.typing import TypingService
from homeserver.services.uia import UiAuthService
from homeserver.services.url_preview import UrlFetcher, UrlPreviewService
from homeserver.services.user_directory import UserDirectoryService
from homeserver.services.visibility import VisibilityService
from homeserver.services.voip import TurnService
from roomserver.api import LocalRooms
from roomserver.server import RoomServer
from storage import Database
from storage.stores.admin_rooms import AdminRoomStore
from storage.stores.destinations import DestinationStore

logger = logging.getLogger(__name__)

_HOUSEKEEPING_INTERVAL_S = 10.0


@dataclass
class Services:
    config: HomeserverConfig
    clock: Clock
    db: Database
    signing_key: SigningKey
    hasher: PasswordHasher
    auth: AuthService
    accounts: AccountService
    devices: DeviceService
    uia: UiAuthService
    profiles: ProfileService
    notifier: Notifier
    roomserver: RoomServer
    rooms: RoomService
    membership: MembershipService
    messages: MessageService
    relations: RelationService
    directory: DirectoryService
    account_data: AccountDataService
    filters: FilterService
    sync: SyncService
    sliding_sync: SlidingSyncService
    members: MembershipCache
    typing: TypingService
    receipts: ReceiptService
    presence: PresenceService
    friends: FriendsService
    history: HistoryService
    search: SearchService
    purge: PurgeService
    censor: RedactionCensor
    to_device: ToDeviceService
    key_backup: KeyBackupService
    keys: E2EKeyService
    dehydrated_devices: DehydratedDeviceService
    turn: TurnService
    reports: ReportService
    login_ip_limiter: RateLimiter
    registration_ip_limiter: RateLimiter
    media: MediaService
    push_rules: PushRuleService
    pushers: PusherService
    push: PushEvaluator
    unread: UnreadCounts
    push_rotation: PushRotation
    push_delivery: PushDelivery | None
    push_gateway: PushGateway | None
    user_directory: UserDirectoryService
    spaces: SpaceHierarchyService
    url_previews: UrlPreviewService
    admin_users: AdminUserService
    admin_rooms: AdminRoomService
    admin_federation: AdminFederationService
    # False in a worker: the main process writes events and streams and runs the background
    # jobs; this process mirrors it (``homeserver.replication``).
    writer: bool = True
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Open the database (migrating it) and start background housekeeping."""
        if not self.writer:
            await self._start_worker()
            return
        await self.db.open()
        position = await self.roomserver.start()
        self.notifier.set_initial_position(position)
        await self.pushers.start()
        await self.push.start(position)
        if self.push_delivery is not None:
            self.push_delivery.start()
        await self.user_directory.start()
        self.notifier.set_initial_account_data_position(self.db.account_data.position)
        self.receipts.start()
        await self.presence.start()
        self.to_device.start()
        self.keys.start()
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        self._tasks.append(asyncio.create_task(self.push_rotation.loop()))
        if self.config.retention.enabled:
            self._tasks.append(asyncio.create_task(self.purge.retention_loop()))

    async def _start_worker(self) -> None:
        """A worker: positions from the database; no write loop, no evaluation, no
        housekeeping (the main process's)."""
        await self.db.open()
        position = await self.roomserver.start(writes=False)
        self.notifier.set_initial_position(position)
        await self.pushers.start()
        await self.push.start(position)
        self.notifier.set_initial_account_data_position(self.db.account_data.position)
        self.receipts.start()
        await self.presence.start()
        self.to_device.start()
        self.keys.start()
        if self.push_delivery is not None:  # (a push worker)
            self.push_delivery.start()

    async def resync_worker(self) -> None:
        """A worker that may have missed some of the writer's messages (Redis went away
        for a while): what it remembers of changes is forgotten (every position before now
        counts as "may have changed", as after a start) and every waiting sync answers."""
        for store in (self.db.account_data, self.db.receipts, self.db.to_device,
                      self.db.e2e_keys):
            await store.load()
        position = await self.roomserver.start(writes=False)
        # From here on nothing awaits: what the writer's messages applied meanwhile is
        # before the new start (counted as "may have changed"), what comes later after it.
        self.roomserver.forget_all_rooms()
        self.db.relations.clear()
        self.auth.forget_all()
        self.notifier.set_initial_position(max(position, self.notifier.position))
        self.notifier.set_initial_account_data_position(
            max(self.db.account_data.position, self.notifier.account_data_position))
        self.receipts.start()
        self.to_device.start()
        self.keys.start()
        self.notifier.wake_all()

    async def stop(self) -> None:
        if not self.writer:
            if self.push_delivery is not None:
                await self.push_delivery.stop()
            if self.push_gateway is not None:
                await self.push_gateway.close()
            await self.presence.stop()
            await self.roomserver.stop()
            await self.auth.flush_last_seen()
            await self.db.close()
            self.hasher.close()
            self.media.close()
            return
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.typing.stop_all()
        if self.push_delivery is not None:
            await self.push_delivery.stop()
        if self.push_gateway is not None:
            await self.push_gateway.close()
        await self.url_previews.close()
        await self.push.stop()
        await self.keys.stop()
        await self.purge.stop()
        await self.censor.stop()
        await self.presence.stop()
        await self.roomserver.stop()
        await self.user_directory.stop()
        await self.auth.flush_last_seen()
        await self.db.close()
        self.hasher.close()
        self.media.close()

    async def _housekeeping(self) -> None:
        while True:
            await self.clock.sleep(_HOUSEKEEPING_INTERVAL_S)
            try:
                await self.auth.flush_last_seen()
                await self.censor.run()
                await self.db.ui_auth.delete_expired(
                    self.clock.time_ms() - self.config.auth.ui_auth_session_timeout_ms)
                await self.media.expire_reservations()
                await self.url_previews.prune()
            except Exception:
                logger.exception("Housekeeping failed")


def open_database(config: HomeserverConfig) -> Database:
    return Database(config.database.url, pool_size=config.database.pool_size,
                    sqlite_synchronous=config.database.sqlite_synchronous)


def build_services(config: HomeserverConfig, *, clock: Clock | None = None,
                   db: Database | None = None, hasher: PasswordHasher | None = None,
                   signing_key: SigningKey | None = None, roomserver: RoomServer | None = None,
                   remote: FederationPorts | None = None,
                   push_gateway: PushGateway | None = None,
                   url_fetcher: UrlFetcher | None = None,
                   replication: Replication = ALONE, writes: LocalRooms | None = None,
                   pushed_elsewhere: bool = False) -> Services:
    """The services of one process; ``remote``: what federation offers them (None when
    federation is off); ``push_gateway``: the HTTP client for push gateways (None: pushes
    are not sent); ``url_fetcher``: the HTTP client for URL previews (None: no previews).
    ``replication``: where this process (the main one, the writer) tells the workers what
    it changed; ``writes``: a worker's way to the event persister (its services then
    write through it and mirror the rest, see ``homeserver.replication``);
    ``pushed_elsewhere``: pushes are queued here and a push worker delivers them.
    Pieces not given are built here (tests give none)."""
    clock = clock or SystemClock()
    db = db or open_database(config)
    hasher = hasher or PasswordHasher()
    writer = writes is None
    # What this process changed goes out only from the writer: a worker's changes are what
    # it applies from the writer (its presence service alone reports, to the writer).
    reports = replication
    replication = replication if writer else ALONE
    notifier = Notifier(replication, positions=lambda: {
        "account_data": db.account_data.position, "receipts": db.receipts.position,
        "to_device": db.to_device.position, "e2e": db.e2e_keys.position})
    members = MembershipCache(db.sync, notifier)
    signing_key = signing_key or load_signing_key(config.signing_key_path)
    roomserver = roomserver or RoomServer(db, clock, config.server_name, signing_key)
    roomserver.add_commit_listener(notifier)
    rooms_api: LocalRooms = writes or roomserver
    if writer and replication.active:
        db.relations.add_listener(lambda fresh, parents, redacted: replication.publish(
            "relations", [fresh, parents, redacted]))
    remote_lists = RemoteDeviceLists(db.remote_device_lists, members, roomserver, remote.keys,
                                     notifier, clock, config.server_name) \
        if remote is not None else None
    local_keys = LocalKeys(db.e2e_keys)
    announcer = DeviceListAnnouncer(db.e2e_keys, local_keys,
                                    remote.device_lists if remote is not None else None)
    keys = E2EKeyService(db.e2e_keys, db.sync, members, notifier, clock, config.server_name,
                         local_keys, announcer,
                         remote=remote.keys if remote is not None else None,
                         remote_lists=remote_lists, replication=replication)
    auth = AuthService(db.devices, clock, config.auth, on_devices_deleted=keys,
                       replication=replication)
    delivers = config.push.enabled and (push_gateway is not None or pushed_elsewhere)
    pushers = PusherService(db.push, clock, delivers=delivers, replication=reports)
    accounts = AccountService(db, auth, hasher, clock, config, pushers)
    uia = UiAuthService(db.ui_auth, db.registration_tokens, accounts, clock,
                        config.auth.ui_auth_session_timeout_ms)
    rl = config.rate_limits

    def limiter(limit: RateLimit) -> RateLimiter:
        return RateLimiter(clock, limit.per_second, limit.burst_count, enabled=rl.enabled)

    remote_rooms = remote.rooms if remote is not None else None
    profiles = ProfileService(db.profiles, db.users, remote=remote_rooms)
    rooms = RoomService(rooms_api, db.rooms, profiles, config.server_name,
                        limiter(rl.message_per_user),
                        default_room_version=KNOWN_ROOM_VERSIONS[config.default_room_version],
                        remote=remote_rooms)
    cleared = ClearedHistory(db.rooms, replication)
    visibility = VisibilityService(db.state, db.events, cleared)
    serializer = EventSerializer(
        db.events, aggregations=RelationAggregator(db.relations, db.events, visibility))
    ignored = IgnoredUsers(db.account_data)
    account_data = AccountDataService(db.account_data, notifier, ignored,
                                      replication=replication)
    edus = remote.edus if remote is not None else None
    typing = TypingService(notifier, members, clock, config.server_name, edus,
                           replication=replication, writer=writer)
    user_directory = UserDirectoryService(db.user_directory, roomserver, config.user_directory,
                                          config.server_name)
    receipts = ReceiptService(db.receipts, db.events, members, account_data, notifier, clock,
                              edus, replication=replication)
    presence = PresenceService(db.presence, notifier, members, clock, config.presence,
                               config.server_name, edus, replication=reports,
                               writer=writer)
    to_device = ToDeviceService(db.to_device, notifier, clock, config.server_name,
                                remote_queue=remote.to_device if remote is not None else None,
                                replication=replication)
    push_rules = PushRuleService(db.push, replication)
    push = PushEvaluator(db.push, db.events, push_rules, pushers, ignored, clock,
                         config.server_name, replication=replication, writer=writer)
    if writer:
        roomserver.add_commit_listener(typing)
        roomserver.add_commit_listener(user_directory)
        roomserver.add_commit_listener(push)
    unread = UnreadCounts(db.push, receipts, members, push, db.events, serializer, clock)
    push_rotation = PushRotation(db.push_rotation, db.push, db.events, push, clock,
                                 config.server_name)
    push_delivery = PushDelivery(db.push, db.events, pushers, push_gateway, push.room_details,
                                 unread.badge, clock,
                                 include_content=config.push.include_content) \
        if delivers and push_gateway is not None else None
    messages = MessageService(db.events, db.state, visibility, serializer, db.rooms, clock,
                              ignored=ignored,
                              backfill=remote.backfill if remote is not None else None)
    relations = RelationService(db.relations, db.events, messages, visibility, serializer,
                                clock)
    membership = MembershipService(rooms_api, rooms, db.rooms, db.state, db.users,
                                   config.server_name, limiter(rl.joins_per_user),
                                   limiter(rl.invites_per_user), remote=remote_rooms)
    media = MediaService(db.media, clock, config.media, config.server_name,
                         remote=remote.media if remote is not None else None,
                         replication=reports)
    # The rooms sliding sync keeps in memory, kept exact by every commit (a worker's too:
    # the writer's commits reach its listeners, see ``RoomServer.committed_elsewhere``).
    sliding_sync_rooms = SlidingSyncCache(db.sliding_sync, db.sync, notifier)
    roomserver.add_commit_listener(sliding_sync_rooms)
    notifier.on_room_purged.append(sliding_sync_rooms.forget_room)
    sync = SyncService(db.sync, db.events, db.state, db.account_data, db.rooms, notifier,
                       serializer, visibility, members, typing, receipts, presence, clock,
                       to_device, keys, ignored, unread)
    devices = DeviceService(db.devices, auth)
    return Services(
        config=config,
        clock=clock,
        db=db,
        signing_key=signing_key,
        hasher=hasher,
        auth=auth,
        accounts=accounts,
        devices=devices,
        uia=uia,
        profiles=profiles,
        notifier=notifier,
        roomserver=roomserver,
        rooms=rooms,
        membership=membership,
        messages=messages,
        relations=relations,
        directory=DirectoryService(roomserver, db.rooms, db.state, clock, config.server_name,
                                   remote=remote.directory if remote is not None else None),
        account_data=account_data,
        filters=FilterService(db.filters),
        sync=sync,
        sliding_sync=SlidingSyncService(SlidingSyncDeps(
            db.sliding_sync, db.sync, db.events, db.state, db.account_data, db.rooms, notifier,
            visibility, serializer, unread, push, push_rules, receipts, typing,
            to_device, keys, ignored, clock, sliding_sync_rooms, sync.current_token)),
        members=members,
        typing=typing,
        receipts=receipts,
        presence=presence,
        friends=FriendsService(rooms, membership, members, db.state, db.events, account_data,
                               profiles, presence, db.sync, config.server_name),
        purge=PurgeService(db.purge, db.events, db.state, db.rooms, db.users, roomserver,
                           roomserver, rooms, membership, members, serializer, notifier, clock,
                           config.server_name, config.retention),
        search=SearchService(db.search, db.events, db.state, db.rooms, members, visibility,
                             messages, serializer, clock),
        history=HistoryService(cleared, db.events, db.state, db.rooms, membership,
                               serializer, roomserver, clock, config.server_name),
        censor=RedactionCensor(db.events, roomserver, serializer, notifier, clock,
                               config.redaction_retention_period),
        to_device=to_device,
        key_backup=KeyBackupService(db.key_backup),
        keys=keys,
        dehydrated_devices=DehydratedDeviceService(db.devices, auth, keys, to_device, clock),
        turn=TurnService(config.turn, clock),
        reports=ReportService(db.reports, messages, db.events, db.state, clock),
        login_ip_limiter=limiter(rl.login_per_ip),
        registration_ip_limiter=limiter(rl.registration_per_ip),
        media=media,
        push_rules=push_rules,
        pushers=pushers,
        push=push,
        unread=unread,
        push_rotation=push_rotation,
        push_delivery=push_delivery,
        push_gateway=push_gateway,
        user_directory=user_directory,
        spaces=SpaceHierarchyService(
            roomserver, clock, config.server_name,
            remote=remote.hierarchy if remote is not None else None),
        url_previews=UrlPreviewService(url_fetcher, media, db.url_previews, clock,
                                       config.media.url_preview),
        admin_users=AdminUserService(db.admin_users, db.profiles, db.state, db.media, accounts,
                                     auth, devices, membership),
        admin_rooms=AdminRoomService(AdminRoomStore(db.engine, config.server_name), db.events,
                                     db.state, messages, serializer, clock, config.server_name),
        admin_federation=AdminFederationService(
            DestinationStore(db.engine, config.server_name), db.federation, clock,
            remote.retry if remote is not None else None),
        writer=writer,
    )
