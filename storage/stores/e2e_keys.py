"""End-to-end encryption keys: devices' identity keys, one-time and fallback keys,
cross-signing keys and the signatures uploaded over them, and the device-list stream.

Key objects are stored as the JSON text of what was uploaded and given back unchanged (their
signatures must stay verifiable). Every change of a user's devices or cross-signing keys is a
position in the device-list stream (``device_list_changes``), which /sync and /keys/changes
read "after N" of.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, select, text, tuple_, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.ids import StreamStore
from storage.schema import (
    cross_signing_keys,
    cross_signing_signatures,
    device_keys,
    device_list_changes,
    devices,
    events,
    fallback_keys,
    one_time_keys,
)

_CHUNK = 500
# A claim whose one-time keys were taken by a concurrent claim between its look and its
# delete tries again (PostgreSQL: the delete skips rows deleted meanwhile).
_CLAIM_ROUNDS = 64
_DEADLOCK_RETRIES = 5

NewKey = tuple[str, str, str]
"""``(algorithm, key_id, key JSON)``"""
Wanted = tuple[str, str, str]
"""``(user_id, device_id, algorithm)``"""


class KeyConflict(ValueError):
    """A one-time key ID uploaded again with a different key."""


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    user_id: str
    device_id: str
    key_json: str
    display_name: str | None


@dataclass(slots=True)
class QueryResult:
    """What /keys/query reads: device keys, cross-signing keys and the signatures over
    them, for a set of users."""

    devices: list[DeviceKeys] = field(default_factory=list)
    # user -> usage -> key JSON
    cross_signing: dict[str, dict[str, str]] = field(default_factory=dict)
    # (target user, target key ID) -> [(signer user, signer key ID, signature)]
    signatures: dict[tuple[str, str], list[tuple[str, str, str]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Claimed:
    key_id: str  # "<algorithm>:<key ID>"
    key_json: str
    fallback: bool


@dataclass(frozen=True, slots=True)
class Signature:
    signer_user_id: str
    signer_key_id: str
    target_user_id: str
    target_key_id: str
    signature: str


class E2EKeyStore(StreamStore):
    def __init__(self, engine: DatabaseEngine) -> None:
        super().__init__(engine, device_list_changes.c.stream_id)
        otk = one_time_keys
        self._counts = (select(otk.c.algorithm, func.count())
                        .where(and_(otk.c.user_id == _p("u"), otk.c.device_id == _p("d")))
                        .group_by(otk.c.algorithm))
        self._unused_fallback = (select(fallback_keys.c.algorithm)
                                 .where(and_(fallback_keys.c.user_id == _p("u"),
                                             fallback_keys.c.device_id == _p("d"),
                                             fallback_keys.c.used.is_(False)))
                                 .order_by(fallback_keys.c.algorithm))
        self._change = device_list_changes.insert()
        fb = insert(engine.is_sqlite, fallback_keys)
        self._put_fallback = fb.on_conflict_do_update(
            index_elements=["user_id", "device_id", "algorithm"],
            set_={"key_id": fb.excluded.key_id, "key_json": fb.excluded.key_json,
                  "used": False})
        dk = insert(engine.is_sqlite, device_keys)
        self._put_device_keys = dk.on_conflict_do_update(
            index_elements=["user_id", "device_id"], set_={"key_json": dk.excluded.key_json})
        csk = insert(engine.is_sqlite, cross_signing_keys)
        self._put_cross_signing = csk.on_conflict_do_update(
            index_elements=["user_id", "usage"],
            set_={"key_json": csk.excluded.key_json, "added_ts": csk.excluded.added_ts})
        sig = insert(engine.is_sqlite, cross_signing_signatures)
        self._put_signature = sig.on_conflict_do_update(
            index_elements=["target_user_id", "target_key_id", "signer_user_id",
                            "signer_key_id"],
            set_={"signature": sig.excluded.signature})

    # -- the device-list stream -----------------------------------------------------------

    def _record(self, conn: Connection, changes: Iterable[tuple[str, str | None]],
                now: int) -> int | None:
        positions = self._record_each(conn, changes, now)
        return positions[-1] if positions else None

    def _record_each(self, conn: Connection, changes: Iterable[tuple[str, str | None]],
                     now: int, *, announced: bool = False) -> list[int]:
        """The changes' positions, in their order (local users' changes are not announced
        until ``mark_announced``)."""
        rows: list[dict[str, Any]] = [
            dict(stream_id=self._stream.next(), user_id=u, device_id=d, changed_ts=now,
                 announced=announced)
            for u, d in changes]
        if rows:
            conn.execute(self._change, rows)
        return [int(r["stream_id"]) for r in rows]

    async def _write(self, fn: Any) -> Any:
        """Run ``fn(conn) -> (result, position or None)`` as one ordered write."""
        async with self._ordered:
            result, position = await self._db.run_write(fn)
        if position is not None:
            self._committed(position)
        return result, position

    async def record_changes(self, changes: Sequence[tuple[str, str | None]], now: int
                             ) -> int | None:
        """Note changes other servers told us of, of ``(their user, device or None for
        cross-signing keys)`` (nothing to announce); the last position, or None when there
        were none."""

        def run(conn: Connection) -> tuple[None, int | None]:
            positions = self._record_each(conn, changes, now, announced=True)
            return None, positions[-1] if positions else None

        _, position = await self._write(run)
        return position  # type: ignore[no-any-return]

    async def unannounced(self) -> list[tuple[int, str, str | None]]:
        """``(position, user, device or None)`` of the local changes not yet announced to
        other servers, in order."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(device_list_changes.c.stream_id, device_list_changes.c.user_id,
                       device_list_changes.c.device_id)
                .where(text("NOT announced"))  # as the partial index says it
                .order_by(device_list_changes.c.stream_id))
            return [(int(r.stream_id), r.user_id, r.device_id) for r in rows]

    async def mark_announced(self, positions: Sequence[int]) -> None:
        """These changes' EDUs are queued for other servers (or there is nobody to tell)."""
        if not positions:
            return
        async with self._db.write() as conn:
            for i in range(0, len(positions), _CHUNK):
                await conn.execute(update(device_list_changes)
                                   .where(device_list_changes.c.stream_id.in_(
                                       list(positions[i:i + _CHUNK])))
                                   .values(announced=True))

    async def changed_users(self, after: int, up_to: int) -> set[str]:
        """Users with a change in ``(after, up_to]``."""
        if after >= up_to:
            return set()
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(device_list_changes.c.user_id).distinct()
                .where(and_(device_list_changes.c.stream_id > after,
                            device_list_changes.c.stream_id <= up_to)))
            return {r[0] for r in rows}

    async def latest_device_change(self, user_id: str) -> int:
        """The user's latest position in the device-list stream that changed a device (the
        ``stream_id`` of ``/user/devices``: the head of the ``prev_id`` chain), or 0."""
        async with self._db.read() as conn:
            value = await conn.scalar(select(func.max(device_list_changes.c.stream_id))
                                      .where(device_list_changes.c.user_id == user_id,
                                             device_list_changes.c.device_id.is_not(None)))
        return int(value or 0)

    async def previous_device_change(self, user_id: str, before: int) -> int | None:
        """The user's latest position before ``before`` that changed a device (not
        cross-signing keys), or None: the ``prev_id`` of an ``m.device_list_update``."""
        async with self._db.read() as conn:
            value = await conn.scalar(
                select(func.max(device_list_changes.c.stream_id))
                .where(and_(device_list_changes.c.user_id == user_id,
                            device_list_changes.c.device_id.is_not(None),
                            device_list_changes.c.stream_id < before)))
        return int(value) if value is not None else None

    async def member_changes(self, room_ids: Sequence[str], after: int, up_to: int
                             ) -> list[tuple[str, str, str]]:
        """``(room, user, membership)`` of the member events of the rooms in
        ``(after, up_to]``, in stream order."""
        out: list[tuple[str, str, str]] = []
        for i in range(0, len(room_ids), _CHUNK):
            async with self._db.read() as conn:
                rows = await conn.execute(
                    select(events.c.room_id, events.c.state_key, events.c.json)
                    .where(and_(events.c.room_id.in_(list(room_ids[i:i + _CHUNK])),
                                events.c.type == "m.room.member",
                                events.c.stream_ordering > after,
                                events.c.stream_ordering <= up_to,
                                events.c.rejected_reason.is_(None)))
                    .order_by(events.c.stream_ordering))
                out.extend((r[0], r[1], str((json.loads(r[2]).get("content") or {})
                                            .get("membership"))) for r in rows)
        return out

    # -- device keys, one-time and fallback keys ------------------------------------------

    async def device_keys(self, user_id: str, device_id: str) -> str | None:
        async with self._db.read() as conn:
            return (await conn.execute(select(device_keys.c.key_json).where(and_(
                device_keys.c.user_id == user_id,
                device_keys.c.device_id == device_id)))).scalar()

    async def upload(self, user_id: str, device_id: str, *, keys_json: str | None,
                     one_time: Sequence[NewKey], fallback: Sequence[NewKey], now: int
                     ) -> tuple[dict[str, int], int | None]:
        """Store what a /keys/upload brings, in one transaction: the device keys (new or
        replacing, a change in the device-list stream), one-time keys (one already stored
        under the same ID is kept; with a different key: ``KeyConflict``, nothing stored),
        fallback keys (replacing the algorithm's, unused). Returns the one-time key counts
        per algorithm and the device-list position of the change, if any."""

        def write(conn: Connection) -> tuple[dict[str, int], int | None]:
            position = None
            if keys_json is not None:
                conn.execute(self._put_device_keys, dict(
                    user_id=user_id, device_id=device_id, key_json=keys_json, added_ts=now))
                position = self._record(conn, [(user_id, device_id)], now)
            if one_time:
                self._add_one_time(conn, user_id, device_id, one_time, now)
            if fallback:
                conn.execute(self._put_fallback, [
                    dict(user_id=user_id, device_id=device_id, algorithm=a, key_id=k,
                         key_json=j, used=False) for a, k, j in fallback])
            counts = {a: int(n) for a, n in conn.execute(self._counts,
                                                         {"u": user_id, "d": device_id})}
            return counts, position

        counts, position = await self._write(write)
        return counts, position

    @staticmethod
    def _add_one_time(conn: Connection, user_id: str, device_id: str,
                      keys: Sequence[NewKey], now: int) -> None:
        otk = one_time_keys
        existing: dict[tuple[str, str], str] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            rows = conn.execute(select(otk.c.algorithm, otk.c.key_id, otk.c.key_json).where(
                and_(otk.c.user_id == user_id, otk.c.device_id == device_id,
                     tuple_(otk.c.algorithm, otk.c.key_id).in_([(a, k) for a, k, _ in chunk]))))
            existing.update({(r.algorithm, r.key_id): r.key_json for r in rows})
        new = []
        for algorithm, key_id, key_json in keys:
            old = existing.get((algorithm, key_id))
            if old is None:
                existing[(algorithm, key_id)] = key_json
                new.append(dict(user_id=user_id, device_id=device_id, algorithm=algorithm,
                                key_id=key_id, key_json=key_json, added_ts=now))
            elif old != key_json:
                raise KeyConflict(f"{algorithm}:{key_id}")
        if new:
            conn.execute(otk.insert(), new)

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        """The device's one-time key counts per algorithm and its unused fallback key
        algorithms."""
        params = {"u": user_id, "d": device_id}
        async with self._db.read() as conn:
            counts = {a: int(n) for a, n in await conn.execute(self._counts, params)}
            unused = [r[0] for r in await conn.execute(self._unused_fallback, params)]
        return counts, unused

    async def claim(self, wanted: Sequence[Wanted]) -> dict[Wanted, Claimed]:
        """One key for each ``(user, device, algorithm)``: its oldest one-time key, removed
        by a single DELETE ... RETURNING (so no two claims, however concurrent, get the
        same key), or else its fallback key (marked used, and handed out again until
        replaced). Devices with neither are left out."""
        wanted = list(dict.fromkeys(wanted))
        if not wanted:
            return {}

        def write(conn: Connection) -> dict[Wanted, Claimed]:
            out: dict[Wanted, Claimed] = {}
            for i in range(0, len(wanted), _CHUNK):
                out.update(self._claim_chunk(conn, wanted[i:i + _CHUNK]))
            return out

        # No stream position: claims run side by side (on PostgreSQL truly concurrently).
        # Two claims deleting keys of the same devices may lock rows in opposite orders:
        # PostgreSQL ends one as a deadlock, and it runs again.
        for attempt in range(_DEADLOCK_RETRIES):
            try:
                return await self._db.run_write(write)
            except DBAPIError as e:
                code = getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
                if code != "40P01" or attempt == _DEADLOCK_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _claim_chunk(self, conn: Connection, wanted: list[Wanted]) -> dict[Wanted, Claimed]:
        otk = one_time_keys
        out: dict[Wanted, Claimed] = {}
        # Each round deletes the oldest key of each device still wanting one. On PostgreSQL
        # a concurrent claim may delete a picked key first (the delete then skips it): the
        # devices that still have keys go round again.
        pending = wanted
        fallback: list[Wanted] = []
        for _ in range(_CLAIM_ROUNDS):
            ranked = (select(otk.c.user_id, otk.c.device_id, otk.c.algorithm, otk.c.key_id,
                             func.row_number().over(
                                 partition_by=(otk.c.user_id, otk.c.device_id,
                                               otk.c.algorithm),
                                 order_by=(otk.c.added_ts, otk.c.key_id)).label("n"))
                      .where(tuple_(otk.c.user_id, otk.c.device_id, otk.c.algorithm)
                             .in_(pending))
                      .subquery())
            first = select(ranked.c.user_id, ranked.c.device_id, ranked.c.algorithm,
                           ranked.c.key_id).where(ranked.c.n == 1)
            rows = conn.execute(
                delete(otk)
                .where(tuple_(otk.c.user_id, otk.c.device_id, otk.c.algorithm, otk.c.key_id)
                       .in_(first))
                .returning(otk.c.user_id, otk.c.device_id, otk.c.algorithm, otk.c.key_id,
                           otk.c.key_json)).all()
            for r in rows:
                out[(r.user_id, r.device_id, r.algorithm)] = Claimed(
                    f"{r.algorithm}:{r.key_id}", r.key_json, False)
            pending = [w for w in pending if w not in out]
            if not pending:
                break
            has_keys = {(r.user_id, r.device_id, r.algorithm) for r in conn.execute(
                select(otk.c.user_id, otk.c.device_id, otk.c.algorithm).distinct()
                .where(tuple_(otk.c.user_id, otk.c.device_id, otk.c.algorithm)
                       .in_(pending)))}
            fallback += [w for w in pending if w not in has_keys]
            pending = [w for w in pending if w in has_keys]
            if not pending:
                break
        fallback += pending  # (contended past every round: the fallback key)
        if not fallback:
            return out
        fb = fallback_keys
        where = tuple_(fb.c.user_id, fb.c.device_id, fb.c.algorithm).in_(fallback)
        rows = conn.execute(select(fb.c.user_id, fb.c.device_id, fb.c.algorithm, fb.c.key_id,
                                   fb.c.key_json).where(where)).all()
        if rows:
            conn.execute(update(fb).where(and_(where, fb.c.used.is_(False))).values(used=True))
        for r in rows:
            out[(r.user_id, r.device_id, r.algorithm)] = Claimed(
                f"{r.algorithm}:{r.key_id}", r.key_json, True)
        return out

    # -- /keys/query ----------------------------------------------------------------------

    async def query(self, user_ids: Sequence[str]) -> QueryResult:
        """The device keys (with display names), cross-signing keys and signatures of the
        users: a few statements per 500 users."""
        out = QueryResult()
        for i in range(0, len(user_ids), _CHUNK):
            chunk = list(user_ids[i:i + _CHUNK])
            async with self._db.read() as conn:
                await self._query_chunk(conn, chunk, out)
        out.devices.sort(key=lambda d: (d.user_id, d.device_id))
        return out

    @staticmethod
    async def _query_chunk(conn: AsyncConnection, users: list[str], out: QueryResult) -> None:
        dk = device_keys
        rows = await conn.execute(
            select(dk.c.user_id, dk.c.device_id, dk.c.key_json, devices.c.display_name)
            .join(devices, and_(devices.c.user_id == dk.c.user_id,
                                devices.c.device_id == dk.c.device_id))
            .where(dk.c.user_id.in_(users)))
        out.devices.extend(DeviceKeys(r.user_id, r.device_id, r.key_json, r.display_name)
                           for r in rows)
        csk = cross_signing_keys
        for r in await conn.execute(select(csk.c.user_id, csk.c.usage, csk.c.key_json)
                                    .where(csk.c.user_id.in_(users))):
            out.cross_signing.setdefault(r.user_id, {})[r.usage] = r.key_json
        sig = cross_signing_signatures
        for r in await conn.execute(select(sig).where(sig.c.target_user_id.in_(users))):
            out.signatures.setdefault((r.target_user_id, r.target_key_id), []).append(
                (r.signer_user_id, r.signer_key_id, r.signature))

    # -- cross-signing ---------------------------------------------------------------------

    async def cross_signing_keys(self, user_id: str) -> dict[str, str]:
        """usage -> key JSON of the user's cross-signing keys."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(cross_signing_keys.c.usage, cross_signing_keys.c.key_json)
                .where(cross_signing_keys.c.user_id == user_id))
            return {r.usage: r.key_json for r in rows}

    async def put_cross_signing_keys(self, user_id: str, keys: dict[str, str], now: int
                                     ) -> int | None:
        """Store the user's cross-signing keys (usage -> key JSON), a change of the user's
        in the device-list stream."""

        def write(conn: Connection) -> tuple[None, int | None]:
            conn.execute(self._put_cross_signing, [
                dict(user_id=user_id, usage=usage, key_json=key_json, added_ts=now)
                for usage, key_json in keys.items()])
            return None, self._record(conn, [(user_id, None)], now)

        _, position = await self._write(write)
        return position  # type: ignore[no-any-return]

    async def put_signatures(self, signatures: Sequence[Signature], changed: Sequence[str],
                             now: int, *, devices: Sequence[tuple[str, str]] = ()
                             ) -> tuple[int | None, list[int]]:
        """Store signatures; ``changed``: the users whose keys they are news about,
        ``devices``: the ``(user, device)`` whose device keys gained a signature (a change
        each). The last position, and those of ``devices`` in their order."""
        if not signatures:
            return None, []

        def write(conn: Connection) -> tuple[list[int], int | None]:
            conn.execute(self._put_signature, [
                dict(signer_user_id=s.signer_user_id, signer_key_id=s.signer_key_id,
                     target_user_id=s.target_user_id, target_key_id=s.target_key_id,
                     signature=s.signature) for s in signatures])
            last = self._record(conn, [(u, None) for u in changed], now)
            each = self._record_each(conn, devices, now)
            return each, each[-1] if each else last

        each, position = await self._write(write)
        return position, each

    # -- devices going away -----------------------------------------------------------------

    async def devices_deleted(self, user_id: str, device_ids: Sequence[str], now: int
                              ) -> list[int]:
        """The devices are gone (``DeviceStore`` deleted their keys with them): a change
        for each in the device-list stream; their positions, in the devices' order."""
        if not device_ids:
            return []

        def write(conn: Connection) -> tuple[list[int], int | None]:
            positions = self._record_each(conn, [(user_id, d) for d in device_ids], now)
            return positions, positions[-1]

        positions, _ = await self._write(write)
        return positions  # type: ignore[no-any-return]


def _p(name: str) -> Any:
    return bindparam(name)
