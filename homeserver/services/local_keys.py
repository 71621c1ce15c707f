"""This server's users' keys as others get them: ``/keys/query`` for local users, the
federation ``/user/keys/query`` and ``/user/devices`` answers, and the key objects of the
device-list EDUs. Each key object carries the uploaded signatures over it; another user's
signature only for that signer (a user-signing key's verdicts are its owner's), and a
user-signing key goes to its owner alone."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from homeserver.services.key_requests import single_key
from storage.stores.e2e_keys import E2EKeyStore, QueryResult

MASTER, SELF_SIGNING, USER_SIGNING = "master", "self_signing", "user_signing"


class LocalKeys:
    def __init__(self, store: E2EKeyStore) -> None:
        self._store = store

    async def query(self, requester: str, local: Mapping[str, set[str] | None], *,
                    display_names: bool) -> dict[str, Any]:
        """The keys of ``local`` (user -> their devices asked for, None for all) as
        ``requester`` ("" for another server) may see them, in /keys/query's shape."""
        found = await self._store.query(sorted(local))
        out: dict[str, Any] = {"device_keys": {u: {} for u in local}, "failures": {},
                               "master_keys": {}, "self_signing_keys": {},
                               "user_signing_keys": {}}
        for device in found.devices:
            only = local.get(device.user_id)
            if only is not None and device.device_id not in only:
                continue
            obj = json.loads(device.key_json)
            merge_signatures(obj, found, device.user_id, device.device_id, requester)
            if display_names:
                unsigned = dict(obj.get("unsigned") or {})
                if device.display_name is not None:
                    unsigned["device_display_name"] = device.display_name
                obj["unsigned"] = unsigned
            out["device_keys"][device.user_id][device.device_id] = obj
        for user_id, keys in found.cross_signing.items():
            for usage, field in ((MASTER, "master_keys"), (SELF_SIGNING, "self_signing_keys"),
                                 (USER_SIGNING, "user_signing_keys")):
                if usage not in keys or (usage == USER_SIGNING and user_id != requester):
                    continue
                obj = json.loads(keys[usage])
                _, public = single_key(obj, usage)
                merge_signatures(obj, found, user_id, public, requester)
                out[field][user_id] = obj
        return out

    async def user_devices(self, user_id: str) -> dict[str, Any]:
        """GET /_matrix/federation/v1/user/devices/{userId} for a local user, but for the
        device list itself: ``stream_id``, each device's ``keys`` (device ID -> key
        object, those with keys), ``master_key`` and ``self_signing_key`` when there are."""
        # The position first: a change between the two reads is then in the devices and
        # also comes as an EDU after this position (applying it twice is harmless; the other
        # order would hide it behind a position the cache already has).
        stream_id = await self._store.latest_device_change(user_id)
        found = await self._store.query([user_id])
        out: dict[str, Any] = {"stream_id": stream_id, "keys": {}}
        for device in found.devices:
            obj = json.loads(device.key_json)
            merge_signatures(obj, found, user_id, device.device_id, "")
            out["keys"][device.device_id] = obj
        keys = found.cross_signing.get(user_id, {})
        for usage, field in ((MASTER, "master_key"), (SELF_SIGNING, "self_signing_key")):
            if usage in keys:
                obj = json.loads(keys[usage])
                merge_signatures(obj, found, user_id, single_key(obj, usage)[1], "")
                out[field] = obj
        return out


def merge_signatures(obj: dict[str, Any], found: QueryResult, user_id: str,
                     target_key_id: str, requester: str) -> None:
    """Add the uploaded signatures over a key object (another user's signatures of it only
    for that signer: a user-signing key's verdicts are its owner's)."""
    for signer, signer_key, signature in found.signatures.get((user_id, target_key_id), ()):
        if signer != user_id and signer != requester:
            continue
        obj.setdefault("signatures", {}).setdefault(signer, {})[signer_key] = signature
