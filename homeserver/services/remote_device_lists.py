"""Other servers' users' device lists, for our clients' ``/keys/query``
(https://spec.matrix.org/v1.19/server-server-api/#device-management).

A remote user who shares a room with a local user is *tracked*: their devices and
cross-signing keys are cached, as Synapse does, so a client's query about them is answered
here. The cache of a tracked user is filled by a resync (``/user/devices/{userId}``: the whole
list and the position in their server's device-list stream it is at), started in the
background by the first query or EDU that finds them uncached. Their server's EDUs keep it
current:

- an ``m.device_list_update`` whose ``prev_id`` is the cached position applies to the cache
  (one device changed or deleted) and moves the position; one already seen changes nothing;
  one that skips a position (we missed an update) drops the entry, and a resync follows;
- an ``m.signing_key_update`` replaces the cached master and self-signing keys.

Users who share no room here are never cached: each query asks their server (one
``/user/keys/query`` per server), and an entry is dropped when its user leaves the last room
shared here, when a query or an EDU finds the user untracked, and by ``sweep`` (run when this
server leaves a room, and at start-up). Of any answer only what was asked is kept: keys of
that server's users, of the devices asked for, objects that name that user and device.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from core.clock import Clock
from core.types import parse_user_id
from homeserver.services.member_cache import MembershipCache
from homeserver.services.notifier import Notifier
from homeserver.services.ports import RemoteKeys, RemoteKeysFailed
from roomserver.api import RoomReader
from storage.stores.remote_device_lists import RemoteDeviceList, RemoteDeviceListStore

logger = logging.getLogger(__name__)

MASTER, SELF_SIGNING = "master", "self_signing"
# Resyncs in flight at once (each is one request to the user's server).
MAX_RESYNCS = 8
RESYNC_TIMEOUT_S = 30.0

Fields = dict[str, dict[str, Any]]
"""``device_keys``, ``master_keys`` and ``self_signing_keys`` of a query answer."""


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _key_object(obj: Any, user_id: str) -> bool:
    return isinstance(obj, dict) and obj.get("user_id") == user_id and \
        isinstance(obj.get("keys"), dict)


def _device_keys(obj: Any, user_id: str, device_id: str) -> bool:
    return _key_object(obj, user_id) and obj.get("device_id") == device_id


def _cross_signing_key(obj: Any, user_id: str, usage: str) -> bool:
    return _key_object(obj, user_id) and isinstance(obj.get("usage"), list) and \
        usage in obj["usage"]


def _stream_id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _named(obj: dict[str, Any], name: Any) -> dict[str, Any]:
    """A device's keys with its display name in ``unsigned`` (if it has a name)."""
    if not isinstance(name, str):
        return obj
    unsigned = obj.get("unsigned")
    return {**obj, "unsigned": {**(unsigned if isinstance(unsigned, dict) else {}),
                                "device_display_name": name}}


def _empty() -> Fields:
    return {"device_keys": {}, "master_keys": {}, "self_signing_keys": {}}


