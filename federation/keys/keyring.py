"""Other servers' signing keys: finding them, checking them and remembering them.

Spec: https://spec.matrix.org/v1.16/server-server-api/#retrieving-server-keys. A key is
looked up in memory, then in the database, then through the trusted notaries
(``POST /_matrix/key/v2/query``), then at the server itself (``GET /_matrix/key/v2/server``),
stopping as soon as it is known and valid long enough. Synapse's ``synapse/crypto/keyring.py``
is the model.

Validity: room versions 5 and later only accept a key for an event if its ``valid_until_ts``
is at least the event's ``origin_server_ts``, and "servers MUST use the lesser of this field and
7 days into the future" (https://spec.matrix.org/v1.16/rooms/v5/#signing-key-validity-period).
We apply that cap when a response is fetched, so every key is refetched at least weekly. Keys
under ``old_verify_keys`` are valid until their ``expired_ts``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar

from cachetools import LRUCache
from canonicaljson import encode_canonical_json
from signedjson.key import (
    decode_verify_key_bytes,
    encode_verify_key_base64,
    get_verify_key,
    is_signing_algorithm_supported,
)
from signedjson.sign import SignatureVerifyException, verify_signed_json
from signedjson.types import SigningKey, VerifyKey

from core.clock import Clock
from core.crypto.signing_keys import key_id as signing_key_id
from core.events.unpadded_base64 import decode_base64
from core.types import is_valid_server_name
from federation.transport.client import FederationClient, FederationClientError
from storage.stores.server_keys import ServerKey, ServerKeyStore

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The spec's cap on how long a fetched key may be used (see the module docstring).
MAX_KEY_VALIDITY_MS = 7 * 24 * 60 * 60 * 1000

# A key request is cheap to answer; as a notary we cannot wait long for origins either.
_FETCH_TIMEOUT_S = 10.0
_MAX_RESPONSE_BYTES = 256 * 1024

# A server that could not be asked (unreachable, error, invalid answer) is left alone for
# this long, doubled per further failure, so a flood of events from a dead server costs one
# request per period.
_RETRY_INITIAL_S = 30.0
_RETRY_MAX_S = 300.0
# A key that a server's valid answer did not have (or not valid long enough) is not asked
# for again for this long.
_MISSING_KEY_RETRY_S = 30.0

_CACHE_SIZE = 10_000


class KeyNotFound(Exception):
    """No key of that ID, valid long enough, could be had for the server."""


class InvalidKeyResponse(Exception):
    """A key response we refuse: malformed, for another server, or badly signed."""


@dataclass(frozen=True, slots=True)
class _KnownKey:
    verify_key: VerifyKey
    valid_until_ts: int


@dataclass(frozen=True, slots=True)
class _Backoff:
    retry_at: float  # on the monotonic clock
    delay_s: float


class Keyring:
    """Finds and caches other servers' verify keys; answers ours from memory.

    Args:
        store: where fetched keys are kept (and what our notary serves).
        client: the outbound federation client.
        clock: wall-clock time for validity, monotonic time for back-off.
        server_name: our server name.
        signing_key: our signing key.
        trusted_key_servers: notaries asked before the servers themselves, in order.
    """

    def __init__(self, store: ServerKeyStore, client: FederationClient, clock: Clock,
                 server_name: str, signing_key: SigningKey,
                 trusted_key_servers: Iterable[str]) -> None:
        self.store = store
        self.clock = clock
        self.server_name = server_name
        self.signing_key = signing_key
        self._client = client
        self._notaries = tuple(n for n in trusted_key_servers if n != server_name)
        self._own_keys = {signing_key_id(signing_key): get_verify_key(signing_key)}
        self._cache: LRUCache[tuple[str, str], _KnownKey] = LRUCache(_CACHE_SIZE)
        self._missing: LRUCache[tuple[str, str], float] = LRUCache(_CACHE_SIZE)
        self._backoff: LRUCache[str, _Backoff] = LRUCache(_CACHE_SIZE)
        # One notary query and one direct fetch in flight per server; callers share them.
        self._notary_queries: dict[str, asyncio.Task[None]] = {}
        self._direct_fetches: dict[str, asyncio.Task[bool]] = {}

    async def close(self) -> None:
        """Cancel the fetches in flight."""
        tasks = [*self._notary_queries.values(), *self._direct_fetches.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def verify_key_for(self, server_name: str, key_id: str, *,
                             min_valid_until_ts: int) -> VerifyKey:
        """The key ``key_id`` of ``server_name``, valid at least until ``min_valid_until_ts``.

        Raises:
            KeyNotFound: it could not be had (unknown, expired, or the server unreachable).
        """
        keys = await self.verify_keys([(server_name, key_id, min_valid_until_ts)])
        try:
            return keys[(server_name, key_id)]
        except KeyError:
            raise KeyNotFound(f"no key {key_id} of {server_name} valid until "
                              f"{min_valid_until_ts}") from None

    async def verify_keys(self, requests: Iterable[tuple[str, str, int]]
                          ) -> dict[tuple[str, str], VerifyKey]:
        """Find many keys at once: one database query, then one fetch per server.

        Args:
            requests: ``(server_name, key_id, min_valid_until_ts)``; a pair asked for
                several times must be valid until the largest of its minimums.

        Returns:
            ``(server_name, key_id)`` -> key, for the keys found valid long enough; the
            others are left out.
        """
        wanted: dict[str, dict[str, int]] = {}
        for server_name, key_id, min_valid in requests:
            by_id = wanted.setdefault(server_name, {})
            by_id[key_id] = max(min_valid, by_id.get(key_id, min_valid))

        to_load = [(s, k) for s, by_id in wanted.items() if s != self.server_name
                   for k in self._still_wanted(s, by_id)]
        if to_load:
            for stored in (await self.store.get_keys(to_load)).values():
                self._cache_key(stored)

        missing = {s: still for s, by_id in wanted.items() if s != self.server_name
                   if (still := self._still_wanted(s, by_id))}
        if missing:
            await asyncio.gather(*(self._fetch_remote(s, by_id) for s, by_id in missing.items()))

        return {(s, k): key for s, by_id in wanted.items() for k, m in by_id.items()
                if (key := self._known(s, k, m)) is not None}

    async def fetch_from_server(self, server_name: str) -> bool:
        """Fetch ``server_name``'s keys from the server itself and store them.

        Spec: https://spec.matrix.org/v1.16/server-server-api/#get_matrixkeyv2server. One
        request per server at a time (concurrent callers share it), none while the server is
        backing off. Our notary uses this directly: notaries never ask other notaries, so
        two servers trusting each other cannot loop.

        Returns:
            Whether the server answered with a valid key response.
        """
        if (server_name == self.server_name or not is_valid_server_name(server_name)
                or self._backing_off(server_name)):
            return False
        return await _shared(self._direct_fetches, server_name,
                             lambda: self._fetch_direct(server_name))

    def _known(self, server_name: str, key_id: str, min_valid: int) -> VerifyKey | None:
        if server_name == self.server_name:
            return self._own_keys.get(key_id)
        known = self._cache.get((server_name, key_id))
        return known.verify_key if known and known.valid_until_ts >= min_valid else None

    def _still_wanted(self, server_name: str, wanted: dict[str, int]) -> dict[str, int]:
        return {k: m for k, m in wanted.items() if self._known(server_name, k, m) is None}

    def _cache_key(self, key: ServerKey) -> None:
        cached = self._cache.get((key.server_name, key.key_id))
        if cached is None or cached.valid_until_ts <= key.valid_until_ts:
            verify_key = decode_verify_key_bytes(key.key_id, decode_base64(key.verify_key))
            self._cache[(key.server_name, key.key_id)] = _KnownKey(verify_key,
                                                                    key.valid_until_ts)

    async def _remember(self, keys: list[ServerKey]) -> None:
        if keys:
            await self.store.store_keys(keys)
            for key in keys:
                self._cache_key(key)

    async def _fetch_remote(self, server_name: str, wanted: dict[str, int]) -> None:
        """Notaries first (unless ``server_name`` is one), then the server itself."""
        now = self.clock.monotonic()
        # Checked again here: another caller's fetch may have finished since our database read.
        wanted = {k: m for k, m in self._still_wanted(server_name, wanted).items()
                  if self._missing.get((server_name, k), 0.0) <= now}
        if not wanted or not is_valid_server_name(server_name):
            return
        if self._notaries and server_name not in self._notaries:
            await _shared(self._notary_queries, server_name,
                          lambda: self._query_notaries(server_name, wanted))
            if not self._still_wanted(server_name, wanted):
                return
        if await self.fetch_from_server(server_name):
            for key_id in self._still_wanted(server_name, wanted):
                self._missing[(server_name, key_id)] = now + _MISSING_KEY_RETRY_S

    async def _fetch_direct(self, server_name: str) -> bool:
        now = self.clock.time_ms()
        try:
            response = await self._client.get_json(
                server_name, "/_matrix/key/v2/server", signed=False,
                timeout_s=_FETCH_TIMEOUT_S, max_response_bytes=_MAX_RESPONSE_BYTES)
            keys = parse_key_response(server_name, response, now)
        except (FederationClientError, InvalidKeyResponse) as e:
            logger.warning("Could not fetch the keys of %s: %s", server_name, e)
            self._note_failure(server_name)
            return False
        self._backoff.pop(server_name, None)
        await self._remember(keys)
        return True

    async def _query_notaries(self, server_name: str, wanted: dict[str, int]) -> None:
        """Ask each notary in turn until every wanted key is known.

        Spec: https://spec.matrix.org/v1.16/server-server-api/#post_matrixkeyv2query. A
        response counts only if both the origin and the notary signed it.
        """
        body = {"server_keys": {server_name: {
            k: {"minimum_valid_until_ts": m} for k, m in wanted.items()}}}
        for notary in self._notaries:
            if self._backing_off(notary):
                continue
            now = self.clock.time_ms()
            try:
                response = await self._client.post_json(
                    notary, "/_matrix/key/v2/query", body, signed=False,
                    timeout_s=_FETCH_TIMEOUT_S, max_response_bytes=_MAX_RESPONSE_BYTES)
            except FederationClientError as e:
                logger.warning("Could not ask notary %s for the keys of %s: %s",
                               notary, server_name, e)
                self._note_failure(notary)
                continue
            self._backoff.pop(notary, None)
            results = response.get("server_keys") if isinstance(response, dict) else None
            keys: list[ServerKey] = []
            for result in results if isinstance(results, list) else ():
                # Answers about servers we did not ask for are not ours to cache.
                if not isinstance(result, dict) or result.get("server_name") != server_name:
                    continue
                try:
                    await self._check_signed_by(notary, result)
                    keys.extend(parse_key_response(server_name, result, now))
                except InvalidKeyResponse as e:
                    logger.warning("Refused notary %s's keys of %s: %s", notary, server_name, e)
            await self._remember(keys)
            if not self._still_wanted(server_name, wanted):
                return

    async def _check_signed_by(self, notary: str, response: dict[str, Any]) -> None:
        """Check the notary's own signature; its key is fetched from the notary itself."""
        key_ids = _signature_key_ids(response, notary)
        now = self.clock.time_ms()
        keys = await self.verify_keys((notary, k, now) for k in key_ids)
        if not keys:
            raise InvalidKeyResponse(f"not signed by a known key of {notary}")
        for (_, key_id), verify_key in keys.items():
            try:
                verify_signed_json(response, notary, verify_key)
            except SignatureVerifyException:
                raise InvalidKeyResponse(f"bad signature by {notary} {key_id}") from None

    def _backing_off(self, server_name: str) -> bool:
        backoff = self._backoff.get(server_name)
        return backoff is not None and backoff.retry_at > self.clock.monotonic()

    def _note_failure(self, server_name: str) -> None:
        previous = self._backoff.get(server_name)
        delay = _RETRY_INITIAL_S if previous is None else min(previous.delay_s * 2,
                                                              _RETRY_MAX_S)
        self._backoff[server_name] = _Backoff(self.clock.monotonic() + delay, delay)


