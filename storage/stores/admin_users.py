"""What the admin API reads about accounts: pages of users with their profile and last
activity (one query per page), one user in full, and where a user was last seen."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, literal, or_, select, true, update

from storage import user_directory_index
from storage.engine import DatabaseEngine
from storage.schema import devices, profiles, users

# The orderings the admin API offers (Synapse's names) and what they sort on; every one
# ends with the user ID, so pages are stable.
USER_ORDERINGS = ("name", "displayname", "is_guest", "admin", "deactivated", "user_type",
                  "avatar_url", "shadow_banned", "creation_ts", "last_seen_ts", "locked")


@dataclass(frozen=True, slots=True)
class AdminUser:
    user_id: str
    user_type: str | None
    admin: bool
    deactivated: bool
    erased: bool
    created_ts: int
    displayname: str | None
    avatar_url: str | None
    last_seen_ts: int | None
    has_password: bool


@dataclass(frozen=True, slots=True)
class UserFilter:
    """Which users a page lists (Synapse's query parameters)."""

    user_id: str | None = None  # part of the user ID
    name: str | None = None  # part of the localpart or display name
    guests: bool = True
    deactivated: bool | None = False  # None: both
    admins: bool | None = None  # None: both
    not_user_types: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Connection:
    device_id: str
    ip: str | None
    user_agent: str | None
    last_seen_ts: int | None


_last_seen = (select(devices.c.user_id, func.max(devices.c.last_seen_ts).label("ts"))
              .group_by(devices.c.user_id).subquery("last_seen"))

_COLUMNS = (users.c.user_id, users.c.user_type, users.c.admin, users.c.deactivated,
            users.c.erased, users.c.created_ts, profiles.c.displayname, profiles.c.avatar_url,
            _last_seen.c.ts.label("last_seen_ts"),
            users.c.password_hash.is_not(None).label("has_password"))

_FROM = (users.outerjoin(profiles, profiles.c.user_id == users.c.user_id)
         .outerjoin(_last_seen, _last_seen.c.user_id == users.c.user_id))


def _order_column(order_by: str) -> Any:
    return {
        "name": users.c.user_id,
        "displayname": profiles.c.displayname,
        "is_guest": literal(False),
        "admin": users.c.admin,
        "deactivated": users.c.deactivated,
        "user_type": users.c.user_type,
        "avatar_url": profiles.c.avatar_url,
        "shadow_banned": literal(False),
        "creation_ts": users.c.created_ts,
        "last_seen_ts": _last_seen.c.ts,
        "locked": literal(False),
    }[order_by]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _conditions(f: UserFilter) -> ColumnElement[bool]:
    where: list[ColumnElement[bool]] = []
    if f.name:
        part = _escape_like(f.name.lower())
        where.append(or_(
            func.lower(users.c.user_id).like(f"@%{part}%:%", escape="\\"),
            func.lower(profiles.c.displayname).like(f"%{part}%", escape="\\")))
    elif f.user_id:
        where.append(func.lower(users.c.user_id).like(f"%{_escape_like(f.user_id.lower())}%",
                                                      escape="\\"))
    if not f.guests:
        where.append(or_(users.c.user_type.is_(None), users.c.user_type != "guest"))
    if f.deactivated is not None:
        where.append(users.c.deactivated.is_(f.deactivated))
    if f.admins is not None:
        where.append(users.c.admin.is_(f.admins))
    types = [t for t in f.not_user_types if t]
    if types:
        where.append(or_(users.c.user_type.is_(None), users.c.user_type.not_in(types)))
    if "" in f.not_user_types:  # "" means: leave out users without a type
        where.append(users.c.user_type.is_not(None))
    return and_(true(), *where)


def _user(row: Any) -> AdminUser:
    return AdminUser(row.user_id, row.user_type, bool(row.admin), bool(row.deactivated),
                     bool(row.erased), int(row.created_ts), row.displayname, row.avatar_url,
                     row.last_seen_ts, bool(row.has_password))


class AdminUserStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def page(self, f: UserFilter, *, offset: int, limit: int, order_by: str,
                   backwards: bool) -> tuple[list[AdminUser], int]:
        """A page of local users and how many match in all, in one query."""
        column = _order_column(order_by)
        order = [column.desc() if backwards else column.asc(), users.c.user_id.asc()]
        query = (select(*_COLUMNS, func.count().over().label("total")).select_from(_FROM)
                 .where(_conditions(f)).order_by(*order).offset(offset).limit(limit))
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
            if rows:
                return [_user(r) for r in rows], int(rows[0].total)
            # An empty page (past the end, or limit=0): the count alone.
            total = (await conn.execute(select(func.count()).select_from(_FROM)
                                        .where(_conditions(f)))).scalar_one()
        return [], int(total)

    async def get(self, user_id: str) -> AdminUser | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(*_COLUMNS).select_from(_FROM)
                                      .where(users.c.user_id == user_id))).first()
        return _user(row) if row is not None else None

    async def connections(self, user_id: str) -> list[Connection]:
        """Each device's last IP address, user agent and time seen (``whois``)."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(devices.c.device_id, devices.c.last_seen_ip,
                       devices.c.last_seen_user_agent, devices.c.last_seen_ts)
                .where(devices.c.user_id == user_id).order_by(devices.c.device_id))
            return [Connection(*r) for r in rows]

    async def reactivate(self, user_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(update(users).where(users.c.user_id == user_id)
                               .values(deactivated=False, erased=False))
            profile = (await conn.execute(select(profiles.c.displayname, profiles.c.avatar_url)
                                          .where(profiles.c.user_id == user_id))).first()
            # Found in the user directory again.
            await conn.run_sync(user_directory_index.upsert_users, [
                (user_id, profile.displayname if profile else None,
                 profile.avatar_url if profile else None)])

    async def set_user_type(self, user_id: str, user_type: str | None) -> None:
        async with self._db.write() as conn:
            await conn.execute(update(users).where(users.c.user_id == user_id)
                               .values(user_type=user_type))
