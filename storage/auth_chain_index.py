"""The auth chain cover index, kept in the events' own write transaction.

State resolution needs the auth difference of state sets: the events in the auth chains of
some of them but not all. Walking ``auth_events`` for that touches every event of the state
sets and their ancestors; this index answers reachability over auth events with a few queries
instead (Synapse's "chain cover index", ``docs/auth_chain_difference_algorithm.md``; the code
here is our own).

**Positions.** Every stored state event whose auth events are all indexed gets a place
``(chain_id, seq)`` (``auth_chain_positions``). An event goes on the chain of its auth event of
the same type and state key when that event is the chain's last, else it starts a chain; so
along a chain each event is in the auth chain of the next, and ``(c, s)`` reaches ``(c, s')``
for every ``s' <= s``.

**Links.** ``(origin_chain, origin_seq) -> (target_chain, target_seq)`` says that the event at
the origin, and so every later event of its chain, reaches the target (and everything below it
on its chain). An event gets a link to each of its auth events on other chains that its chain
and its other links do not reach already (the most reaching first), so most events get one or
two. Reachability is along paths of links: X is in the auth chain of E (E itself included)
iff X's position is reached from E's by following, any number of times, a link whose origin
seq is at most the seq reached on its chain. Following links forward (what an event reaches)
and backward (what reaches an event) is one recursive query each.

**Waiting events.** An event with an auth event that has no position (not stored here, stored
but not a state event, or waiting itself) gets none: it waits in ``auth_chain_pending``, its
missing auth events in ``auth_chain_missing``, and is indexed in the write that indexes the
last of them. So every indexed event has its whole auth chain indexed, which is what lets the
readers (:mod:`storage.stores.auth_chains`) trust the index wherever it answers and walk only
what it does not hold. Events within a write may come in any order (outliers of a remote
join): they are indexed in topological order.

Rows are facts about the auth DAG (event IDs are hashes of the events, auth events included):
written once, never changed, kept when events are deleted (a room stored again reuses them).

The room version does not matter: in v12 no event lists the create event in ``auth_events``,
and the reference walk (:func:`core.state_res.auth_chain_difference`) does not add it either,
so the create event is in the auth chains of the state sets that hold it and of no others.
Should the reference change to count it as an implicit auth event of every event of a v12
room, :func:`_auth_ids` is where the index follows.

One writer: new chain IDs are the greatest stored one plus one, so two transactions indexing
at once would collide (the roomserver's one persister writes events; the migration runs alone).
"""

from __future__ import annotations

import functools
import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import (
    Connection,
    Select,
    TextClause,
    bindparam,
    delete,
    func,
    select,
    text,
)

from storage.dialect import insert
from storage.schema import (
    auth_chain_links,
    auth_chain_missing,
    auth_chain_pending,
    auth_chain_positions,
    events,
)

Position = tuple[int, int]
"""``(chain_id, seq)``."""

Reach = dict[int, int]
"""What a set of events reaches: chain ID -> the greatest seq reached on it."""

# Rows per statement: IN lists and VALUES starts (3 parameters each) stay well below the
# parameter limits of SQLite (32766) and asyncpg (32767).
CHUNK = 2000
_WAIT_ROUNDS = 10_000