class RemoteDeviceLists:
    def __init__(self, store: RemoteDeviceListStore, members: MembershipCache,
                 rooms: RoomReader, remote: RemoteKeys, notifier: Notifier, clock: Clock,
                 server_name: str) -> None:
        self._store = store
        self._members = members
        self._rooms = rooms
        self._remote = remote
        self._clock = clock
        self._server_name = server_name
        # Resyncs in flight by user (a second ask for one joins it).
        self._resyncing: dict[str, asyncio.Task[None]] = {}
        # Users whose resync in flight must be followed by another.
        self._again: set[str] = set()
        self._stopping = False
        self._limit = asyncio.Semaphore(MAX_RESYNCS)
        self._tasks: set[asyncio.Task[None]] = set()
        notifier.on_left.append(self._left)

    def _spawn(self, job: Any) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        """Drop what was cached of users who left while this process was down."""
        self._spawn(self.sweep())

    async def stop(self) -> None:
        self._stopping = True
        tasks = [*self._tasks, *self._resyncing.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _is_remote(self, user_id: str) -> bool:
        try:
            return parse_user_id(user_id).server_name != self._server_name
        except ValueError:
            return False

    async def tracked(self, user_id: str) -> bool:
        """Whether the user is joined to a room a local user is joined to."""
        return bool(await self._tracked_of([user_id]))

    async def _tracked_of(self, user_ids: list[str]) -> set[str]:
        """Those of the users who are tracked (their memberships in one query at most)."""
        ours: dict[str, bool] = {}
        out = set()
        for user_id, rooms in (await self._members.joined_rooms_of(user_ids)).items():
            for room_id in rooms:
                if room_id not in ours:
                    ours[room_id] = self._server_name in \
                        await self._rooms.joined_servers(room_id)
                if ours[room_id]:
                    out.add(user_id)
                    break
        return out

    # -- queries ---------------------------------------------------------------------------

    async def query(self, server: str, wanted: Mapping[str, list[str]], timeout_s: float
                    ) -> tuple[Fields, RemoteKeysFailed | TimeoutError | None]:
        """The keys of ``server``'s users asked for (user -> device IDs; none: all): tracked
        users' from the cache, the others' asked of ``server``. Returns what is known and,
        if ``server`` gave no answer, the failure (the cached part still counts)."""
        users = list(wanted)
        tracked = await self._tracked_of(users)
        cached = await self._store.get(users)
        untracked = [u for u in cached if u not in tracked]
        if untracked:
            await self._store.drop(untracked)
            for user_id in untracked:
                del cached[user_id]
        out = _empty()
        for user_id, entry in cached.items():
            self._from_cache(out, user_id, entry, set(wanted[user_id]))
        rest = {u: wanted[u] for u in users if u not in cached}
        for user_id in rest:
            if user_id in tracked:
                self.resync_soon(user_id)
        if not rest:
            return out, None
        try:
            async with asyncio.timeout(timeout_s + 1):
                answer = await self._remote.query(server, {"device_keys": rest}, timeout_s)
        except (RemoteKeysFailed, TimeoutError) as e:
            return out, e
        if not isinstance(answer, dict):
            return out, RemoteKeysFailed(502, f"{server} answered with something else than "
                                              "keys")
        self._from_answer(out, answer, rest)
        return out, None

    @staticmethod
    def _from_cache(out: Fields, user_id: str, entry: RemoteDeviceList, only: set[str]) -> None:
        out["device_keys"][user_id] = {d: json.loads(k) for d, k in entry.devices.items()
                                       if not only or d in only}
        if entry.master_key is not None:
            out["master_keys"][user_id] = json.loads(entry.master_key)
        if entry.self_signing_key is not None:
            out["self_signing_keys"][user_id] = json.loads(entry.self_signing_key)

    @staticmethod
    def _from_answer(out: Fields, answer: Mapping[str, Any], wanted: Mapping[str, list[str]]
                     ) -> None:
        devices = answer.get("device_keys")
        for user_id, device_ids in wanted.items():
            got = devices.get(user_id) if isinstance(devices, dict) else None
            if not isinstance(got, dict):
                continue
            only = set(device_ids)
            out["device_keys"][user_id] = {
                device_id: obj for device_id, obj in got.items()
                if (not only or device_id in only) and _device_keys(obj, user_id, device_id)}
        for usage, field in ((MASTER, "master_keys"), (SELF_SIGNING, "self_signing_keys")):
            keys = answer.get(field)
            if not isinstance(keys, dict):
                continue
            for user_id in wanted:
                if _cross_signing_key(keys.get(user_id), user_id, usage):
                    out[field][user_id] = keys[user_id]

    # -- resync ----------------------------------------------------------------------------

    def resync_soon(self, user_id: str) -> None:
        """Fetch the user's whole device list in the background. If a resync is in flight
        already, another follows it: its answer may predate the change that asks."""
        if self._stopping:
            return
        if user_id in self._resyncing:
            self._again.add(user_id)
            return
        task = asyncio.get_running_loop().create_task(self._resync(user_id))
        self._resyncing[user_id] = task
        task.add_done_callback(lambda _: self._resync_done(user_id))

    def _resync_done(self, user_id: str) -> None:
        self._resyncing.pop(user_id, None)
        if user_id in self._again:
            self._again.discard(user_id)
            self.resync_soon(user_id)

    async def resynced(self, user_id: str) -> None:
        """Wait for the user's resync in flight, if any (tests, and a caller that must see
        its result)."""
        task = self._resyncing.get(user_id)
        if task is not None:
            await asyncio.shield(task)

    async def _resync(self, user_id: str) -> None:
        server = parse_user_id(user_id).server_name
        try:
            async with self._limit, asyncio.timeout(RESYNC_TIMEOUT_S):
                answer = await self._remote.devices(server, user_id, RESYNC_TIMEOUT_S)
                entry = self._entry(answer, user_id)
                if entry is None:
                    logger.info("%s answered /user/devices for %s with no usable device list",
                                server, user_id)
                    return
                if not await self.tracked(user_id):
                    return
                await self._store.replace(user_id, entry, self._clock.time_ms())
        except (RemoteKeysFailed, TimeoutError) as e:
            logger.info("Could not resync the device list of %s: %s", user_id, e)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Resyncing the device list of %s failed", user_id)

    @staticmethod
    def _entry(answer: Any, user_id: str) -> RemoteDeviceList | None:
        """The cache entry of a ``/user/devices`` answer (None if it is not one for this
        user): devices with valid keys (their display name in ``unsigned``, as Synapse)."""
        if not isinstance(answer, dict) or answer.get("user_id") != user_id:
            return None
        stream_id = _stream_id(answer.get("stream_id"))
        devices = answer.get("devices")
        if stream_id is None or not isinstance(devices, list):
            return None
        keys: dict[str, str] = {}
        for device in devices:
            if not isinstance(device, dict):
                continue
            device_id = device.get("device_id")
            obj = device.get("keys")
            if not isinstance(device_id, str) or not _device_keys(obj, user_id, device_id):
                continue
            assert isinstance(obj, dict)
            keys[device_id] = _canonical(_named(obj, device.get("device_display_name")))
        cross = {}
        for usage, field in ((MASTER, "master_key"), (SELF_SIGNING, "self_signing_key")):
            obj = answer.get(field)
            cross[usage] = _canonical(obj) if _cross_signing_key(obj, user_id, usage) else None
        return RemoteDeviceList(stream_id, keys, cross[MASTER], cross[SELF_SIGNING])

    # -- EDUs ------------------------------------------------------------------------------

    async def device_updated(self, user_id: str, content: Mapping[str, Any]) -> None:
        """An ``m.device_list_update`` about a tracked user (the caller checked its user,
        ``device_id`` and ``stream_id``)."""
        entry = (await self._store.get([user_id])).get(user_id)
        if entry is None:
            self.resync_soon(user_id)
            return
        stream_id = int(content["stream_id"])
        if stream_id <= entry.stream_id:
            return  # seen already (or a resync brought it)
        device_id = str(content["device_id"])
        prev_ids = content.get("prev_id")
        follows = isinstance(prev_ids, list) and prev_ids and \
            all(_stream_id(p) == entry.stream_id for p in prev_ids)
        keys = content.get("keys")
        deleted = content.get("deleted") is True
        if follows and (deleted or _device_keys(keys, user_id, device_id)):
            key_json = None if deleted or not isinstance(keys, dict) else \
                _canonical(_named(keys, content.get("device_display_name")))
            if await self._store.apply(user_id, entry.stream_id, stream_id, device_id,
                                       key_json):
                return
        # A gap (or an update that cannot be applied): what is cached may be stale.
        logger.info("Device list of %s: update %d does not follow %d; resyncing", user_id,
                    stream_id, entry.stream_id)
        await self._store.drop([user_id])
        self.resync_soon(user_id)

    async def signing_keys_updated(self, user_id: str, content: Mapping[str, Any]) -> None:
        """An ``m.signing_key_update`` about a tracked user."""
        master = content.get("master_key")
        self_signing = content.get("self_signing_key")
        changed = await self._store.set_cross_signing(
            user_id,
            _canonical(master) if _cross_signing_key(master, user_id, MASTER) else None,
            _canonical(self_signing)
            if _cross_signing_key(self_signing, user_id, SELF_SIGNING) else None)
        if not changed and not (await self._store.get([user_id])):
            self.resync_soon(user_id)

    # -- dropping --------------------------------------------------------------------------

    def _left(self, room_id: str, user_id: str) -> None:
        """The notifier's: a membership ended. A remote user may share no room here now;
        after a local user's, this server may have left the room."""
        if self._is_remote(user_id):
            self._spawn(self._drop_if_untracked([user_id]))
        else:
            self._spawn(self._after_local_leave(room_id))

    async def _after_local_leave(self, room_id: str) -> None:
        if self._server_name not in await self._rooms.joined_servers(room_id):
            await self.sweep()

    async def _drop_if_untracked(self, user_ids: list[str]) -> None:
        try:
            tracked = await self._tracked_of(user_ids)
            gone = [u for u in user_ids if u not in tracked]
            if gone:
                await self._store.drop(gone)
        except Exception:
            logger.exception("Dropping cached device lists failed")

    async def forget(self, user_id: str) -> None:
        """Drop the user's entry (an EDU came about a user no longer tracked)."""
        await self._store.drop([user_id])

    async def sweep(self) -> None:
        """Drop the entries of every user who shares no room here any more."""
        await self._drop_if_untracked(await self._store.cached_users())
