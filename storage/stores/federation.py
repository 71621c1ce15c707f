"""Federation bookkeeping: the durable outbound queue, destinations' backoff, and the
transactions received."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, select

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.schema import (
    federation_destinations,
    federation_outbox,
    federation_received_txns,
)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    event_id: str | None
    edu: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Backoff:
    retry_last_ts: int
    retry_interval_ms: int


class FederationStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine
        # Statements of every transaction, built once.
        self._sent_ids = delete(federation_outbox).where(and_(
            federation_outbox.c.destination == bindparam("d"),
            federation_outbox.c.id.in_(bindparam("ids", expanding=True))))
        self._sent_events = delete(federation_outbox).where(and_(
            federation_outbox.c.destination == bindparam("d"),
            federation_outbox.c.event_id.in_(bindparam("ids", expanding=True))))
        self._remember = insert(engine.is_sqlite, federation_received_txns) \
            .on_conflict_do_nothing()
        self._answered = select(federation_received_txns.c.response_json).where(and_(
            federation_received_txns.c.origin == bindparam("origin"),
            federation_received_txns.c.txn_id == bindparam("txn_id")))

    # -- the outbound queue -----------------------------------------------------------------

    async def queue_edus(self, entries: Sequence[tuple[str, dict[str, Any]]], now: int) -> None:
        """Queue persistent EDUs: ``(destination, {"edu_type", "content"})``."""
        if not entries:
            return
        rows = [dict(destination=d, edu_json=json.dumps(edu), created_ts=now)
                for d, edu in entries]
        await self._db.run_write(lambda conn: conn.execute(federation_outbox.insert(), rows))

    async def pending(self, destination: str, *, pdus: int, edus: int) -> list[OutboxEntry]:
        """The destination's oldest queued entries: at most ``pdus`` PDUs and ``edus`` EDUs,
        in queue order, stopping before the first entry beyond either limit (so what is left
        is always a suffix of the queue)."""
        async with self._db.read() as conn:
            rows = (await conn.execute(
                select(federation_outbox.c.id, federation_outbox.c.event_id,
                       federation_outbox.c.edu_json)
                .where(federation_outbox.c.destination == destination)
                .order_by(federation_outbox.c.id).limit(pdus + edus))).all()
        out: list[OutboxEntry] = []
        counts = {"pdu": 0, "edu": 0}
        for row in rows:
            kind = "pdu" if row.event_id is not None else "edu"
            counts[kind] += 1
            if counts["pdu"] > pdus or counts["edu"] > edus:
                break
            out.append(OutboxEntry(row.id, row.event_id,
                                   json.loads(row.edu_json) if row.edu_json else None))
        return out

    async def sent(self, destination: str, ids: Iterable[int],
                   event_ids: Sequence[str] = ()) -> None:
        """The destination has these entries (by queue ID) and events: their rows go, in
        one write."""
        ids = list(ids)
        event_ids = list(event_ids)
        if not ids and not event_ids:
            return

        def delete_rows(conn: Connection) -> None:
            if ids:
                conn.execute(self._sent_ids, {"d": destination, "ids": ids})
            if event_ids:
                conn.execute(self._sent_events, {"d": destination, "ids": event_ids})

        await self._db.run_write(delete_rows)

    async def destinations_with_pending(self) -> list[str]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(federation_outbox.c.destination).distinct())
            return [r[0] for r in rows]

    async def queue_length(self, destination: str) -> int:
        async with self._db.read() as conn:
            return int((await conn.execute(
                select(func.count()).select_from(federation_outbox)
                .where(federation_outbox.c.destination == destination))).scalar_one())

    # -- backoff ----------------------------------------------------------------------------

    async def backoffs(self) -> dict[str, Backoff]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(federation_destinations).where(
                federation_destinations.c.retry_interval_ms > 0))
            return {r.destination: Backoff(r.retry_last_ts, r.retry_interval_ms) for r in rows}

    async def set_backoff(self, destination: str, backoff: Backoff | None, now: int) -> None:
        values = {"retry_last_ts": backoff.retry_last_ts if backoff else 0,
                  "retry_interval_ms": backoff.retry_interval_ms if backoff else 0,
                  "failure_ts": now if backoff else None}

        def write(conn: Connection) -> None:
            conn.execute(insert(self._db.is_sqlite, federation_destinations)
                         .values(destination=destination, **values)
                         .on_conflict_do_update(index_elements=["destination"], set_=values))

        await self._db.run_write(write)

    # -- transactions received --------------------------------------------------------------

    async def received_txn(self, origin: str, txn_id: str) -> dict[str, Any] | None:
        async with self._db.read() as conn:
            row = (await conn.execute(self._answered,
                                      {"origin": origin, "txn_id": txn_id})).first()
        return json.loads(row[0]) if row is not None else None

    async def remember_txn(self, origin: str, txn_id: str, response: dict[str, Any],
                           now: int) -> None:
        row = dict(origin=origin, txn_id=txn_id, response_json=json.dumps(response),
                   received_ts=now)
        await self._db.run_write(lambda conn: conn.execute(self._remember, row))

    async def forget_txns_before(self, ts: int) -> None:
        await self._db.run_write(lambda conn: conn.execute(
            delete(federation_received_txns).where(federation_received_txns.c.received_ts < ts)))
