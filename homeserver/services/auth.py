"""Access and refresh tokens: issuing, checking, refreshing, revoking.

Tokens are 256 random bits; only their SHA-256 hashes reach the database, and a lookup by hash
is followed by a constant-time comparison. Checked tokens are cached in memory (every request
checks one), and every path that revokes tokens drops the user's entries from the cache.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from core.clock import Clock
from core.errors import UnknownToken, UserDeactivated
from core.stats import HitCounter
from homeserver.config import AuthConfig
from homeserver.services.ports import ALONE, Replication
from storage.stores.devices import AccessTokenInfo, DeviceStore, NewTokens

ACCESS_TOKEN_PREFIX = "kta_"
REFRESH_TOKEN_PREFIX = "ktr_"
_CACHE_SIZE = 50_000
# A cached access token is checked against the database again after this long.
TOKEN_RECHECK_MS = 60_000
_LAST_SEEN_INTERVAL_MS = 60_000


@dataclass(frozen=True, slots=True)
class Requester:
    """Who is making an authenticated request."""

    user_id: str
    device_id: str
    is_admin: bool
    access_token_id: int


@dataclass(frozen=True, slots=True)
class IssuedTokens:
    access_token: str
    expires_in_ms: int | None
    refresh_token: str | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_device_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


class DevicesDeleted(Protocol):
    """Told of devices deleted (with their keys): users sharing a room hear of it."""

    async def devices_deleted(self, user_id: str, device_ids: list[str]) -> None: ...


class AuthService:
    def __init__(self, devices: DeviceStore, clock: Clock, config: AuthConfig, *,
                 on_devices_deleted: DevicesDeleted | None = None,
                 replication: Replication = ALONE, recheck_ms: int = TOKEN_RECHECK_MS) -> None:
        """``recheck_ms``: a cached token is read again from the database this long after
        it was (a change this process was not told of, by ``ktchat admin`` on the database,
        takes effect within it)."""
        self._devices = devices
        self._replication = replication
        self._on_devices_deleted = on_devices_deleted
        self._clock = clock
        self._config = config
        self._recheck_ms = recheck_ms
        # Token hash -> (what the database said, when to ask it again).
        self._cache: OrderedDict[str, tuple[AccessTokenInfo, int]] = OrderedDict()
        self.cache_stats = HitCounter()  # lookups of the token cache (metrics)
        self._cached_by_user: dict[str, set[str]] = {}
        # (user_id, device_id) -> (ts, ip, user agent), flushed in batches.
        self._last_seen: dict[tuple[str, str], tuple[int, str | None, str | None]] = {}
        self._last_seen_flushed: dict[tuple[str, str], int] = {}

    def _new_tokens(self, with_refresh: bool) -> tuple[IssuedTokens, NewTokens]:
        now = self._clock.time_ms()
        access = ACCESS_TOKEN_PREFIX + secrets.token_urlsafe(32)
        refresh = REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32) if with_refresh else None
        lifetime = self._config.refreshable_access_token_lifetime_ms if with_refresh else None
        refresh_lifetime = self._config.refresh_token_lifetime_ms if with_refresh else None
        issued = IssuedTokens(access, lifetime, refresh)
        stored = NewTokens(
            access_token_hash=hash_token(access),
            access_expires_ts=now + lifetime if lifetime else None,
            refresh_token_hash=hash_token(refresh) if refresh else None,
            refresh_expires_ts=now + refresh_lifetime if refresh_lifetime else None,
        )
        return issued, stored

    async def create_session(
        self,
        user_id: str,
        *,
        device_id: str | None,
        display_name: str | None,
        with_refresh_token: bool,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> tuple[str, IssuedTokens]:
        """Log a device in; returns its device ID and fresh tokens."""
        device_id = device_id or new_device_id()
        issued, stored = self._new_tokens(with_refresh_token)
        await self._devices.create_session(
            user_id, device_id, display_name=display_name, tokens=stored,
            now=self._clock.time_ms(), ip=ip, user_agent=user_agent)
        self.forget_user(user_id)
        return device_id, issued

    async def get_requester(self, token: str, *, ip: str | None = None,
                            user_agent: str | None = None) -> Requester:
        """The requester an access token belongs to; raises 401/403 Matrix errors."""
        token_hash = hash_token(token)
        now = self._clock.time_ms()
        cached = self._cache.get(token_hash)
        info = cached[0] if cached is not None and now < cached[1] else None
        if info is not None:
            self._cache.move_to_end(token_hash)
            self.cache_stats.hits += 1
        else:
            self.cache_stats.misses += 1
            info = await self._devices.get_access_token(token_hash)
            if info is None:
                raise UnknownToken("Unknown access token")
            # The lookup was by hash; compare anyway, in constant time.
            if not hmac.compare_digest(token_hash, hash_token(token)):
                raise UnknownToken("Unknown access token")
            self._cache_put(token_hash, info, now)
        if info.expires_ts is not None and now >= info.expires_ts:
            self._cache_drop(token_hash)
            raise UnknownToken("Access token has expired", soft_logout=True)
        if info.deactivated:
            raise UserDeactivated("This account has been deactivated")
        if info.refresh_token_id is not None and not info.used:
            await self._devices.mark_refreshed_access_token_used(info.token_id,
                                                                 info.refresh_token_id)
            self._cache_drop(token_hash)
        self._note_seen(info.user_id, info.device_id, now, ip, user_agent)
        return Requester(info.user_id, info.device_id, info.is_admin, info.token_id)

    async def refresh(self, refresh_token: str) -> IssuedTokens:
        """Exchange a refresh token for new tokens (POST /refresh)."""
        info = await self._devices.get_refresh_token(hash_token(refresh_token))
        if info is None or info.successor_used:
            raise UnknownToken("Unknown refresh token")
        if info.expires_ts is not None and self._clock.time_ms() >= info.expires_ts:
            raise UnknownToken("Refresh token has expired")
        issued, stored = self._new_tokens(True)
        await self._devices.replace_refresh_token(info, stored, self._clock.time_ms())
        self.forget_user(info.user_id)
        return issued

    async def logout(self, requester: Requester) -> None:
        """End this device's session and delete the device."""
        deleted = await self._devices.delete_devices(requester.user_id,
                                                     [requester.device_id])
        self.forget_user(requester.user_id)
        await self._devices_deleted(requester.user_id, deleted)

    async def logout_all(self, user_id: str, *, except_device_id: str | None = None) -> list[str]:
        deleted = await self._devices.delete_all_devices(user_id, except_device_id=except_device_id)
        self.forget_user(user_id)
        await self._devices_deleted(user_id, deleted)
        return deleted

    async def delete_devices(self, user_id: str, device_ids: list[str]) -> None:
        deleted = await self._devices.delete_devices(user_id, device_ids)
        self.forget_user(user_id)
        await self._devices_deleted(user_id, deleted)

    async def _devices_deleted(self, user_id: str, device_ids: list[str]) -> None:
        if device_ids and self._on_devices_deleted is not None:
            await self._on_devices_deleted.devices_deleted(user_id, device_ids)

    def forget_user(self, user_id: str) -> None:
        """Drop cached tokens of ``user_id`` after its sessions or account changed (in every
        process of the server)."""
        self._replication.publish("tokens", user_id)
        self.apply_forget_user(user_id)

    def forget_all(self) -> None:
        """Every cached token (a worker that may have missed revocations)."""
        self._cache.clear()
        self._cached_by_user.clear()

    def apply_forget_user(self, user_id: str) -> None:
        for token_hash in self._cached_by_user.pop(user_id, ()):
            self._cache.pop(token_hash, None)

    def _cache_put(self, token_hash: str, info: AccessTokenInfo, now: int) -> None:
        self._cache[token_hash] = (info, now + self._recheck_ms)
        self._cached_by_user.setdefault(info.user_id, set()).add(token_hash)
        if len(self._cache) > _CACHE_SIZE:
            self._cache_drop(next(iter(self._cache)))

    def _cache_drop(self, token_hash: str) -> None:
        cached = self._cache.pop(token_hash, None)
        if cached is not None:
            info = cached[0]
            hashes = self._cached_by_user.get(info.user_id)
            if hashes is not None:
                hashes.discard(token_hash)
                if not hashes:
                    del self._cached_by_user[info.user_id]

    def _note_seen(self, user_id: str, device_id: str, now: int, ip: str | None,
                   user_agent: str | None) -> None:
        key = (user_id, device_id)
        if now - self._last_seen_flushed.get(key, 0) >= _LAST_SEEN_INTERVAL_MS:
            self._last_seen[key] = (now, ip, user_agent)

    async def flush_last_seen(self) -> None:
        """Write the batched last-seen details (called periodically and at shutdown)."""
        if not self._last_seen:
            return
        batch, self._last_seen = self._last_seen, {}
        for key, (ts, _ip, _ua) in batch.items():
            self._last_seen_flushed[key] = ts
        if len(self._last_seen_flushed) > _CACHE_SIZE:
            self._last_seen_flushed.clear()
        await self._devices.record_last_seen(
            [(u, d, ts, ip, ua) for (u, d), (ts, ip, ua) in batch.items()])
