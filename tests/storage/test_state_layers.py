"""The layered state diffs of storage/state_layers.py (pure code, no database)."""

from __future__ import annotations

import random

import pytest

from storage.state_layers import (
    MAX_LAYERS,
    Layer,
    Pair,
    PlannedGroup,
    diff,
    full_state,
    pack_pairs,
    plan_group,
    unpack_pairs,
)


def raw_state(chain: list[Layer]) -> set[Pair]:
    """The pairs a chain yields, before ``full_state`` turns them into a dict (so a key that
    appears twice would be seen)."""
    state: set[Pair] = set()
    for layer in chain:
        state -= layer.removed
        state |= layer.added
    return state


class Chainer:
    """Saves groups the way the event persister does: each new group's chain is its parent's
    chain (cut at the planned parent) plus the new layer."""

    def __init__(self) -> None:
        self.chain: list[Layer] = []
        self.state: dict[int, int] = {}
        self.next_id = 0
        self.groups: dict[int, Layer] = {}

    def save(self, new_state: dict[int, int]) -> Layer:
        added, removed = diff(self.state, new_state)
        plan = plan_group(self.chain, added, removed)
        if plan.parent_id is not None:
            assert plan.parent_id in {lay.group_id for lay in self.chain}
        self.next_id += 1
        layer = Layer(self.next_id, plan.parent_id, plan.added, plan.removed)
        depth = next((i for i, lay in enumerate(self.chain)
                      if lay.group_id == plan.parent_id), -1)
        self.chain = [*self.chain[:depth + 1], layer]
        self.groups[layer.group_id] = layer
        self.state = dict(new_state)
        return layer

    def chain_of(self, group_id: int) -> list[Layer]:
        """A group's chain rebuilt from the stored parent links alone (as the store does)."""
        out = []
        next_id: int | None = group_id
        while next_id is not None:
            layer = self.groups[next_id]
            out.append(layer)
            next_id = layer.parent_id
        return out[::-1]


# -- packing -------------------------------------------------------------------------------


def test_pack_unpack_round_trip() -> None:
    rng = random.Random(7)
    pairs = {(rng.randrange(-2**40, 2**62), rng.randrange(0, 2**62)) for _ in range(500)}
    pairs |= {(0, 0), (1, 2**63 - 1), (-(2**63), 5)}
    blob = pack_pairs(pairs)
    assert len(blob) == 16 * len(pairs)
    assert unpack_pairs(blob) == pairs


def test_pack_is_sorted_and_deterministic() -> None:
    pairs = [(3, 1), (1, 9), (2, 5), (1, 2)]
    assert pack_pairs(pairs) == pack_pairs(reversed(pairs)) == pack_pairs(set(pairs))
    assert pack_pairs(pairs)[:16] == (1).to_bytes(8, "little") + (2).to_bytes(8, "little")


def test_pack_empty() -> None:
    assert pack_pairs([]) == b""
    assert unpack_pairs(b"") == set()


# -- diff and full_state -------------------------------------------------------------------


def test_diff_added_changed_removed() -> None:
    old = {1: 10, 2: 20, 3: 30}
    new = {1: 10, 2: 21, 4: 40}
    added, removed = diff(old, new)
    assert added == {(2, 21), (4, 40)}
    assert removed == {(2, 20), (3, 30)}
    assert diff(new, new) == (set(), set())


def test_full_state_applies_removed_before_added() -> None:
    root = Layer(1, None, frozenset({(1, 10), (2, 20)}), frozenset())
    # A layer that removes and re-adds the same pair keeps it.
    child = Layer(2, 1, frozenset({(2, 20), (3, 30)}), frozenset({(2, 20), (1, 10)}))
    assert full_state([root, child]) == {2: 20, 3: 30}
    assert full_state([]) == {}


# -- plan_group edge cases -----------------------------------------------------------------


def test_first_group_is_a_root_holding_the_full_state() -> None:
    plan = plan_group([], {(1, 1)}, set())
    assert plan == PlannedGroup(None, frozenset({(1, 1)}), frozenset())
    chainer = Chainer()
    layer = chainer.save({1: 1, 2: 2, 3: 3})
    assert layer.parent_id is None
    assert layer.removed == frozenset()
    assert full_state(chainer.chain) == {1: 1, 2: 2, 3: 3}


