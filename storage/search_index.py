"""The index of searchable event text, written in the events' own transactions.

SQLite: an FTS5 table whose rowid is the event's numeric ID. PostgreSQL: a tsvector per event
(``simple`` configuration: the tokens are made by ``storage.search_text``) with a GIN index.
Each entry also carries its room and which key it is (body, name, topic), so a search filters
and orders candidates without touching ``events``. Event numeric IDs grow with the stream, so
"newest first" is the index's own order. The event write path adds to it in the same
transaction as the events, a redaction removes its target in the redaction's transaction, and
purges remove what they delete.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    ColumnClause,
    Connection,
    TableClause,
    bindparam,
    column,
    func,
    select,
    table,
    text,
)
from sqlalchemy.dialects import postgresql

from storage.schema import events
from storage.search_text import indexed_text

_TOKENIZER = "unicode61 remove_diacritics 0 categories 'L* N* Co M*'"

fts5 = table("event_search", column("rowid"), column("value"), column("room_id"),
             column("kind"))
tsv = table("event_search", column("nid"), column("room_id"), column("kind"), column("vector"))


def index_and_key(is_sqlite: bool) -> tuple[TableClause, ColumnClause[Any]]:
    """The index table and its event-nid column."""
    return (fts5, fts5.c.rowid) if is_sqlite else (tsv, tsv.c.nid)


def create_index(conn: Connection) -> None:
    """Create the index (empty); part of the schema."""
    if conn.dialect.name == "sqlite":
        conn.execute(text("CREATE VIRTUAL TABLE IF NOT EXISTS event_search USING fts5("
                          f'value, room_id UNINDEXED, kind UNINDEXED, tokenize="{_TOKENIZER}")'))
    else:
        conn.execute(text("CREATE TABLE IF NOT EXISTS event_search (nid BIGINT PRIMARY KEY, "
                          "room_id TEXT NOT NULL, kind TEXT NOT NULL, vector TSVECTOR NOT NULL)"))
        conn.execute(text("CREATE INDEX IF NOT EXISTS event_search_vector "
                          "ON event_search USING GIN (vector)"))


def index_rows(items: Iterable[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Index rows for ``(nid, event)`` pairs (those with searchable text)."""
    return [{"nid": nid, "value": found[1], "room_id": str(pdu.get("room_id")),
             "kind": found[0]}
            for nid, pdu in items if (found := indexed_text(pdu)) is not None]


_FTS5_INSERT = fts5.insert()


def add(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        conn.execute(_FTS5_INSERT, [{"rowid": r["nid"], "value": r["value"],
                                      "room_id": r["room_id"], "kind": r["kind"]} for r in rows])
    else:
        conn.execute(postgresql.insert(tsv).values(
            nid=bindparam("n"), room_id=bindparam("r"), kind=bindparam("k"),
            vector=func.to_tsvector("simple", bindparam("v")))
            .on_conflict_do_nothing(index_elements=["nid"]),
            [{"n": r["nid"], "r": r["room_id"], "k": r["kind"], "v": r["value"]} for r in rows])


def remove(conn: Connection, nids: Sequence[int]) -> None:
    index, key = index_and_key(conn.dialect.name == "sqlite")
    for i in range(0, len(nids), 500):
        conn.execute(index.delete().where(key.in_(list(nids[i:i + 500]))))


def remove_events(conn: Connection, event_ids: Sequence[str]) -> None:
    """Remove events by ID (redacted ones)."""
    index, key = index_and_key(conn.dialect.name == "sqlite")
    for i in range(0, len(event_ids), 500):
        conn.execute(index.delete().where(key.in_(
            select(events.c.nid).where(events.c.event_id.in_(list(event_ids[i:i + 500]))))))
