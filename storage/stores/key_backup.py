"""Server-side key backup (``room_keys``): a user's backup versions, and the megolm session
keys stored in each.

Versions are numbered per user from 1 and never reused: deleting one marks it deleted and
drops its keys, and the next one created gets a higher number. The current version is the
highest one not deleted. Each version keeps an etag, a counter raised whenever its keys
change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    delete,
    false,
    func,
    literal,
    or_,
    select,
    true,
    update,
)

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.schema import room_key_versions, room_keys

_v = room_key_versions.c
_k = room_keys.c


@dataclass(frozen=True, slots=True)
class BackupVersion:
    version: int
    algorithm: str
    auth_data: dict[str, Any]
    etag: int
    count: int


@dataclass(frozen=True, slots=True)
class RoomKey:
    room_id: str
    session_id: str
    first_message_index: int
    forwarded_count: int
    is_verified: bool
    session_data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class KeysChanged:
    """The version's etag and number of keys after a write."""

    etag: int
    count: int


@dataclass(frozen=True, slots=True)
class NotCurrent:
    """Keys were sent for a version that exists but is not the current one."""

    current_version: int


def _of(user_id: ColumnElement[str] | str, version: ColumnElement[int] | int
        ) -> ColumnElement[bool]:
    return and_(_v.user_id == user_id, _v.version == version)


def _keys_of(room_id: bool, session_id: bool) -> ColumnElement[bool]:
    clause = and_(_k.user_id == bindparam("uid"), _k.version == bindparam("ver"))
    if room_id:
        clause = and_(clause, _k.room_id == bindparam("rid"))
    if session_id:
        clause = and_(clause, _k.session_id == bindparam("sid"))
    return clause


_count = (select(func.count()).select_from(room_keys)
          .where(and_(_k.user_id == _v.user_id, _k.version == _v.version))
          .scalar_subquery())
_live = (select(_v.version, _v.algorithm, _v.auth_data_json, _v.etag, _count.label("n_keys"))
         .where(and_(_v.user_id == bindparam("uid"), _v.deleted == false())))
_GET_VERSION = _live.where(_v.version == bindparam("ver"))
_GET_LATEST = _live.order_by(_v.version.desc()).limit(1)
_CURRENT = select(func.max(_v.version)).where(
    and_(_v.user_id == bindparam("uid"), _v.deleted == false()))
_LOCK_VERSION = (select(_v.etag, _v.deleted)
                 .where(_of(bindparam("uid"), bindparam("ver"))).with_for_update())
_VERSION_STATE = select(_v.deleted).where(_of(bindparam("uid"), bindparam("ver")))
_COUNT_KEYS = select(func.count()).select_from(room_keys).where(_keys_of(False, False))
_BUMP_ETAG = (update(room_key_versions).where(_of(bindparam("uid"), bindparam("ver")))
              .values(etag=_v.etag + 1).returning(_v.etag))
_UPDATE_AUTH_DATA = (update(room_key_versions)
                     .where(and_(_of(bindparam("uid"), bindparam("ver")),
                                 _v.deleted == false()))
                     .values(auth_data_json=bindparam("auth_data")))
_MARK_DELETED = (update(room_key_versions)
                 .where(_of(bindparam("uid"), bindparam("ver")))
                 .values(deleted=true()))
_DELETE_ALL_KEYS = delete(room_keys).where(_keys_of(False, False))
_GET_KEYS = {(room, session): select(room_keys).where(_keys_of(room, session))
             for room, session in ((False, False), (True, False), (True, True))}
_DELETE_KEYS = {(room, session): delete(room_keys).where(_keys_of(room, session))
                for room, session in ((False, False), (True, False), (True, True))}


def _better(is_sqlite: bool) -> Any:
    """Storing a session's key over the one already stored, but only where it is better, as
    the spec's server-side key backup section orders them: a verified key over an
    unverified one; then the lower ``first_message_index`` (it decrypts more); then the
    lower ``forwarded_count``."""
    statement = insert(is_sqlite, room_keys)
    new = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=["user_id", "version", "room_id", "session_id"],
        set_={"first_message_index": new.first_message_index,
              "forwarded_count": new.forwarded_count, "is_verified": new.is_verified,
              "session_data_json": new.session_data_json},
        where=or_(
            new.is_verified > _k.is_verified,
            and_(new.is_verified == _k.is_verified,
                 or_(new.first_message_index < _k.first_message_index,
                     and_(new.first_message_index == _k.first_message_index,
                          new.forwarded_count < _k.forwarded_count)))),
    ).returning(literal(1))


class KeyBackupStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine
        self._put_keys = _better(engine.is_sqlite)
        self._create = insert(engine.is_sqlite, room_key_versions).on_conflict_do_nothing()

    async def create_version(self, user_id: str, algorithm: str, auth_data: dict[str, Any]
                             ) -> int:
        """A new version, numbered one above every version the user has had; it becomes
        the current one."""
        text = json.dumps(auth_data)

        def create(conn: Connection) -> int:
            while True:
                # Two creations at once (PostgreSQL) may pick the same number: the second
                # finds the row taken and counts again.
                version = 1 + int(conn.execute(select(func.coalesce(func.max(_v.version), 0))
                                               .where(_v.user_id == user_id)).scalar_one())
                done = conn.execute(self._create.values(
                    user_id=user_id, version=version, algorithm=algorithm,
                    auth_data_json=text, etag=0, deleted=False))
                if done.rowcount == 1:
                    return version

        return await self._db.run_write(create)

    async def get_version(self, user_id: str, version: int | None) -> BackupVersion | None:
        """A version not deleted (the current one if ``version`` is None), with its count
        of keys."""
        async with self._db.read() as conn:
            if version is None:
                row = (await conn.execute(_GET_LATEST, {"uid": user_id})).first()
            else:
                row = (await conn.execute(_GET_VERSION, {"uid": user_id, "ver": version})).first()
        if row is None:
            return None
        return BackupVersion(int(row.version), row.algorithm, json.loads(row.auth_data_json),
                             int(row.etag), int(row.n_keys))

    async def update_auth_data(self, user_id: str, version: int, auth_data: dict[str, Any]
                               ) -> bool:
        """Replace a version's ``auth_data``; False if there is no such version."""
        params = {"uid": user_id, "ver": version, "auth_data": json.dumps(auth_data)}

        def update_(conn: Connection) -> bool:
            return conn.execute(_UPDATE_AUTH_DATA, params).rowcount == 1

        return await self._db.run_write(update_)

    async def delete_version(self, user_id: str, version: int) -> bool:
        """Mark a version deleted and drop its keys; False if it never existed (deleting
        one deleted before is done already)."""
        params = {"uid": user_id, "ver": version}

        def delete_(conn: Connection) -> bool:
            conn.execute(_DELETE_ALL_KEYS, params)
            return conn.execute(_MARK_DELETED, params).rowcount == 1

        return await self._db.run_write(delete_)

    async def put_keys(self, user_id: str, version: int, keys: Sequence[RoomKey]
                       ) -> KeysChanged | NotCurrent | None:
        """Store keys in the current version, each only where it is new or better than the
        one stored (``_better``); the etag goes up when any is stored.

        Returns:
            The etag and count after; ``NotCurrent`` if ``version`` is not the current
            version; None if it does not exist (or was deleted).
        """
        params = {"uid": user_id, "ver": version}
        rows = [{"user_id": user_id, "version": version, "room_id": key.room_id,
                 "session_id": key.session_id, "first_message_index": key.first_message_index,
                 "forwarded_count": key.forwarded_count, "is_verified": key.is_verified,
                 "session_data_json": json.dumps(key.session_data)} for key in keys]

        def put(conn: Connection) -> KeysChanged | NotCurrent | None:
            # The version's row is locked for the whole write: a deletion or another upload
            # for it waits (PostgreSQL; SQLite has one writer anyway).
            row = conn.execute(_LOCK_VERSION, params).first()
            if row is None or row.deleted:
                return None
            current = int(conn.execute(_CURRENT, params).scalar_one())  # this one at least
            if current != version:
                return NotCurrent(current)
            # One statement for them all: SQLAlchemy sends them as multi-row INSERTs
            # ("insertmanyvalues"), the rows stored coming back from RETURNING.
            stored = len(conn.execute(self._put_keys, rows).all()) if rows else 0
            etag = int(conn.execute(_BUMP_ETAG, params).scalar_one()) if stored \
                else int(row.etag)
            return KeysChanged(etag, int(conn.execute(_COUNT_KEYS, params).scalar_one()))

        return await self._db.run_write(put)

    async def get_keys(self, user_id: str, version: int, room_id: str | None = None,
                       session_id: str | None = None) -> list[RoomKey] | None:
        """The keys of a version (of one room, or one session); None if the version does
        not exist or was deleted."""
        params = {"uid": user_id, "ver": version, "rid": room_id, "sid": session_id}
        async with self._db.read() as conn:
            exists = (await conn.execute(_VERSION_STATE, params)).first()
            if exists is None or exists.deleted:
                return None
            rows = await conn.execute(
                _GET_KEYS[(room_id is not None, session_id is not None)], params)
            return [RoomKey(r.room_id, r.session_id, int(r.first_message_index),
                            int(r.forwarded_count), bool(r.is_verified),
                            json.loads(r.session_data_json)) for r in rows]

    async def delete_keys(self, user_id: str, version: int, room_id: str | None = None,
                          session_id: str | None = None) -> KeysChanged | None:
        """Delete the keys of a version (of one room, or one session) and raise its etag;
        None if the version does not exist or was deleted."""
        params = {"uid": user_id, "ver": version, "rid": room_id, "sid": session_id}

        def delete_(conn: Connection) -> KeysChanged | None:
            row = conn.execute(_LOCK_VERSION, params).first()
            if row is None or row.deleted:
                return None
            conn.execute(_DELETE_KEYS[(room_id is not None, session_id is not None)], params)
            etag = int(conn.execute(_BUMP_ETAG, params).scalar_one())
            return KeysChanged(etag, int(conn.execute(_COUNT_KEYS, params).scalar_one()))

        return await self._db.run_write(delete_)
