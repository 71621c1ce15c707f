"""DeltaMap: an immutable map derived from another at the cost of the change (issue 15)."""

from __future__ import annotations

import random

import pytest

from storage.delta_map import DeltaMap, as_dict


def _check(m: DeltaMap[int, int], d: dict[int, int]) -> None:
    """``m`` reads, iterates and copies exactly like the dict changed the same way."""
    assert len(m) == len(d)
    assert list(m) == list(d)
    assert list(m.items()) == list(d.items())
    assert list(m.keys()) == list(d.keys())
    assert list(m.values()) == list(d.values())
    assert m.to_dict() == d and list(m.to_dict()) == list(d)
    assert as_dict(m) == d
    assert m == d and d == m
    assert not (m != d)
    for k in range(-5, 70):
        assert (k in m) == (k in d)
        assert m.get(k) == d.get(k)
        assert m.get(k, -1) == d.get(k, -1)
        if k in d:
            assert m[k] == d[k]
        else:
            with pytest.raises(KeyError):
                m[k]


@pytest.mark.parametrize("seed", range(20))
def test_matches_a_dict_changed_the_same_way(seed: int) -> None:
    rng = random.Random(seed)
    d = {k: rng.randrange(5) for k in range(rng.randrange(0, 60))}
    m = DeltaMap(d)
    versions = [(m, dict(d))]
    for _ in range(300):
        removed = rng.sample(range(-2, 70), rng.randrange(0, 3))
        updates = [(rng.randrange(-2, 70), rng.randrange(5)) for _ in range(rng.randrange(0, 4))]
        for k in removed:
            d.pop(k, None)
        for k, v in updates:
            d[k] = v
        m = m.changed(updates, removed)
        _check(m, d)
        versions.append((m, dict(d)))
    # Every earlier version is as it was (nothing derived from it changed it).
    for old, expected in versions:
        _check(old, expected)


def test_equality_and_changes_between_versions() -> None:
    base = DeltaMap({i: i for i in range(1000)})
    a = base.changed({1: 100, 2000: 1}, [3])
    b = base.changed({1: 100}, [3]).changed({2000: 1})
    assert a == b and a is not b
    assert a != base
    assert DeltaMap.changes(base, a) == ([(1, 100), (2000, 1)], [3])
    assert DeltaMap.changes(a, b) == ([], [])
    assert DeltaMap.changes(a, base) == ([(1, 1), (3, 3)], [2000])
    # Set back to its old value: no difference.
    assert base.changed({5: 6}).changed({5: 5}) == base
    assert DeltaMap.changes(base, base.changed({5: 6}).changed({5: 5})) == ([], [])
    # Not on one base: the caller compares them whole.
    assert DeltaMap.changes(base, DeltaMap(base)) is None
    assert DeltaMap.changes({1: 1}, base) is None
    assert base == DeltaMap(base) and base != {1: 1} and base != [1]


def test_the_overlay_is_folded_in_once_it_outgrows_sqrt_n() -> None:
    m = DeltaMap({i: 0 for i in range(10_000)})
    base = m._base
    for i in range(100):
        m = m.changed({i: 1})
        assert m._base is base  # 100 = sqrt(10,000) changes ride on the base
    m = m.changed({100: 1})
    assert m._base is not base and not m._set and not m._gone
    assert m == {i: int(i <= 100) for i in range(10_000)}


def test_owning_and_of_share_rather_than_copy() -> None:
    d = {1: 1}
    owned = DeltaMap.owning(d)
    assert owned._base is d and owned == {1: 1}
    assert DeltaMap.of(owned) is owned
    copied = DeltaMap.of(d)
    assert copied._base is not d
    assert repr(copied) == "DeltaMap({1: 1})"
    with pytest.raises(TypeError):
        hash(copied)
