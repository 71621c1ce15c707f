"""Other servers' signing keys, as fetched (directly or through a notary) and verified.

Spec: https://spec.matrix.org/v1.16/server-server-api/#retrieving-server-keys
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, select, tuple_

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.schema import server_keys

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ServerKey:
    """One verify key of a server and the signed key response it came in."""

    server_name: str
    key_id: str
    verify_key: str  # unpadded Base64 ed25519 public key
    valid_until_ts: int  # for an old key: when it expired
    expired_ts: int | None  # set for keys listed under old_verify_keys
    fetched_ts: int
    key_json: str  # the server's signed key response (canonical JSON)


class ServerKeyStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def store_keys(self, keys: Iterable[ServerKey]) -> None:
        """Remember fetched keys; a stored key is replaced only by one valid at least as long
        (so an older response arriving late never shortens what we know)."""
        newest: dict[tuple[str, str], ServerKey] = {}
        for key in keys:
            seen = newest.get((key.server_name, key.key_id))
            if seen is None or seen.valid_until_ts <= key.valid_until_ts:
                newest[(key.server_name, key.key_id)] = key
        if not newest:
            return
        stmt = insert(self._db.is_sqlite, server_keys)
        stmt = stmt.on_conflict_do_update(
            index_elements=["server_name", "key_id"],
            set_={c: stmt.excluded[c] for c in ("verify_key", "valid_until_ts", "expired_ts",
                                                "fetched_ts", "key_json")},
            where=server_keys.c.valid_until_ts <= stmt.excluded.valid_until_ts)
        async with self._db.write() as conn:
            await conn.execute(stmt, [
                dict(server_name=k.server_name, key_id=k.key_id, verify_key=k.verify_key,
                     valid_until_ts=k.valid_until_ts, expired_ts=k.expired_ts,
                     fetched_ts=k.fetched_ts, key_json=k.key_json)
                for k in newest.values()])

    async def get_keys(self, pairs: Iterable[tuple[str, str]]
                       ) -> dict[tuple[str, str], ServerKey]:
        """The stored keys among ``(server_name, key_id)`` pairs; unknown ones are left out."""
        wanted = list(dict.fromkeys(pairs))
        out: dict[tuple[str, str], ServerKey] = {}
        async with self._db.read() as conn:
            for i in range(0, len(wanted), _CHUNK):
                rows = await conn.execute(select(server_keys).where(
                    tuple_(server_keys.c.server_name, server_keys.c.key_id)
                    .in_(wanted[i:i + _CHUNK])))
                for r in rows:
                    out[(r.server_name, r.key_id)] = _key(r)
        return out

    async def get_server_keys(self, server_name: str) -> list[ServerKey]:
        """Every stored key of one server."""
        async with self._db.read() as conn:
            rows = await conn.execute(select(server_keys)
                                      .where(server_keys.c.server_name == server_name)
                                      .order_by(server_keys.c.key_id))
            return [_key(r) for r in rows]


def _key(row: Row[Any]) -> ServerKey:
    return ServerKey(row.server_name, row.key_id, row.verify_key, row.valid_until_ts,
                     row.expired_ts, row.fetched_ts, row.key_json)
