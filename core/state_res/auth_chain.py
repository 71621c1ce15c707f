"""Auth chains: the auth difference of state sets and the conflicted state subgraph (v2.1).

Spec: https://spec.matrix.org/v1.16/rooms/v2/#definitions ("Auth chain", "Auth difference")
and https://spec.matrix.org/v1.16/rooms/v12/#definitions ("Conflicted state subgraph",
MSC4297).

**The events themselves count.** The spec defines the full auth chain of a state set as "the
union of the auth chains for each event in S_i", and an event's auth chain as its auth events,
theirs, and so on, which leaves the state events themselves out. Synapse (its chain cover index
and the store of ``tests/state/test_v2.py``) and ruma (``TestStore::auth_event_ids``) put them
in. The two definitions differ only on an unconflicted event that is an auth ancestor of events
in some state sets but not in others: Synapse leaves it out of the auth difference, the spec's
wording puts it in and replays it. We take Synapse's, since state resolution is only worth
anything if every server in the room reaches the same answer.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from core.state_res.loader import EventFetcher, EventLoader, StateKey


async def auth_chain_difference(
    state_sets: Sequence[Mapping[StateKey, str]], fetch: EventFetcher
) -> set[str]:
    """The auth difference of ``state_sets``, by walking ``auth_events``.

    This is the reference implementation: the roomserver computes the same set from an index
    kept at write time and passes it to :func:`core.state_res.resolve_state`; tests check the
    two against each other.

    The full auth chain ``C_i`` of each state set holds its events and all their auth
    ancestors (see the module docstring); the result is their union minus their intersection.
    Events unknown to ``fetch`` count by their ID but end their branch of the walk.

    Args:
        state_sets: The state sets being resolved.
        fetch: Fetches events by ID (one call per level of the auth DAG).

    Returns:
        The IDs of the events in some of the full auth chains but not all.
    """
    if len(state_sets) < 2:
        return set()
    loader = EventLoader(fetch)
    sets = [set(state_set.values()) for state_set in state_sets]
    await loader.load_auth_ancestors(set().union(*sets))
    # The auth chain of the events in every state set is in every C_i: walk it once, and walk
    # only what lies outside it for each state set.
    in_every_set = sets[0].intersection(*sets[1:])
    shared = _auth_closure(in_every_set, loader, frozenset())
    own = [_auth_closure(ids - in_every_set, loader, shared) for ids in sets]
    return own[0].union(*own[1:]) - own[0].intersection(*own[1:])


def _auth_closure(roots: Iterable[str], loader: EventLoader, stop: Collection[str]) -> set[str]:
    """``roots`` and their auth ancestors, not entering (or counting) events in ``stop``."""
    closure: set[str] = set()
    stack = [event_id for event_id in roots if event_id not in stop]
    while stack:
        event_id = stack.pop()
        if event_id in closure:
            continue
        closure.add(event_id)
        event = loader.get(event_id)
        if event is None:
            continue
        for auth_event_id in event.auth_event_ids:
            if auth_event_id not in closure and auth_event_id not in stop:
                stack.append(auth_event_id)
    return closure


async def conflicted_state_subgraph(conflicted: Collection[str], loader: EventLoader) -> set[str]:
    """The conflicted state subgraph of room version 12 (MSC4297, "Modification 2").

    Spec (rooms/v12, Definitions): "Starting from an event in the conflicted state set and
    following ``auth_events`` edges may lead to another event in the conflicted state set. The
    union of all such paths between any pair of events in the conflicted state set (including
    endpoints) forms a subgraph of the original ``auth_event`` graph". That is every event
    that is both an auth ancestor (or itself) of a conflicted event and an auth descendant (or
    itself) of a conflicted event.

    Computed by walking the auth ancestors of the conflicted events (one fetch per level),
    then walking forward (from auth event to the events citing it) from the conflicted events
    within those ancestors: an event on a forward path from a conflicted event to one of its
    ancestors' descendants is, by construction, both.

    Args:
        conflicted: The conflicted state set (event IDs).
        loader: Fetches and keeps the events.

    Returns:
        The subgraph's event IDs, the (known) conflicted events included.
    """
    ancestors = await loader.load_auth_ancestors(conflicted)
    cited_by: dict[str, list[str]] = {}
    for event_id in ancestors:
        event = loader.get(event_id)
        if event is None:
            continue
        for auth_event_id in event.auth_event_ids:
            cited_by.setdefault(auth_event_id, []).append(event_id)
    subgraph = {event_id for event_id in conflicted if loader.get(event_id) is not None}
    stack = list(subgraph)
    while stack:
        for child in cited_by.get(stack.pop(), ()):
            if child not in subgraph:
                subgraph.add(child)
                stack.append(child)
    return subgraph
