"""State resolution against Synapse on the same machine: the fork of ``bench/state_res.py`` (a
room of ``--members`` joined members whose state forked, each side adding ``--branch-events``
events: power levels changes, kicks, topics, joins), resolved in memory by our
``core.state_res.resolve_state`` and by Synapse's ``synapse.state.v2.resolve_events_with_store``
(the installed Synapse, ``.venv-synapse``), per room version (10, 11; 12 where the installed
Synapse has it with state resolution v2.1, MSC4297). Prints one JSON line: per room version the
median and the fastest of ``--runs`` runs of each, Synapse's median over ours, and whether the
two resolved states are the same.

    .venv/bin/python bench/state_res_synapse.py [--members 10000] [--branch-events 50]
                                                [--runs 5] [--room-version 12 ...]

How: this process (our venv) builds the room with ``tests/core/state_dag.fork_room``, times our
resolution, and writes the room's events to a temporary JSON file; it then runs this same file
under the Synapse venv's python (``--synapse-job FILE``, which imports nothing of ours), which
turns them into Synapse events (``make_event_from_dict``), times Synapse's resolution and prints
its figures and resolved states as JSON.

Event IDs: ``fork_room`` names its events readably (``$base5``, ``$a3``); Synapse computes the
IDs of v3+ events from their reference hash and cannot take others. So the room is rewritten
first, oldest event first, with real IDs (a content hash added, ``signatures`` empty, the
references and, in v12, the room ID updated): both sides resolve exactly the same events, and
the Synapse process checks that every event ID it computes is ours. The tie-breaks by event ID
therefore differ from ``state_res.py``'s room, whose figures are not quite the same input.

What is timed is resolution itself, the same way for both: the auth difference is computed once
beforehand by our walk (``core.state_res.auth_chain_difference``) and handed to both (ours as
the ``auth_chain_difference`` argument; Synapse's in-memory store returns it from
``get_auth_chain_difference``, as its database's chain cover index would). In v12 Synapse's
store also returns the conflicted state subgraph, computed beforehand
(``core.state_res.auth_chain.conflicted_state_subgraph``), since its database computes it
there; ours computes the subgraph inside ``resolve_state``, so our v12 figures include that
walk, whose own time is given as ``ours_subgraph_walk_median_ms``. Events are fetched from a
dict on both sides (our ``EventStore.fetch``; Synapse's store's ``get_events``), with no event
cache carried from one run to the next (``event_map=None``). Synapse's clock is a no-op
``sleep`` (it only ever sleeps 0 s, to yield to its reactor every 100 iterations); both run
under asyncio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SYNAPSE_PYTHON = REPO / ".venv-synapse" / "bin" / "python"
ROOM_VERSIONS = ("10", "11", "12")


# -- Synapse side: run by the Synapse venv's python; imports nothing of ours ----------------------


class _NoSleepClock:
    """Synapse's ``Clock`` protocol as state resolution uses it (``sleep(0)`` only)."""

    async def sleep(self, duration: Any) -> None:
        return None


class _MemoryStore:
    """Synapse's ``StateResolutionStore`` over a dict, the auth difference given."""

    def __init__(self, events: dict[str, Any], auth_difference: set[str],
                 conflicted_subgraph: set[str] | None) -> None:
        self.events = events
        self.auth_difference = auth_difference
        self.conflicted_subgraph = conflicted_subgraph

    async def get_events(self, event_ids: Any, allow_rejected: bool = False) -> dict[str, Any]:
        return {i: self.events[i] for i in event_ids if i in self.events}

    async def get_auth_chain_difference(self, room_id: str, state_sets: Any,
                                        conflicted_state: Any = None,
                                        additional_backwards_reachable_conflicted_events: Any
                                        = None) -> Any:
        from synapse.storage.databases.main.event_federation import StateDifference

        # Copies: Synapse adds to the sets it is given.
        return StateDifference(
            auth_difference=set(self.auth_difference),
            conflicted_subgraph=(set(self.conflicted_subgraph)
                                 if self.conflicted_subgraph is not None else None))