def test_small_diff_under_a_big_root_becomes_a_child() -> None:
    chainer = Chainer()
    chainer.save({k: k for k in range(100)})
    layer = chainer.save({**{k: k for k in range(100)}, 5: 1000})
    assert layer.parent_id == 1
    assert layer.added == {(5, 1000)}
    assert layer.removed == {(5, 5)}
    assert len(chainer.chain) == 2


def test_chain_never_grows_past_max_layers() -> None:
    chainer = Chainer()
    state = {k: k for k in range(1000)}
    chainer.save(state)
    for i in range(50):
        state = {**state, i: 10_000 + i}
        chainer.save(state)
        assert len(chainer.chain) <= MAX_LAYERS
        assert full_state(chainer.chain) == state
    # Even a caller handing in an over-deep chain gets a group within the limit.
    deep = [Layer(1, None, frozenset({(0, 0)}), frozenset())]
    for gid in range(2, MAX_LAYERS + 3):
        deep.append(Layer(gid, gid - 1, frozenset({(gid, gid)}), frozenset()))
    plan = plan_group(deep, {(999, 999)}, set())
    kept = next((i for i, lay in enumerate(deep) if lay.group_id == plan.parent_id), -1)
    assert kept + 2 <= MAX_LAYERS
    if kept == -1:
        assert plan.removed == frozenset()
    assert full_state([*deep[:kept + 1], Layer(99, plan.parent_id, plan.added, plan.removed)]) \
        == {**full_state(deep), 999: 999}


def test_re_adding_a_pair_removed_earlier() -> None:
    """A -> B -> A again for one key, and a key removed and then re-added with its old
    event: every group's state is right, however the layers merge."""
    chainer = Chainer()
    base = {k: k for k in range(20)}
    history = [
        base,
        {**base, 1: 100},                      # change key 1
        base,                                  # back to the original pair (1, 1)
        {k: v for k, v in base.items() if k != 2},  # remove key 2
        base,                                  # re-add (2, 2)
        {**base, 1: 100},                      # (1, 100) again
        {**base, 1: 101},
        base,
    ]
    saved = []
    for state in history:
        layer = chainer.save(state)
        saved.append(layer.group_id)
        assert full_state(chainer.chain) == state
        assert len(raw_state(chainer.chain)) == len(state)
    for group_id, state in zip(saved, history, strict=True):
        assert full_state(chainer.chain_of(group_id)) == state


@pytest.mark.parametrize("padding", [0, 1, 2, 3])
def test_re_adding_removed_pair_when_merged_into_parent(padding: int) -> None:
    """A diff re-adding a pair its parent removed: the pair comes back and the parent's
    replacement goes, whether the new group sits under the parent or (a full chain) is
    merged into it."""
    root = Layer(1, None, frozenset({(1, 10), (2, 20)} | {(k, k) for k in range(100, 110)}),
                 frozenset())
    chain = [root]
    for i in range(padding):
        chain.append(Layer(2 + i, 1 + i, frozenset({(100 + i, 500 + i)}),
                           frozenset({(100 + i, 100 + i)})))
    parent = Layer(10, chain[-1].group_id, frozenset({(1, 11)}), frozenset({(1, 10)}))
    chain.append(parent)
    expected = {**full_state(chain), 1: 10}
    plan = plan_group(chain, {(1, 10)}, {(1, 11)})
    kept = next((i for i, lay in enumerate(chain) if lay.group_id == plan.parent_id), -1)
    if len(chain) >= MAX_LAYERS:
        assert kept < len(chain) - 1  # merged upwards
    new_chain = [*chain[:kept + 1], Layer(99, plan.parent_id, plan.added, plan.removed)]
    assert len(new_chain) <= MAX_LAYERS
    assert full_state(new_chain) == expected
    assert len(raw_state(new_chain)) == len(expected)


