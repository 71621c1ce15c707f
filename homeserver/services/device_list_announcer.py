"""Telling other servers of a local user's key changes (``DeviceListEdus``): an
``m.device_list_update`` per new, changed or deleted device (``prev_id``: the user's device
change before it in the stream; a device signed by its owner's self-signing key is a change
too), an ``m.signing_key_update`` for new master or self-signing keys or a new signature of
the master key; key objects as other servers get them from ``/user/keys/query``.

A change stays unannounced in the stream until its EDUs are queued: a crash or a failure to
queue leaves it for the next start-up, which announces it then (an EDU sent twice changes
nothing for its receiver)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from homeserver.services.local_keys import LocalKeys
from homeserver.services.ports import DeviceListEdus
from storage.stores.e2e_keys import E2EKeyStore

logger = logging.getLogger(__name__)


class DeviceListAnnouncer:
    def __init__(self, store: E2EKeyStore, local_keys: LocalKeys,
                 device_lists: DeviceListEdus | None) -> None:
        self._store = store
        self._keys = local_keys
        self._device_lists = device_lists
        self._left_over: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._left_over = asyncio.get_running_loop().create_task(self._announce_left_over())

    async def stop(self) -> None:
        if self._left_over is not None:
            self._left_over.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._left_over

    async def announce(self, user_id: str, positions: Sequence[int],
                       devices: Sequence[tuple[int, str]] = (), *, deleted: bool = False,
                       signing_keys: bool = False) -> None:
        """The user's changes at ``positions`` are committed: queue an EDU for each of
        ``devices`` ((position, device) in order; ``deleted`` ones), and their cross-signing
        keys when ``signing_keys``, for the servers sharing a room with them; then mark the
        changes announced. A failure to queue is logged, not the client's."""
        edus = await self._device_updates(user_id, devices, deleted=deleted)
        if signing_keys:
            edus += await self._signing_key_update(user_id)
        if self._device_lists is not None and edus:
            try:
                await self._device_lists.device_list_changed(user_id, edus)
            except Exception:
                logger.exception("Queueing %d device-list EDUs for %s failed", len(edus),
                                 user_id)
                return
        await self._store.mark_announced(list(positions))

    async def _announce_left_over(self) -> None:
        """At start-up: the local changes whose EDUs a crash (or a failure) kept from the
        queue are announced now."""
        try:
            left = await self._store.unannounced()
            if self._device_lists is None:
                await self._store.mark_announced([p for p, _, _ in left])
                return
            by_user: dict[str, list[tuple[int, str | None]]] = {}
            for position, user_id, device_id in left:
                by_user.setdefault(user_id, []).append((position, device_id))
            for user_id, changes in by_user.items():
                devices = [(p, d) for p, d in changes if d is not None]
                await self.announce(user_id, [p for p, _ in changes], devices,
                                    signing_keys=len(devices) < len(changes))
            if left:
                logger.info("Announced %d device-list changes left over from before",
                            len(left))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Announcing left-over device-list changes failed")

    async def _device_updates(self, user_id: str, changes: Sequence[tuple[int, str]], *,
                              deleted: bool) -> list[dict[str, Any]]:
        """``m.device_list_update`` EDUs for ``(position, device)`` in order: each names the
        position before it of the user's devices as ``prev_id``, and carries the device's
        keys as other servers get them (with their owner's signatures) unless deleted."""
        if self._device_lists is None or not changes:
            return []
        keys: dict[str, Any] = {}
        if not deleted:
            found = await self._keys.query("", {user_id: {d for _, d in changes}},
                                           display_names=False)
            keys = found["device_keys"].get(user_id, {})
        prev = await self._store.previous_device_change(user_id, changes[0][0])
        out = []
        for position, device_id in changes:
            content: dict[str, Any] = {"user_id": user_id, "device_id": device_id,
                                       "stream_id": position,
                                       "prev_id": [prev] if prev is not None else []}
            if deleted or device_id not in keys:
                # (a device without keys now was deleted since: its own change says so too)
                content["deleted"] = True
            else:
                content["keys"] = keys[device_id]
            out.append({"edu_type": "m.device_list_update", "content": content})
            prev = position
        return out

    async def _signing_key_update(self, user_id: str) -> list[dict[str, Any]]:
        """An ``m.signing_key_update`` EDU with the user's master and self-signing keys as
        other servers get them (the user-signing key is its owner's alone)."""
        if self._device_lists is None:
            return []
        found = await self._keys.query("", {user_id: set()}, display_names=False)
        content: dict[str, Any] = {"user_id": user_id}
        for field, name in (("master_keys", "master_key"),
                            ("self_signing_keys", "self_signing_key")):
            if user_id in found[field]:
                content[name] = found[field][user_id]
        if len(content) == 1:
            return []
        return [{"edu_type": "m.signing_key_update", "content": content}]
