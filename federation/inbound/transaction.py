"""PUT /_matrix/federation/v1/send/{txnId}: a transaction of PDUs and EDUs from one server
(https://spec.matrix.org/v1.19/server-server-api/#put_matrixfederationv1sendtxnid).

A transaction is processed once per (origin, txnId): a repeat gets the first answer.
PDUs of one room are taken in order, rooms in parallel; each PDU's fate is in the answer
(``{}`` or ``{"error"}``), a failing PDU never fails the others. EDUs are applied after.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.clock import Clock
from core.errors import BadJson, MatrixError
from core.events.hashing import compute_event_id
from core.events.model import Event
from core.events.room_versions import KNOWN_ROOM_VERSIONS, RoomVersion
from core.rooms.auth import AuthError
from core.types import MAX_IDENTIFIER_BYTES, InvalidIdentifier, byte_length, parse_user_id
from federation.inbound.pdus import MAX_PDU_NESTING, InvalidPdu, PduHandler
from homeserver.http.json import nesting_exceeds
from homeserver.http.nul import NUL, contains_nul
from homeserver.services.e2e_keys import E2EKeyService
from homeserver.services.presence import PresenceService
from homeserver.services.receipts import ReceiptService
from homeserver.services.to_device import ToDeviceService
from homeserver.services.typing import TypingService
from roomserver.api import FederatedRooms
from storage.stores.federation import FederationStore

logger = logging.getLogger(__name__)

MAX_PDUS = 50
MAX_EDUS = 100


def _server_of(user_id: object) -> str | None:
    """The server of a user ID in an EDU; None when it is not one (of the user ID grammar, at
    most 255 bytes, as a client's): typing, presence and receipts of it are dropped."""
    try:
        return parse_user_id(user_id).server_name
    except InvalidIdentifier:
        return None


def _event_id_of(pdu: Any, version: RoomVersion) -> str | None:
    """The ID an invalid PDU would have, to answer under (None if it cannot have one)."""
    try:
        return compute_event_id(pdu, version) if isinstance(pdu, Mapping) else None
    except Exception:
        return None


@dataclass
class CheckedRoom:
    """A transaction's PDUs of one room once checked: the answers so far (refusals), the
    events that passed, and which of them are here already."""

    room_id: str
    results: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    stored: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        """What a federation_inbound worker passes to the persister (``stored`` is read
        again there)."""
        return {"room_id": self.room_id, "results": self.results,
                "events": [{"event_id": e.event_id, "room_version": e.room_version.identifier,
                            "pdu": e.pdu} for e in self.events]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckedRoom:
        return cls(str(data["room_id"]), dict(data["results"]),
                   [Event(str(e["event_id"]), KNOWN_ROOM_VERSIONS[e["room_version"]],
                          dict(e["pdu"])) for e in data["events"]])


class ForwardTransaction(Protocol):
    """A federation_inbound worker's way to the persister: it checked the transaction's PDUs
    (format, signatures, hashes); the persister does the rest and answers."""

    async def __call__(self, origin: str, txn_id: str, rooms: list[CheckedRoom],
                       edus: list[Any]) -> dict[str, Any]: ...


# EDUs whose repeat changes nothing: a typing or presence state set again, a receipt that
# never goes back. (To-device messages are not: they are recorded with their transaction.)
IDEMPOTENT_EDUS = frozenset({"m.typing", "m.presence", "m.receipt"})
# EDUs that events of the same transaction may need already applied when they are synced.
KEY_EDUS = frozenset({"m.direct_to_device", "m.device_list_update", "m.signing_key_update"})


@dataclass(frozen=True, slots=True)
class InboundEdus:
    """The services that take the EDUs other servers send."""

    typing: TypingService
    receipts: ReceiptService
    presence: PresenceService
    to_device: ToDeviceService
    keys: E2EKeyService


# How an inbound transaction ended: every PDU accepted (or EDUs only), some PDUs refused in
# the answer, the transaction refused as a whole (a Matrix error), or an unexpected failure.
TXN_OUTCOMES = ("accepted", "some_pdus_refused", "refused", "failed")


class TransactionHandler:
    """``forward``: in a federation_inbound worker, where checked PDUs and the EDUs go (the
    persister's ``apply_checked``); None: applied here."""

    def __init__(self, rooms: FederatedRooms, txns: FederationStore, clock: Clock,
                 pdus: PduHandler, edus: InboundEdus,
                 forward: ForwardTransaction | None = None) -> None:
        self._rooms = rooms
        self._txns = txns
        self._clock = clock
        self._pdus = pdus
        self._edus = edus
        self._forward = forward
        # (origin, txn ID) being processed now: a repeat waits for the first.
        self._running: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        # Transactions received since start-up, by outcome (metrics; see ``_count``).
        self.outcomes: dict[str, int] = dict.fromkeys(TXN_OUTCOMES, 0)

    @property
    def forwards(self) -> bool:
        """Whether transactions go on to the persister (a federation_inbound worker)."""
        return self._forward is not None

    async def forget_answers_before(self, ts: int) -> None:
        """Forget the answers to transactions received before ``ts`` (ms)."""
        await self._txns.forget_txns_before(ts)

    async def on_send(self, origin: str, txn_id: str, body: Mapping[str, Any]
                      ) -> dict[str, Any]:
        try:
            response = await self._on_send(origin, txn_id, body)
        except MatrixError:
            self.outcomes["refused"] += 1
            raise
        except Exception:
            self.outcomes["failed"] += 1
            raise
        pdu_results = response.get("pdus")
        if isinstance(pdu_results, Mapping) and any(
                isinstance(r, Mapping) and "error" in r for r in pdu_results.values()):
            self.outcomes["some_pdus_refused"] += 1
        else:
            self.outcomes["accepted"] += 1
        return response

    async def _on_send(self, origin: str, txn_id: str, body: Mapping[str, Any]
                       ) -> dict[str, Any]:
        pdus = body.get("pdus", [])
        edus = body.get("edus", [])
        if not isinstance(pdus, list) or not isinstance(edus, list):
            raise BadJson("pdus and edus must be lists")
        if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
            raise BadJson(f"A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs")
        if "origin" in body and body["origin"] != origin:
            raise MatrixError("The transaction's origin is not the server that signed it",
                              status=403, errcode="M_FORBIDDEN")
        if self._forward is not None:
            # A federation_inbound worker: the checks here, the rest at the persister.
            return await self._once(origin, txn_id, self._checked_and_forwarded(
                origin, txn_id, pdus, edus))
        return await self._once(origin, txn_id, self._handle(origin, txn_id, pdus, edus))

    async def apply_checked(self, origin: str, txn_id: str, rooms: list[CheckedRoom],
                            edus: list[Any]) -> dict[str, Any]:
        """A transaction whose PDUs a federation_inbound worker checked: the rest of
        ``on_send`` (what is stored already is read again here)."""
        return await self._once(origin, txn_id, self._apply_checked(origin, txn_id, rooms,
                                                                    edus))

    async def _once(self, origin: str, txn_id: str,
                    handle: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
        """``handle``'s answer, or, while the same transaction is being handled, that one's."""
        key = (origin, txn_id)
        running = self._running.get(key)
        if running is not None:
            handle.close()
            return await asyncio.shield(running)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            response = await handle
            future.set_result(response)
            return response
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved: a waiter may not exist
            raise
        finally:
            del self._running[key]

    async def _checked_and_forwarded(self, origin: str, txn_id: str, pdus: list[Any],
                                     edus: list[Any]) -> dict[str, Any]:
        assert self._forward is not None
        rooms = await self._check_pdus(origin, pdus)
        return await self._forward(origin, txn_id, rooms, edus)

    async def _apply_checked(self, origin: str, txn_id: str, rooms: list[CheckedRoom],
                             edus: list[Any]) -> dict[str, Any]:
        if not rooms and await self._edus_alone(origin, edus):
            return {"pdus": {}}
        done = await self._txns.received_txn(origin, txn_id)
        if done is not None:
            return done

        async def read_stored(room: CheckedRoom) -> None:
            room.stored = await self._rooms.is_stored([e.event_id for e in room.events])

        await asyncio.gather(*(read_stored(room) for room in rooms if room.events))
        return await self._apply(origin, txn_id, rooms, edus)

    async def _edus_alone(self, origin: str, edus: list[Any]) -> bool:
        """Typing, presence and receipts alone (most transactions) are applied at once: a
        repeat changes nothing, so the transaction needs no record. False (and nothing
        done) for any other EDU."""
        if not all(isinstance(e, Mapping) and e.get("edu_type") in IDEMPOTENT_EDUS
                   for e in edus):
            return False
        await self._process_edus(origin, edus)
        return True

    async def _handle(self, origin: str, txn_id: str, pdus: list[Any], edus: list[Any]
                      ) -> dict[str, Any]:
        if not pdus and await self._edus_alone(origin, edus):
            return {"pdus": {}}
        store = self._txns
        # Whether this transaction was answered before is read while its PDUs are checked
        # (checks change nothing), so the read costs the transaction no time.
        seen = asyncio.ensure_future(store.received_txn(origin, txn_id))
        try:
            rooms = await self._check_pdus(origin, pdus)
        except BaseException:
            seen.cancel()
            raise
        done = await seen
        if done is not None:
            return done
        return await self._apply(origin, txn_id, rooms, edus)

    async def _apply(self, origin: str, txn_id: str, rooms: list[CheckedRoom],
                     edus: list[Any]) -> dict[str, Any]:
        """Steps 4-6 of the checked PDUs, the EDUs, and the answer remembered."""
        store = self._txns
        # Keys first: a room key (to-device) or a new device often comes with the first
        # message that needs it, and a client that decrypts an event once, as it arrives,
        # must have the key by then. The other EDUs (receipts of these events) after.
        first = [e for e in edus if isinstance(e, Mapping) and e.get("edu_type") in KEY_EDUS]
        await self._process_edus(origin, first)
        response = {"pdus": await self._process_pdus(origin, rooms)}
        await self._process_edus(origin, [e for e in edus if not (
            isinstance(e, Mapping) and e.get("edu_type") in KEY_EDUS)])
        await store.remember_txn(origin, txn_id, response, self._clock.time_ms())
        return response

    async def _check_pdus(self, origin: str, pdus: list[Any]) -> list[CheckedRoom]:
        """Steps 1-3 (format, signatures, hashes) for each room's PDUs, rooms at once."""
        by_room: dict[str, list[Any]] = {}
        for pdu in pdus:
            room_id = pdu.get("room_id") if isinstance(pdu, Mapping) else None
            if not isinstance(room_id, str) or NUL in room_id:
                continue  # not an event of a room: nothing to answer under
            by_room.setdefault(room_id, []).append(pdu)
        return list(await asyncio.gather(*(self._check_room(origin, room_id, room_pdus)
                                           for room_id, room_pdus in by_room.items())))

    async def _check_room(self, origin: str, room_id: str, pdus: list[Any]) -> CheckedRoom:
        checked = CheckedRoom(room_id)
        version = await self._rooms.room_version(room_id)
        if version is None:
            logger.info("%s sent %d PDUs for unknown room %s", origin, len(pdus), room_id)
            return checked
        if not await self._rooms.server_allowed(room_id, origin):
            logger.info("%s is banned from %s by its server ACL", origin, room_id)
            for pdu in pdus:
                event_id = _event_id_of(pdu, version)
                if event_id is not None:
                    checked.results[event_id] = {"error": "Server is banned from this room"}
            return checked
        # Which are here already is read while they are checked.
        ids = [e for e in (_event_id_of(pdu, version) for pdu in pdus) if e is not None]
        stored = asyncio.ensure_future(self._rooms.is_stored(ids))
        try:
            for pdu in pdus:
                try:
                    event = await self._pdus.check_pdu(pdu, version)
                except InvalidPdu as e:
                    logger.info("Refused a PDU from %s: %s", origin, e)
                    event_id = _event_id_of(pdu, version)
                    if event_id is not None:
                        checked.results[event_id] = {"error": f"Invalid event: {e}"}
                    continue
                if event.room_id != room_id:
                    checked.results[event.event_id] = {
                        "error": "Event is not in the room it claims"}
                    continue
                checked.events.append(event)
        except BaseException:
            stored.cancel()
            raise
        checked.stored = await stored
        return checked

    async def _process_pdus(self, origin: str, rooms: list[CheckedRoom]) -> dict[str, Any]:
        """Steps 4-6 for the checked PDUs of each room, rooms at once; answered after their
        commits."""
        results: dict[str, Any] = {}
        for outcome in await asyncio.gather(*(self._process_room(origin, room)
                                              for room in rooms)):
            results.update(outcome)
        return results

    async def _process_room(self, origin: str, room: CheckedRoom) -> dict[str, Any]:
        results = dict(room.results)
        commits: list[asyncio.Future[None]] = []
        for event in sorted(room.events, key=lambda e: e.depth):
            if event.event_id in room.stored:
                results[event.event_id] = {}
                continue
            try:
                _outcome, future = await self._pdus.receive_queued(origin, event,
                                                                   known_absent=True)
                results[event.event_id] = {}
                if future is not None:
                    commits.append(future)
            except (AuthError, MatrixError) as e:
                logger.info("Rejected %s from %s: %s", event.event_id, origin, e)
                results[event.event_id] = {"error": str(e)}
        for future in commits:
            await self._rooms.committed(future, room.room_id)
        return results

    # -- EDUs ------------------------------------------------------------------------------

    async def _process_edus(self, origin: str, edus: list[Any]) -> None:
        # The transaction's read receipts (a server sends a burst of readers at once) are
        # stored together, in one commit, after the other EDUs.
        receipts: list[tuple[str, str, str, str]] = []
        for edu in edus:
            if not isinstance(edu, Mapping) or not isinstance(edu.get("content"), Mapping):
                continue
            if contains_nul(edu):
                # Its IDs would not fit the database (``homeserver.http.nul``).
                logger.info("Dropped a %s EDU from %s holding U+0000", edu.get("edu_type"),
                            origin)
                continue
            if nesting_exceeds(edu, MAX_PDU_NESTING):
                logger.info("Dropped a %s EDU from %s nested more than %d levels deep",
                            edu.get("edu_type"), origin, MAX_PDU_NESTING)
                continue
            try:
                if edu.get("edu_type") == "m.receipt":
                    receipts += await self._read_receipts(origin, edu["content"])
                else:
                    await self._process_edu(origin, str(edu.get("edu_type")), edu["content"])
            except MatrixError as e:
                logger.info("Ignored a %s EDU from %s: %s", edu.get("edu_type"), origin, e)
            except Exception:
                logger.exception("Handling a %s EDU from %s failed", edu.get("edu_type"),
                                 origin)
        try:
            await self._edus.receipts.remote_receipts(receipts)
        except Exception:
            logger.exception("Storing %d receipts from %s failed", len(receipts), origin)

    async def _read_receipts(self, origin: str, content: Mapping[str, Any]
                             ) -> list[tuple[str, str, str, str]]:
        """The public read receipts of an ``m.receipt`` EDU that ``origin`` may send, as
        (user, room, event ID, thread ID)."""
        received: list[tuple[str, str, str, str]] = []
        for room_id, by_type in content.items():
            if not isinstance(by_type, Mapping) or \
                    not await self._rooms.server_allowed(str(room_id), origin):
                continue
            for user_id, receipt in (by_type.get("m.read") or {}).items():
                if _server_of(user_id) != origin or not isinstance(receipt, Mapping):
                    continue
                event_ids = receipt.get("event_ids")
                data = receipt.get("data")
                thread = data.get("thread_id") if isinstance(data, Mapping) else None
                thread = thread if isinstance(thread, str) else ""
                if byte_length(thread) > MAX_IDENTIFIER_BYTES:
                    continue  # an event ID or "main"; nothing longer is kept
                if isinstance(event_ids, list) and event_ids and isinstance(event_ids[-1], str):
                    received.append((str(user_id), str(room_id), event_ids[-1], thread))
        return received

    async def _process_edu(self, origin: str, edu_type: str, content: Mapping[str, Any]
                           ) -> None:
        edus = self._edus
        if edu_type == "m.typing":
            user_id, room_id = content.get("user_id"), content.get("room_id")
            if _server_of(user_id) != origin or not isinstance(room_id, str) or \
                    not await self._rooms.server_allowed(room_id, origin):
                return
            await edus.typing.set_typing(room_id, str(user_id),
                                         content.get("typing") is True, None, local=False)
        elif edu_type == "m.presence":
            for push in content.get("push") or []:
                if not isinstance(push, Mapping) or _server_of(push.get("user_id")) != origin:
                    continue
                ago = push.get("last_active_ago")
                status = push.get("status_msg")
                await edus.presence.set_remote(
                    str(push["user_id"]), str(push.get("presence")),
                    status if isinstance(status, str) else None,
                    ago if isinstance(ago, int) and not isinstance(ago, bool) else 0)
        elif edu_type == "m.direct_to_device":
            await edus.to_device.receive_remote(origin, content)
        elif edu_type in ("m.device_list_update", "m.signing_key_update"):
            await self._device_list_update(origin, edu_type, content)

    async def _device_list_update(self, origin: str, edu_type: str,
                                  content: Mapping[str, Any]) -> None:
        """A user of ``origin`` changed devices or cross-signing keys: their cached device
        list follows, and local users sharing a room with them hear of it in their syncs."""
        user_id = content.get("user_id")
        if _server_of(user_id) != origin:
            logger.info("Ignored a %s EDU from %s about a user not of it", edu_type, origin)
            return
        device_id = None
        if edu_type == "m.device_list_update":
            device_id, stream_id = content.get("device_id"), content.get("stream_id")
            if not isinstance(device_id, str) or not device_id or \
                    byte_length(device_id) > MAX_IDENTIFIER_BYTES or \
                    not isinstance(stream_id, int) or isinstance(stream_id, bool):
                logger.info("Ignored an m.device_list_update EDU from %s without a valid "
                            "device_id and stream_id", origin)
                return
        await self._edus.keys.remote_device_list_changed(origin, str(user_id), device_id,
                                                         content)