async def _synapse_job(job: dict[str, Any]) -> dict[str, Any]:
    import importlib.metadata

    # synapse.event_auth is imported before synapse.state (a circular import otherwise).
    import synapse.event_auth  # noqa: F401
    from synapse.api.room_versions import KNOWN_ROOM_VERSIONS, StateResolutionVersions
    from synapse.events import make_event_from_dict
    from synapse.state.v2 import resolve_events_with_store

    results: dict[str, Any] = {}
    for identifier, room in job["rooms"].items():
        room_version = KNOWN_ROOM_VERSIONS.get(identifier)
        if room_version is None or (identifier == "12" and
                                    room_version.state_res != StateResolutionVersions.V2_1):
            results[identifier] = {"unsupported": "room version unknown to this Synapse"
                                   if room_version is None else "no state resolution v2.1"}
            continue
        events: dict[str, Any] = {}
        mismatches = []
        for our_id, pdu in room["events"]:
            event = make_event_from_dict(pdu, room_version)
            if event.event_id != our_id:
                mismatches.append([our_id, event.event_id])
            events[event.event_id] = event
        if mismatches:
            results[identifier] = {"event_id_mismatches": len(mismatches),
                                   "first_mismatches": mismatches[:5]}
            continue
        state_sets = [{(t, k): e for t, k, e in state_set} for state_set in room["state_sets"]]
        subgraph = room["conflicted_subgraph"]
        timings = []
        resolved: Any = None
        for _ in range(job["runs"]):
            store = _MemoryStore(events, set(room["auth_difference"]),
                                 set(subgraph) if subgraph is not None else None)
            started = time.perf_counter()
            resolved = await resolve_events_with_store(
                _NoSleepClock(), room["room_id"], room_version, state_sets, None, store)
            timings.append((time.perf_counter() - started) * 1000)
        results[identifier] = {
            "median_ms": statistics.median(timings),
            "min_ms": min(timings),
            "resolved": sorted([t, k, e] for (t, k), e in dict(resolved).items()),
        }
    # Not synapse.__version__: it appends the git branch and commit of the directory Synapse
    # is installed in, here this repository's.
    return {"synapse_version": importlib.metadata.version("matrix-synapse"), "rooms": results}


# -- Our side: run by our venv -------------------------------------------------------------------


def _with_real_ids(room_version: Any, room: Any) -> tuple[Any, list[dict[str, str]]]:
    """``room`` (a ``ForkRoom``) with reference-hash event IDs: its events rewritten oldest
    first, and its state sets with the new IDs."""
    from core.events.hashing import add_content_hash, compute_event_id
    from core.events.model import Event
    from tests.core.state_dag import EventStore

    new_ids: dict[str, str] = {}
    store = EventStore()
    room_id: str | None = None
    # The store keeps the order fork_room added the events in: each after its references.
    for old in room.store.events.values():
        pdu = {k: v for k, v in old.pdu.items() if k not in ("hashes", "signatures")}
        pdu["auth_events"] = [new_ids[i] for i in old.auth_event_ids]
        pdu["prev_events"] = [new_ids[i] for i in old.prev_event_ids]
        if "room_id" in pdu and room_version.room_id_is_create_event_hash:
            assert room_id is not None, "the create event comes first"
            pdu["room_id"] = room_id
        pdu = add_content_hash(pdu)
        pdu["signatures"] = {}
        event_id = compute_event_id(pdu, room_version)
        if old.type == "m.room.create" and old.state_key == "":
            room_id = "!" + event_id[1:]
        new_ids[old.event_id] = event_id
        store.add(Event(event_id, room_version, pdu))
    state_sets = [{k: new_ids[v] for k, v in state_set.items()} for state_set in room.state_sets]
    return store, state_sets


