"""State resolution v2 and v2.1: one room state out of the states of several forks.

Pure protocol code: given the state sets, their auth difference and a way to fetch events, it
computes the resolved state; it neither stores nor caches anything beyond one call.

- :func:`resolve_state`: the algorithm (:mod:`core.state_res.v2`).
- :func:`auth_chain_difference`: the auth difference by walking ``auth_events``, the
  reference for the roomserver's index (:mod:`core.state_res.auth_chain`).
"""

from core.state_res.auth_chain import auth_chain_difference
from core.state_res.loader import EventFetcher, StateKey
from core.state_res.ordering import is_power_event
from core.state_res.v2 import resolve_state

__all__ = [
    "EventFetcher",
    "StateKey",
    "auth_chain_difference",
    "is_power_event",
    "resolve_state",
]
