"""The admin API's user management (Synapse's ``/_synapse/admin/v{1,2}/users``...): listing
and querying accounts, creating and changing them, deactivating, resetting passwords, their
sessions and devices, the rooms they are in, the media they uploaded. Also used by
``ktchat admin``."""

from __future__ import annotations

import logging
from typing import Any

from core.errors import (
    BadJson,
    BadRequest,
    InvalidParam,
    InvalidUsername,
    MatrixError,
    MissingParam,
    NotFound,
)
from homeserver.services.accounts import AccountService
from homeserver.services.auth import AuthService
from homeserver.services.devices import DeviceService
from homeserver.services.membership import MembershipService
from homeserver.services.profile import MAX_AVATAR_URL_LENGTH, MAX_DISPLAYNAME_LENGTH
from storage.stores.admin_users import USER_ORDERINGS as USER_ORDERINGS  # the routes check it
from storage.stores.admin_users import AdminUser, AdminUserStore
from storage.stores.admin_users import UserFilter as UserFilter  # what routes build
from storage.stores.devices import Device
from storage.stores.media import MediaStore
from storage.stores.state import StateStore
from storage.stores.users import ProfileStore

logger = logging.getLogger(__name__)

USER_TYPES = ("bot", "support")
MAX_PASSWORD_LENGTH = 512
# The orderings of a user's media (Synapse's names) and the column each sorts on.
MEDIA_ORDERINGS = {"media_id": "media_id", "upload_name": "upload_name",
                   "created_ts": "created_ts", "last_access_ts": "created_ts",
                   "media_length": "size", "media_type": "content_type",
                   "quarantined_by": "quarantined_by", "safe_from_quarantine": "created_ts"}


def user_list_json(user: AdminUser) -> dict[str, Any]:
    """A user as ``GET /_synapse/admin/v2/users`` lists it (``creation_ts`` in ms)."""
    return {"name": user.user_id, "user_type": user.user_type, "is_guest": False,
            "admin": user.admin, "deactivated": user.deactivated, "shadow_banned": False,
            "displayname": user.displayname, "avatar_url": user.avatar_url,
            "creation_ts": user.created_ts, "erased": user.erased,
            "last_seen_ts": user.last_seen_ts, "locked": False}


def user_json(user: AdminUser) -> dict[str, Any]:
    """A user as ``GET /_synapse/admin/v2/users/{userId}`` shows it (``creation_ts`` in
    seconds, as Synapse's)."""
    return {"name": user.user_id, "admin": user.admin, "deactivated": user.deactivated,
            "locked": False, "shadow_banned": False, "creation_ts": user.created_ts // 1000,
            "appservice_id": None, "consent_server_notice_sent": None,
            "consent_version": None, "consent_ts": None, "user_type": user.user_type,
            "is_guest": False, "suspended": False, "displayname": user.displayname,
            "avatar_url": user.avatar_url, "threepids": [], "external_ids": [],
            "erased": user.erased, "last_seen_ts": user.last_seen_ts}


def device_json(device: Device) -> dict[str, Any]:
    return {"device_id": device.device_id, "display_name": device.display_name,
            "last_seen_ip": device.last_seen_ip, "last_seen_ts": device.last_seen_ts,
            "last_seen_user_agent": device.last_seen_user_agent, "user_id": device.user_id,
            "dehydrated": False}


def _bool(body: dict[str, Any], name: str, default: bool, message: str,
          error: type[MatrixError] = BadRequest) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise error(message)
    return value


