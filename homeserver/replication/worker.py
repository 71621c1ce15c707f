"""What the processes of one server tell each other over the bus, and what each does with it.

The main process (the writer) publishes; ``follow_writer`` makes a worker apply it: stream
positions first (a sync reads up to them), then the change itself, then the wake, so a woken
sync finds what woke it. ``serve_workers`` makes the main process take what workers report
(who is syncing there, who was active).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from homeserver.replication.bus import RedisBus
from homeserver.services.container import Services
from homeserver.services.notifier import batch_from_json
from roomserver.api import CommitListener

logger = logging.getLogger(__name__)


def follow_writer(bus: RedisBus, services: Services,
                  listeners: Sequence[CommitListener] = ()) -> None:
    """A worker: keep this process's memory as the writer's commits change the database;
    ``listeners`` hear of each commit too (a federation sender)."""
    db = services.db
    stores = {"account_data": db.account_data, "receipts": db.receipts,
              "to_device": db.to_device, "e2e": db.e2e_keys}
    notifier = services.notifier
    roomserver = services.roomserver
    pending: set[asyncio.Task[None]] = set()

    def advance(payload: dict[str, Any]) -> None:
        for name, position in (payload.get("pos") or {}).items():
            store = stores.get(name)
            if store is not None:
                store.advance(position)

    async def on_events(payload: dict[str, Any], _origin: str) -> None:
        batch = batch_from_json(payload["batch"])
        # The new events into the cache first, in one query: the syncs this wakes would
        # otherwise each read them, all at once.
        with contextlib.suppress(Exception):  # (a failed read only costs those reads)
            await db.events.get_events([e.event_id for e in batch.events
                                        if e.stream_ordering is not None])
        advance(payload)
        services.push.events_seen(batch)
        # The notifier and the caches listening to commits (the writer's own listeners,
        # push evaluation, typing's ends, the user directory, are not subscribed here).
        roomserver.committed_elsewhere(batch)
        for listener in listeners:
            listener.events_committed(batch)

    def on_wake(payload: dict[str, Any], _origin: str) -> None:
        advance(payload)
        notifier.wake(payload["rooms"], payload["users"], payload["presence"])

    def on_account_data(payload: dict[str, Any], _origin: str) -> None:
        advance(payload)
        notifier.on_account_data(payload["user"], payload["position"])

    def resubscribed() -> None:
        logger.warning("Resubscribed to the writer's messages: forgetting what may have "
                       "changed meanwhile")
        task = asyncio.get_running_loop().create_task(services.resync_worker())
        pending.add(task)
        task.add_done_callback(pending.discard)
        task.add_done_callback(_log_failure)

    def writer_started(_payload: Any, _origin: str) -> None:
        # A main process that started again may have been killed between a commit and
        # telling us of it: what we remember of changes may have gaps.
        logger.warning("The main process started: forgetting what may have changed")
        task = asyncio.get_running_loop().create_task(services.resync_worker())
        pending.add(task)
        task.add_done_callback(pending.discard)
        task.add_done_callback(_log_failure)

    bus.on_resubscribed.append(resubscribed)
    bus.subscribe("writer_started", writer_started)
    bus.subscribe("events", on_events)
    bus.subscribe("wake", on_wake)
    bus.subscribe("account_data", on_account_data)
    bus.subscribe("ignored", lambda p, _: services.account_data.apply_ignored(*p))
    bus.subscribe("typing", lambda p, _: services.typing.apply_replicated(p))
    bus.subscribe("presence", lambda p, _: services.presence.apply_replicated(p))
    bus.subscribe("receipts", lambda p, _: services.receipts.apply_replicated(p))
    bus.subscribe("to_device", lambda p, _: services.to_device.apply_replicated(p))
    def on_device_lists(changes: list[list[Any]], _origin: str) -> None:
        services.keys.apply_replicated_changes((position, user) for position, user in changes)

    bus.subscribe("device_lists", on_device_lists)
    bus.subscribe("key_counts",
                  lambda p, _: services.keys.apply_replicated_counts(
                      (user, device) for user, device in p))
    bus.subscribe("push", lambda p, _: services.push.apply_replicated(p))
    bus.subscribe("push_rotated", lambda _p, _o: services.push.apply_rotated())
    # (before the commit's own message: new events are known to have no relations yet, so
    # the syncs they wake do not all ask the database)
    bus.subscribe("relations", lambda p, _: db.relations.changed(p[0], p[1], p[2]))
    bus.subscribe("history_cleared", lambda p, _: services.history.forget_cleared(p))
    bus.subscribe("tokens", lambda p, _: services.auth.apply_forget_user(p))
    bus.subscribe("push_rules_changed",
                  lambda p, _: services.push_rules.changed_elsewhere(p))
    bus.subscribe("room_purged", lambda p, _: services.purge.deleted_elsewhere(
        p["room"], set(p["events"]), p["users"]))
    bus.subscribe("media_uploaded", lambda p, _: services.media.uploaded(p))
    bus.subscribe("push_queued", lambda _p, _o: services.pushers.wake.set())
    bus.subscribe("pushers_changed", lambda _p, _o: services.pushers.changed_elsewhere())


def serve_workers(bus: RedisBus, services: Services) -> None:
    """The main process: what workers report."""
    presence = services.presence

    def on_active(user_id: str, _origin: str) -> None:
        task = asyncio.get_running_loop().create_task(presence.user_active(user_id))
        task.add_done_callback(_log_failure)

    bus.subscribe("presence_syncs", lambda users, origin: presence.apply_worker_syncs(
        origin, {str(u): str(s) for u, s in users.items()}))
    bus.subscribe("presence_active", on_active)
    # A worker that starts learns who is typing now.
    bus.subscribe("worker_started", lambda _p, _o: services.typing.publish_all())
    # (``ktchat admin`` on the database: a deactivation, a new password)
    bus.subscribe("tokens", lambda p, _: services.auth.apply_forget_user(p))
    bus.subscribe("media_uploaded", lambda p, _: services.media.uploaded(p))
    bus.subscribe("pushers_changed", lambda _p, _o: services.pushers.changed_elsewhere())


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Applying a worker's report failed", exc_info=task.exception())