def parse_key_response(server_name: str, response: object, now_ms: int) -> list[ServerKey]:
    """The keys of one server key response, after checking it.

    Spec: https://spec.matrix.org/v1.16/server-server-api/#publishing-keys. The response must
    be about ``server_name``, carry an integer ``valid_until_ts`` and well-formed keys, and be
    signed by ``server_name``: at least one signature by a key in ``verify_keys``, and every
    such signature valid. Keys of algorithms other than ed25519 are skipped.

    Args:
        server_name: the server the response must be about.
        response: the decoded JSON (as served, or one entry of a notary's answer).
        now_ms: when it was fetched.

    Raises:
        InvalidKeyResponse: the response is refused.
    """
    if not isinstance(response, dict):
        raise InvalidKeyResponse("the key response is not a JSON object")
    if response.get("server_name") != server_name:
        raise InvalidKeyResponse(f"the key response is not about {server_name}")
    valid_until_ts = response.get("valid_until_ts")
    if not _is_int(valid_until_ts):
        raise InvalidKeyResponse("valid_until_ts is not an integer")
    verify_keys = _decode_keys(response.get("verify_keys"), old=False)
    old_verify_keys = _decode_keys(response.get("old_verify_keys", {}), old=True)

    signers = [k for k in _signature_key_ids(response, server_name) if k in verify_keys]
    if not signers:
        raise InvalidKeyResponse(f"not signed by any verify key of {server_name}")
    for key_id in signers:
        try:
            verify_signed_json(response, server_name, verify_keys[key_id][0])
        except SignatureVerifyException:
            raise InvalidKeyResponse(f"bad signature by {server_name} {key_id}") from None

    key_json = encode_canonical_json(response).decode("utf-8")
    cap = now_ms + MAX_KEY_VALIDITY_MS
    return [
        ServerKey(server_name, key_id, encode_verify_key_base64(verify_key),
                  min(expired_ts if expired_ts is not None else valid_until_ts, cap),
                  expired_ts, now_ms, key_json)
        for key_id, (verify_key, expired_ts) in {**old_verify_keys, **verify_keys}.items()
    ]


