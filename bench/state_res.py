"""State resolution in memory: a room of ``--members`` joined members whose state forked, each
side adding ``--branch-events`` events (power levels changes, kicks, topics, joins).

Times ``core.state_res.resolve_state`` over the two state sets, events fetched from a dict
(no server, no database): the median and the fastest of ``--runs`` runs, per room version
(v2 for 10 and 11, v2.1 for 12). The auth difference is computed once beforehand with the
reference walk (``auth_chain_difference``, timed separately), and from the auth chain index the
roomserver takes it from: the room's events written to a SQLite database (as outliers, through
``persist_batch``), then ``db.auth_chains.difference`` timed cold (the positions of the 10,000
common events looked up) and warm (median of ``--runs``), with the statements it ran. Prints
one JSON line.

    python bench/state_res.py [--members 10000] [--branch-events 50] [--runs 7]
                              [--room-version 10 --room-version 12 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import emit, machine

from core.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from core.state_res import auth_chain_difference, resolve_state
from core.state_res.v2 import split_state_sets
from storage import Database
from storage.stores.events import PersistItem
from tests.core.state_dag import ForkRoom, fork_room


async def _index_figures(room: ForkRoom, want: set[str], runs: int) -> dict[str, Any]:
    """The auth difference from the index: write the room, then time it cold and warm."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite+aiosqlite:///{tmp}/bench.db", sqlite_synchronous="OFF")
        await db.open()
        try:
            items = [PersistItem(
                event_id=e.event_id, room_id=e.room_id, pdu_json=json.dumps(dict(e.pdu)),
                nid=nid, stream_ordering=None, depth=e.depth, type=e.type,
                state_key=e.state_key, sender=e.sender, origin_server_ts=e.origin_server_ts,
                received_ts=0, prev_event_ids=e.prev_event_ids,
                auth_event_ids=e.auth_event_ids, state_group_before=None,
                state_group_after=None, outlier=True, moves_head=False)
                for nid, e in enumerate(room.store.events.values(), start=1)]
            started = time.perf_counter()
            for start in range(0, len(items), 500):
                await db.events.persist_batch(items[start:start + 500])
            write_s = time.perf_counter() - started
            store = db.auth_chains
            started = time.perf_counter()
            cold = await store.difference(room.state_sets)
            cold_ms = (time.perf_counter() - started) * 1000
            cold_queries = store.stats.queries
            timings = []
            for _ in range(runs):
                started = time.perf_counter()
                warm = await store.difference(room.state_sets)
                timings.append((time.perf_counter() - started) * 1000)
            assert cold == warm == want, "the index and the walk disagree"
            return {
                "auth_difference_index_cold_ms": round(cold_ms, 1),
                "auth_difference_index_median_ms": round(statistics.median(timings), 1),
                "index_queries_cold": cold_queries,
                "index_queries_warm": (store.stats.queries - cold_queries) // runs,
                "index_write_room_s": round(write_s, 2),
            }
        finally:
            await db.close()


async def _bench(room_version: RoomVersion, members: int, branch_events: int,
                 runs: int) -> dict[str, Any]:
    built = time.perf_counter()
    room = fork_room(room_version, members=members, branch_events=branch_events)
    built = time.perf_counter() - built
    started = time.perf_counter()
    difference = await auth_chain_difference(room.state_sets, room.store.fetch)
    difference_ms = (time.perf_counter() - started) * 1000
    timings = []
    for _ in range(runs):
        room.store.fetches.clear()
        started = time.perf_counter()
        resolved = await resolve_state(room_version, room.state_sets, difference,
                                       room.store.fetch)
        timings.append((time.perf_counter() - started) * 1000)
    _, conflicted = split_state_sets(room.state_sets)
    return {
        "room_version": room_version.identifier,
        "state_res": "v2.1" if room_version.state_res_v2_1 else "v2",
        "resolve_median_ms": round(statistics.median(timings), 1),
        "resolve_min_ms": round(min(timings), 1),
        "auth_difference_walk_ms": round(difference_ms, 1),
        "state_keys": len(resolved),
        "conflicted_keys": len(conflicted),
        "auth_difference": len(difference),
        "fetches": len(room.store.fetches),
        "events_fetched": sum(len(batch) for batch in room.store.fetches),
        "build_room_s": round(built, 2),
        **await _index_figures(room, difference, runs),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--branch-events", type=int, default=50)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--room-version", action="append", choices=sorted(KNOWN_ROOM_VERSIONS),
                        help="repeatable; default: 11 and 12")
    args = parser.parse_args()
    versions = args.room_version or ["11", "12"]
    results = [await _bench(KNOWN_ROOM_VERSIONS[v], args.members, args.branch_events, args.runs)
               for v in versions]
    emit({
        "bench": "state_res",
        "members": args.members,
        "branch_events": args.branch_events,
        "runs": args.runs,
        "results": results,
        "machine": machine(),
    })


if __name__ == "__main__":
    asyncio.run(main())
