"""The index of event relations (``content["m.relates_to"]``), written in the events' own
transactions, as the search index is.

The event write path adds a row per new timeline event that relates to another (outliers and
rejected events are never indexed), a redaction deletes its target's row in the redaction's
transaction, and purges delete what they delete. ``index_stored`` indexes the events stored
before the index existed (a migration).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, delete, select

from storage.dialect import insert
from storage.schema import event_relations, events, redactions

THREAD = "m.thread"
_CHUNK = 500


def relation_of(pdu: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(rel_type, parent event ID)`` of an event's ``m.relates_to``, when it is well formed
    (an object with a string ``rel_type`` and a string ``event_id``)."""
    content = pdu.get("content")
    if not isinstance(content, dict):
        return None
    relates_to = content.get("m.relates_to")
    if not isinstance(relates_to, dict):
        return None
    rel_type, parent = relates_to.get("rel_type"), relates_to.get("event_id")
    if not isinstance(rel_type, str) or not isinstance(parent, str) or not rel_type \
            or not parent.startswith("$") or parent == pdu.get("event_id"):
        return None
    return rel_type, parent


def may_relate(pdu_json: str) -> bool:
    """A cheap test before parsing an event's JSON: it cannot relate without the key."""
    return '"m.relates_to"' in pdu_json


def row(event_id: str, pdu: Mapping[str, Any], *, depth: int, stream_ordering: int
        ) -> dict[str, Any] | None:
    """The index row of a timeline event, or None if it relates to nothing."""
    relation = relation_of(pdu)
    if relation is None or event_id == relation[1]:
        return None
    return {"event_id": event_id, "relates_to_id": relation[1], "rel_type": relation[0],
            "room_id": str(pdu.get("room_id")), "sender": str(pdu.get("sender")),
            "type": str(pdu.get("type")), "depth": depth, "stream_ordering": stream_ordering,
            "origin_server_ts": int(pdu.get("origin_server_ts") or 0),
            "thread_id": relation[1] if relation[0] == THREAD else None}


def add(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Write index rows; a relation of an event in a thread is in that thread too (one query
    for the parents of the batch that are not in it)."""
    if not rows:
        return
    in_batch = {r["event_id"]: r for r in rows}
    wanted = list({r["relates_to_id"] for r in rows if r["thread_id"] is None
                   and r["relates_to_id"] not in in_batch})
    threads: dict[str, str] = {}
    for start in range(0, len(wanted), _CHUNK):
        threads.update((r.event_id, r.thread_id) for r in conn.execute(
            select(event_relations.c.event_id, event_relations.c.thread_id).where(
                event_relations.c.event_id.in_(wanted[start:start + _CHUNK]),
                event_relations.c.thread_id.is_not(None))))
    for r in rows:  # in order: a parent earlier in the batch has its thread already
        if r["thread_id"] is None:
            parent = in_batch.get(r["relates_to_id"])
            r["thread_id"] = parent["thread_id"] if parent is not None \
                else threads.get(r["relates_to_id"])
    conn.execute(insert(conn.dialect.name == "sqlite", event_relations)
                 .on_conflict_do_nothing(), list(rows))


def related_among(conn: Connection, event_ids: Sequence[str]) -> set[str]:
    """Which of these events something relates to (one indexed read per 500)."""
    rel = event_relations.c
    out: set[str] = set()
    for start in range(0, len(event_ids), _CHUNK):
        out.update(conn.execute(select(rel.relates_to_id).distinct().where(
            rel.relates_to_id.in_(event_ids[start:start + _CHUNK]))).scalars())
    return out


def remove_events(conn: Connection, event_ids: Iterable[str]) -> None:
    """Delete the rows of events (redacted or purged)."""
    ids = list(event_ids)
    for start in range(0, len(ids), _CHUNK):
        conn.execute(delete(event_relations)
                     .where(event_relations.c.event_id.in_(ids[start:start + _CHUNK])))


def index_stored(conn: Connection) -> None:
    """Index the relations of the timeline events already stored (not redacted, rejected or
    outliers), oldest first, a thousand at a time."""
    query = (select(events.c.nid, events.c.event_id, events.c.json, events.c.depth,
                    events.c.stream_ordering)
             .where(events.c.stream_ordering.is_not(None), events.c.rejected_reason.is_(None),
                    events.c.outlier.is_(False), events.c.json.contains('"m.relates_to"'),
                    ~select(redactions.c.event_id)
                    .where(redactions.c.redacts == events.c.event_id,
                           redactions.c.requires_server.is_(None)).exists())
             .order_by(events.c.nid))
    after = 0
    while True:
        found = conn.execute(query.where(events.c.nid > after).limit(1000)).all()
        if not found:
            return
        rows = [r for r in (row(f.event_id, json.loads(f.json), depth=int(f.depth),
                                stream_ordering=int(f.stream_ordering)) for f in found)
                if r is not None]
        add(conn, rows)
        after = found[-1].nid
