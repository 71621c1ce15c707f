"""Stored events as clients see them (the spec's ClientEvent format)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from cachetools import LRUCache

from core.events.redaction import redact
from core.events.room_versions import KNOWN_ROOM_VERSIONS
from storage.stores.events import EventStore, StoredEvent

# Transaction IDs are scoped to a device and an endpoint; /redact's are stored with this prefix
# so they never meet /send's (which cannot send redactions) and shown without it.
REDACT_TXN_SCOPE = "m.redact:"

_FEDERATION_ONLY_KEYS = ("auth_events", "prev_events", "hashes", "signatures", "depth",
                         "origin", "membership", "prev_state")


class ThreadAggregation(Protocol):
    @property
    def latest(self) -> StoredEvent: ...
    @property
    def latest_edit(self) -> StoredEvent | None: ...
    @property
    def count(self) -> int: ...
    @property
    def participated(self) -> bool: ...


class Aggregation(Protocol):
    """What relates to one event, as one reader may see it (``services.relations``)."""

    @property
    def thread(self) -> ThreadAggregation | None: ...
    @property
    def edit(self) -> StoredEvent | None: ...
    @property
    def references(self) -> Sequence[str]: ...


class Aggregations(Protocol):
    async def bundles(self, events: Sequence[StoredEvent], user_id: str
                      ) -> Mapping[str, Aggregation]: ...


class EventSerializer:
    """Client format. The part of an unredacted event that is the same for every reader is
    built once and kept (sync sends each new event to every member's devices). With
    ``aggregations``, what a reader is shown carries its bundled aggregations
    (``unsigned["m.relations"]``), computed for the whole page at once."""

    CACHE_SIZE = 20_000

    def __init__(self, events: EventStore, aggregations: Aggregations | None = None) -> None:
        self._events = events
        self._aggregations = aggregations
        self._bodies: LRUCache[str, dict[str, Any]] = LRUCache(self.CACHE_SIZE)

    def forget(self, event_ids: Iterable[str]) -> None:
        """Drop what was built for events whose stored form changed."""
        for event_id in event_ids:
            self._bodies.pop(event_id, None)

    async def serialize(self, stored: Sequence[StoredEvent], *, requester_device: str | None,
                        requester_user: str | None, now: int) -> list[dict[str, Any]]:
        """Client format for each event: redacted if redacted, with ``unsigned`` filled in."""
        bundles: Mapping[str, Aggregation] = {}
        if self._aggregations is not None and requester_user is not None and stored:
            bundles = await self._aggregations.bundles(stored, requester_user)
        bundled = [e for b in bundles.values() for e in (
            (b.edit,) + ((b.thread.latest, b.thread.latest_edit) if b.thread else ()))
            if e is not None]
        redactions = await self._events.get_events(
            {s.redacted_by for s in [*stored, *bundled] if s.redacted_by is not None})
        prev = await self._prev_state(s for s in stored if "state_key" in s.pdu)
        out = []
        for event in stored:
            body = self._one(event, redactions, prev, requester_device, requester_user, now)
            bundle = bundles.get(event.event_id)
            if bundle is not None:
                body["unsigned"]["m.relations"] = self._relations(
                    bundle, redactions, requester_device, requester_user, now)
            out.append(body)
        return out

    def _relations(self, bundle: Aggregation, redactions: dict[str, StoredEvent],
                   device: str | None, user: str | None, now: int) -> dict[str, Any]:
        """``unsigned["m.relations"]``: the thread (its latest event as the reader sees it,
        with its own edit), the edit that applies (the whole event, as Synapse), and the
        references."""
        out: dict[str, Any] = {}
        if bundle.thread is not None:
            latest = self._one(bundle.thread.latest, redactions, {}, device, user, now)
            if bundle.thread.latest_edit is not None:
                latest["unsigned"]["m.relations"] = {"m.replace": self._one(
                    bundle.thread.latest_edit, redactions, {}, device, user, now)}
            out["m.thread"] = {"latest_event": latest, "count": bundle.thread.count,
                               "current_user_participated": bundle.thread.participated}
        if bundle.edit is not None:
            out["m.replace"] = self._one(bundle.edit, redactions, {}, device, user, now)
        if bundle.references:
            out["m.reference"] = {"chunk": [{"event_id": e} for e in bundle.references]}
        return out

    def _one(self, event: StoredEvent, redactions: dict[str, StoredEvent],
             prev: dict[str, StoredEvent], device: str | None, user: str | None, now: int
             ) -> dict[str, Any]:
        redaction = redactions.get(event.redacted_by) if event.redacted_by else None
        if redaction is None and (cached := self._bodies.get(event.event_id)) is not None:
            body = dict(cached)
            pdu = event.pdu
        else:
            version = KNOWN_ROOM_VERSIONS[event.room_version]
            pdu = redact(event.pdu, version) if redaction is not None else event.pdu
            body = {k: v for k, v in pdu.items() if k not in _FEDERATION_ONLY_KEYS
                    and k != "unsigned"}
            body["event_id"] = event.event_id
            body["room_id"] = event.room_id
            if "content" not in body:
                body["content"] = {}
            if version.updated_redaction_rules and pdu.get("type") == "m.room.redaction":
                redacts = (pdu.get("content") or {}).get("redacts")
                if redacts is not None:
                    body["redacts"] = redacts  # clients of older versions read it here
            if redaction is None and event.stream_ordering is not None:
                self._bodies[event.event_id] = dict(body)
        unsigned: dict[str, Any] = {"age": max(0, now - int(pdu.get("origin_server_ts", now)))}
        if event.txn_id is not None and event.device_id == device and \
                pdu.get("sender") == user:
            unsigned["transaction_id"] = event.txn_id.removeprefix(REDACT_TXN_SCOPE) \
                if pdu.get("type") == "m.room.redaction" else event.txn_id
        if redaction is not None:
            because = self._one(redaction, {}, {}, None, None, now)
            because.pop("unsigned", None)
            unsigned["redacted_because"] = because
        previous = prev.get(event.event_id)
        if previous is not None:
            unsigned["replaces_state"] = previous.event_id
            unsigned["prev_content"] = previous.pdu.get("content", {})
            unsigned["prev_sender"] = previous.pdu.get("sender")
        body["unsigned"] = unsigned
        return body

    async def _prev_state(self, state_events: Iterable[StoredEvent]) -> dict[str, StoredEvent]:
        """For each state event, the state event it replaced (if any), in one query."""
        replaced = {e.event_id: e.replaces_state for e in state_events
                    if e.replaces_state is not None}
        loaded = await self._events.get_events(replaced.values())
        return {e: loaded[p] for e, p in replaced.items() if p in loaded}
