"""Accounts and their profiles."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select, update

from storage import user_directory_index
from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.schema import access_tokens, devices, profiles, refresh_tokens, users


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    password_hash: str | None
    admin: bool
    deactivated: bool
    user_type: str | None
    created_ts: int
    erased: bool = False


@dataclass(frozen=True, slots=True)
class Profile:
    displayname: str | None
    avatar_url: str | None


class UserStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def create_user(
        self,
        user_id: str,
        *,
        password_hash: str | None,
        created_ts: int,
        admin: bool = False,
        user_type: str | None = None,
        displayname: str | None = None,
    ) -> bool:
        """Create the account and its profile; False if the user ID is taken."""
        async with self._db.write() as conn:
            result = await conn.execute(
                insert(self._db.is_sqlite, users)
                .values(user_id=user_id, password_hash=password_hash, admin=admin,
                        deactivated=False, user_type=user_type, created_ts=created_ts)
                .on_conflict_do_nothing(index_elements=["user_id"])
            )
            if result.rowcount != 1:
                return False
            await conn.execute(
                profiles.insert().values(user_id=user_id, displayname=displayname)
            )
            await conn.run_sync(user_directory_index.upsert_users,
                                [(user_id, displayname, None)])
            return True

    async def get_user(self, user_id: str) -> UserRecord | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(users).where(users.c.user_id == user_id))).first()
        return UserRecord(**row._mapping) if row is not None else None

    async def find_user_case_insensitive(self, user_id: str) -> list[str]:
        """User IDs equal to ``user_id`` ignoring case (older accounts may have upper case)."""

        async with self._db.read() as conn:
            rows = await conn.execute(
                select(users.c.user_id).where(func.lower(users.c.user_id) == user_id.lower())
            )
            return [r[0] for r in rows]

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                update(users).where(users.c.user_id == user_id).values(password_hash=password_hash)
            )

    async def set_admin(self, user_id: str, admin: bool) -> None:
        async with self._db.write() as conn:
            await conn.execute(update(users).where(users.c.user_id == user_id).values(admin=admin))

    async def deactivate(self, user_id: str, *, erase: bool) -> None:
        """Mark the account deactivated and end every session it has, in one transaction."""
        async with self._db.write() as conn:
            await conn.execute(
                update(users).where(users.c.user_id == user_id)
                .values(deactivated=True, **({"erased": True} if erase else {}))
            )
            await conn.execute(delete(access_tokens).where(access_tokens.c.user_id == user_id))
            await conn.execute(delete(refresh_tokens).where(refresh_tokens.c.user_id == user_id))
            await conn.execute(delete(devices).where(devices.c.user_id == user_id))
            # Deactivated users are never found in the user directory.
            await conn.run_sync(user_directory_index.remove_users, [user_id])
            if erase:
                await conn.execute(
                    update(profiles).where(profiles.c.user_id == user_id)
                    .values(displayname=None, avatar_url=None)
                )

    async def count_users(self) -> int:

        async with self._db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(users))).scalar_one())


class ProfileStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def get_profile(self, user_id: str) -> Profile | None:
        async with self._db.read() as conn:
            row = (await conn.execute(
                select(profiles.c.displayname, profiles.c.avatar_url)
                .where(profiles.c.user_id == user_id)
            )).first()
        return Profile(row.displayname, row.avatar_url) if row is not None else None

    async def set_profile_field(self, user_id: str, field: str, value: str | None) -> None:
        if field not in ("displayname", "avatar_url"):
            raise ValueError(field)
        async with self._db.write() as conn:
            row = (await conn.execute(
                update(profiles).where(profiles.c.user_id == user_id).values({field: value})
                .returning(profiles.c.displayname, profiles.c.avatar_url)
            )).first()
            # The user directory follows the profile (not a deactivated user's).
            active = (await conn.execute(select(users.c.user_id).where(
                users.c.user_id == user_id, users.c.deactivated.is_(False)))).first()
            if row is not None and active is not None:
                await conn.run_sync(user_directory_index.upsert_users,
                                    [(user_id, row.displayname, row.avatar_url)])
