"""The main process's federation sender when a ``federation_sender`` worker sends: the same
queueing (what is durable is written here, in the caller's request), but the sending and
what lives in memory until sent (typing, presence, receipts gathered for a moment) happen in
the worker, which hears of each over ``replication`` and of every commit's destinations from
the committed batches it follows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from core.clock import Clock
from federation.sender.queue import FederationSender
from federation.transport.client import FederationClient
from homeserver.config import HomeserverConfig
from homeserver.services.ports import Replication
from roomserver.api import CommittedBatch, FederatedRooms
from storage.stores.federation import FederationStore

PEER_UP_EVERY_MS = 5_000


class RelayedSender(FederationSender):
    def __init__(self, store: FederationStore, client: FederationClient,
                 rooms: FederatedRooms, clock: Clock, config: HomeserverConfig,
                 replication: Replication) -> None:
        super().__init__(store, client, rooms, clock, config)
        self._replication = replication
        # When each origin was last said to be up (ms): once per PEER_UP_EVERY_MS is enough,
        # not once per request.
        self._peer_up_said: dict[str, int] = {}

    async def start(self) -> None:
        pass  # (the worker sends what is pending)

    async def stop(self) -> None:
        pass

    def events_committed(self, batch: CommittedBatch) -> None:
        pass  # (the worker follows the commits)

    def wake(self, destinations: Iterable[str]) -> None:
        self._replication.publish("federation_wake", sorted(set(destinations)))

    def peer_is_up(self, origin: str) -> None:
        now = self.now_ms()
        if now - self._peer_up_said.get(origin, -PEER_UP_EVERY_MS) < PEER_UP_EVERY_MS:
            return
        if len(self._peer_up_said) > 10_000:
            self._peer_up_said.clear()
        self._peer_up_said[origin] = now
        self._replication.publish("federation_peer_up", origin)

    def typing_changed(self, room_id: str, user_id: str, typing: bool,
                       servers: Sequence[str] | None = None) -> None:
        self._replication.publish("federation_edu", ["typing", [
            room_id, user_id, typing, list(servers) if servers is not None else None]])

    def presence_changed(self, user_id: str, content: Mapping[str, Any]) -> None:
        self._replication.publish("federation_edu", ["presence", [user_id, dict(content)]])

    def receipt_sent(self, room_id: str, user_id: str, receipt_type: str, event_id: str,
                     thread_id: str, ts: int) -> None:
        self._replication.publish("federation_edu", ["receipt", [
            room_id, user_id, receipt_type, event_id, thread_id, ts]])


def apply_relayed(sender: FederationSender, kind: str, args: list[Any]) -> None:
    """The worker: what the main process's ``RelayedSender`` passed on."""
    if kind == "typing":
        sender.typing_changed(*args)
    elif kind == "presence":
        sender.presence_changed(*args)
    elif kind == "receipt":
        sender.receipt_sent(*args)
