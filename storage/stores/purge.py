"""Deleting history: a room's old events (admin purge, retention) or a whole room.

A history purge deletes non-state events only: state events stay, because the room's state
groups and every later event's auth chain refer to them, and the room's newest events (its
forward extremities) stay so the room can go on. Deletes run in batches, each its own short
transaction, so a big purge never holds the SQLite writer for long.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from sqlalchemy import Connection, and_, delete, or_, select

from storage import relations_index, search_index
from storage.engine import DatabaseEngine
from storage.schema import (
    account_data,
    current_state,
    event_edges,
    events,
    history_cleared,
    history_dropped,
    receipts,
    redactions,
    room_aliases,
    room_forgotten,
    rooms,
    state_groups,
)

BATCH = 1000
# The tables purges shrink (what reclaiming space goes over).
PURGED_TABLES = ["events", "event_search", "event_edges", "redactions"]


@dataclass(frozen=True, slots=True)
class PurgePoint:
    """Events before this go: below ``depth`` (purge up to an event: its depth stays), or
    sent before ``ts`` (milliseconds)."""

    depth: int | None = None
    ts: int | None = None


class PurgeStore:
    def __init__(self, engine: DatabaseEngine,
                 on_delete: Callable[[], None] | None = None) -> None:
        self._db = engine
        self._on_delete = on_delete  # told after events are deleted (read caches)

    async def history_to_purge(self, room_id: str, point: PurgePoint, *,
                               local_suffix: str | None) -> list[tuple[int, str]]:
        """``(nid, event ID)`` of the room's events a history purge deletes.

        Args:
            local_suffix: ``":server.name"`` to keep events sent by local users; None
                deletes theirs too.
        """
        conditions = [events.c.room_id == room_id, events.c.state_key.is_(None),
                      events.c.stream_ordering.is_not(None)]
        if point.depth is not None:
            conditions.append(events.c.depth < point.depth)
        if point.ts is not None:
            conditions.append(events.c.origin_server_ts < point.ts)
        if local_suffix is not None:
            conditions.append(~events.c.sender.endswith(local_suffix, autoescape=True))
        async with self._db.read() as conn:
            head = (await conn.execute(select(rooms.c.forward_extremities)
                                       .where(rooms.c.room_id == room_id))).scalar()
            rows = (await conn.execute(select(events.c.nid, events.c.event_id, events.c.type)
                                       .where(and_(*conditions))
                                       .order_by(events.c.stream_ordering))).all()
            # A redaction stays while what it redacts stays (else that would show again).
            targets = {}
            redaction_ids = [r.event_id for r in rows if r.type == "m.room.redaction"]
            for i in range(0, len(redaction_ids), 500):
                found = await conn.execute(
                    select(redactions.c.event_id, redactions.c.redacts)
                    .where(redactions.c.event_id.in_(redaction_ids[i:i + 500])))
                targets.update({r.event_id: r.redacts for r in found})
        keep = set(json.loads(head)) if head else set()
        purged = {r.event_id for r in rows if r.event_id not in keep}
        return [(r.nid, r.event_id) for r in rows if r.event_id in purged
                and (r.event_id not in targets or targets[r.event_id] in purged)]

    async def delete_events(self, nids_and_ids: Sequence[tuple[int, str]]) -> None:
        """Delete events with their edges, redaction records and index entries."""
        for i in range(0, len(nids_and_ids), BATCH):
            await self._db.run_write(partial(_delete_events, chunk=nids_and_ids[i:i + BATCH]))
        if nids_and_ids and self._on_delete is not None:
            self._on_delete()

    async def delete_room(self, room_id: str) -> list[str]:
        """Delete everything stored about a room; returns the IDs of its deleted events."""
        async with self._db.read() as conn:
            rows = (await conn.execute(select(events.c.nid, events.c.event_id)
                                       .where(events.c.room_id == room_id))).all()
        chunk_ids = [(r.nid, r.event_id) for r in rows]
        await self.delete_events(chunk_ids)

        def rest(conn: Connection) -> None:
            for table in (current_state, state_groups, room_aliases, receipts, history_cleared,
                          history_dropped, room_forgotten, account_data):
                conn.execute(delete(table).where(table.c.room_id == room_id))
            conn.execute(delete(rooms).where(rooms.c.room_id == room_id))

        await self._db.run_write(rest)
        return [e for _, e in chunk_ids]

    async def retention_policies(self) -> tuple[list[str], dict[str, dict[str, object]]]:
        """Every room's ID, and the content of the rooms' ``m.room.retention`` state."""
        async with self._db.read() as conn:
            room_ids = [r[0] for r in await conn.execute(select(rooms.c.room_id))]
            rows = await conn.execute(
                select(current_state.c.room_id, events.c.json)
                .join(events, events.c.event_id == current_state.c.event_id)
                .where(and_(current_state.c.type == "m.room.retention",
                            current_state.c.state_key == "")))
            policies = {}
            for row in rows:
                content = json.loads(row.json).get("content")
                if isinstance(content, dict):
                    policies[row.room_id] = content
        return room_ids, policies

    async def reclaim_space(self) -> None:
        await self._db.reclaim_space(PURGED_TABLES)


def _delete_events(conn: Connection, chunk: Sequence[tuple[int, str]]) -> None:
    nids = [n for n, _ in chunk]
    event_ids = [e for _, e in chunk]
    search_index.remove(conn, nids)
    relations_index.remove_events(conn, event_ids)
    conn.execute(delete(event_edges).where(event_edges.c.event_id.in_(event_ids)))
    conn.execute(delete(redactions).where(or_(redactions.c.event_id.in_(event_ids),
                                              redactions.c.redacts.in_(event_ids))))
    conn.execute(delete(events).where(events.c.nid.in_(nids)))
