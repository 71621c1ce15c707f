"""Pushers (https://spec.matrix.org/v1.19/client-server-api/#push-notifications) and the
delivery of notifications to ``http`` pushers' push gateways
(https://spec.matrix.org/v1.19/push-gateway-api/).

Pushes wait in a table (``push_queue``, written with the evaluation results) until their
gateway takes them, so a gateway that is down or a restart loses nothing: a failed push is
retried after ``RETRY_INITIAL_S``, doubling up to ``RETRY_MAX_S``, and dropped after
``GIVE_UP_AFTER_MS`` (as Synapse, a day). A gateway that lists a pushkey in ``rejected``
ends that pusher. The gateway client (outbound HTTP under the server's IP range policy) is
given by the composition root.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from core.clock import Clock
from core.errors import InvalidParam, MissingParam
from homeserver.services.ports import ALONE, Replication
from storage.stores.events import EventStore
from storage.stores.push import Pusher, PushStore, QueuedPush

logger = logging.getLogger(__name__)

NOTIFY_PATH = "/_matrix/push/v1/notify"
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 3600.0
GIVE_UP_AFTER_MS = 24 * 3600 * 1000
BATCH = 100


class PushGatewayError(Exception):
    """The gateway could not be reached or did not accept the push (retry later)."""


class PushGateway(Protocol):
    async def notify(self, url: str, body: Mapping[str, Any]) -> list[str]:
        """POST ``body`` to ``url``; returns the pushkeys the gateway rejected.

        Raises:
            PushGatewayError: no usable answer (retry later).
        """
        ...

    async def close(self) -> None: ...


# Room -> (room name, canonical alias, local member -> display name); user -> unread badge.
RoomDetails = Callable[[str], Awaitable[tuple[str | None, str | None, dict[str, str]]]]
Badge = Callable[[str], Awaitable[int]]


def _check_str(body: Mapping[str, Any], key: str, max_len: int | None = None) -> str:
    value = body[key]
    if not isinstance(value, str) or (max_len is not None and len(value.encode()) > max_len):
        raise InvalidParam(f"'{key}' must be a string"
                           + (f" of at most {max_len} bytes" if max_len else ""))
    return value


class PusherService:
    """Users' pushers (kept in memory: they are few, and evaluation asks for every
    notification)."""

    def __init__(self, store: PushStore, clock: Clock, *, delivers: bool = True,
                 replication: Replication = ALONE) -> None:
        """``replication``: the other processes hear of new pushes (a push worker delivers
        them) and of changed pushers (each keeps them in memory)."""
        self._store = store
        self._replication = replication
        self._clock = clock
        self._delivers = delivers
        self._by_user: dict[str, list[Pusher]] = {}
        self.wake = asyncio.Event()

    async def start(self) -> None:
        self._by_user.clear()
        for pusher in await self._store.all_pushers():
            self._by_user.setdefault(pusher.user_id, []).append(pusher)

    def pushers_of(self, user_id: str) -> list[Pusher]:
        """The user's http pushers (pushes are queued for them; none when push is off)."""
        if not self._delivers:
            return []
        return [p for p in self._by_user.get(user_id, ()) if p.kind == "http"]

    def pusher(self, user_id: str, app_id: str, pushkey: str) -> Pusher | None:
        return next((p for p in self._by_user.get(user_id, ())
                     if (p.app_id, p.pushkey) == (app_id, pushkey)), None)

    def queued(self) -> None:
        """New pushes are in the queue (wakes the delivery)."""
        self._replication.publish("push_queued", None)
        self.wake.set()

    def changed_elsewhere(self) -> None:
        """Another process changed pushers: read them again."""
        task = asyncio.get_running_loop().create_task(self.start())
        task.add_done_callback(_log_failure)

    # -- the API ----------------------------------------------------------------------------

    def get_pushers(self, user_id: str) -> list[dict[str, Any]]:
        """GET /pushers"""
        out = []
        for p in self._by_user.get(user_id, ()):
            shown: dict[str, Any] = {
                "pushkey": p.pushkey, "kind": p.kind, "app_id": p.app_id,
                "app_display_name": p.app_display_name,
                "device_display_name": p.device_display_name, "lang": p.lang,
                "data": p.data}
            if p.profile_tag is not None:
                shown["profile_tag"] = p.profile_tag
            out.append(shown)
        return out

    async def set_pusher(self, user_id: str, body: Mapping[str, Any]) -> None:
        """POST /pushers/set"""
        missing = [k for k in ("kind", "app_id", "pushkey") if k not in body]
        if missing:
            raise MissingParam(f"Missing parameters: {', '.join(missing)}")
        app_id = _check_str(body, "app_id", 64)
        pushkey = _check_str(body, "pushkey", 512)
        kind = body["kind"]
        if kind is None:
            await self._store.delete_pushers([(user_id, app_id, pushkey)])
            self.forget([(user_id, app_id, pushkey)])
            return
        missing = [k for k in ("app_display_name", "device_display_name", "lang", "data")
                   if k not in body]
        if missing:
            raise MissingParam(f"Missing parameters: {', '.join(missing)}")
        if kind != "http":
            raise InvalidParam("Only 'http' pushers are supported")
        data = body["data"]
        if not isinstance(data, dict):
            raise InvalidParam("'data' must be an object")
        url = data.get("url")
        if not isinstance(url, str):
            raise MissingParam("An http pusher needs 'data.url'")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname \
                or parts.path != NOTIFY_PATH:
            raise InvalidParam(f"'data.url' must be an http(s) URL with the path {NOTIFY_PATH}")
        if "format" in data and data["format"] != "event_id_only":
            raise InvalidParam("'data.format' must be 'event_id_only' when given")
        profile_tag = body.get("profile_tag")
        if profile_tag is not None and not isinstance(profile_tag, str):
            raise InvalidParam("'profile_tag' must be a string")
        append = body.get("append", False)
        if not isinstance(append, bool):
            raise InvalidParam("'append' must be a boolean")
        pusher = Pusher(user_id, app_id, pushkey, kind,
                        _check_str(body, "app_display_name"),
                        _check_str(body, "device_display_name"), profile_tag,
                        _check_str(body, "lang"), dict(data), self._clock.time_ms() // 1000)
        removed = await self._store.set_pusher(pusher, append=append)
        self.forget([(p.user_id, p.app_id, p.pushkey) for p in removed]
                     + [(user_id, app_id, pushkey)])
        self._by_user.setdefault(user_id, []).append(pusher)
        self._replication.publish("pushers_changed", user_id)

    def forget(self, keys: list[tuple[str, str, str]]) -> None:
        if keys:
            self._replication.publish("pushers_changed", keys[0][0])
        for user_id, app_id, pushkey in keys:
            mine = [p for p in self._by_user.get(user_id, ())
                    if (p.app_id, p.pushkey) != (app_id, pushkey)]
            if mine:
                self._by_user[user_id] = mine
            else:
                self._by_user.pop(user_id, None)

    async def delete_all(self, user_id: str) -> None:
        """A user's pushers go (deactivation)."""
        mine = self._by_user.pop(user_id, [])
        await self._store.delete_pushers([(user_id, p.app_id, p.pushkey) for p in mine])
        self._replication.publish("pushers_changed", user_id)



class PushDelivery:
    """Sends the queued pushes to their gateways (see the module docstring)."""

    def __init__(self, store: PushStore, events: EventStore, pushers: PusherService,
                 gateway: PushGateway, room_details: RoomDetails, badge: Badge, clock: Clock,
                 *, include_content: bool = True) -> None:
        self._store = store
        self._events = events
        self._pushers = pushers
        self._gateway = gateway
        self._room_details = room_details
        self._badge = badge
        self._clock = clock
        self._include_content = include_content
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._deliver_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _deliver_loop(self) -> None:
        while True:
            # Cleared before looking at the queue: a push queued meanwhile wakes the wait.
            self._pushers.wake.clear()
            try:
                delivered = await self.deliver_due()
                next_due = None if delivered else await self._store.next_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Push delivery failed")
                delivered, next_due = 0, self._clock.time_ms() + int(RETRY_INITIAL_S * 1000)
            if delivered:
                continue
            wait = RETRY_MAX_S if next_due is None else \
                max(0.05, (next_due - self._clock.time_ms()) / 1000)
            try:
                async with asyncio.timeout(wait):
                    await self._pushers.wake.wait()
            except TimeoutError:
                pass

    async def deliver_due(self) -> int:
        """Send what is due; returns how many pushes were settled (sent or dropped)."""
        now = self._clock.time_ms()
        due = await self._store.due(now, BATCH)
        if not due:
            return 0
        events = await self._events.get_events({q.event_id for q in due})
        settled: list[int] = []
        rejected: list[tuple[str, str, str]] = []
        for push in due:
            pusher = self._pushers.pusher(push.user_id, push.app_id, push.pushkey)
            event = events.get(push.event_id)
            if pusher is None or event is None or now - push.created_ts > GIVE_UP_AFTER_MS:
                settled.append(push.id)
                continue
            body = await self._body(push, pusher, event.pdu)
            url = str(pusher.data.get("url"))
            try:
                refused = await self._gateway.notify(url, body)
            except PushGatewayError as e:
                delay = min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** push.attempts)
                logger.info("Push to %s failed (%s); retrying in %.0f s",
                            urlsplit(url).hostname, e, delay)
                await self._store.retry_later([push.id], push.attempts + 1,
                                              now + int(delay * 1000))
                continue
            settled.append(push.id)
            if pusher.pushkey in refused:
                rejected.append((pusher.user_id, pusher.app_id, pusher.pushkey))
        await self._store.done(settled)
        if rejected:
            logger.info("Push gateway rejected %d pushkey(s): removing those pushers",
                        len(rejected))
            await self._store.delete_pushers(rejected)
            self._pushers.forget(rejected)
        return len(settled)

    async def _body(self, push: QueuedPush, pusher: Pusher, pdu: Mapping[str, Any]
                    ) -> dict[str, Any]:
        tweaks: dict[str, Any] = {}
        for action in push.actions:
            if isinstance(action, dict) and isinstance(action.get("set_tweak"), str):
                tweaks[action["set_tweak"]] = action.get("value", True)
        data = {k: v for k, v in pusher.data.items() if k != "url"}
        device = {"app_id": pusher.app_id, "pushkey": pusher.pushkey,
                  "pushkey_ts": pusher.pushkey_ts, "data": data, "tweaks": tweaks}
        unread = await self._badge(push.user_id)
        counts = {"unread": unread} if unread else {}
        prio = "high" if pdu.get("type") == "m.room.encrypted" or tweaks.get("highlight") \
            or tweaks.get("sound") else "low"
        notification: dict[str, Any] = {"event_id": push.event_id, "room_id": push.room_id,
                                        "counts": counts, "devices": [device], "prio": prio}
        if pusher.data.get("format") != "event_id_only":
            room_name, room_alias, names = await self._room_details(push.room_id)
            sender = str(pdu.get("sender"))
            notification.update({"type": pdu.get("type"), "sender": sender})
            if sender in names:
                notification["sender_display_name"] = names[sender]
            if room_name:
                notification["room_name"] = room_name
            if room_alias:
                notification["room_alias"] = room_alias
            if pdu.get("type") == "m.room.member":
                notification["user_is_target"] = pdu.get("state_key") == push.user_id
            if self._include_content and isinstance(pdu.get("content"), dict):
                notification["content"] = pdu["content"]
        return {"notification": notification}


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Reading pushers failed", exc_info=task.exception())
