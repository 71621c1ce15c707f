"""Building new events, and turning received PDUs into ``Event`` objects.

A new event is assembled in federation form (https://spec.matrix.org/v1.19/rooms/v11/#event-format
for v10/v11; https://spec.matrix.org/v1.19/rooms/v12/#event-format for v12), then, in order:
content hash, signature, event ID
(https://spec.matrix.org/v1.19/server-server-api/#signing-events). As Synapse does since it
dropped the field, no top-level ``origin`` is added.

Redactions (https://spec.matrix.org/v1.19/rooms/v11/#event-format): up to v10 the redacted
event's ID is the top-level ``redacts``; from v11 it is ``content.redacts`` and a top-level
``redacts`` is not part of the event (it is not even covered by the hashes). Like Synapse's
``EventBuilder``, the PDU of a v11+ redaction carries only ``content.redacts``; the top-level
copy that v1.x clients still read is added when the event is serialized for clients, not here.

MSC4291 (v12): the create event has no ``room_id``; the room ID is its event ID with ``!``
instead of ``$``, and no event lists the create event in ``auth_events``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from signedjson.types import SigningKey

from core.events.canonical import check_canonical_json, encode_canonical
from core.events.hashing import add_content_hash, compute_event_id
from core.events.model import Event
from core.events.room_versions import RoomVersion
from core.events.signing import signing_input
from core.events.unpadded_base64 import encode_base64


def is_create_event(pdu: Mapping[str, Any]) -> bool:
    """Whether ``pdu`` is the room's ``m.room.create`` event (type and empty state key)."""
    return pdu.get("type") == "m.room.create" and pdu.get("state_key") == ""


def build_event(
    room_version: RoomVersion,
    *,
    type: str,  # the spec's field name, shadowing the builtin on purpose
    sender: str,
    content: Mapping[str, Any],
    room_id: str | None = None,
    state_key: str | None = None,
    prev_events: Sequence[str],
    auth_events: Sequence[str],
    depth: int,
    origin_server_ts: int,
    redacts: str | None = None,
    unsigned: Mapping[str, Any] | None = None,
    server_name: str,
    signing_key: SigningKey,
) -> Event:
    """Build, hash and sign a new event.

    Spec: https://spec.matrix.org/v1.19/server-server-api/#signing-events and the event
    format of the room version.

    Args:
        room_version: The version of the room.
        type: The event type.
        sender: The sending user's ID.
        content: The event content (copied; not modified).
        room_id: The room ID; must be None for the create event of a v12 room, and set for
            every other event.
        state_key: The state key of a state event; None for a message event.
        prev_events: IDs of the events this one follows.
        auth_events: IDs of the events that authorise this one (never the create event in a
            v12 room).
        depth: The event's depth.
        origin_server_ts: When the event was created, in milliseconds since the epoch.
        redacts: For ``m.room.redaction``, the redacted event's ID: top-level up to v10,
            ``content.redacts`` from v11. May be None in v11+ if ``content`` holds it.
        unsigned: Data to carry in ``unsigned`` (not hashed, not signed).
        server_name: This server's name, under which the event is signed.
        signing_key: This server's signing key.

    Returns:
        The signed event, its ID computed from the reference hash.

    Raises:
        ValueError: The arguments do not make a valid event for this room version (room ID
            present or missing wrongly, the v12 create event listed in ``auth_events``,
            ``redacts`` on another event type or disagreeing with ``content.redacts``, or
            values that are not strict canonical JSON).
    """
    pdu_content = copy.deepcopy(dict(content))
    pdu: dict[str, Any] = {
        "type": type,
        "sender": sender,
        "content": pdu_content,
        "prev_events": list(prev_events),
        "auth_events": list(auth_events),
        "depth": depth,
        "origin_server_ts": origin_server_ts,
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    _place_room_id(pdu, room_version, room_id)
    if redacts is not None:
        _place_redacts(pdu, room_version, redacts)
    if unsigned:
        pdu["unsigned"] = copy.deepcopy(dict(unsigned))
    check_canonical_json(pdu)

    pdu = add_content_hash(pdu)
    # For a new event the signed bytes and the bytes of the reference hash are the same (the
    # redacted event without signatures, unsigned and age_ts): encode them once.
    signed_bytes = encode_canonical(signing_input(pdu, room_version))
    signature = signing_key.sign(signed_bytes).signature
    pdu["signatures"] = {server_name: {
        f"{signing_key.alg}:{signing_key.version}": encode_base64(signature)}}
    event_id = "$" + encode_base64(hashlib.sha256(signed_bytes).digest(), urlsafe=True)
    return Event(event_id, room_version, pdu)


def _place_room_id(pdu: dict[str, Any], room_version: RoomVersion, room_id: str | None) -> None:
    if room_version.room_id_is_create_event_hash and is_create_event(pdu):
        if room_id is not None:
            raise ValueError(f"a v{room_version.identifier} create event has no room_id")
        return
    if room_id is None:
        raise ValueError("room_id is required")
    if room_version.room_id_is_create_event_hash:
        create_event_id = "$" + room_id[1:]
        if create_event_id in pdu["auth_events"]:
            raise ValueError(
                f"a v{room_version.identifier} event must not list the create event in "
                "auth_events"
            )
    pdu["room_id"] = room_id


def _place_redacts(pdu: dict[str, Any], room_version: RoomVersion, redacts: str) -> None:
    if pdu["type"] != "m.room.redaction":
        raise ValueError("only m.room.redaction events have redacts")
    if not room_version.updated_redaction_rules:
        pdu["redacts"] = redacts
        return
    in_content = pdu["content"].get("redacts")
    if in_content is not None and in_content != redacts:
        raise ValueError("redacts disagrees with content.redacts")
    pdu["content"]["redacts"] = redacts


def event_from_pdu(pdu: Mapping[str, Any], room_version: RoomVersion) -> Event:
    """Wrap a PDU in an ``Event``, computing its event ID.

    Spec: https://spec.matrix.org/v1.19/rooms/v4/#event-ids (the ID format of every
    supported version). Checks nothing: hashes, signatures, canonical JSON and auth are the
    receiving pipeline's steps.

    Args:
        pdu: The event in federation form (deep-copied, so later changes by the caller do not
            reach the event).
        room_version: The version of the event's room.

    Returns:
        The event.
    """
    owned = copy.deepcopy(dict(pdu))
    return Event(compute_event_id(owned, room_version), room_version, owned)


def room_id_for_create_event(event: Event) -> str:
    """The room ID a v12 create event defines: its event ID with ``!`` for ``$``.

    Spec: https://spec.matrix.org/v1.19/rooms/v12/#event-format and
    https://spec.matrix.org/v1.19/appendices/#room-ids (MSC4291).

    Args:
        event: The ``m.room.create`` event of a room whose version derives room IDs from it.

    Returns:
        The room ID.

    Raises:
        ValueError: ``event`` is not a create event, or its room version has room IDs of the
            older ``!opaque:server`` form.
    """
    if not event.room_version.room_id_is_create_event_hash:
        raise ValueError(
            f"room version {event.room_version.identifier} does not derive room IDs from the "
            "create event"
        )
    if not is_create_event(event.pdu):
        raise ValueError("not an m.room.create event")
    return "!" + event.event_id[1:]
