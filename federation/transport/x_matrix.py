"""The ``X-Matrix`` Authorization scheme of server-server requests (pure, no I/O).

https://spec.matrix.org/v1.16/server-server-api/#request-authentication: the sending server
signs a JSON object naming the method, the URI, both servers and the request body with its
ed25519 key, and sends the signature as
``Authorization: X-Matrix origin="...",destination="...",key="ed25519:...",sig="..."``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from signedjson.sign import SignatureVerifyException, sign_json, verify_signed_json
from signedjson.types import SigningKey, VerifyKey

from core.types import is_valid_server_name

__all__ = [
    "XMatrixAuth",
    "is_ip_literal",
    "is_valid_server_name",
    "parse_authorization",
    "sign_request",
    "split_server_name",
    "verify_request",
]

# One `name=value` parameter, its surrounding whitespace and the comma after it (RFC 9110
# section 11.4 auth-param; names are tokens). Unquoted values take any visible character but
# a comma, quote or backslash: the spec asks recipients to accept unquoted colons from older
# senders, and Synapse accepts unquoted base64 ('/' is not a token character).
_PARAM_RE = re.compile(
    r"""[ \t]*
        (?P<name>[!#$%&'*+\-.^_`|~0-9A-Za-z]+)
        =
        (?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<token>[^\s,"\\]+))
        [ \t]*
        (?P<end>,|\Z)""",
    re.VERBOSE,
)
_ESCAPE_RE = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class XMatrixAuth:
    """The parameters of an ``X-Matrix`` Authorization header.

    ``destination`` is None for older senders, which did not send it.
    """

    origin: str
    destination: str | None
    key_id: str
    sig: str = field(repr=False)


def split_server_name(name: str) -> tuple[str, int | None]:
    """Split a server name into host and port (None when absent).

    An IPv6 literal comes back without its brackets (``"[::1]:8448"`` gives ``("::1", 8448)``).

    Raises:
        ValueError: ``name`` does not follow the server-name grammar
            (https://spec.matrix.org/v1.16/appendices/#server-name).
    """
    if not is_valid_server_name(name):
        raise ValueError(f"invalid server name: {name!r}")
    if name.startswith("["):
        host, _, rest = name[1:].partition("]")
        port = rest[1:] if rest else None
    else:
        host, _, port_text = name.partition(":")
        port = port_text or None
    return host, int(port) if port is not None else None


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` (as returned by ``split_server_name``) is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _request_json(method: str, uri: str, origin: str, destination: str,
                  content: Any | None) -> dict[str, Any]:
    """The object whose signature is sent (spec: step 1 of Request Authentication)."""
    request: dict[str, Any] = {
        "method": method,
        "uri": uri,
        "origin": origin,
        "destination": destination,
    }
    if content is not None:
        request["content"] = content
    return request


def sign_request(origin: str, signing_key: SigningKey, method: str, uri: str,
                 destination: str, content: Any | None) -> str:
    """The ``Authorization`` header value for a request from ``origin`` to ``destination``.

    Args:
        origin: our server name.
        signing_key: our ed25519 signing key.
        method: the HTTP method, upper case.
        uri: the request target exactly as sent: percent-encoded path and query string.
        destination: the server name of the receiving server (before any delegation).
        content: the JSON body, or None for a request without one.
    """
    signed = sign_json(_request_json(method, uri, origin, destination, content),
                       origin, signing_key)
    key_id = f"{signing_key.alg}:{signing_key.version}"
    sig = signed["signatures"][origin][key_id]
    # Lower-case names, no spaces around commas and quoted values: what older servers parse.
    return (f'X-Matrix origin="{origin}",destination="{destination}",'
            f'key="{key_id}",sig="{sig}"')


def parse_authorization(header: str) -> XMatrixAuth:
    """Parse an ``X-Matrix`` Authorization header value.

    Follows https://spec.matrix.org/v1.16/server-server-api/#request-authentication:
    comma-separated ``name=value`` parameters with case-insensitive names, spaces and tabs
    allowed around the commas, values optionally quoted with backslash escapes, unknown
    parameters ignored.

    Raises:
        ValueError: not an X-Matrix header, malformed, or ``origin``, ``key`` or ``sig``
            missing or invalid.
    """
    scheme, space, rest = header.partition(" ")
    if scheme.lower() != "x-matrix" or not space:
        raise ValueError("not an X-Matrix Authorization header")

    params: dict[str, str] = {}
    pos = 0
    while True:
        match = _PARAM_RE.match(rest, pos)
        if match is None:
            raise ValueError(f"malformed X-Matrix parameters at offset {pos}")
        name = match["name"].lower()
        if name in params:
            raise ValueError(f"X-Matrix parameter {name!r} given twice")
        quoted = match["quoted"]
        params[name] = _ESCAPE_RE.sub(r"\1", quoted) if quoted is not None else match["token"]
        pos = match.end()
        if not match["end"]:
            break

    origin = params.get("origin")
    if origin is None or not is_valid_server_name(origin):
        raise ValueError("X-Matrix origin is missing or not a valid server name")
    destination = params.get("destination")
    if destination is not None and not is_valid_server_name(destination):
        raise ValueError("X-Matrix destination is not a valid server name")
    key_id = params.get("key", "")
    algorithm, _, version = key_id.partition(":")
    if algorithm != "ed25519" or not version:
        raise ValueError("X-Matrix key is missing or not an ed25519 key ID")
    sig = params.get("sig")
    if not sig:
        raise ValueError("X-Matrix sig is missing")
    return XMatrixAuth(origin, destination, key_id, sig)


def verify_request(auth: XMatrixAuth, verify_key: VerifyKey, method: str, uri: str,
                   destination: str, content: Any | None) -> None:
    """Check the signature of a received request.

    Args:
        auth: the parsed Authorization header.
        verify_key: the origin's key named by ``auth.key_id`` (its ``version`` must match).
        method: the HTTP method of the request.
        uri: the request target as received (``request.raw_path``: path and query string).
        destination: our own server name.
        content: the parsed JSON body, or None when there was none.

    Raises:
        ValueError: the header names another destination, or the signature does not verify.
    """
    # Spec: a destination that is not ours must be refused (older senders leave it out).
    if auth.destination is not None and auth.destination != destination:
        raise ValueError("X-Matrix destination is not this server")
    signed = _request_json(method, uri, auth.origin, destination, content)
    signed["signatures"] = {auth.origin: {auth.key_id: auth.sig}}
    try:
        verify_signed_json(signed, auth.origin, verify_key)
    except SignatureVerifyException as e:
        raise ValueError(f"X-Matrix signature does not verify: {e}") from None
