"""User profiles: display name and avatar URL."""

from __future__ import annotations

from typing import Any

from core.errors import BadJson, Forbidden, NotFound
from homeserver.services.ports import RemoteRooms
from storage.stores.users import Profile, ProfileStore, UserStore

MAX_DISPLAYNAME_LENGTH = 256
MAX_AVATAR_URL_LENGTH = 1000
FIELDS = ("displayname", "avatar_url")


class ProfileService:
    def __init__(self, profiles: ProfileStore, users: UserStore, *,
                 remote: RemoteRooms | None = None) -> None:
        self._profiles = profiles
        self._users = users
        # Other servers' users' profiles (None: federation is off).
        self.remote = remote

    async def get_profile(self, user_id: str) -> Profile:
        """The profile of a local user; 404 if there is no such user."""
        profile = await self._profiles.get_profile(user_id)
        if profile is None:
            raise NotFound("Profile was not found")
        return profile

    async def remote_profile(self, user_id: str) -> dict[str, Any]:
        """Another server's user's profile, asked of their server (404 if it has none)."""
        if self.remote is None:
            raise NotFound("Profile was not found")
        return await self.remote.query_profile(user_id)

    async def set_field(self, requester_user_id: str, user_id: str, field: str,
                        value: object, *, is_admin: bool = False) -> None:
        if field not in FIELDS:
            raise NotFound(f"Unknown profile field {field!r}")
        if requester_user_id != user_id and not is_admin:
            raise Forbidden("You may only change your own profile")
        if value is not None and not isinstance(value, str):
            raise BadJson(f"'{field}' must be a string")
        limit = MAX_DISPLAYNAME_LENGTH if field == "displayname" else MAX_AVATAR_URL_LENGTH
        if value is not None and len(value) > limit:
            raise BadJson(f"'{field}' may not be longer than {limit} characters")
        user = await self._users.get_user(user_id)
        if user is None:
            raise NotFound("Profile was not found")
        if user.deactivated:
            raise Forbidden("The account has been deactivated")
        await self._profiles.set_profile_field(user_id, field, value or None)
