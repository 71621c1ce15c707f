"""The media repository's metadata: one row per piece of media (local or cached remote).

The bytes themselves are files named by their SHA-256 (``homeserver.services.media``); this
store only knows which rows name which content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from sqlalchemy import and_, delete, func, select, update

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.schema import media

_m = media.c


@dataclass(frozen=True, slots=True)
class MediaRecord:
    origin: str
    media_id: str
    content_type: str | None
    upload_name: str | None
    size: int | None
    sha256: str | None  # None: reserved by /create, not uploaded yet
    user_id: str | None
    created_ts: int
    unused_expires_ts: int | None
    quarantined_by: str | None


class Completion(Enum):
    """What became of an upload to a reserved media ID."""

    DONE = "done"
    UNKNOWN = "unknown"  # no such ID (or it expired)
    NOT_YOURS = "not_yours"
    ALREADY_UPLOADED = "already_uploaded"


def _record(row: Sequence[object]) -> MediaRecord:
    return MediaRecord(*row)  # type: ignore[arg-type]


_COLUMNS = (_m.origin, _m.media_id, _m.content_type, _m.upload_name, _m.size, _m.sha256,
            _m.user_id, _m.created_ts, _m.unused_expires_ts, _m.quarantined_by)


class MediaStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def get(self, origin: str, media_id: str) -> MediaRecord | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(*_COLUMNS).where(and_(
                _m.origin == origin, _m.media_id == media_id)))).first()
        return _record(row) if row is not None else None

    async def add(self, record: MediaRecord) -> bool:
        """Store a complete record; False (and nothing changed) if the ID is taken."""
        values = {c.name: getattr(record, c.name) for c in _COLUMNS}
        async with self._db.write() as conn:
            result = await conn.execute(
                insert(self._db.is_sqlite, media).values(**values).on_conflict_do_nothing())
        return bool(result.rowcount)

    async def reserve(self, origin: str, media_id: str, user_id: str, now_ms: int,
                      expires_ts: int, max_pending: int) -> bool:
        """Reserve an ID for a later upload by ``user_id``; False when the user already
        holds ``max_pending`` unexpired reservations."""
        async with self._db.write() as conn:
            pending = (await conn.execute(select(func.count()).select_from(media).where(and_(
                _m.user_id == user_id, _m.sha256.is_(None),
                _m.unused_expires_ts > now_ms)))).scalar_one()
            if pending >= max_pending:
                return False
            await conn.execute(media.insert().values(
                origin=origin, media_id=media_id, user_id=user_id, created_ts=now_ms,
                unused_expires_ts=expires_ts))
        return True

    async def complete(self, origin: str, media_id: str, user_id: str, now_ms: int, *,
                       content_type: str | None, upload_name: str | None, size: int,
                       sha256: str) -> Completion:
        """Fill in a reserved ID with its content (once)."""
        async with self._db.write() as conn:
            row = (await conn.execute(select(_m.user_id, _m.sha256, _m.unused_expires_ts)
                                      .where(and_(_m.origin == origin,
                                                  _m.media_id == media_id)))).first()
            if row is None:
                return Completion.UNKNOWN
            owner, existing, expires = row
            if existing is not None:
                return Completion.ALREADY_UPLOADED
            if expires is not None and expires <= now_ms:
                return Completion.UNKNOWN
            if owner != user_id:
                return Completion.NOT_YOURS
            await conn.execute(update(media).where(and_(
                _m.origin == origin, _m.media_id == media_id, _m.sha256.is_(None))).values(
                content_type=content_type, upload_name=upload_name, size=size,
                sha256=sha256, unused_expires_ts=None))
        return Completion.DONE

    async def quarantine(self, origin: str, media_id: str, by: str | None) -> bool:
        """Set (``by``: the admin) or lift (None) the quarantine; False if there is no
        such media."""
        async with self._db.write() as conn:
            result = await conn.execute(update(media).where(and_(
                _m.origin == origin, _m.media_id == media_id)).values(quarantined_by=by))
        return bool(result.rowcount)

    async def delete(self, origin: str, media_id: str) -> tuple[bool, str | None]:
        """Delete one row: whether it existed, and its content's hash when no other row
        names that content any more (the file may go)."""
        async with self._db.write() as conn:
            sha = (await conn.execute(select(_m.sha256).where(and_(
                _m.origin == origin, _m.media_id == media_id)))).first()
            if sha is None:
                return False, None
            await conn.execute(delete(media).where(and_(_m.origin == origin,
                                                        _m.media_id == media_id)))
            if sha[0] is None:
                return True, None
            others = (await conn.execute(select(func.count()).select_from(media)
                                         .where(_m.sha256 == sha[0]))).scalar_one()
        return True, (sha[0] if others == 0 else None)

    async def ids_before(self, origin: str, before_ts: int, *, larger_than: int = 0,
                         limit: int = 1000) -> list[str]:
        """IDs of ``origin``'s uploaded media created before ``before_ts``."""
        async with self._db.read() as conn:
            rows = (await conn.execute(select(_m.media_id).where(and_(
                _m.origin == origin, _m.created_ts < before_ts, _m.sha256.is_not(None),
                _m.size >= larger_than)).order_by(_m.created_ts).limit(limit))).all()
        return [r[0] for r in rows]

    async def remote_before(self, local_origin: str, before_ts: int, *, limit: int = 1000
                            ) -> list[tuple[str, str]]:
        """(origin, media_id) of other servers' media cached here before ``before_ts``."""
        async with self._db.read() as conn:
            rows = (await conn.execute(select(_m.origin, _m.media_id).where(and_(
                _m.origin != local_origin, _m.created_ts < before_ts))
                .order_by(_m.created_ts).limit(limit))).all()
        return [(r[0], r[1]) for r in rows]

    async def delete_expired_reservations(self, now_ms: int) -> int:
        async with self._db.write() as conn:
            result = await conn.execute(delete(media).where(and_(
                _m.sha256.is_(None), _m.unused_expires_ts <= now_ms)))
        return int(result.rowcount)

    async def page_by_user(self, user_id: str, *, offset: int, limit: int, order_by: str,
                           backwards: bool) -> tuple[list[MediaRecord], int]:
        """A page of what ``user_id`` uploaded (reservations aside), and how many in all.
        ``order_by``: a column of this table (``created_ts``, ``size``...)."""
        column = getattr(_m, order_by)
        condition = and_(_m.user_id == user_id, _m.sha256.is_not(None))
        async with self._db.read() as conn:
            rows = (await conn.execute(
                select(*_COLUMNS, func.count().over().label("total")).where(condition)
                .order_by(column.desc() if backwards else column.asc(), _m.media_id.asc())
                .offset(offset).limit(limit))).all()
            if rows:
                total = int(rows[0].total)
            else:
                total = int((await conn.execute(select(func.count()).select_from(media)
                                                .where(condition))).scalar_one())
        return [_record(tuple(r)[:len(_COLUMNS)]) for r in rows], total