class AdminUserService:
    def __init__(self, store: AdminUserStore, profiles: ProfileStore, state: StateStore,
                 media: MediaStore, accounts: AccountService, auth: AuthService,
                 devices: DeviceService, membership: MembershipService) -> None:
        self._store = store
        self._profiles = profiles
        self._state = state
        self._media = media
        self._accounts = accounts
        self._auth = auth
        self._devices = devices
        self._membership = membership

    def local_user(self, user_id: str, message: str = "Can only look up local users") -> str:
        """``user_id`` if it is a user ID of this server; else 400."""
        if not self._accounts.is_mine(user_id):
            raise BadRequest(message)
        return user_id

    async def _existing(self, user_id: str, message: str = "User not found") -> AdminUser:
        user = await self._store.get(user_id)
        if user is None:
            raise NotFound(message)
        return user

    # -- reading ----------------------------------------------------------------------------

    async def list_users(self, f: UserFilter, *, offset: int, limit: int, order_by: str,
                         backwards: bool) -> dict[str, Any]:
        users, total = await self._store.page(f, offset=offset, limit=limit,
                                              order_by=order_by, backwards=backwards)
        body: dict[str, Any] = {"users": [user_list_json(u) for u in users], "total": total}
        if offset + limit < total:
            body["next_token"] = str(offset + len(users))
        return body

    async def get_user(self, user_id: str) -> dict[str, Any]:
        self.local_user(user_id)
        return user_json(await self._existing(user_id))

    async def find(self, user_id: str) -> AdminUser | None:
        return await self._store.get(user_id)

    async def whois(self, user_id: str) -> dict[str, Any]:
        """Where the user's sessions were last seen, in Synapse's ``whois`` shape."""
        self.local_user(user_id, "Can only whois a local user")
        await self._existing(user_id)
        connections = [{"ip": c.ip, "last_seen": c.last_seen_ts, "user_agent": c.user_agent}
                       for c in await self._store.connections(user_id)
                       if c.last_seen_ts is not None]
        return {"user_id": user_id,
                "devices": {"": {"sessions": [{"connections": connections}]}}}

    async def joined_rooms(self, user_id: str) -> dict[str, Any]:
        rooms = sorted(await self._state.rooms_for_user(user_id))
        return {"joined_rooms": rooms, "total": len(rooms)}

    async def is_admin(self, user_id: str) -> bool:
        self.local_user(user_id, "Only local users can be admins of this homeserver")
        return (await self._existing(user_id)).admin

    # -- creating and changing --------------------------------------------------------------

    async def upsert_user(self, requester_id: str, user_id: str, body: dict[str, Any]
                          ) -> tuple[bool, dict[str, Any]]:
        """``PUT /_synapse/admin/v2/users/{userId}``: create the account (True) or change it
        (False); returns the user as ``get_user`` shows it."""
        self.local_user(user_id, "This endpoint can only be used with local users")
        user_type = body.get("user_type")
        if user_type is not None and user_type not in USER_TYPES:
            raise BadRequest("Invalid user type")
        admin = _bool(body, "admin", False, "Param 'admin' must be a boolean, if given",
                      BadJson)
        password = body.get("password")
        if password is not None and (not isinstance(password, str)
                                     or len(password) > MAX_PASSWORD_LENGTH):
            raise BadRequest("Invalid password")
        logout_devices = _bool(body, "logout_devices", True,
                               "'logout_devices' parameter is not of type boolean")
        deactivate = _bool(body, "deactivated", False,
                           "'deactivated' parameter is not of type boolean")
        if _bool(body, "locked", False, "'locked' parameter is not of type boolean"):
            raise BadRequest("Locking accounts is not supported")
        for field, limit in (("displayname", MAX_DISPLAYNAME_LENGTH),
                             ("avatar_url", MAX_AVATAR_URL_LENGTH)):
            value = body.get(field)
            if value is not None and (not isinstance(value, str) or len(value) > limit):
                raise InvalidParam(f"'{field}' must be a string of at most {limit} "
                                   "characters")
        existing = await self._store.get(user_id)
        if existing is None:
            localpart = user_id[1:].split(":", 1)[0]
            if localpart != localpart.lower():  # (registering would lower-case it)
                raise InvalidUsername(
                    "User ID can only contain characters a-z, 0-9, or '=_-./+'")
            if password is not None:
                self._accounts.check_password_strength(password)
            await self._accounts.register(localpart, password, admin=admin,
                                          user_type=user_type,
                                          displayname=body.get("displayname"))
            if body.get("avatar_url"):
                await self._profiles.set_profile_field(user_id, "avatar_url",
                                                       body["avatar_url"])
            if deactivate:
                await self.deactivate(user_id, erase=False)
            return True, await self.get_user(user_id)
        if password is not None:
            await self._accounts.change_password(user_id, password, keep_device_id=None,
                                                 logout_devices=logout_devices)
        for field in ("displayname", "avatar_url"):
            if field in body:
                await self._profiles.set_profile_field(user_id, field, body[field] or None)
        if "admin" in body and admin != existing.admin:
            await self.set_admin(requester_id, user_id, admin)
        if "deactivated" in body:
            if deactivate and not existing.deactivated:
                await self.deactivate(user_id, erase=False)
            elif not deactivate and existing.deactivated:
                await self._store.reactivate(user_id)
        if "user_type" in body:
            await self._store.set_user_type(user_id, user_type)
        return False, await self.get_user(user_id)

    async def set_admin(self, requester_id: str, user_id: str, admin: bool) -> None:
        self.local_user(user_id, "Only local users can be admins of this homeserver")
        await self._existing(user_id)
        if not admin and requester_id == user_id:
            raise BadRequest("You may not demote yourself.")
        await self._accounts.set_admin(user_id, admin)

    async def deactivate(self, user_id: str, *, erase: bool, leave_rooms: bool = True) -> None:
        """Leave every room (as Synapse does; not ``leave_rooms`` when the caller is not the
        process that writes the rooms' events), then deactivate: sessions, devices and
        pushers go; with ``erase`` the profile too."""
        self.local_user(user_id, "Can only deactivate local users")
        await self._existing(user_id)
        rooms = await self._state.rooms_for_user(user_id, ("join", "invite", "knock")) \
            if leave_rooms else []
        for room_id in rooms:
            try:
                await self._membership.leave(user_id, room_id)
            except MatrixError as e:
                logger.warning("Deactivating %s: could not leave %s: %s", user_id, room_id,
                               e.message)
        await self._accounts.deactivate(user_id, erase=erase)

    async def reset_password(self, user_id: str, body: dict[str, Any]) -> None:
        self.local_user(user_id, "Can only reset the password of local users")
        if "new_password" not in body:
            raise MissingParam("Missing params: ['new_password']")
        password = body["new_password"]
        if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
            raise BadRequest("Invalid password")
        logout_devices = _bool(body, "logout_devices", True,
                               "'logout_devices' parameter is not of type boolean")
        await self._existing(user_id)
        await self._accounts.change_password(user_id, password, keep_device_id=None,
                                             logout_devices=logout_devices)

    # -- devices ----------------------------------------------------------------------------

    async def _device_owner(self, user_id: str) -> None:
        self.local_user(user_id, "Can only lookup local users")
        await self._existing(user_id, "Unknown user")

    async def devices(self, user_id: str) -> dict[str, Any]:
        await self._device_owner(user_id)
        devices = await self._devices.list_devices(user_id)
        return {"devices": [device_json(d) for d in devices], "total": len(devices)}

    async def device(self, user_id: str, device_id: str) -> dict[str, Any]:
        await self._device_owner(user_id)
        return device_json(await self._devices.get_device(user_id, device_id))

    async def rename_device(self, user_id: str, device_id: str, body: dict[str, Any]) -> None:
        await self._device_owner(user_id)
        name = body.get("display_name")
        if name is not None and not isinstance(name, str):
            raise BadJson("'display_name' must be a string")
        if "display_name" in body:
            await self._devices.rename(user_id, device_id, name)
        else:
            await self._devices.get_device(user_id, device_id)

    async def delete_devices(self, user_id: str, device_ids: list[str]) -> None:
        await self._device_owner(user_id)
        await self._devices.delete(user_id, device_ids)

    # -- media ------------------------------------------------------------------------------

    async def media(self, user_id: str, *, offset: int, limit: int, order_by: str,
                    backwards: bool) -> dict[str, Any]:
        self.local_user(user_id, "Can only look up local users")
        await self._existing(user_id, "Unknown user")
        records, total = await self._media.page_by_user(
            user_id, offset=offset, limit=limit, order_by=MEDIA_ORDERINGS[order_by],
            backwards=backwards)
        body: dict[str, Any] = {"media": [
            {"media_id": r.media_id, "media_type": r.content_type, "media_length": r.size,
             "upload_name": r.upload_name, "created_ts": r.created_ts,
             "last_access_ts": r.created_ts, "quarantined_by": r.quarantined_by,
             "safe_from_quarantine": False} for r in records], "total": total}
        if offset + limit < total:
            body["next_token"] = offset + len(records)
        return body
