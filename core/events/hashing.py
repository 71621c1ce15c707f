"""Content hashes, reference hashes and event IDs.

- The content hash covers the whole, unredacted event; the sender puts it in
  ``hashes.sha256`` before signing, so a receiver can tell a full event from a redacted copy
  (https://spec.matrix.org/v1.19/server-server-api/#calculating-the-content-hash-for-an-event).
- The reference hash covers the redacted event, content hash included, signatures excluded
  (https://spec.matrix.org/v1.19/server-server-api/#calculating-the-reference-hash-for-an-event).
  In room versions 4 and later the event ID is ``$`` followed by its URL-safe unpadded Base64
  (https://spec.matrix.org/v1.19/rooms/v4/#event-ids); every supported version (10, 11, 12)
  uses that format.

Reference: Synapse ``synapse.crypto.event_signing``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from core.events.canonical import encode_canonical
from core.events.redaction import redact
from core.events.room_versions import RoomVersion
from core.events.unpadded_base64 import decode_base64, encode_base64

# Keys left out of the content hash: exactly the spec's three. (Synapse also drops top-level
# `age_ts`, `outlier` and `destinations`, leftovers of room versions 1-2 that no event of a
# v10+ room carries; ruma and gomatrixserverlib do not.)
_NOT_IN_CONTENT_HASH = ("unsigned", "signatures", "hashes")
# Keys left out of the reference hash after redaction. Redaction already drops `unsigned`
# and a top-level `age_ts`; removing them again states the spec's step 2 explicitly (the spec
# text before v1.8 also listed `age_ts`, and Synapse still removes it).
_NOT_IN_REFERENCE_HASH = ("signatures", "unsigned", "age_ts")


def compute_content_hash(pdu: Mapping[str, Any]) -> bytes:
    """The SHA-256 content hash of ``pdu``.

    Spec: https://spec.matrix.org/v1.19/server-server-api/#calculating-the-content-hash-for-an-event

    Args:
        pdu: The full (unredacted) event in federation form.

    Returns:
        The 32-byte digest of the canonical JSON of ``pdu`` without ``unsigned``,
        ``signatures`` and ``hashes``.
    """
    hashed = {key: value for key, value in pdu.items() if key not in _NOT_IN_CONTENT_HASH}
    return hashlib.sha256(encode_canonical(hashed)).digest()


def add_content_hash(pdu: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``pdu`` with ``hashes.sha256`` set to its content hash.

    Spec: https://spec.matrix.org/v1.19/server-server-api/#calculating-the-content-hash-for-an-event

    Args:
        pdu: The event to hash. Not modified.

    Returns:
        A shallow copy of ``pdu`` whose ``hashes`` is a new dict holding any other hashes
        ``pdu`` had plus ``sha256`` (unpadded standard Base64).
    """
    hashed = dict(pdu)
    old_hashes = pdu.get("hashes")
    hashes = dict(old_hashes) if isinstance(old_hashes, Mapping) else {}
    hashes["sha256"] = encode_base64(compute_content_hash(pdu))
    hashed["hashes"] = hashes
    return hashed


def check_content_hash(pdu: Mapping[str, Any]) -> bool:
    """Whether ``hashes.sha256`` of ``pdu`` matches its content.

    A mismatch on an event whose signatures verify means it was redacted on the way (or
    tampered with): the spec says to keep the redacted copy instead
    (https://spec.matrix.org/v1.19/server-server-api/#checks-performed-on-receipt-of-a-pdu).

    Args:
        pdu: The event as received.

    Returns:
        True if the content hash matches, False otherwise.

    Raises:
        ValueError: ``hashes`` is missing or not an object, has no ``sha256``, or that is not
            unpadded Base64. Synapse rejects such an event outright rather than redacting it.
    """
    hashes = pdu.get("hashes")
    if not isinstance(hashes, Mapping):
        raise ValueError("the event has no 'hashes' object")
    expected = hashes.get("sha256")
    if not isinstance(expected, str):
        raise ValueError("the event has no 'sha256' content hash")
    return decode_base64(expected) == compute_content_hash(pdu)


def reference_hash(pdu: Mapping[str, Any], room_version: RoomVersion) -> bytes:
    """The SHA-256 reference hash of ``pdu``.

    Spec: https://spec.matrix.org/v1.19/server-server-api/#calculating-the-reference-hash-for-an-event

    Args:
        pdu: The event in federation form (full or redacted: both give the same hash).
        room_version: The version of the event's room, which picks the redaction algorithm.

    Returns:
        The 32-byte digest of the canonical JSON of the redacted event without
        ``signatures``, ``unsigned`` and ``age_ts``.
    """
    redacted = redact(pdu, room_version)
    for key in _NOT_IN_REFERENCE_HASH:
        redacted.pop(key, None)
    return hashlib.sha256(encode_canonical(redacted)).digest()


def compute_event_id(pdu: Mapping[str, Any], room_version: RoomVersion) -> str:
    """The event ID of ``pdu``: ``$`` and the URL-safe unpadded Base64 of its reference hash.

    Spec: https://spec.matrix.org/v1.19/rooms/v4/#event-ids (the format of every supported
    room version).

    Args:
        pdu: The event in federation form, with its ``hashes`` (the ID covers them).
        room_version: The version of the event's room.

    Returns:
        The event ID, e.g. ``$8yif6p8EqgoSten2BLje9ntKm720NyFLWQv9tn8memc``.
    """
    return "$" + encode_base64(reference_hash(pdu, room_version), urlsafe=True)