@pytest.mark.parametrize("parent_size", [1, 2, 5])
def test_merge_with_parent_re_expresses_the_diff(parent_size: int) -> None:
    root = Layer(1, None, frozenset((k, k) for k in range(50)), frozenset())
    parent = Layer(2, 1, frozenset((k, 1000 + k) for k in range(parent_size)),
                   frozenset((k, k) for k in range(parent_size)))
    # A large diff relative to the parent's layer makes it merge into the parent.
    added = {(k, 2000 + k) for k in range(10, 10 + 3 * parent_size)}
    removed = {(k, k) for k in range(10, 10 + 3 * parent_size)}
    plan = plan_group([root, parent], added, removed)
    expected = {**full_state([root, parent]), **{k: 2000 + k
                                                 for k in range(10, 10 + 3 * parent_size)}}
    kept = next((i for i, lay in enumerate([root, parent])
                 if lay.group_id == plan.parent_id), -1)
    assert kept <= 0  # merged into the parent's layer (or the root)
    chain = [*[root, parent][:kept + 1], Layer(3, plan.parent_id, plan.added, plan.removed)]
    assert full_state(chain) == expected


# -- random sequences ----------------------------------------------------------------------


def _run_random(seed: int, steps: int, n_keys: int, *, remove_p: float, multi_p: float
                ) -> tuple[int, int, Chainer, list[tuple[int, dict[int, int]]]]:
    rng = random.Random(seed)
    chainer = Chainer()
    state: dict[int, int] = {}
    next_event = 0
    stored_entries = 0
    full_copy_entries = 0
    checkpoints: list[tuple[int, dict[int, int]]] = []
    for step in range(steps):
        new = dict(state)
        changes = rng.randint(2, 6) if rng.random() < multi_p else 1
        for _ in range(changes):
            if new and rng.random() < remove_p:
                del new[rng.choice(sorted(new))]
            else:
                next_event += 1
                new[rng.randrange(n_keys)] = next_event
        if new == state:
            continue
        layer = chainer.save(new)
        state = new
        stored_entries += layer.size
        full_copy_entries += len(new)
        assert len(chainer.chain) <= MAX_LAYERS
        assert chainer.chain[0].parent_id is None
        assert chainer.chain[0].removed == frozenset()
        raw = raw_state(chainer.chain)
        assert len(raw) == len(state), "a key appears twice in the chain's state"
        assert dict(raw) == state
        if step % 97 == 0:
            checkpoints.append((layer.group_id, dict(state)))
    return stored_entries, full_copy_entries, chainer, checkpoints


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_changes_full_state_depth_and_size(seed: int) -> None:
    stored, full_copies, chainer, checkpoints = _run_random(
        seed, steps=3000, n_keys=1000, remove_p=0.02, multi_p=0.0)
    # 3000 changes over 1000 keys: far below a full copy per change.
    assert stored < 0.05 * full_copies, (stored, full_copies)
    # Every old group still resolves, through its stored parent links, to its own state.
    for group_id, state in checkpoints:
        chain = chainer.chain_of(group_id)
        assert len(chain) <= MAX_LAYERS
        assert full_state(chain) == state


@pytest.mark.parametrize("seed", [11, 12])
def test_random_multi_key_diffs_with_removals(seed: int) -> None:
    stored, full_copies, chainer, checkpoints = _run_random(
        seed, steps=2000, n_keys=300, remove_p=0.15, multi_p=0.3)
    assert stored < 0.2 * full_copies, (stored, full_copies)
    for group_id, state in checkpoints:
        assert full_state(chainer.chain_of(group_id)) == state


def test_room_growing_from_empty_one_key_per_event() -> None:
    """The shape of a real room: the first 1000 events add a member each, then 2000 more
    change members; one new pair per event."""
    chainer = Chainer()
    state: dict[int, int] = {}
    stored = full_copies = 0
    rng = random.Random(5)
    for event in range(1, 3001):
        key = event - 1 if event <= 1000 else rng.randrange(1000)
        state = {**state, key: event}
        layer = chainer.save(state)
        stored += layer.size
        full_copies += len(state)
        assert len(chainer.chain) <= MAX_LAYERS
    assert full_state(chainer.chain) == state
    assert stored < 0.05 * full_copies, (stored, full_copies)
