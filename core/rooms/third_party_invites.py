"""Third-party invites (rule 5.4.1.7 of the authorization rules): an identity server's
public keys in ``m.room.third_party_invite`` and the signatures they verify."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nacl.exceptions import BadSignatureError
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from core.events.model import Event
from core.events.unpadded_base64 import decode_base64

# -- Third-party invites ------------------------------------------------------------------------


def third_party_invite_public_keys(invite_event: Event) -> list[str]:
    """The public keys of an ``m.room.third_party_invite`` (rule 5.4.1.7).

    Returns:
        ``content.public_key`` then each ``content.public_keys[].public_key`` (unpadded
        Base64 strings; malformed entries are skipped).
    """
    content = invite_event.content
    keys: list[str] = []
    public_key = content.get("public_key")
    if isinstance(public_key, str):
        keys.append(public_key)
    public_keys = content.get("public_keys")
    if isinstance(public_keys, list):
        for entry in public_keys:
            if isinstance(entry, Mapping) and isinstance(entry.get("public_key"), str):
                keys.append(entry["public_key"])
    return keys


def verify_third_party_invite_signature(
    signed: Mapping[str, Any], public_keys: Sequence[str]
) -> bool:
    """Rule 5.4.1.7: does any ed25519 signature in ``signed`` verify with any public key?

    The identity server's public keys are in the ``m.room.third_party_invite`` event, so any
    signing server name and key ID in ``signed.signatures`` is accepted if the signature
    verifies (as in Synapse; whether the identity server has since revoked the key is the
    caller's business).

    Args:
        signed: ``content.third_party_invite.signed`` of the invite.
        public_keys: Unpadded-Base64 ed25519 public keys (:func:`third_party_invite_public_keys`).

    Returns:
        True if one signature verifies.
    """
    signatures = signed.get("signatures")
    if not isinstance(signatures, Mapping):
        return False
    for public_key in public_keys:
        try:
            key_bytes = decode_base64(public_key)
        except ValueError:
            continue
        for server_name, server_signatures in signatures.items():
            if not isinstance(server_signatures, Mapping):
                continue
            for key_id in server_signatures:
                if not isinstance(key_id, str) or not key_id.startswith("ed25519:"):
                    continue
                try:
                    verify_key = decode_verify_key_bytes(key_id, key_bytes)
                    verify_signed_json(dict(signed), server_name, verify_key)
                except (SignatureVerifyException, BadSignatureError, ValueError, TypeError):
                    continue
                return True
    return False


