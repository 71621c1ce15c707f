"""The server's ed25519 signing key, in the file format Synapse uses.

One line per key: ``ed25519 KEY_VERSION SEED_UNPADDED_BASE64``; the key ID is
``ed25519:KEY_VERSION``. Keys move between servers unchanged.
"""

from __future__ import annotations

import secrets
import string
from pathlib import Path

from signedjson.key import (
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
    read_signing_keys,
    write_signing_keys,
)
from signedjson.types import SigningKey


def new_key_version() -> str:
    """A short random key version, e.g. ``a_Xyz1``, as Synapse generates."""
    alphabet = string.ascii_letters + string.digits
    return "a_" + "".join(secrets.choice(alphabet) for _ in range(4))


def generate_key_file(path: Path) -> None:
    """Write a new signing key to ``path``; the file must not exist yet."""
    key = generate_signing_key(new_key_version())
    with open(path, "x", encoding="utf-8") as f:
        write_signing_keys(f, [key])
    path.chmod(0o600)


def load_signing_key(path: Path) -> SigningKey:
    """The first key in the file. Raises ``ValueError`` if the file holds no valid key."""
    with open(path, encoding="utf-8") as f:
        try:
            keys = read_signing_keys(f)
        except Exception as e:  # signedjson raises bare Exceptions on bad files
            raise ValueError(f"not a signing key file: {e}") from None
    if not keys:
        raise ValueError("the file holds no signing key")
    return keys[0]


def key_id(key: SigningKey) -> str:
    return f"{key.alg}:{key.version}"


def verify_key_base64(key: SigningKey) -> str:
    return encode_verify_key_base64(get_verify_key(key))
