"""Unpadded Base64, the encoding of every hash, signature and key in Matrix
(https://spec.matrix.org/v1.19/appendices/#unpadded-base64).

Event IDs of room versions 4 and later use the URL-safe alphabet (RFC 4648 §5); hashes,
signatures and keys use the standard one (§4). Decoding accepts both alphabets, as Synapse's
``unpaddedbase64.decode_base64`` does, but no padding, whitespace or other stray characters.
"""

from __future__ import annotations

import base64
import binascii
import re

_STANDARD_RE = re.compile(r"^[A-Za-z0-9+/]*$")
_URL_SAFE_RE = re.compile(r"^[A-Za-z0-9\-_]*$")


def encode_base64(data: bytes, *, urlsafe: bool = False) -> str:
    """Encode ``data`` as unpadded Base64.

    Args:
        data: The bytes to encode.
        urlsafe: Use the URL-safe alphabet (``-`` and ``_`` for ``+`` and ``/``), as v4+ event
            IDs do.

    Returns:
        The encoding, without trailing ``=``.
    """
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return encoded.rstrip(b"=").decode("ascii")


def decode_base64(text: str) -> bytes:
    """Decode unpadded Base64 in either the standard or the URL-safe alphabet.

    Args:
        text: The unpadded encoding.

    Returns:
        The decoded bytes.

    Raises:
        ValueError: ``text`` is not unpadded Base64 (wrong characters, mixed alphabets,
            padding, or a length that no byte string encodes to).
    """
    if not isinstance(text, str) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64")
    padded = text + "=" * (-len(text) % 4)
    try:
        if _STANDARD_RE.match(text):
            return base64.b64decode(padded, validate=True)
        if _URL_SAFE_RE.match(text):
            return base64.urlsafe_b64decode(padded)
    except binascii.Error as e:
        raise ValueError(f"not unpadded base64: {e}") from None
    raise ValueError("not unpadded base64")
