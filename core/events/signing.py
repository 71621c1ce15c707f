"""Signing events and checking their signatures.

A server signs the redacted form of an event, so the signature stays valid when the event is
redacted later (https://spec.matrix.org/v1.19/server-server-api/#signing-events). On receipt,
the signatures expected are the sender's server's, except on an invite made from a
third-party invite, plus, for room versions 1 and 2 only, the server that minted the event ID
(https://spec.matrix.org/v1.19/server-server-api/#validating-hashes-and-signatures-on-received-events).
Since room version 8 a membership event with ``join_authorised_via_users_server`` must also
be signed by that user's server (auth rule 4.2 of v8+, 5.2 of v12).

Reference: Synapse ``synapse.crypto.event_signing`` (signing) and
``synapse.federation.federation_base._check_sigs_on_pdu`` /
``synapse.event_auth.validate_event_for_room_version`` (which servers must have signed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from signedjson.types import SigningKey, VerifyKey

from core.events.redaction import redact
from core.events.room_versions import RoomVersion


class InvalidEventSignature(ValueError):
    """An event lacks a required signature, or a signature does not verify."""


def signing_input(pdu: Mapping[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """The redacted event without ``unsigned`` and ``age_ts``: what signatures cover (apart
    from ``signatures`` itself, which signedjson takes out)."""
    redacted = redact(pdu, room_version)
    redacted.pop("unsigned", None)
    redacted.pop("age_ts", None)
    return redacted


def sign_event(
    pdu: Mapping[str, Any], room_version: RoomVersion, server_name: str, signing_key: SigningKey
) -> dict[str, Any]:
    """A copy of ``pdu`` with ``server_name``'s signature added.

    Spec: https://spec.matrix.org/v1.19/server-server-api/#signing-events

    Args:
        pdu: The event, which should already carry its content hash (``add_content_hash``).
            Not modified.
        room_version: The version of the event's room (it picks the redaction algorithm).
        server_name: The signing server's name, the key in ``signatures``.
        signing_key: The server's ed25519 key (``signedjson``), whose ``alg:version`` is the
            key ID.

    Returns:
        A shallow copy of ``pdu`` whose ``signatures`` keeps every existing signature and
        adds (or replaces) ``signatures[server_name][key_id]``.
    """
    signed = sign_json(signing_input(pdu, room_version), server_name, signing_key)
    new_signature = signed["signatures"][server_name]
    result = dict(pdu)
    old_signatures = pdu.get("signatures")
    signatures = {
        name: dict(keys)
        for name, keys in (old_signatures.items() if isinstance(old_signatures, Mapping) else ())
        if isinstance(keys, Mapping)
    }
    signatures.setdefault(server_name, {}).update(new_signature)
    result["signatures"] = signatures
    return result


def verify_event_signature(
    pdu: Mapping[str, Any], room_version: RoomVersion, server_name: str, verify_key: VerifyKey
) -> None:
    """Check ``server_name``'s signature on ``pdu`` with ``verify_key``.

    Spec: https://spec.matrix.org/v1.19/server-server-api/#validating-hashes-and-signatures-on-received-events
    and https://spec.matrix.org/v1.19/appendices/#checking-for-a-signature

    Works on the full event and on any redacted copy alike.

    Args:
        pdu: The event as received.
        room_version: The version of the event's room.
        server_name: The server whose signature to check.
        verify_key: That server's public key (``signedjson``); its ``alg:version`` names the
            signature to check.

    Raises:
        InvalidEventSignature: There is no signature by ``server_name`` under that key ID, it
            is not unpadded Base64, or it does not verify.
    """
    signatures = pdu.get("signatures")
    server_signatures = signatures.get(server_name) if isinstance(signatures, Mapping) else None
    if not isinstance(server_signatures, Mapping):
        raise InvalidEventSignature(f"the event is not signed by {server_name}")
    key_id = f"{verify_key.alg}:{verify_key.version}"
    signature = server_signatures.get(key_id)
    if not isinstance(signature, str):
        raise InvalidEventSignature(f"the event has no signature by {server_name} {key_id}")
    signed = signing_input(pdu, room_version)
    signed["signatures"] = {server_name: {key_id: signature}}
    try:
        verify_signed_json(signed, server_name, verify_key)
    except SignatureVerifyException as e:
        raise InvalidEventSignature(str(e)) from None


def required_signers(pdu: Mapping[str, Any], room_version: RoomVersion) -> frozenset[str]:
    """The servers whose signatures ``pdu`` must carry.

    Spec: https://spec.matrix.org/v1.19/server-server-api/#validating-hashes-and-signatures-on-received-events
    (the ``sender``'s server, except for an invite made from a third-party invite; the server
    of the event ID only matters in room versions 1 and 2, which are not supported) and the
    v8+ auth rule on ``join_authorised_via_users_server``
    (https://spec.matrix.org/v1.19/rooms/v12/#authorization-rules, rule 5.2).

    Args:
        pdu: The event as received.
        room_version: The version of the event's room (every supported version has
            restricted joins, so it does not change the answer today).

    Returns:
        The server names.

    Raises:
        ValueError: ``sender`` or ``join_authorised_via_users_server`` is not a user ID.
    """
    del room_version  # The same rules for v10, v11 and v12.
    servers: set[str] = set()
    content = pdu.get("content")
    content = content if isinstance(content, Mapping) else {}
    is_member_event = pdu.get("type") == "m.room.member"
    invite_via_third_party = (
        is_member_event
        and content.get("membership") == "invite"
        and "third_party_invite" in content
    )
    if not invite_via_third_party:
        servers.add(_server_of(pdu.get("sender")))
    if is_member_event and "join_authorised_via_users_server" in content:
        servers.add(_server_of(content["join_authorised_via_users_server"]))
    return frozenset(servers)


def _server_of(user_id: object) -> str:
    if not isinstance(user_id, str) or not user_id.startswith("@") or ":" not in user_id:
        raise ValueError(f"not a user ID: {user_id!r}")
    server = user_id.split(":", 1)[1]
    if not server:
        raise ValueError(f"not a user ID: {user_id!r}")
    return server