def _decode_keys(value: object, *, old: bool) -> dict[str, tuple[VerifyKey, int | None]]:
    """``verify_keys`` (or, with ``old``, ``old_verify_keys`` and their ``expired_ts``)."""
    field = "old_verify_keys" if old else "verify_keys"
    if not isinstance(value, dict):
        raise InvalidKeyResponse(f"{field} is not an object")
    keys: dict[str, tuple[VerifyKey, int | None]] = {}
    for key_id, entry in value.items():
        if "\x00" in key_id:
            # Not a key ID the database can keep (homeserver/http/nul.py).
            raise InvalidKeyResponse(f"{field} has a key ID holding U+0000")
        if not is_signing_algorithm_supported(key_id):
            continue
        key = entry.get("key") if isinstance(entry, dict) else None
        expired_ts = entry.get("expired_ts") if old and isinstance(entry, dict) else None
        if not isinstance(key, str) or (old and not _is_int(expired_ts)):
            raise InvalidKeyResponse(f"{field} {key_id} is malformed")
        try:
            keys[key_id] = (decode_verify_key_bytes(key_id, decode_base64(key)), expired_ts)
        except ValueError:
            raise InvalidKeyResponse(f"{field} {key_id} is not an ed25519 key") from None
    return keys


def _signature_key_ids(signed: dict[str, Any], name: str) -> list[str]:
    signatures = signed.get("signatures")
    by_name = signatures.get(name) if isinstance(signatures, dict) else None
    if not isinstance(by_name, dict):
        return []
    return [k for k in by_name if is_signing_algorithm_supported(k)]


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


async def _shared(in_flight: dict[str, asyncio.Task[T]], server_name: str,
                  start: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Join the task in flight for ``server_name``, or start one.

    The task is shielded: a caller giving up does not cancel it for the others.
    """
    task = in_flight.get(server_name)
    if task is None or task.done():
        task = asyncio.create_task(start())
        in_flight[server_name] = task

        def forget(done: asyncio.Task[T]) -> None:
            if in_flight.get(server_name) is done:
                del in_flight[server_name]

        task.add_done_callback(forget)
    return await asyncio.shield(task)