class IndexedEvent(Protocol):
    """What the index reads of an event being written (``PersistItem`` has it)."""

    @property
    def event_id(self) -> str: ...

    @property
    def room_id(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def state_key(self) -> str | None: ...

    @property
    def auth_event_ids(self) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class StoredStateEvent:
    """A state event read back from the ``events`` table (the migration's input)."""

    event_id: str
    room_id: str
    type: str
    state_key: str | None
    auth_event_ids: Sequence[str]


@dataclass(slots=True)
class _Event:
    event_id: str
    room_id: str
    key: tuple[str, str]
    auth: list[str]
    waited: bool  # read back from auth_chain_pending


def _auth_ids(event: IndexedEvent) -> list[str]:
    """The event's auth event IDs, each once (what the reference walk follows)."""
    return list(dict.fromkeys(a for a in event.auth_event_ids if isinstance(a, str)))


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# -- statements the writer and the readers share ---------------------------------------------


def positions_statement(event_ids: Sequence[str]) -> Select[Any]:
    """``(event_id, chain_id, seq)`` of the indexed events among ``event_ids``."""
    p = auth_chain_positions
    return select(p.c.event_id, p.c.chain_id, p.c.seq).where(p.c.event_id.in_(event_ids))


def _values(rows: Iterable[tuple[int, ...]]) -> str:
    """Rows of integers as a VALUES list, written out: such statements are cheap to build and
    need no compiling (a VALUES construct with bound data is compiled anew every time)."""
    return ", ".join("(" + ", ".join(str(int(v)) for v in row) + ")" for row in rows)


def reach_statement(starts: Sequence[tuple[int, int, int]]) -> TextClause:
    """What each group of positions reaches: rows ``(tag, chain_id, seq)``, the greatest seq
    reached on each chain, for ``starts`` given as ``(tag, chain_id, seq)`` (the starts
    themselves included): along the links whose origin is reached."""
    return text(  # (integers only, written out by _values)
        f"WITH RECURSIVE given(tag, chain_id, seq) AS (VALUES {_values(starts)}), "  # noqa: S608
        "reached(tag, chain_id, seq) AS ("
        " SELECT CAST(tag AS BIGINT), CAST(chain_id AS BIGINT), CAST(seq AS BIGINT) FROM given"
        " UNION"
        " SELECT r.tag, l.target_chain, l.target_seq"
        f" FROM reached AS r JOIN {auth_chain_links.name} AS l"
        " ON l.origin_chain = r.chain_id AND l.origin_seq <= r.seq) "
        "SELECT tag, chain_id, max(seq) FROM reached GROUP BY tag, chain_id")


def descendants_statement(starts: Sequence[Position]) -> TextClause:
    """The indexed events whose auth chains (themselves included) hold an event at or above
    one of ``starts`` on its chain: rows ``(event_id, chain_id, seq)``; along the links whose
    target is reached, backwards."""
    return text(  # (integers only, written out by _values)
        f"WITH RECURSIVE given(chain_id, seq) AS (VALUES {_values(starts)}), "  # noqa: S608
        "reaching(chain_id, seq) AS ("
        " SELECT CAST(chain_id AS BIGINT), CAST(seq AS BIGINT) FROM given"
        " UNION"
        " SELECT l.origin_chain, l.origin_seq"
        f" FROM reaching AS r JOIN {auth_chain_links.name} AS l"
        " ON l.target_chain = r.chain_id AND l.target_seq >= r.seq), "
        "lowest(chain_id, seq) AS (SELECT chain_id, min(seq) FROM reaching GROUP BY chain_id) "
        "SELECT p.event_id, p.chain_id, p.seq"
        f" FROM {auth_chain_positions.name} AS p JOIN lowest"
        " ON p.chain_id = lowest.chain_id AND p.seq >= lowest.seq")


def collapse(positions: Iterable[Position]) -> Reach:
    """Positions as the greatest seq per chain (what matters for what they reach)."""
    out: Reach = {}
    for chain, seq in positions:
        if seq > out.get(chain, 0):
            out[chain] = seq
    return out


def merge(into: Reach, other: Reach) -> None:
    for chain, seq in other.items():
        if seq > into.get(chain, 0):
            into[chain] = seq


# -- the write path ---------------------------------------------------------------------------


def add(conn: Connection, items: Iterable[IndexedEvent]) -> None:
    """Index the state events among ``items`` (stored in this transaction), and the waiting
    events they complete. Events indexed already are skipped."""
    batch = [_Event(i.event_id, i.room_id, (i.type, i.state_key), _auth_ids(i), False)
             for i in items if i.state_key is not None]
    if batch:
        _Indexer(conn).run(batch)


def rebuild(conn: Connection, batch_size: int = 1000) -> None:
    """Index every stored state event not indexed yet, in write order (the migration)."""
    query = (select(events.c.nid, events.c.event_id, events.c.room_id, events.c.type,
                    events.c.state_key, events.c.json)
             .where(events.c.state_key.is_not(None), events.c.rejected_reason.is_(None))
             .order_by(events.c.nid))
    after = None
    while True:
        page = query if after is None else query.where(events.c.nid > after)
        rows = conn.execute(page.limit(batch_size)).all()
        if not rows:
            return
        add(conn, [StoredStateEvent(r.event_id, r.room_id, r.type, r.state_key,
                                    json.loads(r.json).get("auth_events") or [])
                   for r in rows])
        after = rows[-1].nid


class _Indexer:
    """One write's indexing: what it has learnt of positions, chain ends and reaches."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.is_sqlite = conn.dialect.name == "sqlite"
        self.positions: dict[str, Position] = {}
        self.keys: dict[str, tuple[str, str | None]] = {}
        self.looked_up: set[str] = set()
        self.tips: dict[int, int] = {}  # chain -> its last seq
        self.reach: dict[Position, Reach] = {}
        self.next_chain: int | None = None
        # Whether events waited before this write (None: not known yet).
        self.others_wait: bool | None = None
        self.new_positions: list[dict[str, Any]] = []
        self.new_links: list[dict[str, Any]] = []

    def run(self, batch: list[_Event]) -> None:
        todo = list({e.event_id: e for e in batch}.values())
        for _ in range(_WAIT_ROUNDS):
            indexed = self._round(todo)
            if not indexed or self.others_wait is False:
                break
            todo = self._completed(indexed)
            if not todo:
                break
        if self.new_positions:
            self.conn.execute(auth_chain_positions.insert(), self.new_positions)
        if self.new_links:
            self.conn.execute(auth_chain_links.insert(), self.new_links)

    def _round(self, todo: list[_Event]) -> list[str]:
        """Index what of ``todo`` can be; the rest waits. Returns the events indexed."""
        self._look_up({e.event_id for e in todo} | {a for e in todo for a in e.auth})
        waited = [e.event_id for e in todo if e.waited]
        for chunk in chunks(waited):
            self.conn.execute(delete(auth_chain_missing)
                              .where(auth_chain_missing.c.event_id.in_(chunk)))
            self.conn.execute(delete(auth_chain_pending)
                              .where(auth_chain_pending.c.event_id.in_(chunk)))
        todo = [e for e in todo if e.event_id not in self.positions]
        for e in todo:
            self.keys[e.event_id] = e.key
        self._load_reach({self.positions[a] for e in todo for a in e.auth
                          if a in self.positions})
        indexed: list[str] = []
        waiting: list[_Event] = []
        ordered = _topological(todo)
        for e in ordered:
            if all(a in self.positions for a in e.auth):
                self._place(e)
                indexed.append(e.event_id)
            else:
                waiting.append(e)
        if len(ordered) < len(todo):
            placed = {e.event_id for e in ordered}
            waiting.extend(e for e in todo if e.event_id not in placed)
        self._wait(waiting)
        return indexed

    def _completed(self, indexed: list[str]) -> list[_Event]:
        """The waiting events that one of ``indexed`` was missing (to try again)."""
        ids: set[str] = set()
        for chunk in chunks(indexed):
            ids.update(self.conn.execute(
                select(auth_chain_missing.c.event_id)
                .where(auth_chain_missing.c.missing_id.in_(chunk))).scalars())
        out = []
        for chunk in chunks(sorted(ids)):
            for row in self.conn.execute(select(auth_chain_pending)
                                         .where(auth_chain_pending.c.event_id.in_(chunk))):
                out.append(_Event(row.event_id, row.room_id, (row.type, row.state_key),
                                  [a for a in json.loads(row.auth_events)
                                   if isinstance(a, str)], True))
        return out

    def _look_up(self, event_ids: set[str]) -> None:
        """Positions (and chain ends, types) of the events not looked up before."""
        wanted = sorted(e for e in event_ids if e not in self.looked_up
                        and e not in self.positions)
        self.looked_up.update(wanted)
        for chunk in chunks(wanted):
            for row in self.conn.execute(_look_up_statement(), {"ids": list(chunk)}):
                if self.next_chain is None:
                    self.next_chain = int(row.last_chain) + 1
                if self.others_wait is None:
                    self.others_wait = bool(row.others_wait)
                self.positions[row.event_id] = (row.chain_id, row.seq)
                if row.chain_id not in self.tips:
                    self.tips[row.chain_id] = row.tip
                if row.type is not None:
                    self.keys[row.event_id] = (row.type, row.state_key)

    def _load_reach(self, positions: set[Position]) -> None:
        """What each stored position reaches (for choosing links)."""
        wanted = sorted(p for p in positions if p not in self.reach)
        for chunk in chunks(wanted):
            starts = [(i, chain, seq) for i, (chain, seq) in enumerate(chunk)]
            found: dict[int, Reach] = {}
            for tag, chain, seq in self.conn.execute(reach_statement(starts)):
                found.setdefault(tag, {})[chain] = seq
            for i, position in enumerate(chunk):
                self.reach[position] = found.get(i, {position[0]: position[1]})

    def _place(self, e: _Event) -> None:
        """Give ``e`` (its auth events all placed) a position and the links it needs."""
        chain: int | None = None
        reach: Reach = {}
        for auth_id in e.auth:
            position = self.positions[auth_id]
            if self.keys.get(auth_id) == e.key and self.tips.get(position[0]) == position[1]:
                chain = position[0]
                reach = dict(self.reach[position])
                break
        if chain is None:
            chain = self._new_chain()
        seq = self.tips.get(chain, 0) + 1
        self.tips[chain] = seq
        reach[chain] = seq
        # The auth events on other chains, the highest of each chain, the most reaching
        # first: each not reached yet gets a link.
        others = collapse(self.positions[a] for a in e.auth
                          if self.positions[a][0] != chain)
        for target in sorted(others.items(),
                             key=lambda p: (-len(self.reach[p]), p)):
            if reach.get(target[0], 0) >= target[1]:
                continue
            self.new_links.append(dict(origin_chain=chain, origin_seq=seq,
                                       target_chain=target[0], target_seq=target[1]))
            merge(reach, self.reach[target])
        position = (chain, seq)
        self.positions[e.event_id] = position
        self.reach[position] = reach
        self.new_positions.append(dict(event_id=e.event_id, chain_id=chain, seq=seq))

    def _check_others_wait(self) -> None:
        self.others_wait = bool(self.conn.execute(
            select(select(auth_chain_missing.c.event_id).exists())).scalar())

    def _new_chain(self) -> int:
        if self.next_chain is None:
            self.next_chain = int(self.conn.execute(
                select(func.max(auth_chain_positions.c.chain_id))).scalar() or 0) + 1
        chain = self.next_chain
        self.next_chain += 1
        return chain

    def _wait(self, waiting: list[_Event]) -> None:
        if not waiting:
            return
        if self.others_wait is None:
            self._check_others_wait()
        self.conn.execute(
            insert(self.is_sqlite, auth_chain_pending).on_conflict_do_nothing(),
            [dict(event_id=e.event_id, room_id=e.room_id, type=e.key[0],
                  state_key=e.key[1], auth_events=json.dumps(e.auth)) for e in waiting])
        missing = [dict(event_id=e.event_id, missing_id=a) for e in waiting for a in e.auth
                   if a not in self.positions]
        if missing:
            self.conn.execute(
                insert(self.is_sqlite, auth_chain_missing).on_conflict_do_nothing(), missing)


@functools.cache
def _look_up_statement() -> Select[Any]:
    """Positions of the events ``:ids``, with their chain's last seq and their type and state
    key; and (saving a statement each) the last chain ID and whether events wait."""
    p = auth_chain_positions
    other = auth_chain_positions.alias("other")
    tip = select(func.max(other.c.seq)).where(other.c.chain_id == p.c.chain_id) \
        .scalar_subquery()
    last_chain = select(func.max(other.c.chain_id)).scalar_subquery()
    others_wait = select(auth_chain_missing.c.event_id).exists()
    return (select(p.c.event_id, p.c.chain_id, p.c.seq, tip.label("tip"), events.c.type,
                   events.c.state_key, last_chain.label("last_chain"),
                   others_wait.label("others_wait"))
            .select_from(p.outerjoin(events, events.c.event_id == p.c.event_id))
            .where(p.c.event_id.in_(bindparam("ids", expanding=True))))


def _topological(todo: list[_Event]) -> list[_Event]:
    """``todo`` with each event after its auth events among them (else in the given order);
    events on a cycle, or after one, are left out (they wait for good)."""
    by_id = {e.event_id: e for e in todo}
    blocking: dict[str, int] = {}
    cited_by: dict[str, list[str]] = {}
    for e in todo:
        inside = [a for a in e.auth if a in by_id]
        blocking[e.event_id] = len(inside)
        for a in inside:
            cited_by.setdefault(a, []).append(e.event_id)
    ready = deque(e.event_id for e in todo if blocking[e.event_id] == 0)
    order = []
    while ready:
        event_id = ready.popleft()
        order.append(by_id[event_id])
        for child in cited_by.get(event_id, ()):
            blocking[child] -= 1
            if blocking[child] == 0:
                ready.append(child)
    return order
