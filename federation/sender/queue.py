"""Outbound federation: one worker per destination, draining its durable queue.

PDUs (and persistent EDUs such as receipts) wait in ``federation_outbox``, written in the
same transaction as their event, so nothing acknowledged is lost when either server
restarts. A worker sends them in transactions of at most 50 PDUs and 100 EDUs
(https://spec.matrix.org/v1.19/server-server-api/#transactions), oldest first, and deletes
them once the destination answered. Ephemeral EDUs (typing, presence) ride along in memory
and are dropped while the destination is down. A failing destination is retried after a
backoff that doubles up to ``federation.retry_max_interval`` and is kept in the database, so
a dead server is not hammered, not even after a restart; any request from it resets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from core.clock import Clock
from federation.transport.client import (
    FederationClient,
    FederationClientError,
    FederationRequestError,
)
from homeserver.config import HomeserverConfig
from roomserver.api import CommittedBatch, FederatedRooms
from storage.stores.federation import Backoff, FederationStore

logger = logging.getLogger(__name__)

MAX_PDUS = 50
MAX_EDUS = 100
_MAX_EPHEMERAL = 500  # per destination; older typing/presence updates are dropped
RECEIPT_GATHER_S = 0.05


@dataclass(frozen=True)
class Shard:
    """Which destinations one of ``count`` federation_sender workers sends to: those whose
    name hashes to ``index`` (a hash every process computes alike, not Python's salted
    one). Every destination has exactly one sender while all run with the same config."""

    index: int = 0
    count: int = 1

    def owns(self, destination: str) -> bool:
        return self.count == 1 or \
            zlib.crc32(destination.encode()) % self.count == self.index


EVERY_DESTINATION = Shard()


class _Destination:
    def __init__(self, sender: FederationSender, name: str, backoff: Backoff | None) -> None:
        self.sender = sender
        self.name = name
        self.backoff = backoff
        self.wanted = asyncio.Event()
        self.wanted.set()
        # Ephemeral EDUs keyed so a newer update replaces an older one (typing per room and
        # user, presence per user).
        self.ephemeral: dict[tuple[str, ...], dict[str, Any]] = {}
        # Whether the durable queue may hold entries other than ``fresh`` (false once a read
        # found it drained): a transaction of typing notices alone needs no query.
        self.durable = True
        # Events just committed for this destination while its queue was known to hold
        # nothing else, in commit order: sent from memory (their rows are in the queue too,
        # and are deleted by event ID once the destination has them).
        self.fresh: list[str] = []
        # Receipt EDUs handed over while the destination is up: sent from memory with the
        # next transaction, written to the durable queue only if that fails (a crash in
        # between loses them, as Synapse's in-memory receipt queue does; the receipts
        # themselves are stored here).
        self.receipts: list[dict[str, Any]] = []
        # The events of the last transaction read from the queue (one committed while it
        # was read can be both read and handed over fresh).
        self._read_last: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    def add_ephemeral(self, key: tuple[str, ...], edu: dict[str, Any]) -> None:
        if self.backoff is not None:
            return  # it is down: typing and presence would be stale when it is back
        self.ephemeral.pop(key, None)
        self.ephemeral[key] = edu
        while len(self.ephemeral) > _MAX_EPHEMERAL:
            self.ephemeral.pop(next(iter(self.ephemeral)))
        self.wanted.set()

    async def run(self) -> None:
        while True:
            if self.backoff is not None:
                due = self.backoff.retry_last_ts + self.backoff.retry_interval_ms
                wait_s = (due - self.sender.now_ms()) / 1000
                if wait_s > 0:
                    self.wanted.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wanted.wait(), wait_s)
                    continue  # woken early (the peer is up) or due: look again
                # Due: try again whether or not anything new was queued.
            else:
                await self.wanted.wait()
            self.wanted.clear()
            try:
                while await self._send_one():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Sending to %s failed unexpectedly", self.name)
                await self._failed()

    async def _send_one(self) -> bool:
        """Send the next transaction; False when there is nothing (more) to send now."""
        sender = self.sender
        entries = []
        fresh: list[str] = []
        if self.durable:
            self.durable = False  # unless this read is cut short, or something new comes
            self.fresh.clear()  # their rows are read with the rest
            entries = await sender.store.pending(self.name, pdus=MAX_PDUS, edus=MAX_EDUS)
            self._read_last = {e.event_id for e in entries if e.event_id is not None}
            if len([e for e in entries if e.event_id is not None]) >= MAX_PDUS or \
                    len([e for e in entries if e.edu is not None]) >= MAX_EDUS:
                self.durable = True
        else:
            fresh, self.fresh = self.fresh[:MAX_PDUS], self.fresh[MAX_PDUS:]
            fresh = [e for e in fresh if e not in self._read_last]
        persistent_edus = [e.edu for e in entries if e.edu is not None]
        receipts = self.receipts[:MAX_EDUS - len(persistent_edus)]
        del self.receipts[:len(receipts)]
        persistent_edus += receipts
        room = MAX_EDUS - len(persistent_edus)
        ephemeral_keys = list(self.ephemeral)[:room]
        ephemeral = [self.ephemeral[k] for k in ephemeral_keys]
        if not entries and not fresh and not ephemeral and not persistent_edus:
            return False
        event_ids = [e.event_id for e in entries if e.event_id is not None] + fresh
        events = await sender.rooms.get_events(event_ids)
        pdus = [dict(events[e].pdu) for e in event_ids if e in events]
        txn_id = sender.next_txn_id()
        body = {"origin": sender.server_name, "origin_server_ts": sender.now_ms(),
                "pdus": pdus, "edus": [*persistent_edus, *ephemeral]}
        try:
            answer = await sender.client.put_json(
                self.name, f"/_matrix/federation/v1/send/{quote(txn_id, safe='')}", body)
        except FederationRequestError as e:
            if e.status >= 500 or e.status in (401, 408, 429):
                logger.info("Transaction to %s failed (%s): will retry", self.name, e.status)
                await self._failed(receipts)  # (what was fresh is read from the queue next)
                return False
            # The destination refuses this transaction as such: retrying would block its
            # queue for ever.
            logger.warning("%s refused a transaction of %d PDUs with %s %s: dropped",
                           self.name, len(pdus), e.status, e.errcode)
        except FederationClientError as e:
            logger.info("Cannot reach %s (%s): will retry", self.name, e)
            await self._failed(receipts)
            return False
        else:
            logger.debug("Sent transaction %s to %s: %d PDUs, %d EDUs", txn_id, self.name,
                         len(pdus), len(persistent_edus) + len(ephemeral))
            self._log_refused(answer)
        for key, sent in zip(ephemeral_keys, ephemeral, strict=True):
            if self.ephemeral.get(key) is sent:  # not replaced by a newer one meanwhile
                del self.ephemeral[key]
        await sender.store.sent(self.name, [e.id for e in entries], fresh)
        if self.backoff is not None:
            self.backoff = None
            await sender.store.set_backoff(self.name, None, sender.now_ms())
        return True

    def _log_refused(self, answer: Any) -> None:
        results = answer.get("pdus") if isinstance(answer, dict) else None
        if isinstance(results, dict):
            for event_id, result in results.items():
                if isinstance(result, dict) and result.get("error"):
                    logger.info("%s refused %s: %s", self.name, event_id, result["error"])

    async def _failed(self, receipts: list[dict[str, Any]] | None = None) -> None:
        """The destination is down: back off; receipts that were in memory (``receipts``
        those of the failed transaction) go to the durable queue."""
        sender = self.sender
        await self.keep_receipts(receipts or [])
        config = sender.config.federation
        interval = config.retry_initial_interval if self.backoff is None else \
            min(self.backoff.retry_interval_ms * 2, config.retry_max_interval)
        self.backoff = Backoff(sender.now_ms(), interval)
        self.ephemeral.clear()
        self.durable = True  # what was read stays queued
        await sender.store.set_backoff(self.name, self.backoff, sender.now_ms())

    async def keep_receipts(self, failed: list[dict[str, Any]]) -> None:
        """Write the receipts held in memory (after ``failed``, which came first) to the
        durable queue."""
        edus, self.receipts = [*failed, *self.receipts], []
        if edus:
            await self.sender.store.queue_edus([(self.name, e) for e in edus],
                                               self.sender.now_ms())
            self.durable = True


class FederationSender:
    def __init__(self, store: FederationStore, client: FederationClient,
                 rooms: FederatedRooms, clock: Clock, config: HomeserverConfig,
                 shard: Shard = EVERY_DESTINATION) -> None:
        self.store = store
        self._shard = shard
        self.client = client
        self.rooms = rooms
        self._clock = clock
        self.config = config
        self.server_name = config.server_name
        self._destinations: dict[str, _Destination] = {}
        self._backoffs: dict[str, Backoff] = {}
        self._txn_prefix = str(int(time.time() * 1000))
        self._txn_counter = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Local receipts waiting to be queued: room -> receipt type -> user -> receipt.
        self._receipts: dict[str, dict[str, dict[str, Any]]] = {}
        self._receipts_flush: asyncio.Task[None] | None = None

    def now_ms(self) -> int:
        return self._clock.time_ms()

    def queue_stats(self) -> list[tuple[str, int, bool, int | None]]:
        """Per destination (metrics, read at scrape time from memory): ``(name, items held
        in memory to send, whether its durable queue may hold more, backoff interval in ms
        or None when it is up)``; destinations backing off since before start-up too."""
        out: list[tuple[str, int, bool, int | None]] = [
            (d.name, len(d.fresh) + len(d.receipts) + len(d.ephemeral), d.durable,
             d.backoff.retry_interval_ms if d.backoff is not None else None)
            for d in self._destinations.values()]
        out += [(name, 0, True, b.retry_interval_ms) for name, b in self._backoffs.items()]
        return out

    def next_txn_id(self) -> str:
        self._txn_counter += 1
        return f"{self._txn_prefix}.{self._txn_counter}"

    async def start(self) -> None:
        self._backoffs = {name: backoff for name, backoff in (await self.store.backoffs()).items()
                          if self._shard.owns(name)}
        self.wake(await self.store.destinations_with_pending())

    async def stop(self) -> None:
        if self._receipts_flush is not None:  # receipts the clients were told are stored
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._receipts_flush, 5)
        for destination in self._destinations.values():
            if destination.task is not None:
                destination.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await destination.task
            try:  # what was still in memory is sent after the restart
                await destination.keep_receipts([])
            except Exception:
                logger.exception("Keeping %d receipt EDUs for %s failed",
                                 len(destination.receipts), destination.name)
        self._destinations.clear()
        for task in list(self._tasks):
            task.cancel()

    def _ours(self, names: Iterable[str]) -> list[str]:
        """The destinations among ``names`` this sender sends to (not this server)."""
        return [name for name in names if name != self.server_name and self._shard.owns(name)]

    def _destination(self, name: str) -> _Destination:
        destination = self._destinations.get(name)
        if destination is None:
            destination = _Destination(self, name, self._backoffs.pop(name, None))
            self._destinations[name] = destination
            destination.task = asyncio.create_task(destination.run())
        return destination

    def events_committed(self, batch: CommittedBatch) -> None:
        """The roomserver's commit listener: events were committed with rows in their
        destinations' queues; a destination whose queue held nothing else sends them from
        memory, in commit order, without reading its queue."""
        by_destination: dict[str, list[str]] = {}
        for event in batch.events:
            for name in event.destinations:
                by_destination.setdefault(name, []).append(event.event_id)
        for name in self._ours(by_destination):
            event_ids = by_destination[name]
            destination = self._destination(name)
            if not destination.durable and destination.backoff is None:
                destination.fresh.extend(event_ids)
            else:
                destination.durable = True
            destination.wanted.set()

    def wake(self, destinations: Iterable[str]) -> None:
        """New entries are queued for these destinations."""
        for name in self._ours(destinations):
            destination = self._destination(name)
            destination.durable = True
            destination.wanted.set()

    def peer_is_up(self, origin: str) -> None:
        """``origin`` just made an authenticated request to us: if it was backing off,
        retry at once."""
        destination = self._destinations.get(origin)
        if destination is not None and destination.backoff is not None:
            destination.backoff = None
            destination.wanted.set()
            self._spawn(self.store.set_backoff(origin, None, self.now_ms()))
        elif origin in self._backoffs:
            del self._backoffs[origin]
            self._spawn(self.store.set_backoff(origin, None, self.now_ms()))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Federation sender task failed", exc_info=task.exception())

    # -- EDUs ------------------------------------------------------------------------------

    async def _servers_in_rooms(self, room_ids: Iterable[str]) -> set[str]:
        """The other servers in these rooms this sender sends to."""
        servers: set[str] = set()
        for room_id in room_ids:
            servers |= await self.rooms.joined_servers(room_id)
        return set(self._ours(servers))

    # LocalEdus: what this server's users do, for the servers that share a room with them.

    def typing_changed(self, room_id: str, user_id: str, typing: bool,
                       servers: Sequence[str] | None = None) -> None:
        edu = {"edu_type": "m.typing",
               "content": {"room_id": room_id, "user_id": user_id, "typing": typing}}
        key = ("typing", room_id, user_id)
        if servers is not None:  # now, so it goes out with what is being committed
            for server in self._ours(servers):
                self._destination(server).add_ephemeral(key, edu)
            return

        async def send() -> None:
            for server in await self._servers_in_rooms([room_id]):
                self._destination(server).add_ephemeral(key, edu)

        self._spawn(send())

    def presence_changed(self, user_id: str, content: Mapping[str, Any]) -> None:
        if not user_id.endswith(":" + self.server_name):
            return  # another server's user (timed out here): their server speaks for them
        async def send() -> None:
            rooms = await self.rooms.joined_rooms(user_id)
            servers = await self._servers_in_rooms(rooms)
            if not servers:
                return
            push = {"user_id": user_id, "presence": content.get("presence", "offline"),
                    "last_active_ago": content.get("last_active_ago", 0),
                    "currently_active": bool(content.get("currently_active", False))}
            if content.get("status_msg") is not None:
                push["status_msg"] = content["status_msg"]
            edu = {"edu_type": "m.presence", "content": {"push": [push]}}
            for server in servers:
                self._destination(server).add_ephemeral(("presence", user_id), edu)

        self._spawn(send())

    def receipt_sent(self, room_id: str, user_id: str, receipt_type: str, event_id: str,
                      thread_id: str, ts: int) -> None:
        """A local user's public receipt: queued durably for the room's other servers, with
        the others that come within ``RECEIPT_GATHER_S`` (one ``m.receipt`` EDU per room, one
        write)."""
        data: dict[str, Any] = {"ts": ts}
        if thread_id:
            data["thread_id"] = thread_id
        self._receipts.setdefault(room_id, {}).setdefault(receipt_type, {})[user_id] = {
            "event_ids": [event_id], "data": data}
        if self._receipts_flush is None or self._receipts_flush.done():
            self._receipts_flush = asyncio.create_task(self._flush_receipts())

    async def _flush_receipts(self) -> None:
        # Readers of a message send their receipts together: gather them for a moment, so
        # they cost one write and one EDU per room, not one each.
        await asyncio.sleep(RECEIPT_GATHER_S)
        while self._receipts:
            receipts, self._receipts = self._receipts, {}
            entries = []
            for room_id, by_type in receipts.items():
                edu = {"edu_type": "m.receipt", "content": {room_id: by_type}}
                for server in sorted(await self._servers_in_rooms([room_id])):
                    destination = self._destination(server)
                    if destination.backoff is None:  # up: from memory, see _Destination
                        destination.receipts.append(edu)
                        destination.wanted.set()
                    else:
                        entries.append((server, edu))
            try:
                await self.store.queue_edus(entries, self.now_ms())
            except Exception:
                logger.exception("Queueing %d receipt EDUs failed", len(entries))
                continue
            self.wake({s for s, _ in entries})

    async def device_list_changed(self, user_id: str,
                                  edus: Sequence[Mapping[str, Any]]) -> None:
        """DeviceListEdus: a local user's devices or cross-signing keys changed; ``edus``
        (``m.device_list_update``, ``m.signing_key_update``) are queued durably for every
        other server sharing a room with the user (the rooms' servers are read from the
        roomserver's in-memory snapshots), and those are woken."""
        rooms = await self.rooms.joined_rooms(user_id)
        servers = sorted(await self._servers_in_rooms(rooms))
        entries = [(server, dict(edu)) for server in servers for edu in edus]
        if not entries:
            return
        await self.store.queue_edus(entries, self.now_ms())
        self.wake(servers)

    async def queue_to_device(self, edus: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Queue ``(destination, m.direct_to_device content)`` durably (the client's 200
        waits for it), and wake those destinations."""
        entries = [(d, {"edu_type": "m.direct_to_device", "content": content})
                   for d, content in edus if d != self.server_name]
        await self.store.queue_edus(entries, self.now_ms())
        self.wake({d for d, _ in entries})
