"""Other servers' users' device lists, cached while they share a room with a user here.

A cached user has a row in ``remote_device_lists`` (the position in their server's
device-list stream the cache is at, their master and self-signing keys) and a row per device
in ``remote_devices``. A resync replaces the whole entry; an ``m.device_list_update`` that
follows on from the cached position changes one device and moves the position, only if the
position is still the one it follows (compare and set: two updates racing cannot both
apply). Key objects are kept as the JSON text their server sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, delete, select, update

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.schema import remote_device_lists, remote_devices

_l = remote_device_lists.c
_d = remote_devices.c
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class RemoteDeviceList:
    stream_id: int
    devices: Mapping[str, str]
    """device ID -> key JSON"""
    master_key: str | None
    self_signing_key: str | None


class RemoteDeviceListStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def get(self, user_ids: Sequence[str]) -> dict[str, RemoteDeviceList]:
        """The cached entries of those users that have one."""
        out: dict[str, RemoteDeviceList] = {}
        async with self._db.read() as conn:
            for i in range(0, len(user_ids), _CHUNK):
                chunk = list(user_ids[i:i + _CHUNK])
                lists = (await conn.execute(
                    select(_l.user_id, _l.stream_id, _l.master_key_json,
                           _l.self_signing_key_json).where(_l.user_id.in_(chunk)))).all()
                if not lists:
                    continue
                devices: dict[str, dict[str, str]] = {r.user_id: {} for r in lists}
                for row in await conn.execute(
                        select(_d.user_id, _d.device_id, _d.key_json)
                        .where(_d.user_id.in_(list(devices)))):
                    devices[row.user_id][row.device_id] = row.key_json
                for r in lists:
                    out[r.user_id] = RemoteDeviceList(r.stream_id, devices[r.user_id],
                                                      r.master_key_json,
                                                      r.self_signing_key_json)
        return out

    async def replace(self, user_id: str, entry: RemoteDeviceList, now_ms: int) -> None:
        """A resync: the user's whole cached entry becomes ``entry``."""

        def run(conn: Connection) -> None:
            conn.execute(delete(remote_devices).where(_d.user_id == user_id))
            if entry.devices:
                conn.execute(remote_devices.insert(),
                             [{"user_id": user_id, "device_id": d, "key_json": k}
                              for d, k in entry.devices.items()])
            values = {"stream_id": entry.stream_id, "master_key_json": entry.master_key,
                      "self_signing_key_json": entry.self_signing_key, "synced_ts": now_ms}
            conn.execute(insert(self._db.is_sqlite, remote_device_lists)
                         .values(user_id=user_id, **values)
                         .on_conflict_do_update(index_elements=["user_id"], set_=values))

        await self._db.run_write(run)

    async def apply(self, user_id: str, after: int, stream_id: int, device_id: str,
                    key_json: str | None) -> bool:
        """One device changed (``key_json``) or was deleted (None) at ``stream_id``, the
        change after ``after``: applied only if the cache is at ``after``; whether it was."""

        def run(conn: Connection) -> bool:
            moved = conn.execute(update(remote_device_lists)
                                 .where(_l.user_id == user_id, _l.stream_id == after)
                                 .values(stream_id=stream_id))
            if moved.rowcount != 1:
                return False
            conn.execute(delete(remote_devices).where(_d.user_id == user_id,
                                                      _d.device_id == device_id))
            if key_json is not None:
                conn.execute(remote_devices.insert().values(user_id=user_id,
                                                            device_id=device_id,
                                                            key_json=key_json))
            return True

        return await self._db.run_write(run)

    async def set_cross_signing(self, user_id: str, master_key: str | None,
                                self_signing_key: str | None) -> bool:
        """New master and/or self-signing keys (None: unchanged) of a cached user; whether
        the user is cached."""
        values = {k: v for k, v in (("master_key_json", master_key),
                                    ("self_signing_key_json", self_signing_key))
                  if v is not None}
        if not values:
            return False

        def run(conn: Connection) -> bool:
            return conn.execute(update(remote_device_lists).where(_l.user_id == user_id)
                                .values(**values)).rowcount == 1

        return await self._db.run_write(run)

    async def drop(self, user_ids: Sequence[str]) -> None:
        """Forget these users' entries (they share no room here any more)."""
        if not user_ids:
            return

        def run(conn: Connection) -> None:
            for i in range(0, len(user_ids), _CHUNK):
                chunk = list(user_ids[i:i + _CHUNK])
                conn.execute(delete(remote_devices).where(_d.user_id.in_(chunk)))
                conn.execute(delete(remote_device_lists).where(_l.user_id.in_(chunk)))

        await self._db.run_write(run)

    async def cached_users(self) -> list[str]:
        """Every cached user (the sweep for users who no longer share a room)."""
        async with self._db.read() as conn:
            return list((await conn.execute(select(_l.user_id))).scalars())
