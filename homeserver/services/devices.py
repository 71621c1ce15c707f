"""A user's devices: list, look up, rename, delete."""

from __future__ import annotations

from core.errors import NotFound
from homeserver.services.auth import AuthService
from storage.stores.devices import Device as Device  # the record routes return
from storage.stores.devices import DeviceStore


class DeviceService:
    def __init__(self, store: DeviceStore, auth: AuthService) -> None:
        self._store = store
        self._auth = auth

    async def list_devices(self, user_id: str) -> list[Device]:
        return await self._store.get_devices(user_id)

    async def get_device(self, user_id: str, device_id: str) -> Device:
        device = await self._store.get_device(user_id, device_id)
        if device is None:
            raise NotFound("No device found")
        return device

    async def rename(self, user_id: str, device_id: str, display_name: str | None) -> None:
        if not await self._store.set_display_name(user_id, device_id, display_name):
            raise NotFound("No device found")

    async def delete(self, user_id: str, device_ids: list[str]) -> None:
        """Delete devices and end their sessions (unknown IDs are ignored, as in the spec)."""
        await self._auth.delete_devices(user_id, device_ids)
