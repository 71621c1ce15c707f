"""The secret every process of one server shares for its internal calls, derived from the
signing key they all read (no further key to configure or leak)."""

from __future__ import annotations

import hashlib
import hmac

from signedjson.types import SigningKey

HEADER = "Authorization"
SCHEME = "KTChat-Replication "


def replication_secret(signing_key: SigningKey, server_name: str) -> str:
    seed = bytes(signing_key)  # the 32-byte seed (nacl SigningKey)
    return hmac.new(seed, b"ktchat replication " + server_name.encode(),
                    hashlib.sha256).hexdigest()


def authorized(header: str | None, secret: str) -> bool:
    if header is None or not header.startswith(SCHEME):
        return False
    return hmac.compare_digest(header[len(SCHEME):].encode(), secret.encode())
