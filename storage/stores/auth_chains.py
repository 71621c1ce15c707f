"""The auth difference of state sets, from the auth chain cover index
(:mod:`storage.auth_chain_index`).

The auth difference is the union minus the intersection of the state sets' full auth chains
(each event of a set counts in its own chain, as in :func:`core.state_res.auth_chain_difference`,
the reference this must always equal). Writing ``common`` for the events in every state set and
``own_i`` for the rest of set ``i``, the full auth chain of set ``i`` is the union of
``closure(common)`` and ``closure(own_i)``, so the difference is the union of the
``closure(own_i)`` minus their intersection, minus ``closure(common)``. In a room of many
members whose forks differ in a few events, ``own_i`` is small and ``common`` is nearly the
whole state:

1. Positions of the events of the state sets (a cache: positions never change; the database
   for the rest).
2. What each ``own_i`` reaches, per chain: one recursive query along the links.
3. The chains where the ``own_i`` reach differently hold the candidates: the seqs above the
   lowest reach and up to the highest.
4. The events that reach a candidate (one recursive query backwards along the links), of which
   those in ``common``; and what these reach (one more recursive query): candidates that
   ``common`` reaches are in every auth chain, so not in the difference.

Nothing here is proportional to the room's members: the common events are only looked up (in
memory once cached), never followed.

**Events the index does not hold** — events queued by the roomserver and not committed yet,
stored events waiting for auth events (see the index's module), unknown events — are walked
through ``fetch`` as the reference walks them, down to the first indexed events, which take it
from there (an indexed event's whole auth chain is indexed): the difference is then that of the
walked parts joined to that of the indexed parts. Without ``fetch`` the answer is None ("walk
it all"). Each statement runs in a read transaction of its own, so it sees at least what the
cache holds; should an event walked as unindexed be found committed at the end (it could then
be counted twice), the difference is computed once more, and None if that happens again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Executable

from core.state_res.loader import EventFetcher, StateKey
from storage.auth_chain_index import (
    Position,
    Reach,
    chunks,
    collapse,
    descendants_statement,
    positions_statement,
    reach_statement,
)
from storage.engine import DatabaseEngine

_CACHE_SIZE = 200_000
_ATTEMPTS = 2


@dataclass(slots=True)
class AuthChainStats:
    """How the differences asked for were answered (for tests, the bench and logs).

    Attributes:
        answered: Differences computed (from the index, with or without walking).
        walked: Of those, the ones that walked events the index did not hold.
        walked_events: The events walked so, in all.
        fallbacks: Differences answered None (the caller walks all).
        retries: Differences computed again because events walked were committed meanwhile.
        queries: Statements run.
        reasons: Why, for the fallbacks.
    """

    answered: int = 0
    walked: int = 0
    walked_events: int = 0
    fallbacks: int = 0
    retries: int = 0
    queries: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class AuthChainStore:
    def __init__(self, engine: DatabaseEngine, cache_size: int = _CACHE_SIZE) -> None:
        self._db = engine
        self._cache_size = cache_size
        # Positions by event ID in two generations: hits in the old one move to the new one,
        # and the old one is dropped when the new one is full.
        self._new: dict[str, Position] = {}
        self._old: dict[str, Position] = {}
        self.stats = AuthChainStats()

    async def difference(self, state_sets: Sequence[Mapping[StateKey, str]],
                         fetch: EventFetcher | None = None) -> set[str] | None:
        """The auth difference of ``state_sets`` (event IDs), or None when the index cannot
        answer it (then walk: :func:`core.state_res.auth_chain_difference`).

        Args:
            state_sets: The state sets being resolved.
            fetch: Fetches events the index does not hold (queued, waiting for auth events);
                without it such an event makes the answer None.
        """
        if len(state_sets) < 2:
            return set()
        sets = [set(state_set.values()) for state_set in state_sets]
        common = sets[0].intersection(*sets[1:])
        own = [ids - common for ids in sets]
        for attempt in range(1, _ATTEMPTS + 1):
            run = _Run(self, fetch)
            try:
                result = await run.difference(common, own)
            except _NoFetch:
                result, run.reason = None, "not indexed, nothing to walk it with"
                break
            if result is not None or attempt == _ATTEMPTS:
                break
            # Events walked were committed meanwhile: once more, they are indexed now.
            self.stats.retries += 1
        if result is None:
            self.stats.fallbacks += 1
            self.stats.reasons[run.reason] = self.stats.reasons.get(run.reason, 0) + 1
            return None
        self.stats.answered += 1
        if run.walked:
            self.stats.walked += 1
            self.stats.walked_events += len(run.walked)
        return result

    # -- positions ---------------------------------------------------------------------------

    def cached(self, event_id: str) -> Position | None:
        position = self._new.get(event_id)
        if position is None:
            position = self._old.get(event_id)
            if position is not None:
                self._remember(event_id, position)
        return position

    def _remember(self, event_id: str, position: Position) -> None:
        if len(self._new) >= self._cache_size:
            self._old = self._new
            self._new = {}
        self._new[event_id] = position

    async def positions(self, event_ids: Iterable[str]) -> dict[str, Position]:
        """The positions of the indexed events among ``event_ids``."""
        out: dict[str, Position] = {}
        wanted = []
        for event_id in event_ids:
            position = self.cached(event_id)
            if position is None:
                wanted.append(event_id)
            else:
                out[event_id] = position
        out.update(await self._look_up(wanted))
        return out

    async def unindexed(self, event_ids: Iterable[str]) -> set[str]:
        """Those of ``event_ids`` the index does not hold."""
        wanted = set(event_ids).difference(self._new).difference(self._old)
        return wanted - (await self._look_up(sorted(wanted))).keys()

    async def any_indexed(self, event_ids: Iterable[str]) -> bool:
        """Whether any of ``event_ids`` is indexed now (the cache aside)."""
        return bool(await self._look_up(sorted(event_ids), cache=False))

    async def _look_up(self, event_ids: Sequence[str], cache: bool = True
                       ) -> dict[str, Position]:
        found: dict[str, Position] = {}
        for chunk in chunks(event_ids):
            for event_id, chain, seq in await self._read(positions_statement(chunk)):
                found[event_id] = (chain, seq)
                if cache:
                    self._remember(event_id, (chain, seq))
        return found

    async def _read(self, statement: Executable) -> list[tuple[Any, ...]]:
        """One statement in a read transaction of its own: it sees every commit made before it
        (so at least what the cache holds; one transaction for a whole difference would be a
        snapshot, on SQLite, older than positions other readers cached meanwhile)."""
        self.stats.queries += 1
        async with self._db.read() as conn:
            return [tuple(row) for row in await conn.execute(statement)]

    async def reach(self, groups: Sequence[Reach]) -> list[Reach]:
        """What each group of positions (given as chain -> greatest seq) reaches."""
        out: list[Reach] = [{} for _ in groups]
        starts = [(tag, chain, seq) for tag, group in enumerate(groups)
                  for chain, seq in group.items()]
        for chunk in chunks(starts):
            for tag, chain, seq in await self._read(reach_statement(chunk)):
                if seq > out[tag].get(chain, 0):
                    out[tag][chain] = seq
        return out

    async def descendants(self, starts: Reach) -> dict[str, Position]:
        """The indexed events reaching a position at or above ``starts`` (chain -> lowest
        seq) on its chain, by event ID."""
        out: dict[str, Position] = {}
        for chunk in chunks(sorted(starts.items())):
            for event_id, chain, seq in await self._read(descendants_statement(chunk)):
                out[event_id] = (chain, seq)
        return out


class _Run:
    """One difference: the walk of what the index does not hold, and the index's part."""

    def __init__(self, store: AuthChainStore, fetch: EventFetcher | None) -> None:
        self.store = store
        self.fetch = fetch
        self.auth: dict[str, list[str] | None] = {}  # fetched: auth events (None: unknown)
        self.walked: set[str] = set()
        self.reason = ""

    async def difference(self, common: set[str], own: list[set[str]]) -> set[str] | None:
        store = self.store
        unindexed_common = await store.unindexed(common)
        known = await store.positions(set().union(*own))
        own_positions = [{e: known[e] for e in ids if e in known} for ids in own]
        # What the index does not hold is walked: each part's unindexed events and the
        # indexed events its walk ends on.
        virtual_common, frontier_common = await self._walk(unindexed_common)
        virtual_own: list[set[str]] = []
        for ids, positions in zip(own, own_positions, strict=True):
            virtual, frontier = await self._walk(ids - positions.keys())
            virtual_own.append(virtual)
            positions.update(frontier)
        if self.walked:
            # An event found unindexed, then indexed before an event reaching it was looked
            # up, would be counted twice: answer only if none of them is indexed now.
            if await store.any_indexed(self.walked):
                self.reason = "indexed meanwhile"
                return None
        out = set().union(*virtual_own) - virtual_own[0].intersection(*virtual_own[1:])
        out -= virtual_common

        def in_common(event_id: str) -> bool:
            return (event_id in common and event_id not in unindexed_common) \
                or event_id in frontier_common

        reaches = await store.reach([collapse(p.values()) for p in own_positions])
        ranges: dict[int, tuple[int, int]] = {}
        for chain in set().union(*reaches):
            seqs = [reach.get(chain, 0) for reach in reaches]
            if min(seqs) < max(seqs):
                ranges[chain] = (min(seqs), max(seqs))
        if not ranges:
            return out
        found = await store.descendants({c: low + 1 for c, (low, _) in ranges.items()})
        reaching = [position for event_id, position in found.items() if in_common(event_id)]
        by_common = (await store.reach([collapse(reaching)]))[0] if reaching else {}
        for event_id, (chain, seq) in found.items():
            bounds = ranges.get(chain)
            if bounds is not None and max(bounds[0], by_common.get(chain, 0)) < seq <= bounds[1]:
                out.add(event_id)
        return out

    async def _walk(self, roots: set[str]) -> tuple[set[str], dict[str, Position]]:
        """Walk ``auth_events`` from ``roots`` (unindexed) as the reference does, stopping at
        indexed events: the unindexed events reached (unknown ones included, as the reference
        counts them), and the indexed ones where the walk stopped."""
        virtual: set[str] = set()
        frontier: dict[str, Position] = {}
        level = set(roots)
        if level and self.fetch is None:
            raise _NoFetch
        while level:
            virtual |= level
            self.walked |= level
            wanted = [e for e in level if e not in self.auth]
            if wanted:
                assert self.fetch is not None
                fetched = await self.fetch(wanted)
                for event_id in wanted:
                    event = fetched.get(event_id)
                    self.auth[event_id] = list(event.auth_event_ids) \
                        if event is not None and event.event_id == event_id else None
            following = {a for e in level for a in self.auth[e] or ()}
            following -= virtual
            following -= frontier.keys()
            found = await self.store.positions(following)
            frontier.update(found)
            level = following - found.keys()
        return virtual, frontier


class _NoFetch(Exception):
    """The index lacks an event and there is no ``fetch`` to walk it."""
