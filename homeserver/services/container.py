"""The services of one homeserver process, built once from the config."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from signedjson.types import SigningKey

from homeserver.clock import Clock, SystemClock
from homeserver.config import HomeserverConfig
from homeserver.crypto.passwords import PasswordHasher
from homeserver.crypto.signing_keys import load_signing_key
from homeserver.ratelimit import RateLimiter
from homeserver.services.accounts import AccountService
from homeserver.services.auth import AuthService
from homeserver.services.devices import DeviceService
from homeserver.services.profile import ProfileService
from homeserver.services.uia import UiAuthService
from storage import Database

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
    login_ip_limiter: RateLimiter
    registration_ip_limiter: RateLimiter
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Open the database (migrating it) and start background housekeeping."""
        await self.db.open()
        self._tasks.append(asyncio.create_task(self._housekeeping()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.auth.flush_last_seen()
        await self.db.close()
        self.hasher.close()

    async def _housekeeping(self) -> None:
        while True:
            await self.clock.sleep(_HOUSEKEEPING_INTERVAL_S)
            try:
                await self.auth.flush_last_seen()
                await self.db.ui_auth.delete_expired(
                    self.clock.time_ms() - self.config.auth.ui_auth_session_timeout_ms)
            except Exception:
                logger.exception("Housekeeping failed")


def build_services(config: HomeserverConfig, *, clock: Clock | None = None,
                   db: Database | None = None, hasher: PasswordHasher | None = None
                   ) -> Services:
    clock = clock or SystemClock()
    db = db or Database(config.database.url, pool_size=config.database.pool_size,
                        sqlite_synchronous=config.database.sqlite_synchronous)
    hasher = hasher or PasswordHasher()
    auth = AuthService(db.devices, clock, config.auth)
    accounts = AccountService(db, auth, hasher, clock, config)
    uia = UiAuthService(db.ui_auth, db.registration_tokens, accounts, clock,
                        config.auth.ui_auth_session_timeout_ms)
    rl = config.rate_limits
    return Services(
        config=config,
        clock=clock,
        db=db,
        signing_key=load_signing_key(config.signing_key_path),
        hasher=hasher,
        auth=auth,
        accounts=accounts,
        devices=DeviceService(db.devices, auth),
        uia=uia,
        profiles=ProfileService(db.profiles, db.users),
        login_ip_limiter=RateLimiter(clock, rl.login_per_ip.per_second,
                                     rl.login_per_ip.burst_count, enabled=rl.enabled),
        registration_ip_limiter=RateLimiter(clock, rl.registration_per_ip.per_second,
                                            rl.registration_per_ip.burst_count,
                                            enabled=rl.enabled),
    )
