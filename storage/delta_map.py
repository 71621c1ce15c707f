"""An immutable map derived from another at the cost of the change, not of its size.

A room's state (and its state in nids) moves by one entry per state event, yet each version
must stay readable as it was (a state group's full state is cached, the room's snapshot is
read while the next event is placed). Copying a 10,000-entry map per event made a state
event's cost grow with the room (issue 15). A :class:`DeltaMap` is a shared base dict, never
changed, plus a small overlay (entries set, base keys deleted); ``changed`` copies only the
overlay, and folds it into a new base once it outgrows ``sqrt(len(base))`` entries, so a
change costs about ``sqrt(n)`` on average. Two maps on one base compare, and list their
differences (``changes``), from their overlays alone.

It iterates like a dict changed the same way: an entry set again keeps its place, a new one
(or one deleted and set again) comes last. Pure code.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, Mapping
from math import isqrt
from typing import Any, TypeVar, cast, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

_MISSING: Any = object()
_MIN_OVERLAY = 32


class DeltaMap(Mapping[K, V]):
    __slots__ = ("_base", "_gone", "_len", "_set")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._base: dict[K, V] = dict(items)
        self._set: dict[K, V] = {}  # entries over the base (in place, or appended)
        self._gone: frozenset[K] = frozenset()  # base keys deleted (some set again, last)
        self._len = len(self._base)

    @classmethod
    def owning(cls, base: dict[K, V]) -> DeltaMap[K, V]:
        """A map on ``base`` without copying it: the caller must never change ``base``."""
        out: DeltaMap[K, V] = cls.__new__(cls)
        out._base, out._set, out._gone, out._len = base, {}, frozenset(), len(base)
        return out

    @classmethod
    def of(cls, mapping: Mapping[K, V]) -> DeltaMap[K, V]:
        """``mapping`` itself if it is a DeltaMap, else a DeltaMap of a copy of it."""
        if isinstance(mapping, DeltaMap):
            return cast("DeltaMap[K, V]", mapping)
        return cls(mapping)

    # -- reading ----------------------------------------------------------------------------

    def __getitem__(self, key: K) -> V:
        value = self._set.get(key, _MISSING)
        if value is not _MISSING:
            return cast("V", value)
        if key in self._gone:
            raise KeyError(key)
        return self._base[key]

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, default: V | D, /) -> V | D: ...

    def get(self, key: K, default: Any = None) -> Any:
        value = self._set.get(key, _MISSING)
        if value is not _MISSING:
            return value
        if key in self._gone:
            return default
        return self._base.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._set or (key not in self._gone and key in self._base)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[K]:
        base, gone, set_ = self._base, self._gone, self._set
        if gone:
            yield from (k for k in base if k not in gone)
        else:
            yield from base
        yield from (k for k in set_ if k in gone or k not in base)

    def items(self) -> ItemsView[K, V]:
        return _Items(self)

    def _iter_items(self) -> Iterator[tuple[K, V]]:
        base, gone, set_ = self._base, self._gone, self._set
        if not set_ and not gone:
            yield from base.items()
            return
        for k, v in base.items():
            if k in gone:
                continue
            yield (k, set_.get(k, v))
        yield from ((k, v) for k, v in set_.items() if k in gone or k not in base)

    def to_dict(self) -> dict[K, V]:
        """A plain dict of the map (in its order), copied at C speed."""
        out = dict(self._base)
        for k in self._gone:
            del out[k]
        out.update(self._set)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        if len(self) != len(other):
            return False
        if isinstance(other, DeltaMap) and other._base is self._base:
            # Only keys in either overlay can differ.
            return all(self.get(k, _MISSING) == other.get(k, _MISSING)
                       for k in (*self._set, *self._gone, *other._set, *other._gone))
        return all(other.get(k, _MISSING) == v for k, v in self._iter_items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DeltaMap({self.to_dict()!r})"

    # -- deriving ---------------------------------------------------------------------------

    def changed(self, updates: Mapping[K, V] | Iterable[tuple[K, V]] = (),
                removed: Iterable[K] = ()) -> DeltaMap[K, V]:
        """A new map: this one with ``removed`` keys deleted (absent ones are ignored), then
        ``updates`` set. This one is unchanged."""
        base = self._base
        set_ = dict(self._set)
        gone = set(self._gone)
        length = self._len
        for k in removed:
            if k in base and k not in gone:
                set_.pop(k, None)
                gone.add(k)
                length -= 1
            elif k in set_:  # appended
                del set_[k]
                length -= 1
        pairs = updates.items() if isinstance(updates, Mapping) else updates
        for k, v in pairs:
            if k in base and k not in gone:  # present at its base place
                if base[k] == v:
                    set_.pop(k, None)
                else:
                    set_[k] = v
            elif k in set_:  # appended already: keeps its place
                set_[k] = v
            else:
                set_[k] = v
                length += 1
        out: DeltaMap[K, V] = DeltaMap.__new__(DeltaMap)
        if len(set_) + len(gone) > max(_MIN_OVERLAY, isqrt(len(base))):
            flat = dict(base)
            for k in gone:
                del flat[k]
            flat.update(set_)
            out._base, out._set, out._gone = flat, {}, frozenset()
        else:
            out._base, out._set, out._gone = base, set_, frozenset(gone)
        out._len = length
        return out

    @staticmethod
    def changes(old: Mapping[K, V], new: Mapping[K, V]
                ) -> tuple[list[tuple[K, V]], list[K]] | None:
        """The entries of ``new`` that differ from ``old``'s and the keys of ``old`` that
        ``new`` lacks, read off the overlays when both maps share a base; None when they do
        not (the caller compares them whole)."""
        if not (isinstance(old, DeltaMap) and isinstance(new, DeltaMap)
                and old._base is new._base):
            return None
        changed: list[tuple[K, V]] = []
        removed: list[K] = []
        for k in dict.fromkeys((*new._set, *new._gone, *old._set, *old._gone)):
            value = new.get(k, _MISSING)
            if value is _MISSING:
                if k in old:
                    removed.append(k)
            elif old.get(k, _MISSING) != value:
                changed.append((k, value))
        return changed, removed


class _Items(ItemsView[K, V]):
    _mapping: DeltaMap[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        return self._mapping._iter_items()


def as_dict(mapping: Mapping[K, V]) -> dict[K, V]:
    """A plain dict copy of ``mapping``."""
    return mapping.to_dict() if isinstance(mapping, DeltaMap) else dict(mapping)
