"""Dehydrated devices (MSC3814, ``/_matrix/client/unstable/org.matrix.msc3814.v1``), as
Element X and other matrix-rust-sdk clients use them.

A user keeps at most one dehydrated device: a device with no session, whose keys are
uploaded like any device's (others encrypt to it while every real device of the user is
offline) and whose account, encrypted by the client (``device_data``: opaque here), a new
login fetches to read the to-device messages that came for it. Putting a new one deletes
the one before (its keys and messages go, and those who share a room hear of it, as for any
deleted device). As in Synapse, ``device_keys`` must come with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from core.clock import Clock
from core.errors import BadJson, Forbidden, InvalidParam, MissingParam, NotFound
from core.types import MAX_IDENTIFIER_BYTES, byte_length
from homeserver.services.auth import AuthService
from homeserver.services.e2e_keys import E2EKeyService
from homeserver.services.to_device import ToDeviceService
from storage.stores.devices import DeviceStore

# Messages per page of /dehydrated_device/{deviceId}/events (Synapse's default; at most).
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _batch(token: Any) -> int:
    """The position of a ``next_batch`` we gave (``d<position>``)."""
    if not isinstance(token, str) or not token.startswith("d") or not token[1:].isdigit():
        raise InvalidParam("next_batch is not one this server gave")
    return int(token[1:])


class DehydratedDeviceService:
    def __init__(self, devices: DeviceStore, auth: AuthService, keys: E2EKeyService,
                 to_device: ToDeviceService, clock: Clock) -> None:
        self._devices = devices
        self._auth = auth
        self._keys = keys
        self._to_device = to_device
        self._clock = clock

    async def put(self, user_id: str, body: Mapping[str, Any]) -> str:
        """PUT /dehydrated_device: the user's new dehydrated device, with its keys."""
        device_id = body.get("device_id")
        if device_id is None:
            raise MissingParam("Missing parameter: device_id")
        if not isinstance(device_id, str) or not device_id or \
                byte_length(device_id) > MAX_IDENTIFIER_BYTES:
            raise InvalidParam("device_id must be a non-empty string")
        data = body.get("device_data")
        if data is None:
            raise MissingParam("Missing parameter: device_data")
        if not isinstance(data, dict) or not isinstance(data.get("algorithm"), str):
            raise BadJson("device_data must be an object with an algorithm")
        name = body.get("initial_device_display_name")
        if name is not None and not isinstance(name, str):
            raise BadJson("initial_device_display_name must be a string")
        if "device_keys" not in body:
            raise MissingParam("Device keys must be provided")
        old = await self._devices.get_dehydrated(user_id)
        if old is not None:
            await self._auth.delete_devices(user_id, [old[0]])
        if not await self._devices.create_dehydrated(
                user_id, device_id, name, json.dumps(data, ensure_ascii=False),
                self._clock.time_ms()):
            raise InvalidParam("The user has a device of that ID already")
        keys = {k: body[k] for k in ("device_keys", "one_time_keys", "fallback_keys")
                if k in body}
        try:
            await self._keys.upload(user_id, device_id, keys)
        except BaseException:
            # Keys refused: no dehydrated device without them.
            await self._auth.delete_devices(user_id, [device_id])
            raise
        return device_id

    async def get(self, user_id: str) -> dict[str, Any]:
        """GET /dehydrated_device"""
        found = await self._devices.get_dehydrated(user_id)
        if found is None:
            raise NotFound("No dehydrated device available")
        return {"device_id": found[0], "device_data": json.loads(found[1])}

    async def delete(self, user_id: str) -> str:
        """DELETE /dehydrated_device"""
        found = await self._devices.get_dehydrated(user_id)
        if found is None:
            raise NotFound("No dehydrated device available")
        await self._auth.delete_devices(user_id, [found[0]])
        return found[0]

    async def events(self, user_id: str, device_id: str, body: Mapping[str, Any],
                     limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
        """POST /dehydrated_device/{deviceId}/events: a page of the to-device messages that
        came for the dehydrated device; ``next_batch`` of the page before acknowledges it
        (its messages are deleted)."""
        found = await self._devices.get_dehydrated(user_id)
        if found is None or found[0] != device_id:
            raise Forbidden("You may only fetch messages for your dehydrated device")
        after = 0
        if body.get("next_batch") is not None:
            after = _batch(body["next_batch"])
            await self._to_device.acknowledge(user_id, device_id, after)
        events, position = await self._to_device.page(user_id, device_id, after=after,
                                                      limit=min(limit, MAX_LIMIT))
        return {"events": events, "next_batch": f"d{position}"}