async def _ours(identifier: str, members: int, branch_events: int, runs: int
                ) -> tuple[dict[str, Any], dict[str, Any], dict[Any, str], dict[str, Any]]:
    """Our figures, the Synapse job's room, our resolved state, and the room's events."""
    from core.events.room_versions import KNOWN_ROOM_VERSIONS
    from core.state_res import auth_chain_difference, resolve_state
    from core.state_res.auth_chain import conflicted_state_subgraph
    from core.state_res.loader import EventLoader
    from core.state_res.v2 import split_state_sets
    from tests.core.state_dag import fork_room

    room_version = KNOWN_ROOM_VERSIONS[identifier]
    built = time.perf_counter()
    store, state_sets = _with_real_ids(
        room_version, fork_room(room_version, members=members, branch_events=branch_events))
    built = time.perf_counter() - built
    difference = await auth_chain_difference(state_sets, store.fetch)
    _, conflicted = split_state_sets(state_sets)
    subgraph: set[str] | None = None
    subgraph_timings = []
    if room_version.state_res_v2_1:
        conflicted_ids = set().union(*conflicted.values())
        for _ in range(runs):
            started = time.perf_counter()
            subgraph = await conflicted_state_subgraph(conflicted_ids, EventLoader(store.fetch))
            subgraph_timings.append((time.perf_counter() - started) * 1000)
    timings = []
    resolved: dict[Any, str] = {}
    for _ in range(runs):
        started = time.perf_counter()
        resolved = await resolve_state(room_version, state_sets, difference, store.fetch)
        timings.append((time.perf_counter() - started) * 1000)
    figures: dict[str, Any] = {
        "room_version": identifier,
        "state_res": "v2.1" if room_version.state_res_v2_1 else "v2",
        "ours_median_ms": round(statistics.median(timings), 1),
        "ours_min_ms": round(min(timings), 1),
        **({"ours_subgraph_walk_median_ms": round(statistics.median(subgraph_timings), 2),
            "conflicted_subgraph": len(subgraph or ())} if subgraph_timings else {}),
        "state_keys": len(resolved),
        "conflicted_keys": len(conflicted),
        "auth_difference": len(difference),
        "build_room_s": round(built, 2),
    }
    job_room = {
        "room_id": next(iter(store.events.values())).room_id,
        "events": [[e.event_id, dict(e.pdu)] for e in store.events.values()],
        "state_sets": [[[t, k, e] for (t, k), e in s.items()] for s in state_sets],
        "auth_difference": sorted(difference),
        "conflicted_subgraph": sorted(subgraph) if subgraph is not None else None,
    }
    return figures, job_room, resolved, store.events


def _compare(ours: dict[Any, str], theirs: list[list[str]], events: dict[str, Any]
             ) -> dict[str, Any]:
    """Whether the resolved states are equal, and where they differ (the first 10 keys, each
    side's event as ``[event ID, sender, content]``)."""
    synapse = {(t, k): e for t, k, e in theirs}
    differing = sorted(k for k in ours.keys() | synapse.keys() if ours.get(k) != synapse.get(k))

    def describe(event_id: str | None) -> Any:
        event = events.get(event_id) if event_id is not None else None
        return [event_id, event.sender, dict(event.content)] if event is not None else event_id

    return {
        "states_match": not differing,
        **({"differing_keys": len(differing),
            "differences": [{"key": list(k), "ours": describe(ours.get(k)),
                             "synapse": describe(synapse.get(k))}
                            for k in differing[:10]]} if differing else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--branch-events", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--room-version", action="append", choices=ROOM_VERSIONS,
                        help="repeatable; default: 10, 11 and 12")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO))
    from _common import emit, machine

    results = []
    ours_states = {}
    job: dict[str, Any] = {"runs": args.runs, "rooms": {}}
    for identifier in args.room_version or ROOM_VERSIONS:
        figures, job["rooms"][identifier], *ours_states[identifier] = asyncio.run(_ours(
            identifier, args.members, args.branch_events, args.runs))
        results.append(figures)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="state-res-synapse-") as file:
        json.dump(job, file)
        file.flush()
        job.clear()
        proc = subprocess.run([str(SYNAPSE_PYTHON), __file__, "--synapse-job", file.name],
                              capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"the Synapse process failed:\n{proc.stderr}")
    synapse = json.loads(proc.stdout.strip().splitlines()[-1])
    mismatched = []
    for figures in results:
        theirs = synapse["rooms"][figures["room_version"]]
        if "median_ms" not in theirs:
            figures["synapse"] = theirs
            if "event_id_mismatches" in theirs:
                mismatched.append(figures["room_version"])
            continue
        figures["synapse_median_ms"] = round(theirs["median_ms"], 1)
        figures["synapse_min_ms"] = round(theirs["min_ms"], 1)
        figures["synapse_over_ours_median"] = round(
            theirs["median_ms"] / figures["ours_median_ms"], 2)
        resolved, events = ours_states[figures["room_version"]]
        figures.update(_compare(resolved, theirs["resolved"], events))
        if not figures["states_match"]:
            mismatched.append(figures["room_version"])
    emit({
        "bench": "state_res_synapse",
        "synapse_version": synapse["synapse_version"],
        "members": args.members,
        "branch_events": args.branch_events,
        "runs": args.runs,
        "results": results,
        "machine": machine(),
    })
    if mismatched:
        sys.exit(f"Synapse and ours differ (states or event IDs) in room versions {mismatched}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--synapse-job":
        figures = asyncio.run(_synapse_job(json.loads(Path(sys.argv[2]).read_text())))
        print(json.dumps(figures))
    else:
        main()
