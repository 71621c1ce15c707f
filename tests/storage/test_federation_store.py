"""The federation bookkeeping store on SQLite and PostgreSQL: the outbound queue's order and
limits, backoff, received transactions."""

from __future__ import annotations

from storage import Database
from storage.schema import federation_outbox
from storage.stores.federation import Backoff


async def _queue_pdus(db: Database, destination: str, event_ids: list[str]) -> None:
    rows = [dict(destination=destination, event_id=e, created_ts=1) for e in event_ids]
    await db.engine.run_write(lambda conn: conn.execute(federation_outbox.insert(), rows))


async def test_pending_keeps_queue_order_within_both_limits(database: Database) -> None:
    store = database.federation
    await _queue_pdus(database, "b.example", [f"$p{i}" for i in range(3)])
    await store.queue_edus([("b.example", {"edu_type": "m.receipt", "content": {"n": i}})
                            for i in range(3)], now=5)
    await _queue_pdus(database, "b.example", ["$p3"])
    await _queue_pdus(database, "c.example", ["$other"])

    first = await store.pending("b.example", pdus=2, edus=100)
    # Stops before the third PDU: what is left is a suffix of the queue.
    assert [e.event_id for e in first] == ["$p0", "$p1"]
    everything = await store.pending("b.example", pdus=50, edus=2)
    assert [e.event_id or e.edu["content"]["n"] for e in everything] == \
        ["$p0", "$p1", "$p2", 0, 1]

    await store.sent("b.example", [e.id for e in first])
    rest = await store.pending("b.example", pdus=50, edus=100)
    assert [e.event_id or e.edu["content"]["n"] for e in rest] == ["$p2", 0, 1, 2, "$p3"]
    assert await store.queue_length("c.example") == 1
    assert sorted(await store.destinations_with_pending()) == ["b.example", "c.example"]
    # Sending to one destination never removes another's entries.
    await store.sent("c.example", [e.id for e in rest])
    assert await store.queue_length("b.example") == 5


async def test_backoff_is_kept_and_cleared(database: Database) -> None:
    store = database.federation
    await store.set_backoff("down.example", Backoff(1000, 4000), now=1000)
    await store.set_backoff("up.example", Backoff(1000, 2000), now=1000)
    await store.set_backoff("up.example", None, now=2000)
    assert await store.backoffs() == {"down.example": Backoff(1000, 4000)}
    await store.set_backoff("down.example", Backoff(5000, 8000), now=5000)
    assert await store.backoffs() == {"down.example": Backoff(5000, 8000)}


async def test_received_transactions_answer_once_and_expire(database: Database) -> None:
    store = database.federation
    assert await store.received_txn("a.example", "t1") is None
    await store.remember_txn("a.example", "t1", {"pdus": {"$x": {}}}, now=100)
    # A second answer under the same ID does not replace the first.
    await store.remember_txn("a.example", "t1", {"pdus": {}}, now=200)
    assert await store.received_txn("a.example", "t1") == {"pdus": {"$x": {}}}
    assert await store.received_txn("other.example", "t1") is None
    await store.forget_txns_before(150)
    assert await store.received_txn("a.example", "t1") is None


async def test_invite_state(database: Database) -> None:
    assert await database.sync.invite_state("$nothing") is None
