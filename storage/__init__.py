"""Persistence: SQLAlchemy Core on SQLite (default) or PostgreSQL.

``Database`` composes the stores; nothing outside ``storage`` writes SQL.
"""

from __future__ import annotations

from storage.engine import DatabaseEngine
from storage.stores.account_data import AccountDataStore
from storage.stores.admin_users import AdminUserStore
from storage.stores.auth_chains import AuthChainStore
from storage.stores.auth_sessions import NonceStore, RegistrationTokenStore, UiAuthStore
from storage.stores.devices import DeviceStore
from storage.stores.e2e_keys import E2EKeyStore
from storage.stores.events import EventStore
from storage.stores.federation import FederationStore
from storage.stores.filters import FilterStore
from storage.stores.key_backup import KeyBackupStore
from storage.stores.media import MediaStore
from storage.stores.presence import PresenceStore
from storage.stores.purge import PurgeStore
from storage.stores.push import PushStore
from storage.stores.push_rotation import PushRotationStore
from storage.stores.receipts import ReceiptStore
from storage.stores.relations import RelationStore
from storage.stores.remote_device_lists import RemoteDeviceListStore
from storage.stores.reports import ReportStore
from storage.stores.rooms import RoomStore
from storage.stores.search import SearchStore
from storage.stores.server_keys import ServerKeyStore
from storage.stores.sliding_sync import SlidingSyncStore
from storage.stores.state import StateStore
from storage.stores.sync import SyncStore
from storage.stores.to_device import ToDeviceStore
from storage.stores.url_previews import UrlPreviewStore
from storage.stores.user_directory import UserDirectoryStore
from storage.stores.users import ProfileStore, UserStore


class Database:
    """The engine and one instance of each store."""

    def __init__(self, url: str, *, pool_size: int = 10, sqlite_synchronous: str = "FULL",
                 postgres_search_path: str | None = None) -> None:
        self.engine = DatabaseEngine(url, pool_size=pool_size,
                                     sqlite_synchronous=sqlite_synchronous,
                                     postgres_search_path=postgres_search_path)
        self.users = UserStore(self.engine)
        self.admin_users = AdminUserStore(self.engine)
        self.profiles = ProfileStore(self.engine)
        self.devices = DeviceStore(self.engine)
        self.ui_auth = UiAuthStore(self.engine)
        self.registration_tokens = RegistrationTokenStore(self.engine)
        self.nonces = NonceStore(self.engine)
        self.relations = RelationStore(self.engine)
        self.events = EventStore(self.engine, relations_changed=self.relations.changed)
        self.auth_chains = AuthChainStore(self.engine)
        self.state = StateStore(self.engine)
        self.rooms = RoomStore(self.engine)
        self.account_data = AccountDataStore(self.engine)
        self.sync = SyncStore(self.engine)
        self.sliding_sync = SlidingSyncStore(self.engine)
        self.filters = FilterStore(self.engine)
        self.receipts = ReceiptStore(self.engine)
        self.presence = PresenceStore(self.engine)
        self.search = SearchStore(self.engine)
        self.purge = PurgeStore(self.engine, on_delete=self.relations.clear)
        self.federation = FederationStore(self.engine)
        self.server_keys = ServerKeyStore(self.engine)
        self.to_device = ToDeviceStore(self.engine)
        self.key_backup = KeyBackupStore(self.engine)
        self.e2e_keys = E2EKeyStore(self.engine)
        self.remote_device_lists = RemoteDeviceListStore(self.engine)
        self.reports = ReportStore(self.engine)
        self.media = MediaStore(self.engine)
        self.url_previews = UrlPreviewStore(self.engine)
        self.push = PushStore(self.engine)
        self.push_rotation = PushRotationStore(self.engine)
        self.user_directory = UserDirectoryStore(self.engine)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.is_sqlite

    async def open(self) -> None:
        """Apply pending migrations; call once before use."""
        await self.engine.migrate()
        await self.account_data.load()
        await self.receipts.load()
        await self.presence.load()
        await self.to_device.load()
        await self.e2e_keys.load()

    async def close(self) -> None:
        await self.engine.close()
