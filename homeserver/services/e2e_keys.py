"""End-to-end encryption keys
(https://spec.matrix.org/v1.19/client-server-api/#end-to-end-encryption), on this server:
device keys and one-time and fallback keys (/keys/upload, /keys/query, /keys/claim),
cross-signing keys and signatures (/keys/device_signing/upload, /keys/signatures/upload), and
the device lists of /sync and /keys/changes.

A change of a user's devices or cross-signing keys is a position in the device-list stream;
it wakes the syncs of everyone who shares a room with the user. A syncing user hears of
(``device_lists.changed``) the users sharing a room with them whose keys changed, and of
users who start sharing a room with them; of users who no longer share one, in ``left``.

Other servers' users' keys come from ``RemoteDeviceLists``: cached for users who share a
room here, asked of their servers for the others (one request per server, side by side,
within the client's ``timeout``: 10 s unless it says otherwise, as Synapse); a server that
gives no answer is in ``failures``. One-time keys are always claimed from their servers.
Without federation other servers' users are left out. Keys are never logged.

Other servers sharing a room with a local user are told of each change of theirs by the
``DeviceListAnnouncer``; local keys are read as others see them by ``LocalKeys``. Other
servers' EDUs about their users are changes in our stream (``remote_device_list_changed``),
and keep their cached lists current.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from cachetools import LRUCache

from core.clock import Clock
from core.errors import BadJson, InvalidParam, MatrixError, MissingParam
from core.types import parse_user_id
from homeserver.services.device_list_announcer import DeviceListAnnouncer
from homeserver.services.key_requests import (
    canonical,
    check_key_object,
    failure_of,
    new_keys,
    remote_timeout_s,
    single_key,
    verify,
    wanted_devices,
    wanted_keys,
)
from homeserver.services.local_keys import MASTER, SELF_SIGNING, USER_SIGNING, LocalKeys
from homeserver.services.member_cache import MembershipCache
from homeserver.services.notifier import Notifier
from homeserver.services.ports import ALONE, RemoteKeys, RemoteKeysFailed, Replication
from homeserver.services.remote_device_lists import RemoteDeviceLists
from homeserver.services.sync_token import SyncToken
from storage.stores.e2e_keys import (
    E2EKeyStore,
    KeyConflict,
    QueryResult,
    Signature,
    Wanted,
)
from storage.stores.sync import SyncStore

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Device-list changes remembered in memory (older positions ask the database).
RECENT_CHANGES = 10_000
# Devices whose key counts are kept in memory (every sync response carries them).
COUNTED_DEVICES = 50_000


def _with_default(counts: dict[str, int]) -> dict[str, int]:
    """signed_curve25519 is always counted (as Synapse does: some clients need it)."""
    return {"signed_curve25519": 0, **counts}


class E2EKeyService:
    def __init__(self, store: E2EKeyStore, sync_store: SyncStore, members: MembershipCache,
                 notifier: Notifier, clock: Clock, server_name: str, local_keys: LocalKeys,
                 announcer: DeviceListAnnouncer, *,
                 remote: RemoteKeys | None = None,
                 remote_lists: RemoteDeviceLists | None = None,
                 replication: Replication = ALONE) -> None:
        self._replication = replication
        self._store = store
        self._remote = remote
        self._remote_lists = remote_lists
        self._keys = local_keys
        self._announcer = announcer
        self._sync = sync_store
        self._members = members
        self._notifier = notifier
        self._clock = clock
        self._server_name = server_name
        # (position, user) of the device-list changes since start-up, the latest last.
        self._recent: deque[tuple[int, str]] = deque(maxlen=RECENT_CHANGES)
        self._start = 0
        # (user, device) -> (one-time key counts, unused fallback algorithms), as stored;
        # dropped when a write changes them. A read that a write overtook is not kept: the
        # generation counts the writes.
        self._counts: LRUCache[tuple[str, str], tuple[dict[str, int], list[str]]] = \
            LRUCache(COUNTED_DEVICES)
        self._generation = 0

    def start(self) -> None:
        self._start = self._store.position
        self._recent.clear()
        self._announcer.start()
        if self._remote_lists is not None:
            self._remote_lists.start()

    async def stop(self) -> None:
        await self._announcer.stop()
        if self._remote_lists is not None:
            await self._remote_lists.stop()

    @property
    def position(self) -> int:
        return self._store.position

    def _by_server(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        """Other servers' users (well-formed IDs) by server; none without federation."""
        out: dict[str, list[str]] = {}
        if self._remote is None or self._remote_lists is None:
            return out
        for user_id in user_ids:
            try:
                server = parse_user_id(user_id).server_name
            except ValueError:
                continue
            if server != self._server_name:
                out.setdefault(server, []).append(user_id)
        return out

    def _is_local(self, user_id: str) -> bool:
        try:
            return parse_user_id(user_id).server_name == self._server_name
        except ValueError:
            return False

    async def _changed(self, changes: Iterable[tuple[int, str]]) -> None:
        """Device-list changes committed: remember them and wake everyone who shares a
        room with their users."""
        changes = list(changes)
        self._replication.publish("device_lists", changes)
        users = self.apply_replicated_changes(changes)
        rooms: set[str] = set()
        for user_id in users:
            rooms |= await self._members.joined_rooms(user_id)
        self._notifier.wake(room_ids=rooms, user_ids=users)

    def apply_replicated_changes(self, changes: Iterable[tuple[int, str]]) -> set[str]:
        """Device-list changes committed (here, or by the process that writes them), as
        (position, user); returns the users."""
        users: set[str] = set()
        for position, user_id in changes:
            self._recent.append((position, user_id))
            users.add(user_id)
        return users

    def apply_replicated_counts(self, devices: Iterable[tuple[str, str]]) -> None:
        """Another process changed these devices' one-time or fallback keys."""
        self._generation += 1
        for user_id, device_id in devices:
            self._counts.pop((user_id, device_id), None)

    async def remote_device_list_changed(self, origin: str, user_id: str,
                                         device_id: str | None,
                                         content: Mapping[str, Any]) -> None:
        """Another server (``origin``, the user's: the caller checked) says its user's
        devices or cross-signing keys changed (an ``m.device_list_update`` or
        ``m.signing_key_update`` EDU, ``content``; ``device_id`` None for cross-signing
        keys): their cached list follows, and it is a change in the device-list stream, so
        the syncs of local users sharing a room with them report them in
        ``device_lists.changed``. Of a user who shares no room here nothing is kept."""
        if self._remote_lists is None:
            return
        if not await self._remote_lists.tracked(user_id):
            logger.info("%s sent a device-list update for %s, who shares no room here",
                        origin, user_id)
            await self._remote_lists.forget(user_id)
            return
        if device_id is None:
            await self._remote_lists.signing_keys_updated(user_id, content)
        else:
            await self._remote_lists.device_updated(user_id, content)
        position = await self._store.record_changes([(user_id, device_id)],
                                                    self._clock.time_ms())
        if position is not None:
            await self._changed([(position, user_id)])

    # -- upload ----------------------------------------------------------------------------

    async def upload(self, user_id: str, device_id: str, body: Mapping[str, Any]
                     ) -> dict[str, int]:
        """POST /keys/upload: the one-time key counts per algorithm."""
        keys_json = None
        device_keys = body.get("device_keys")
        if device_keys is not None:
            check_key_object(device_keys, "device_keys")
            if device_keys.get("user_id") != user_id or device_keys.get("device_id") != device_id:
                raise InvalidParam("device_keys must be for the requesting user and device")
            if not isinstance(device_keys.get("keys"), dict) or not isinstance(
                    device_keys.get("algorithms"), list):
                raise BadJson("device_keys needs 'keys' (an object) and 'algorithms' (a list)")
            keys_json = canonical(device_keys)
            old = await self._store.device_keys(user_id, device_id)
            if old is not None:
                if json.loads(old).get("keys") != device_keys["keys"]:
                    raise InvalidParam("This device's identity keys are already uploaded; "
                                       "they cannot be replaced by different ones")
                if old == keys_json:
                    keys_json = None  # the same again: nothing changed
        one_time = new_keys(body, "one_time_keys")
        fallback = new_keys(body, "fallback_keys")
        if len({a for a, _, _ in fallback}) != len(fallback):
            raise InvalidParam("At most one fallback key per algorithm")
        self._forget_counts([(user_id, device_id)])
        try:
            counts, position = await self._store.upload(
                user_id, device_id, keys_json=keys_json, one_time=one_time,
                fallback=fallback, now=self._clock.time_ms())
        except KeyConflict as e:
            raise InvalidParam(f"One-time key {str(e)[:300]} already exists with a "
                               "different value") from None
        finally:
            self._forget_counts([(user_id, device_id)])
        if position is not None:
            await self._changed([(position, user_id)])
            await self._announcer.announce(user_id, [position], [(position, device_id)])
        return _with_default(counts)

    # -- query -----------------------------------------------------------------------------

    async def query(self, requester: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /keys/query"""
        wanted = wanted_devices(body)
        timeout_s = remote_timeout_s(body)
        local = {u: set(d) or None for u, d in wanted.items() if self._is_local(u)}

        async def ask(server: str, users: list[str]
                      ) -> tuple[dict[str, dict[str, Any]], Exception | None]:
            assert self._remote_lists is not None
            return await self._remote_lists.query(server, {u: wanted[u] for u in users},
                                                  timeout_s)

        out, answers, failures = await self._fan_out(
            self._keys.query(requester, local, display_names=True), ask,
            self._by_server(wanted), "Querying keys")
        out["failures"].update(failures)
        for server, (answer, failure) in answers.items():
            if failure is not None:
                out["failures"][server] = failure_of(failure)
            for field, by_user in answer.items():
                out[field].update(by_user)
        return out

    async def _fan_out(self, local: Awaitable[T],
                       ask: Callable[[str, list[str]], Awaitable[R]],
                       servers: Mapping[str, list[str]], what: str
                       ) -> tuple[T, dict[str, R], dict[str, Any]]:
        """``local`` side by side with ``ask(server, its users)`` for each other server: the
        local answer, each server's answer, and the failure of each that gave none (as
        Synapse reports them in ``failures``)."""
        remote: asyncio.Future[list[R | BaseException]] = asyncio.gather(
            *(ask(server, users) for server, users in servers.items()),
            return_exceptions=True)
        mine, results = await asyncio.gather(local, remote)
        answers: dict[str, R] = {}
        failures: dict[str, Any] = {}
        for server, answer in zip(servers, results, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, RemoteKeysFailed | TimeoutError):
                    logger.warning("%s of %s failed", what, server, exc_info=answer)
                failures[server] = failure_of(answer)
            else:
                answers[server] = answer
        return mine, answers, failures

    async def query_for_server(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /_matrix/federation/v1/user/keys/query (the caller checked that every user
        is ours): device keys, master and self-signing keys with their owners' signatures;
        never user-signing keys, nor device display names (Synapse's default,
        ``allow_device_name_lookup_over_federation: false``)."""
        wanted = wanted_devices(body)
        local = {u: set(d) or None for u, d in wanted.items()}
        out = await self._keys.query("", local, display_names=False)
        return {"device_keys": out["device_keys"], "master_keys": out["master_keys"],
                "self_signing_keys": out["self_signing_keys"]}

    async def user_devices(self, user_id: str) -> dict[str, Any]:
        """GET /_matrix/federation/v1/user/devices/{userId} for a local user (``LocalKeys``)."""
        return await self._keys.user_devices(user_id)

    # -- claim -----------------------------------------------------------------------------

    async def claim(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /keys/claim"""
        requested = wanted_keys(body)
        timeout_s = remote_timeout_s(body)
        local = {u: d for u, d in requested.items() if self._is_local(u)}
        out, answers, failures = await self._fan_out(
            self._claim_local(local),
            lambda server, users: self._claim_remote(
                server, {u: requested[u] for u in users}, timeout_s),
            self._by_server(requested), "Claiming keys")
        for answer in answers.values():
            out.update(answer)
        return {"one_time_keys": out, "failures": failures}

    async def _claim_remote(self, server: str, wanted: dict[str, dict[str, str]],
                            timeout_s: float) -> dict[str, Any]:
        """One key per device asked for of ``server``'s users, of the algorithm asked for;
        anything else it answers is dropped."""
        assert self._remote is not None
        async with asyncio.timeout(timeout_s + 1):
            answer = await self._remote.claim(server, {"one_time_keys": wanted}, timeout_s)
        if not isinstance(answer, dict):
            raise RemoteKeysFailed(502, f"{server} answered with something else than keys")
        keys = answer.get("one_time_keys")
        out: dict[str, Any] = {}
        if not isinstance(keys, dict):
            return out
        for user_id, algorithms in wanted.items():
            by_device = keys.get(user_id)
            if not isinstance(by_device, dict):
                continue
            for device_id, algorithm in algorithms.items():
                got = by_device.get(device_id)
                if not isinstance(got, dict):
                    continue
                for key_id, key in got.items():
                    if key_id.startswith(f"{algorithm}:") and isinstance(key, str | dict):
                        out.setdefault(user_id, {})[device_id] = {key_id: key}
                        break
        return out

    async def claim_for_server(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /_matrix/federation/v1/user/keys/claim (the caller checked that every user
        is ours): as a client's claim."""
        return {"one_time_keys": await self._claim_local(wanted_keys(body))}

    async def _claim_local(self, requested: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
        wanted: list[Wanted] = [(u, d, a) for u, by_device in requested.items()
                                for d, a in by_device.items()]
        devices = {(u, d) for u, d, _ in wanted}
        self._forget_counts(devices)
        try:
            claimed = await self._store.claim(wanted)
        finally:
            self._forget_counts(devices)
        out: dict[str, Any] = {}
        for (user_id, device_id, _), key in claimed.items():
            out.setdefault(user_id, {}).setdefault(device_id, {})[key.key_id] = \
                json.loads(key.key_json)
        if claimed:
            # The devices' syncs report their counts (and a used fallback key).
            self._notifier.wake(user_ids={u for u, _, _ in claimed})
        return out

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        """A device's one-time key counts and unused fallback key algorithms (sync)."""
        cached = self._counts.get((user_id, device_id))
        if cached is None:
            generation = self._generation
            cached = await self._store.key_counts(user_id, device_id)
            if generation == self._generation:
                self._counts[(user_id, device_id)] = cached
        counts, unused = cached
        return _with_default(counts), list(unused)

    def _forget_counts(self, devices: Iterable[tuple[str, str]]) -> None:
        """Before and after a write that changes these devices' keys (a read begun before
        the write finished is not kept)."""
        self._generation += 1
        devices = list(devices)
        for device in devices:
            self._counts.pop(device, None)
        self._replication.publish("key_counts", devices)

    # -- device lists ----------------------------------------------------------------------

    async def _users_changed(self, after: int, up_to: int) -> set[str]:
        if after >= up_to:
            return set()
        # Memory holds every change since start-up until it overflows; then those after its
        # oldest entry.
        if after >= self._start and (len(self._recent) < RECENT_CHANGES
                                     or self._recent[0][0] <= after):
            return {u for p, u in self._recent if after < p <= up_to}
        return await self._store.changed_users(after, up_to)

    async def may_have_news(self, user_id: str, after: int, up_to: int) -> bool:
        """Whether a user sharing a room with ``user_id`` (or the user) changed keys in
        ``(after, up_to]`` (from memory where it can)."""
        for other in await self._users_changed(after, up_to):
            if await self._members.share_a_room(user_id, other):
                return True
        return False

    async def device_list_changes(self, user_id: str, since: SyncToken, up_to: SyncToken
                                  ) -> tuple[list[str], list[str]]:
        """``(changed, left)`` for a sync of ``user_id`` from ``since`` to ``up_to``."""
        changed: set[str] = set()
        left: set[str] = set()
        joined = await self._members.joined_rooms(user_id)
        co_members: set[str] | None = None

        async def sharing() -> set[str]:
            nonlocal co_members
            if co_members is None:
                co_members = await self._sync.co_members(user_id, sorted(joined)) \
                    if joined else set()
                co_members.add(user_id)
            return co_members

        users = await self._users_changed(since.device_lists, up_to.device_lists)
        if users:
            changed |= users & await sharing()
        if since.events < up_to.events:
            # Only rooms with member events since (the notifier knows, no query).
            rooms = {r for r in joined
                     if self._notifier.members_changed_since(r, since.events)}
            mine = []
            if self._notifier.membership_changed_since(user_id, since.events):
                mine = await self._sync.membership_changes(user_id, since.events,
                                                           up_to.events)
                rooms |= {c.room_id for c in mine}
            last: dict[str, str] = {}
            for room_id, member, membership in (await self._store.member_changes(
                    sorted(rooms), since.events, up_to.events) if rooms else []):
                if member == user_id:
                    # Everyone in a room the user joined or left may have come or gone.
                    for other in await self._sync.co_members(user_id, [room_id]):
                        last.setdefault(other, "join")
                else:
                    last[member] = membership
            if last:
                now_sharing = await sharing()
                for other in last:
                    if other in now_sharing:
                        changed.add(other)
                    else:
                        left.add(other)
        left.discard(user_id)
        return sorted(changed - left), sorted(left)

    async def changes(self, user_id: str, from_token: str, to_token: str) -> dict[str, Any]:
        """GET /keys/changes"""
        since, up_to = SyncToken.parse(from_token), SyncToken.parse(to_token)
        current = SyncToken(self._notifier.position, device_lists=self.position)
        up_to = SyncToken(min(up_to.events, current.events),
                          device_lists=min(up_to.device_lists, current.device_lists))
        changed, left = await self.device_list_changes(user_id, since, up_to)
        return {"changed": changed, "left": left}

    # -- devices ---------------------------------------------------------------------------

    async def devices_deleted(self, user_id: str, device_ids: list[str]) -> None:
        """Devices are gone (their keys with them): users sharing a room hear of it."""
        if not device_ids:
            return
        devices = [(user_id, d) for d in device_ids]
        self._forget_counts(devices)
        try:
            positions = await self._store.devices_deleted(user_id, device_ids,
                                                          self._clock.time_ms())
        finally:
            self._forget_counts(devices)
        if positions:
            await self._changed([(positions[-1], user_id)])
            await self._announcer.announce(
                user_id, positions, list(zip(positions, device_ids, strict=True)),
                deleted=True)

    # -- cross-signing ---------------------------------------------------------------------

    async def cross_signing_upload_needs_auth(self, user_id: str, body: Mapping[str, Any]
                                              ) -> bool:
        """Whether this /keys/device_signing/upload needs user-interactive auth: not for a
        first master key, nor for keys all equal to those stored (a retry)."""
        stored = await self._store.cross_signing_keys(user_id)
        if MASTER not in stored:
            return False
        for usage, field in ((MASTER, "master_key"), (SELF_SIGNING, "self_signing_key"),
                             (USER_SIGNING, "user_signing_key")):
            if field in body and (usage not in stored
                                  or json.loads(stored[usage]) != body[field]):
                return True
        return False

    async def upload_cross_signing(self, user_id: str, body: Mapping[str, Any]) -> None:
        """POST /keys/device_signing/upload (after user-interactive auth when needed)."""
        stored = await self._store.cross_signing_keys(user_id)
        new: dict[str, str] = {}
        master = body.get("master_key")
        if master is not None:
            self._check_cross_signing_key(user_id, master, MASTER)
            master_obj = master
        elif MASTER in stored:
            master_obj = json.loads(stored[MASTER])
        else:
            master_obj = None
        for usage, field in ((SELF_SIGNING, "self_signing_key"),
                             (USER_SIGNING, "user_signing_key")):
            obj = body.get(field)
            if obj is None:
                continue
            self._check_cross_signing_key(user_id, obj, usage)
            if master_obj is None:
                raise MissingParam("No master signing key is available")
            master_key_id, master_public = single_key(master_obj, MASTER)
            if not verify(obj, user_id, master_key_id, master_public):
                raise MatrixError(f"The {field} is not signed by the master key", status=400,
                                  errcode="M_INVALID_SIGNATURE")
            new[usage] = canonical(obj)
        if master is not None:
            new[MASTER] = canonical(master)
        if not new:
            return
        if all(stored.get(u) == j for u, j in new.items()):
            return  # the same keys again
        position = await self._store.put_cross_signing_keys(user_id, new,
                                                            self._clock.time_ms())
        if position is not None:
            await self._changed([(position, user_id)])
            # The user-signing key is its owner's alone: other servers never get it.
            await self._announcer.announce(
                user_id, [position], signing_keys=MASTER in new or SELF_SIGNING in new)

    @staticmethod
    def _check_cross_signing_key(user_id: str, obj: Any, usage: str) -> None:
        check_key_object(obj, usage)
        if obj.get("user_id") != user_id:
            raise InvalidParam(f"The {usage} key must be for the requesting user")
        usages = obj.get("usage")
        if not isinstance(usages, list) or usage not in usages:
            raise InvalidParam(f"The {usage} key's usage must include {usage!r}")
        single_key(obj, usage)

    async def upload_signatures(self, user_id: str, body: Mapping[str, Any]
                                ) -> dict[str, Any]:
        """POST /keys/signatures/upload: each signature checked on its own; those that
        fail are in ``failures``."""
        failures: dict[str, dict[str, Any]] = {}

        def fail(target: str, key_id: str, errcode: str, error: str) -> None:
            failures.setdefault(target, {})[key_id] = {"errcode": errcode, "error": error}

        targets = [u for u in body if self._is_local(u)]
        found = await self._store.query(sorted({user_id, *targets}))
        mine = found.cross_signing.get(user_id, {})
        my_devices = {d.device_id: json.loads(d.key_json) for d in found.devices
                      if d.user_id == user_id}
        new: list[Signature] = []
        changed: set[str] = set()
        # What other servers hear of: the user's devices signed by their self-signing key,
        # and whether their master key was signed by a device of theirs.
        own_devices: list[str] = []
        own_master = False
        for target, by_key in body.items():
            if not isinstance(by_key, dict):
                raise BadJson("Each user's entry must map key IDs to signed objects")
            for key_id, obj in by_key.items():
                if not self._is_local(target):
                    fail(target, key_id, "M_UNRECOGNIZED", "Other servers' keys cannot be "
                         "signed here yet")
                    continue
                if not isinstance(obj, dict) or obj.get("user_id") != target:
                    fail(target, key_id, "M_INVALID_PARAM", "Not a key object of this user")
                    continue
                stored, signer_usage = self._signed_target(found, target, key_id, user_id)
                if stored is None:
                    fail(target, key_id, "M_NOT_FOUND", "No such key")
                    continue
                signatures = (obj.get("signatures") or {}).get(user_id)
                if not isinstance(signatures, dict):
                    fail(target, key_id, "M_INVALID_SIGNATURE", "Not signed by the uploader")
                    continue
                unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
                if unsigned != {k: v for k, v in stored.items()
                                if k not in ("signatures", "unsigned")}:
                    fail(target, key_id, "M_INVALID_PARAM",
                         "The signed object differs from the stored key")
                    continue
                ok = False
                for signer_key_id, signature in signatures.items():
                    public = self._signer_public(mine, my_devices, signer_usage, signer_key_id)
                    if public is None:
                        continue
                    if verify({**unsigned, "signatures": {user_id: {signer_key_id: signature}}},
                               user_id, signer_key_id, public):
                        new.append(Signature(user_id, signer_key_id, target, key_id,
                                             signature))
                        ok = True
                if not ok:
                    fail(target, key_id, "M_INVALID_SIGNATURE", "Invalid signature")
                else:
                    changed.add(target if target == user_id else user_id)
                    if target == user_id and signer_usage == SELF_SIGNING:
                        if key_id not in own_devices:
                            own_devices.append(key_id)
                    elif target == user_id:
                        own_master = True
        position, device_positions = await self._store.put_signatures(
            new, sorted(changed), self._clock.time_ms(),
            devices=[(user_id, d) for d in own_devices] if new else [])
        if position is not None:
            await self._changed((position, u) for u in changed)
            await self._announcer.announce(
                user_id, [position, *device_positions],
                list(zip(device_positions, own_devices, strict=True)), signing_keys=own_master)
        return {"failures": failures}

    @staticmethod
    def _signed_target(found: QueryResult, target: str, key_id: str, signer: str
                       ) -> tuple[dict[str, Any] | None, str]:
        """The stored object a signature upload signs, and what must sign it: a device of
        the signer's own (self-signing key), their own master key (a device of theirs), or
        another user's master key (the signer's user-signing key)."""
        keys = found.cross_signing.get(target, {})
        if MASTER in keys:
            master = json.loads(keys[MASTER])
            if single_key(master, MASTER)[1] == key_id:
                return master, ("device" if target == signer else USER_SIGNING)
        if target == signer:
            for device in found.devices:
                if device.user_id == target and device.device_id == key_id:
                    return json.loads(device.key_json), SELF_SIGNING
        return None, ""

    @staticmethod
    def _signer_public(mine: dict[str, str], my_devices: dict[str, dict[str, Any]],
                       usage: str, signer_key_id: str) -> str | None:
        if usage == "device":
            device = my_devices.get(signer_key_id.partition(":")[2])
            public = ((device or {}).get("keys") or {}).get(signer_key_id)
            return public if isinstance(public, str) and signer_key_id.startswith(
                "ed25519:") else None
        if usage not in mine:
            return None
        key_id, public = single_key(json.loads(mine[usage]), usage)
        return public if key_id == signer_key_id else None

