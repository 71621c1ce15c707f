"""Devices and the access and refresh tokens that belong to them.

Tokens are stored only as SHA-256 hashes; the store never sees a token itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.schema import (
    access_tokens,
    dehydrated_devices,
    device_inbox,
    device_keys,
    devices,
    fallback_keys,
    one_time_keys,
    refresh_tokens,
    users,
)

# What goes with a device: its inbox, its end-to-end encryption keys, and its dehydrated
# account if it is the user's dehydrated device.
_DEVICE_TABLES = (devices, device_inbox, device_keys, one_time_keys, fallback_keys,
                  dehydrated_devices)


@dataclass(frozen=True, slots=True)
class Device:
    user_id: str
    device_id: str
    display_name: str | None
    created_ts: int
    last_seen_ts: int | None
    last_seen_ip: str | None
    last_seen_user_agent: str | None


@dataclass(frozen=True, slots=True)
class AccessTokenInfo:
    token_id: int
    user_id: str
    device_id: str
    expires_ts: int | None
    refresh_token_id: int | None
    used: bool
    is_admin: bool
    deactivated: bool


@dataclass(frozen=True, slots=True)
class RefreshTokenInfo:
    token_id: int
    user_id: str
    device_id: str
    expires_ts: int | None
    next_token_id: int | None
    successor_used: bool


@dataclass(frozen=True, slots=True)
class NewTokens:
    access_token_hash: str
    access_expires_ts: int | None
    refresh_token_hash: str | None
    refresh_expires_ts: int | None


class DeviceStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def create_session(
        self,
        user_id: str,
        device_id: str,
        *,
        display_name: str | None,
        tokens: NewTokens,
        now: int,
        ip: str | None = None,
        user_agent: str | None = None,
    ) -> None:
        """Create or reuse the device and give it new tokens, in one transaction.

        A reused device keeps its display name unless a new one is given, and loses the
        tokens it had: one device, one live session.
        """
        async with self._db.write() as conn:
            values = dict(user_id=user_id, device_id=device_id, display_name=display_name,
                          created_ts=now, last_seen_ts=now, last_seen_ip=ip,
                          last_seen_user_agent=user_agent)
            on_conflict = {"last_seen_ts": now, "last_seen_ip": ip,
                           "last_seen_user_agent": user_agent}
            if display_name is not None:
                on_conflict["display_name"] = display_name
            await conn.execute(
                insert(self._db.is_sqlite, devices).values(**values)
                .on_conflict_do_update(index_elements=["user_id", "device_id"], set_=on_conflict)
            )
            await self._delete_tokens(conn, user_id, [device_id])
            await self._insert_tokens(conn, user_id, device_id, tokens, now)

    async def _insert_tokens(self, conn: AsyncConnection, user_id: str, device_id: str,
                             tokens: NewTokens, now: int) -> int | None:
        refresh_id = None
        if tokens.refresh_token_hash is not None:
            result = await conn.execute(
                refresh_tokens.insert().values(
                    token_hash=tokens.refresh_token_hash, user_id=user_id, device_id=device_id,
                    created_ts=now, expires_ts=tokens.refresh_expires_ts,
                ).returning(refresh_tokens.c.id)
            )
            refresh_id = result.scalar_one()
        await conn.execute(
            access_tokens.insert().values(
                token_hash=tokens.access_token_hash, user_id=user_id, device_id=device_id,
                created_ts=now, expires_ts=tokens.access_expires_ts,
                refresh_token_id=refresh_id, used=False,
            )
        )
        return refresh_id

    @staticmethod
    async def _delete_tokens(conn: AsyncConnection, user_id: str, device_ids: Sequence[str]
                             ) -> None:
        for table in (access_tokens, refresh_tokens):
            await conn.execute(
                delete(table).where(and_(table.c.user_id == user_id,
                                         table.c.device_id.in_(list(device_ids))))
            )

    async def get_access_token(self, token_hash: str) -> AccessTokenInfo | None:
        async with self._db.read() as conn:
            row = (await conn.execute(
                select(access_tokens.c.id, access_tokens.c.user_id, access_tokens.c.device_id,
                       access_tokens.c.expires_ts, access_tokens.c.refresh_token_id,
                       access_tokens.c.used, users.c.admin, users.c.deactivated)
                .join(users, users.c.user_id == access_tokens.c.user_id)
                .where(access_tokens.c.token_hash == token_hash)
            )).first()
        if row is None:
            return None
        return AccessTokenInfo(row.id, row.user_id, row.device_id, row.expires_ts,
                               row.refresh_token_id, bool(row.used), bool(row.admin),
                               bool(row.deactivated))

    async def mark_refreshed_access_token_used(self, token_id: int, refresh_token_id: int) -> None:
        """The first use of a token from /refresh retires the refresh token it replaced."""
        async with self._db.write() as conn:
            await conn.execute(
                update(access_tokens).where(access_tokens.c.id == token_id).values(used=True)
            )
            await conn.execute(
                delete(refresh_tokens).where(refresh_tokens.c.next_token_id == refresh_token_id)
            )

    async def get_refresh_token(self, token_hash: str) -> RefreshTokenInfo | None:
        successor = refresh_tokens.alias("successor")
        async with self._db.read() as conn:
            row = (await conn.execute(
                select(refresh_tokens.c.id, refresh_tokens.c.user_id, refresh_tokens.c.device_id,
                       refresh_tokens.c.expires_ts, refresh_tokens.c.next_token_id,
                       successor.c.next_token_id.label("successor_next"))
                .outerjoin(successor, successor.c.id == refresh_tokens.c.next_token_id)
                .where(refresh_tokens.c.token_hash == token_hash)
            )).first()
            if row is None:
                return None
            successor_used = row.successor_next is not None
            if row.next_token_id is not None and not successor_used:
                used = (await conn.execute(
                    select(access_tokens.c.used)
                    .where(access_tokens.c.refresh_token_id == row.next_token_id)
                )).scalar()
                successor_used = bool(used)
        return RefreshTokenInfo(row.id, row.user_id, row.device_id, row.expires_ts,
                                row.next_token_id, successor_used)

    async def replace_refresh_token(self, old: RefreshTokenInfo, tokens: NewTokens, now: int
                                    ) -> None:
        """Issue the successor of ``old``: new tokens in, the old access tokens out."""
        async with self._db.write() as conn:
            # Drop an earlier, never-used successor (the client retried /refresh).
            if old.next_token_id is not None:
                await conn.execute(delete(access_tokens)
                                   .where(access_tokens.c.refresh_token_id == old.next_token_id))
                await conn.execute(delete(refresh_tokens)
                                   .where(refresh_tokens.c.id == old.next_token_id))
            await conn.execute(delete(access_tokens)
                               .where(access_tokens.c.refresh_token_id == old.token_id))
            new_id = await self._insert_tokens(conn, old.user_id, old.device_id, tokens, now)
            await conn.execute(update(refresh_tokens).where(refresh_tokens.c.id == old.token_id)
                               .values(next_token_id=new_id))

    async def delete_devices(self, user_id: str, device_ids: Sequence[str]) -> list[str]:
        """Delete devices, every token they hold, the messages waiting for them and their
        encryption keys; returns the IDs of the devices that existed."""
        async with self._db.write() as conn:
            await self._delete_tokens(conn, user_id, device_ids)
            deleted = [r[0] for r in await conn.execute(
                delete(devices).where(and_(devices.c.user_id == user_id,
                                           devices.c.device_id.in_(list(device_ids))))
                .returning(devices.c.device_id))]
            for table in _DEVICE_TABLES[1:]:
                await conn.execute(delete(table).where(and_(
                    table.c.user_id == user_id, table.c.device_id.in_(list(device_ids)))))
        return deleted

    async def delete_all_devices(self, user_id: str, *, except_device_id: str | None = None
                                 ) -> list[str]:
        """Delete every device of the user but one; returns the deleted device IDs."""
        async with self._db.write() as conn:
            query = select(devices.c.device_id).where(devices.c.user_id == user_id)
            if except_device_id is not None:
                query = query.where(devices.c.device_id != except_device_id)
            device_ids = [r[0] for r in await conn.execute(query)]
            # Tokens may outlive a device row if it was never created; sweep by user.
            for table in (access_tokens, refresh_tokens):
                stmt = delete(table).where(table.c.user_id == user_id)
                if except_device_id is not None:
                    stmt = stmt.where(table.c.device_id != except_device_id)
                await conn.execute(stmt)
            if device_ids:
                for table in _DEVICE_TABLES:
                    await conn.execute(delete(table).where(and_(
                        table.c.user_id == user_id, table.c.device_id.in_(device_ids))))
        return device_ids

    async def create_dehydrated(self, user_id: str, device_id: str, display_name: str | None,
                                device_data_json: str, now: int) -> bool:
        """A device with no session, and the user's dehydrated device (their only one: the
        caller deleted the one before); False if the user has a device of that ID."""
        async with self._db.write() as conn:
            taken = await conn.scalar(select(devices.c.device_id).where(and_(
                devices.c.user_id == user_id, devices.c.device_id == device_id)))
            if taken is not None:
                return False
            await conn.execute(devices.insert().values(
                user_id=user_id, device_id=device_id, display_name=display_name,
                created_ts=now, last_seen_ts=None, last_seen_ip=None,
                last_seen_user_agent=None))
            await conn.execute(dehydrated_devices.insert().values(
                user_id=user_id, device_id=device_id, device_data_json=device_data_json,
                created_ts=now))
        return True

    async def get_dehydrated(self, user_id: str) -> tuple[str, str] | None:
        """``(device ID, device data JSON)`` of the user's dehydrated device, if any."""
        async with self._db.read() as conn:
            row = (await conn.execute(
                select(dehydrated_devices.c.device_id, dehydrated_devices.c.device_data_json)
                .where(dehydrated_devices.c.user_id == user_id))).first()
        return (row.device_id, row.device_data_json) if row is not None else None

    async def get_devices(self, user_id: str) -> list[Device]:
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(devices).where(devices.c.user_id == user_id).order_by(devices.c.device_id)
            )
            return [Device(**r._mapping) for r in rows]

    async def get_device(self, user_id: str, device_id: str) -> Device | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(devices).where(
                and_(devices.c.user_id == user_id, devices.c.device_id == device_id)))).first()
        return Device(**row._mapping) if row is not None else None

    async def set_display_name(self, user_id: str, device_id: str, display_name: str | None
                               ) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(
                update(devices)
                .where(and_(devices.c.user_id == user_id, devices.c.device_id == device_id))
                .values(display_name=display_name)
            )
            return bool(result.rowcount)

    async def record_last_seen(self, seen: Sequence[tuple[str, str, int, str | None, str | None]]
                               ) -> None:
        """Batch-update ``(user_id, device_id, ts, ip, user_agent)`` last-seen details."""
        if not seen:
            return
        stmt = (
            update(devices)
            .where(and_(devices.c.user_id == bindparam("u"), devices.c.device_id == bindparam("d")))
            .values(last_seen_ts=bindparam("ts"), last_seen_ip=bindparam("ip"),
                    last_seen_user_agent=bindparam("ua"))
        )
        rows = [dict(u=u, d=d, ts=ts, ip=ip, ua=ua) for u, d, ts, ip, ua in seen]
        # On the writer's own connection (SQLite: its thread), not the async one: at
        # shutdown this is often the first write that needed that one, and opening it then
        # met "database is locked" on a loaded machine.
        await self._db.run_write(lambda conn: conn.execute(stmt, rows))
