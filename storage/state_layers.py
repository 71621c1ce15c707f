"""Layered state storage: how a room's state is kept without copying it per event.

A state map is a set of ``(state key nid, event nid)`` pairs. Each state group stores only its
difference from a parent group (``added`` and ``removed`` pairs); a group without a parent
holds the whole state. When a new group is saved, its difference is merged into the layers
above it while it is large compared with theirs, so chains stay a few layers deep and a big
room's full state is rewritten only about once every sqrt(2n) changes — the scheme conduwuit
uses for its ``shortstatehash`` diffs. Pure code: the store loads and saves the layers.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Pair = tuple[int, int]
"""(state key nid, event nid)"""

MAX_LAYERS = 4
_PAIR = struct.Struct("<qq")


def pack_pairs(pairs: Iterable[Pair]) -> bytes:
    """Sorted little-endian int64 pairs: 16 bytes an entry, deterministic."""
    return b"".join(_PAIR.pack(k, e) for k, e in sorted(pairs))


def unpack_pairs(blob: bytes) -> set[Pair]:
    return {(k, e) for k, e in _PAIR.iter_unpack(blob)}


@dataclass(frozen=True, slots=True)
class Layer:
    group_id: int
    parent_id: int | None
    added: frozenset[Pair]
    removed: frozenset[Pair]

    @property
    def size(self) -> int:
        return len(self.added) + len(self.removed)


@dataclass(frozen=True, slots=True)
class PlannedGroup:
    """Where a new group goes: under ``parent_id`` with this difference."""

    parent_id: int | None
    added: frozenset[Pair]
    removed: frozenset[Pair]


def full_state(chain: Sequence[Layer]) -> dict[int, int]:
    """Apply layers root first; returns state key nid -> event nid."""
    state: set[Pair] = set()
    for layer in chain:
        state -= layer.removed
        state |= layer.added
    return dict(state)


def diff(old: Mapping[int, int], new: Mapping[int, int]) -> tuple[set[Pair], set[Pair]]:
    """The ``(added, removed)`` pairs that turn ``old`` into ``new``."""
    added = {(k, e) for k, e in new.items() if old.get(k) != e}
    removed = {(k, e) for k, e in old.items() if new.get(k) != e}
    return added, removed


def _merge(parent: Layer, added: set[Pair], removed: set[Pair]) -> tuple[set[Pair], set[Pair]]:
    """A child's difference re-expressed relative to its grandparent."""
    merged_added = (set(parent.added) - removed) | added
    merged_removed = set(parent.removed) | (removed - set(parent.added))
    return merged_added, merged_removed


def plan_group(parent_chain: Sequence[Layer], added: set[Pair], removed: set[Pair]
               ) -> PlannedGroup:
    """Decide where a new group's difference lives.

    Args:
        parent_chain: the layers of the parent group, root first (empty for a room's first
            state).
        added, removed: the new state's difference from the parent group's state.
    """
    chain = list(parent_chain)
    diff_to_sibling = len(added) + len(removed)
    while True:
        if not chain:
            return PlannedGroup(None, frozenset(added), frozenset(removed))
        size = len(added) + len(removed)
        parent = chain[-1]
        too_deep = len(chain) >= MAX_LAYERS
        too_big = size * size >= 2 * diff_to_sibling * parent.size
        if not too_deep and not too_big:
            return PlannedGroup(parent.group_id, frozenset(added), frozenset(removed))
        chain.pop()
        added, removed = _merge(parent, added, removed)
        if not chain:
            # Merged into the root: the new group is a root holding the full state.
            removed = set()
        diff_to_sibling = size
