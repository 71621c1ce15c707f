"""Accounts: registration, password login, password change, deactivation, admin registration."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from core.clock import Clock
from core.crypto.passwords import PasswordHasher
from core.errors import (
    BadRequest,
    Forbidden,
    InvalidUsername,
    MatrixError,
    MissingParam,
    UserDeactivated,
    UserInUse,
)
from core.types import MAX_USER_ID_LENGTH, is_valid_localpart, parse_user_id
from homeserver.config import HomeserverConfig
from homeserver.ratelimit import RateLimiter
from homeserver.services.auth import AuthService, IssuedTokens
from homeserver.services.pushers import PusherService
from storage import Database
from storage.stores.auth_sessions import RegistrationToken as RegistrationToken

logger = logging.getLogger(__name__)

NONCE_LIFETIME_MS = 60_000
# A hash for a password nobody has, so unknown users cost as much as wrong passwords.
_TIMING_PASSWORD = secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class Session:
    user_id: str
    device_id: str
    tokens: IssuedTokens


class AccountService:
    def __init__(self, db: Database, auth: AuthService, hasher: PasswordHasher, clock: Clock,
                 config: HomeserverConfig, pushers: PusherService | None = None) -> None:
        self._db = db
        self._pushers = pushers
        self._auth = auth
        self._hasher = hasher
        self._clock = clock
        self._config = config
        self._server_name = config.server_name
        rl = config.rate_limits
        self._failed_logins = RateLimiter(clock, rl.login_failed_per_account.per_second,
                                          rl.login_failed_per_account.burst_count,
                                          enabled=rl.enabled)
        self._logins_per_account = RateLimiter(clock, rl.login_per_account.per_second,
                                               rl.login_per_account.burst_count,
                                               enabled=rl.enabled)
        self._timing_hash: str | None = None

    # -- user IDs ---------------------------------------------------------------------------

    def user_id_for(self, localpart: str) -> str:
        return f"@{localpart}:{self._server_name}"

    def is_mine(self, user_id: str) -> bool:
        try:
            return parse_user_id(user_id).server_name == self._server_name
        except ValueError:
            return False

    async def check_username(self, localpart: str) -> str:
        """The user ID for a new account named ``localpart``; raises if unusable or taken."""
        if not localpart:
            raise InvalidUsername("User ID cannot be empty")
        if localpart.startswith("_"):
            raise InvalidUsername("User ID may not begin with _")
        if not is_valid_localpart(localpart):
            raise InvalidUsername(
                "User ID can only contain characters a-z, 0-9, or '=_-./+'")
        user_id = self.user_id_for(localpart)
        if len(user_id) > MAX_USER_ID_LENGTH:
            raise InvalidUsername(f"User ID may not be longer than {MAX_USER_ID_LENGTH} characters")
        if await self._db.users.get_user(user_id) is not None:
            raise UserInUse("User ID already taken.")
        return user_id

    def check_password_strength(self, password: str) -> None:
        if len(password) < self._config.auth.password_min_length:
            raise MatrixError(
                f"Password must be at least {self._config.auth.password_min_length} characters",
                status=400, errcode="M_WEAK_PASSWORD")

    # -- creating accounts ------------------------------------------------------------------

    async def register(self, localpart: str | None, password: str | None, *,
                       admin: bool = False, user_type: str | None = None,
                       displayname: str | None = None, registration_token: str | None = None
                       ) -> str:
        """Create an account; returns its user ID.

        Args:
            registration_token: the token that authorised this registration, counted as used.
        """
        if localpart is None:
            localpart = await self._free_numeric_localpart()
        # Synapse lower-cases the username first, so the default display name matches too.
        localpart = localpart.lower()
        user_id = await self.check_username(localpart)
        password_hash = await self._hasher.hash(password) if password is not None else None
        created = await self._db.users.create_user(
            user_id, password_hash=password_hash, created_ts=self._clock.time_ms(), admin=admin,
            user_type=user_type, displayname=displayname if displayname is not None else localpart)
        if not created:
            raise UserInUse("User ID already taken.")
        if registration_token is not None:
            await self._db.registration_tokens.complete(registration_token)
        logger.info("Registered %s", user_id)
        return user_id

    async def _free_numeric_localpart(self) -> str:
        for _ in range(10):
            candidate = str(secrets.randbelow(10**9) + 10**9)
            if await self._db.users.get_user(self.user_id_for(candidate)) is None:
                return candidate
        raise MatrixError("Could not generate a user ID", status=500)

    # -- passwords --------------------------------------------------------------------------

    async def _resolve_login_user(self, identifier: str) -> str | None:
        """Map what the client typed (localpart or user ID) to an existing local user ID."""
        user_id = identifier if identifier.startswith("@") else self.user_id_for(identifier)
        if not self.is_mine(user_id):
            return None
        if await self._db.users.get_user(user_id) is not None:
            return user_id
        matches = await self._db.users.find_user_case_insensitive(user_id)
        if len(matches) == 1:
            return matches[0]
        lowered = user_id.lower()
        return lowered if lowered in matches else None

    async def _verify_password(self, user_id: str | None, password: str) -> bool:
        user = await self._db.users.get_user(user_id) if user_id else None
        if user is None or user.password_hash is None:
            # Spend the same time as a real check, so timing does not reveal who exists.
            if self._timing_hash is None:
                self._timing_hash = await self._hasher.hash(_TIMING_PASSWORD)
            await self._hasher.verify(self._timing_hash, password)
            return False
        ok = await self._hasher.verify(user.password_hash, password)
        if ok and self._hasher.needs_rehash(user.password_hash):
            await self._db.users.set_password_hash(user.user_id, await self._hasher.hash(password))
        return ok

    async def login_with_password(
        self, identifier: str, password: str, *, device_id: str | None,
        display_name: str | None, with_refresh_token: bool, ip: str | None,
        user_agent: str | None,
    ) -> Session:
        """Check a password and start a session, applying the per-account rate limits."""
        user_id = await self._resolve_login_user(identifier)
        account_key = (user_id or identifier).lower()
        self._failed_logins.check(account_key, consume=False)
        self._logins_per_account.check(account_key)
        if not await self._verify_password(user_id, password):
            self._failed_logins.record(account_key)
            raise Forbidden("Invalid username or password")
        assert user_id is not None
        user = await self._db.users.get_user(user_id)
        if user is None or user.deactivated:
            # Said only to someone who knows the password, as Synapse does.
            raise UserDeactivated("This account has been deactivated")
        device_id, tokens = await self._auth.create_session(
            user_id, device_id=device_id, display_name=display_name,
            with_refresh_token=with_refresh_token, ip=ip, user_agent=user_agent)
        return Session(user_id, device_id, tokens)

    async def check_password_for_uia(self, user_id: str, auth: dict[str, Any]) -> str:
        """The ``m.login.password`` stage: the password of ``user_id`` itself."""
        identifier = auth.get("identifier")
        claimed: Any = None
        if isinstance(identifier, dict) and identifier.get("type") == "m.id.user":
            claimed = identifier.get("user")
        elif "user" in auth:
            claimed = auth.get("user")
        password = auth.get("password")
        if not isinstance(password, str):
            raise MissingParam("Missing password")
        if claimed is not None:
            if not isinstance(claimed, str) or await self._resolve_login_user(claimed) != user_id:
                raise Forbidden("Invalid username or password")
        self._failed_logins.check(user_id.lower(), consume=False)
        if not await self._verify_password(user_id, password):
            self._failed_logins.record(user_id.lower())
            raise Forbidden("Invalid username or password")
        return user_id

    async def change_password(self, user_id: str, new_password: str, *,
                              keep_device_id: str | None, logout_devices: bool) -> None:
        self.check_password_strength(new_password)
        await self._db.users.set_password_hash(user_id, await self._hasher.hash(new_password))
        if logout_devices:
            await self._auth.logout_all(user_id, except_device_id=keep_device_id)

    async def set_admin(self, user_id: str, admin: bool) -> None:
        await self._db.users.set_admin(user_id, admin)
        self._auth.forget_user(user_id)  # cached sessions carry the old flag
        logger.info("%s %s admin", user_id, "made" if admin else "no longer")

    async def deactivate(self, user_id: str, *, erase: bool) -> None:
        await self._db.users.deactivate(user_id, erase=erase)
        self._auth.forget_user(user_id)
        if self._pushers is not None:
            await self._pushers.delete_all(user_id)  # no more pushes for them
        logger.info("Deactivated %s", user_id)

    # -- shared-secret registration (/_synapse/admin/v1/register) ---------------------------

    async def new_registration_nonce(self) -> str:
        if not self._config.registration.shared_secret:
            raise BadRequest("Shared secret registration is not enabled")
        nonce = secrets.token_hex(32)
        await self._db.nonces.add(nonce, self._clock.time_ms())
        return nonce

    async def register_with_shared_secret(self, body: dict[str, Any]) -> str:
        secret = self._config.registration.shared_secret
        if not secret:
            raise BadRequest("Shared secret registration is not enabled")
        fields = {}
        for name in ("nonce", "username", "password", "mac"):
            value = body.get(name)
            if not isinstance(value, str) or not value:
                raise BadRequest(f"{name} must be specified", errcode="M_MISSING_PARAM"
                                 if value is None else "M_INVALID_PARAM")
            fields[name] = value
        admin = body.get("admin", False)
        user_type = body.get("user_type")
        displayname = body.get("displayname")
        if not isinstance(admin, bool):
            raise BadRequest("admin must be a boolean", errcode="M_INVALID_PARAM")
        if user_type is not None and not isinstance(user_type, str):
            raise BadRequest("Invalid user type", errcode="M_INVALID_PARAM")
        if displayname is not None and not isinstance(displayname, str):
            raise BadRequest("Invalid displayname", errcode="M_INVALID_PARAM")
        now = self._clock.time_ms()
        if not await self._db.nonces.consume(fields["nonce"], now - NONCE_LIFETIME_MS):
            raise BadRequest("unrecognised nonce")
        mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
        mac.update(fields["nonce"].encode() + b"\x00" + fields["username"].encode() + b"\x00"
                   + fields["password"].encode() + b"\x00" + (b"admin" if admin else b"notadmin"))
        if user_type:
            mac.update(b"\x00" + user_type.encode())
        if not hmac.compare_digest(mac.hexdigest(), fields["mac"]):
            raise Forbidden("HMAC incorrect")
        localpart = fields["username"]
        if localpart.startswith("@"):
            parsed = parse_user_id(localpart) if self.is_mine(localpart) else None
            if parsed is None:
                raise InvalidUsername("User ID must be local")
            localpart = parsed.localpart
        return await self.register(localpart.lower(), fields["password"], admin=admin,
                                   user_type=user_type, displayname=displayname)

    # -- registration tokens (admin) --------------------------------------------------------

    async def create_registration_token(self, token: str | None, *, length: int,
                                        uses_allowed: int | None, expiry_time: int | None
                                        ) -> RegistrationToken:
        if expiry_time is not None and expiry_time < self._clock.time_ms():
            raise BadRequest("expiry_time must not be in the past", errcode="M_INVALID_PARAM")
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-"
        for _ in range(5):
            candidate = token or "".join(secrets.choice(alphabet) for _ in range(length))
            if await self._db.registration_tokens.create(candidate, uses_allowed=uses_allowed,
                                                         expiry_time=expiry_time):
                created = await self._db.registration_tokens.get(candidate)
                assert created is not None
                return created
            if token is not None:
                raise BadRequest(f"Token already exists: {token}", errcode="M_INVALID_PARAM")
        raise MatrixError("Could not generate a unique token", status=500)

    async def registration_token_valid(self, token: str) -> bool:
        info = await self._db.registration_tokens.get(token)
        if info is None:
            return False
        if info.expiry_time is not None and info.expiry_time <= self._clock.time_ms():
            return False
        return info.uses_allowed is None or info.pending + info.completed < info.uses_allowed

    async def list_registration_tokens(self) -> list[RegistrationToken]:
        return await self._db.registration_tokens.list()

    async def get_registration_token(self, token: str) -> RegistrationToken | None:
        return await self._db.registration_tokens.get(token)

    async def delete_registration_token(self, token: str) -> bool:
        return await self._db.registration_tokens.delete(token)
