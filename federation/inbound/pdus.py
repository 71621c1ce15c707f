"""Checks on receipt of a PDU, and handing it to the one write path.

Spec: https://spec.matrix.org/v1.19/server-server-api/#checks-performed-on-receipt-of-a-pdu
1. a valid event (format, size, canonical JSON, nesting) — ``parse_pdu``;
2. signatures of every server that must have signed it — ``check_signatures``;
3. the content hash, else the redacted copy is kept — ``check_pdu``;
4.-6. authorization against its auth events, the state before it, and the current state
(soft failure) — the persister (``roomserver.api.RemoteEventWriter.receive``).
Missing auth events are fetched (``/event_auth``) and missing prev events asked for
(``/get_missing_events``) from the server that sent the event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from core.errors import NotFound
from core.events.builder import event_from_pdu
from core.events.canonical import check_canonical_json, encode_canonical
from core.events.hashing import check_content_hash
from core.events.model import Event
from core.events.redaction import redact
from core.events.room_versions import RoomVersion
from core.events.signing import (
    InvalidEventSignature,
    required_signers,
    verify_event_signature,
)
from core.rooms.auth import AuthError, check_auth_events, check_auth_rules
from core.types import MAX_IDENTIFIER_BYTES, byte_length
from federation.keys.keyring import Keyring
from federation.transport.client import FederationClient, FederationClientError
from homeserver.http.json import MAX_JSON_NESTING, nesting_exceeds
from homeserver.http.nul import contains_nul
from roomserver.api import MAX_DEPTH, MAX_PDU_BYTES, FederatedRooms, MissingEvents

logger = logging.getLogger(__name__)

# /get_missing_events: events asked for per request (Synapse answers at most 20) and in all
# for one received event.
MISSING_EVENTS_PER_REQUEST = 20
MAX_MISSING_EVENTS = 200
# A gap /get_missing_events does not fill: the state at up to this many unknown prev events
# is asked for (/state_ids), with up to MAX_GAP_EVENTS events fetched (/event), a few at once.
MAX_GAP_STATES = 5
MAX_GAP_EVENTS = 20_000
EVENT_FETCH_CONCURRENCY = 10
STATE_IDS_MAX_BYTES = 50 * 1024 * 1024
_STRING_LISTS = ("prev_events", "auth_events")
# How deep a PDU or an EDU may nest: as deep as a client's body (``MAX_JSON_NESTING``) can
# make one, content inside the event, stripped state events in an invite's ``unsigned``.
# Deeper ones are refused on their own, before anything walks them recursively (copying).
MAX_PDU_NESTING = MAX_JSON_NESTING + 4


class InvalidPdu(Exception):
    """The PDU fails a check on receipt; the message says which."""


# Content the server reads identifiers from (membership, redactions, the auth of joins and
# invites); the rest of the content is only ever kept as canonical JSON.
_IDENTIFYING_CONTENT = ("membership", "redacts", "join_authorised_via_users_server",
                        "third_party_invite")


def _nul_in_identifiers(pdu: Mapping[str, Any]) -> bool:
    """U+0000 where it would become an identifier the server keeps in a column or looks up
    (``homeserver.http.nul``): anywhere but ``content`` and ``unsigned``, which are stored
    as canonical JSON (where it stays escaped), and the content keys that name things."""
    content = pdu.get("content")
    return contains_nul({k: v for k, v in pdu.items() if k not in ("content", "unsigned")}) \
        or (isinstance(content, Mapping)
            and contains_nul([content.get(k) for k in _IDENTIFYING_CONTENT]))


def _is_user_id(value: object) -> bool:
    return isinstance(value, str) and value.startswith("@") and ":" in value[1:]


# The spec's PDU size limits (https://spec.matrix.org/v1.19/server-server-api/#size-limits):
# these fields at most 255 bytes, as a client's (``core.types``), and the event IDs an
# event refers to as well. Synapse's ``_check_size_limits`` refuses such an event in every room
# version (before v11 it counts code points first and keeps a byte-long one as rejected); here
# it is refused outright, so none of it reaches a column or an index.
_LIMITED_FIELDS = ("type", "state_key", "sender", "room_id")


def _overlong_field(pdu: Mapping[str, Any]) -> str | None:
    """The first field of ``_LIMITED_FIELDS`` and ``_STRING_LISTS`` over 255 bytes, if any."""
    for key in _LIMITED_FIELDS:
        value = pdu.get(key)
        if isinstance(value, str) and byte_length(value) > MAX_IDENTIFIER_BYTES:
            return key
    for key in _STRING_LISTS:
        if any(byte_length(v) > MAX_IDENTIFIER_BYTES for v in pdu[key]):
            return key
    return None


def parse_pdu(pdu: Any, room_version: RoomVersion) -> Event:
    """Check a PDU's format (spec: the room version's event format) and wrap it."""
    if not isinstance(pdu, Mapping):
        raise InvalidPdu("not a JSON object")
    pdu = {k: v for k, v in pdu.items() if k not in ("event_id", "age_ts")}
    if nesting_exceeds(pdu, MAX_PDU_NESTING):
        raise InvalidPdu(f"nested more than {MAX_PDU_NESTING} levels deep")
    if _nul_in_identifiers(pdu):
        raise InvalidPdu("U+0000 outside the event's content")
    for key, kind in (("type", str), ("sender", str), ("content", Mapping), ("depth", int),
                      ("origin_server_ts", int), ("hashes", Mapping), ("signatures", Mapping)):
        if not isinstance(pdu.get(key), kind) or isinstance(pdu.get(key), bool):
            raise InvalidPdu(f"{key} is missing or not a {kind.__name__}")
    for key in _STRING_LISTS:
        value = pdu.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidPdu(f"{key} must be a list of event IDs")
    if not _is_user_id(pdu["sender"]):
        raise InvalidPdu("sender is not a user ID")
    overlong = _overlong_field(pdu)
    if overlong is not None:
        raise InvalidPdu(f"{overlong} is longer than {MAX_IDENTIFIER_BYTES} bytes")
    if not isinstance(pdu.get("hashes", {}).get("sha256"), str):
        raise InvalidPdu("hashes.sha256 is missing")
    is_create = pdu["type"] == "m.room.create" and pdu.get("state_key") == ""
    if not (is_create and room_version.room_id_is_create_event_hash) \
            and not isinstance(pdu.get("room_id"), str):
        raise InvalidPdu("room_id is missing")
    if "state_key" in pdu and not isinstance(pdu["state_key"], str):
        raise InvalidPdu("state_key must be a string")
    if not 0 <= pdu["depth"] <= MAX_DEPTH:
        raise InvalidPdu("depth out of range")
    if len(pdu["prev_events"]) > 20 or len(pdu["auth_events"]) > 10:
        raise InvalidPdu("too many prev_events or auth_events")
    try:
        check_canonical_json(pdu)
    except ValueError as e:
        raise InvalidPdu(str(e)) from None
    if len(encode_canonical(pdu)) > MAX_PDU_BYTES:
        raise InvalidPdu("event is larger than 64 KiB")
    return event_from_pdu(pdu, room_version)


class PduHandler:
    """Checks received PDUs and stores them, fetching what they refer to."""

    def __init__(self, rooms: FederatedRooms, keyring: Keyring, client: FederationClient
                 ) -> None:
        self._persister = rooms
        self._keyring = keyring
        self._client = client

    async def check_signatures(self, event: Event) -> None:
        """Every server that must sign the event did, with a key valid when it was sent."""
        try:
            servers = required_signers(event.pdu, event.room_version)
        except ValueError as e:
            raise InvalidPdu(str(e)) from None
        for server in servers:
            await self.check_signatures_of(event, server)

    async def check_signatures_of(self, event: Event, server: str) -> None:
        """``server`` signed the event with a key valid when it was sent."""
        signatures = event.pdu.get("signatures")
        by_server = signatures.get(server) if isinstance(signatures, Mapping) else None
        key_ids = [k for k in (by_server if isinstance(by_server, Mapping) else {})
                   if isinstance(k, str) and k.startswith("ed25519:")]
        if not key_ids:
            raise InvalidPdu(f"not signed by {server}")
        keys = await self._keyring.verify_keys(
            [(server, key_id, event.origin_server_ts) for key_id in key_ids])
        for key_id in key_ids:
            key = keys.get((server, key_id))
            if key is None:
                continue
            try:
                verify_event_signature(event.pdu, event.room_version, server, key)
                return
            except InvalidEventSignature:
                continue
        raise InvalidPdu(f"no valid signature by {server}")

    async def check_pdu(self, pdu: Any, room_version: RoomVersion) -> Event:
        """Steps 1-3: format, signatures, content hash (a redacted copy on mismatch)."""
        event = parse_pdu(pdu, room_version)
        await self.check_signatures(event)
        if not check_content_hash(event.pdu):
            logger.info("Content hash mismatch on %s: keeping the redacted copy",
                        event.event_id)
            event = event_from_pdu(redact(event.pdu, room_version), room_version)
        return event

    async def receive(self, origin: str, event: Event, *, fetch_missing: bool = True,
                      relay: bool = False) -> str:
        """Steps 4-6 for a checked event, answering once it is committed; returns what
        became of it (see ``roomserver.api.RemoteEventWriter.receive``). Raises
        ``AuthError`` when rejected."""
        outcome, future = await self.receive_queued(origin, event, fetch_missing=fetch_missing,
                                                    relay=relay)
        if future is not None:
            await self._persister.committed(future, event.room_id)
        return outcome

    async def receive_queued(self, origin: str, event: Event, *, fetch_missing: bool = True,
                             relay: bool = False, known_absent: bool = False
                             ) -> tuple[str, asyncio.Future[None] | None]:
        """``receive`` without waiting for the commit: returns its future too.

        Prev events still unknown once the gap is filled as far as ``/get_missing_events``
        goes (a gap too wide, or a peer that gives up) are not guessed at: the state after
        each is asked of ``origin`` (``/state_ids``, then ``/event`` for only the events we
        lack, each checked), and the state before this event is resolved from those."""
        if fetch_missing:
            await self._fetch_missing_prevs(origin, event)
        relay_except = origin if relay else None
        stored = await self._persister.is_stored(event.prev_event_ids)
        missing = [p for p in event.prev_event_ids if p not in stored]
        prev_states = await self._states_after(origin, event, missing) if missing else None
        try:
            return await self._persister.receive_queued(event, relay_except=relay_except,
                                                        known_absent=known_absent,
                                                        prev_states=prev_states)
        except MissingEvents:
            pass
        await self.fetch_auth_chain(origin, event)
        try:
            return await self._persister.receive_queued(event, relay_except=relay_except,
                                                        known_absent=known_absent,
                                                        prev_states=prev_states)
        except MissingEvents as e:
            raise AuthError(f"unknown auth events {e.event_ids[:3]}") from None

    async def _states_after(self, origin: str, event: Event, prev_ids: Sequence[str]
                            ) -> dict[str, dict[tuple[str, str], str]]:
        """The room state after each of ``prev_ids`` (events we do not have), as
        ``origin`` tells it: ``/state_ids`` at the event gives the state before it, to which
        the event itself is added when it is a state event. Every event of that state we
        lack is fetched (``/event``), checked and stored as an outlier; a prev event whose
        state cannot be had is left out (the state before ``event`` then rests on the
        others)."""
        out: dict[str, dict[tuple[str, str], str]] = {}
        for prev_id in prev_ids[:MAX_GAP_STATES]:
            try:
                answer = await self._client.get_json(
                    origin, f"/_matrix/federation/v1/state_ids/"
                            f"{quote(event.room_id, safe='')}",
                    query={"event_id": prev_id}, max_response_bytes=STATE_IDS_MAX_BYTES)
            except FederationClientError as e:
                logger.info("Could not fetch the state at %s from %s: %s", prev_id, origin, e)
                continue
            pdu_ids = answer.get("pdu_ids") if isinstance(answer, Mapping) else None
            chain_ids = answer.get("auth_chain_ids") if isinstance(answer, Mapping) else None
            if not isinstance(pdu_ids, list) or not isinstance(chain_ids, list) or not all(
                    isinstance(i, str) for i in [*pdu_ids, *chain_ids]):
                logger.info("%s answered /state_ids at %s with no ID lists", origin, prev_id)
                continue
            wanted = list(dict.fromkeys([*chain_ids, *pdu_ids, prev_id]))
            stored = await self._persister.is_stored(wanted)
            lacking = [i for i in wanted if i not in stored]
            fetched = await self._fetch_events(origin, lacking, event.room_version)
            if fetched:
                await self._persister.store_outliers(
                    await self.check_chain(fetched, event.room_version))
            known = await self._persister.get_events(list(dict.fromkeys([*pdu_ids, prev_id])))
            state = {e.state_tuple: e.event_id for e in (known.get(i) for i in pdu_ids)
                     if e is not None and e.state_tuple is not None
                     and e.room_id == event.room_id}
            prev = known.get(prev_id)
            if prev is None or (("m.room.create", "") not in state and \
                    prev.type != "m.room.create"):
                logger.info("The state at %s from %s is incomplete: left out", prev_id, origin)
                continue
            if prev.state_tuple is not None:
                state[prev.state_tuple] = prev.event_id
            out[prev_id] = state
        return out

    async def _fetch_events(self, origin: str, event_ids: Sequence[str],
                            room_version: RoomVersion) -> list[Any]:
        """The PDUs ``origin`` has for ``event_ids`` (``/event``, a few at a time;
        unchecked)."""
        limit = asyncio.Semaphore(EVENT_FETCH_CONCURRENCY)

        async def one(event_id: str) -> Any:
            async with limit:
                try:
                    answer = await self._client.get_json(
                        origin, f"/_matrix/federation/v1/event/{quote(event_id, safe='')}")
                except FederationClientError as e:
                    logger.info("Could not fetch %s from %s: %s", event_id, origin, e)
                    return None
            pdus = answer.get("pdus") if isinstance(answer, Mapping) else None
            return pdus[0] if isinstance(pdus, list) and len(pdus) == 1 else None

        found = await asyncio.gather(*(one(e) for e in event_ids[:MAX_GAP_EVENTS]))
        return [p for p in found if p is not None]

    async def fetch_auth_chain(self, origin: str, event: Event) -> None:
        """Fetch the event's auth chain from ``origin``, check it, store it as outliers."""
        path = (f"/_matrix/federation/v1/event_auth/{quote(event.room_id, safe='')}/"
                f"{quote(event.event_id, safe='')}")
        try:
            answer = await self._client.get_json(origin, path)
        except FederationClientError as e:
            logger.info("Could not fetch the auth chain of %s from %s: %s", event.event_id,
                        origin, e)
            return
        chain = answer.get("auth_chain") if isinstance(answer, Mapping) else None
        if isinstance(chain, list):
            await self.store_checked_outliers(chain[:1000], event.room_version)

    async def store_checked_outliers(self, pdus: Sequence[Any], room_version: RoomVersion
                                     ) -> list[Event]:
        """Check PDUs (``check_chain``) and store the ones that pass as outliers."""
        out = await self.check_chain(pdus, room_version)
        if out:
            await self._persister.store_outliers(out)
        return out

    async def check_chain(self, pdus: Sequence[Any], room_version: RoomVersion
                          ) -> list[Event]:
        """Check PDUs of one room (an auth chain, a room's state): steps 1-3, then each
        against its own auth events, found among them or stored here; returns those that
        pass, dependencies first."""
        events: dict[str, Event] = {}
        checked = await asyncio.gather(*(self.check_pdu(p, room_version) for p in pdus),
                                       return_exceptions=True)
        for result in checked:
            if isinstance(result, Event):
                events[result.event_id] = result
            else:
                logger.info("Dropping an auth or state event: %s", result)
        if not events:
            return []
        room_id = next(iter(events.values())).room_id
        wanted = {a for e in events.values() for a in e.auth_event_ids if a not in events}
        if room_version.room_id_is_create_event_hash:  # not among anyone's auth_events
            wanted.add("$" + room_id[1:])
        accepted: dict[str, Event] = dict(await self._persister.get_events(
            [a for a in wanted if a not in events]))
        out: list[Event] = []
        for event in sorted(events.values(), key=lambda e: e.depth):
            if event.room_id != room_id:
                continue
            try:
                if event.type == "m.room.create" and event.state_key == "":
                    check_auth_rules(event, {}, create_event=event)
                else:
                    auth = check_auth_events(event, [accepted[a] for a in event.auth_event_ids
                                                     if a in accepted])
                    create = auth.get(("m.room.create", "")) or accepted.get(
                        "$" + room_id[1:])
                    check_auth_rules(event, auth, create_event=create)
            except AuthError as e:
                logger.info("Dropping auth/state event %s: %s", event.event_id, e)
                continue
            accepted[event.event_id] = event
            out.append(event)
        return out

    async def _fetch_missing_prevs(self, origin: str, event: Event) -> None:
        """Ask ``origin`` for the events between what we have and this one
        (spec: POST /get_missing_events), and take them in first, oldest first.

        A gap longer than one answer (20 events, Synapse's cap) is asked for again from
        where the last answer ended, up to ``MAX_MISSING_EVENTS`` (and as many requests as
        that takes in full answers, whatever the peer answers): a server that was down
        while a conversation went on gets all of it, with every state change in between
        (a member who joined meanwhile can speak), not just the last few events.
        """
        missing = set(event.prev_event_ids) - await self._persister.is_stored(
            event.prev_event_ids)
        if not missing:
            return
        head = await self._persister.room_head(event.room_id)
        if head is None:
            return
        fetched: dict[str, Event] = {}
        latest = [event.event_id]
        for _ in range(MAX_MISSING_EVENTS // MISSING_EVENTS_PER_REQUEST):
            if not latest:
                break
            new = await self._missing_events(origin, event, head.extremities, latest,
                                             max(0, head.depth - 100), fetched)
            unknown = {p for e in new for p in e.prev_event_ids} - fetched.keys()
            unknown -= await self._persister.is_stored(list(unknown))
            latest = [e.event_id for e in new if unknown & set(e.prev_event_ids)]
        futures = []
        for missing_event in sorted(fetched.values(), key=lambda e: (e.depth, e.event_id)):
            try:
                _, future = await self.receive_queued(origin, missing_event,
                                                      fetch_missing=False)
            except (AuthError, MissingEvents, NotFound) as e:
                logger.info("A missing event from %s was refused: %s", origin, e)
                continue
            if future is not None:
                futures.append(future)
        for future in futures:
            await self._persister.committed(future, event.room_id)

    async def _missing_events(self, origin: str, event: Event, earliest: Sequence[str],
                              latest: list[str], min_depth: int, fetched: dict[str, Event]
                              ) -> list[Event]:
        """One ``/get_missing_events`` round: the checked events of the room it brought
        that are not in ``fetched`` yet (added to it)."""
        path = f"/_matrix/federation/v1/get_missing_events/{quote(event.room_id, safe='')}"
        try:
            answer = await self._client.post_json(origin, path, {
                "earliest_events": earliest, "latest_events": latest,
                "limit": MISSING_EVENTS_PER_REQUEST, "min_depth": min_depth})
        except FederationClientError as e:
            logger.info("get_missing_events for %s from %s failed: %s", event.event_id, origin,
                        e)
            return []
        pdus = answer.get("events") if isinstance(answer, Mapping) else None
        if not isinstance(pdus, list):
            return []
        new: list[Event] = []
        for pdu in pdus[:MISSING_EVENTS_PER_REQUEST]:
            try:
                missing_event = await self.check_pdu(pdu, event.room_version)
            except InvalidPdu as e:
                logger.info("A missing event from %s was refused: %s", origin, e)
                continue
            if missing_event.room_id == event.room_id \
                    and missing_event.event_id not in fetched:
                fetched[missing_event.event_id] = missing_event
                new.append(missing_event)
        return new
