"""Matrix identifier types and their grammar (https://spec.matrix.org/v1.19/appendices/#identifier-grammar).

Every identifier a client or another server hands us is checked here, where it enters, before
anything is looked up or stored under it. The checks raise ``InvalidIdentifier`` (a
``ValueError``; ``IdentifierTooLong`` for one over its length limit) with a message that never
repeats the value, which may be kilobytes long; the client API turns them into Matrix errors
(``client_api/params.py``), federation into a refused PDU or a dropped EDU.

Lengths are in bytes of UTF-8. The spec bounds user IDs, room IDs and aliases at 255 bytes, and
an event's ``type``, ``state_key``, ``sender``, ``room_id`` and ``event_id`` at 255 bytes too
(its PDU size limits; Synapse checks them on every event, local or received). Transaction IDs,
account data types and tags have no limit in the spec; we hold them to the same 255 bytes
(every client's are far shorter), so nothing unbounded is kept under them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NewType

JsonDict = dict[str, Any]

UserID = NewType("UserID", str)
"""A full user ID, ``@localpart:server.name``."""
DeviceID = NewType("DeviceID", str)
ServerName = NewType("ServerName", str)

MAX_USER_ID_LENGTH = 255
MAX_IDENTIFIER_BYTES = 255
"""The longest identifier of every kind here, in bytes of UTF-8."""

# Localparts we hand out: the spec's current grammar (lower case only).
_LOCALPART_RE = re.compile(r"^[a-z0-9._=\-/+]+$")
# Historical user IDs (from other servers) may use any printable ASCII except ':'.
_HISTORICAL_LOCALPART_RE = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")
_DNS_NAME_RE = re.compile(r"^[A-Za-z0-9\-.]{1,255}$")
_IPV4_RE = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$")
_IPV6_RE = re.compile(r"^\[[0-9A-Fa-f:.]{2,45}\]$")
# Unicode's control characters (Cc: C0, DEL, C1), refused in every identifier but state keys.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Lone surrogates (from a JSON "\ud800"): not text, and not encodable as UTF-8.
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


class InvalidIdentifier(ValueError):
    """An identifier that does not follow its grammar; the message names what is wrong."""


class IdentifierTooLong(InvalidIdentifier):
    """An identifier longer than its limit (``MAX_IDENTIFIER_BYTES``)."""


def byte_length(value: str) -> int:
    """The length of ``value`` in bytes of UTF-8."""
    return len(value.encode("utf-8", "surrogatepass"))


def _check(value: object, what: str, *, sigil: str = "", may_be_empty: bool = False,
           controls: bool = False) -> str:
    """``value`` as a checked identifier string: a string, starting with ``sigil`` and
    something after it (unless ``may_be_empty``), no lone surrogates, control characters only
    when ``controls``, at most ``MAX_IDENTIFIER_BYTES``.

    Raises:
        InvalidIdentifier: it is not (``IdentifierTooLong`` when only its length is wrong).
    """
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{what} must be a string")
    if sigil and not value.startswith(sigil):
        raise InvalidIdentifier(f"{what} must start with {sigil!r}")
    if len(value) <= len(sigil) and not may_be_empty:
        raise InvalidIdentifier(f"{what} must not be empty")
    if _SURROGATE_RE.search(value):
        raise InvalidIdentifier(f"{what} must be Unicode text (it holds a lone surrogate)")
    if byte_length(value) > MAX_IDENTIFIER_BYTES:
        raise IdentifierTooLong(f"{what} is longer than {MAX_IDENTIFIER_BYTES} bytes")
    if not controls and _CONTROL_RE.search(value):
        raise InvalidIdentifier(f"{what} must not contain control characters")
    return value


def is_valid_server_name(name: str) -> bool:
    """Whether ``name`` is ``hostname[:port]`` per the spec's server-name grammar."""
    host, port = name, None
    if name.startswith("["):
        end = name.find("]")
        if end < 0:
            return False
        host, rest = name[: end + 1], name[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return False
            port = rest[1:]
        if not _IPV6_RE.match(host):
            return False
    elif ":" in name:
        host, port = name.rsplit(":", 1)
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536 and len(port) <= 5):
        return False
    if host.startswith("["):
        return True
    return bool(_IPV4_RE.match(host) or _DNS_NAME_RE.match(host))


def parse_server_name(value: object) -> ServerName:
    """A server name (``hostname[:port]``), as ``via`` and ``server_name`` name them.

    Raises:
        InvalidIdentifier: it does not follow the grammar.
    """
    if not isinstance(value, str) or not is_valid_server_name(value):
        raise InvalidIdentifier("Invalid server name")
    return ServerName(value)


def is_valid_localpart(localpart: str) -> bool:
    """Whether ``localpart`` may be used for a new user on this server."""
    return bool(_LOCALPART_RE.match(localpart))


@dataclass(frozen=True, slots=True)
class ParsedUserID:
    localpart: str
    server_name: ServerName

    def __str__(self) -> str:
        return f"@{self.localpart}:{self.server_name}"


def parse_user_id(value: object) -> ParsedUserID:
    """Split a user ID (``@localpart:server``, the historical localpart grammar, at most 255
    bytes).

    Raises:
        InvalidIdentifier: it does not follow the grammar.
    """
    if not isinstance(value, str) or not value.startswith("@") or ":" not in value:
        raise InvalidIdentifier("User ID must look like @localpart:server")
    if byte_length(value) > MAX_USER_ID_LENGTH:
        raise IdentifierTooLong("User ID is too long")
    localpart, server = value[1:].split(":", 1)
    if not localpart or not _HISTORICAL_LOCALPART_RE.match(localpart):
        raise InvalidIdentifier("Invalid user ID localpart")
    if not is_valid_server_name(server):
        raise InvalidIdentifier("Invalid server name in user ID")
    return ParsedUserID(localpart, ServerName(server))


@dataclass(frozen=True, slots=True)
class ParsedRoomAlias:
    localpart: str
    server_name: ServerName

    def __str__(self) -> str:
        return f"#{self.localpart}:{self.server_name}"


def parse_room_alias(value: object) -> ParsedRoomAlias:
    """Split a room alias: ``#localpart:server``, at most 255 bytes; the localpart is any
    text but ``:`` (it ends at the first one) and control characters.

    Raises:
        InvalidIdentifier: it does not follow the grammar.
    """
    alias = _check(value, "Room alias", sigil="#")
    if ":" not in alias:
        raise InvalidIdentifier("Room alias must look like #localpart:server")
    localpart, server = alias[1:].split(":", 1)
    if not localpart:
        raise InvalidIdentifier("Room alias localpart must not be empty")
    if not is_valid_server_name(server):
        raise InvalidIdentifier("Invalid server name in room alias")
    return ParsedRoomAlias(localpart, ServerName(server))


def check_room_id(value: object) -> str:
    """A room ID: ``!`` and an opaque rest (``!opaque:server`` before room version 12, the
    create event's hash from 12 on), at most 255 bytes."""
    return _check(value, "Room ID", sigil="!")


def check_event_id(value: object) -> str:
    """An event ID: ``$`` and an opaque rest (a hash from room version 3 on), at most 255
    bytes."""
    return _check(value, "Event ID", sigil="$")


def check_event_type(value: object) -> str:
    """An event type (of a room event, a to-device message, an EDU): 1 to 255 bytes. Any
    text but control characters, ``/`` included (Synapse takes ``%2F`` in a path segment)."""
    return _check(value, "Event type")


def check_state_key(value: object) -> str:
    """A state key: at most 255 bytes, empty included; the spec gives it no grammar."""
    return _check(value, "State key", may_be_empty=True, controls=True)


def check_transaction_id(value: object) -> str:
    """A client's transaction ID: 1 to 255 bytes, no control characters."""
    return _check(value, "Transaction ID")


def check_account_data_type(value: object) -> str:
    """An account data type: 1 to 255 bytes, no control characters."""
    return _check(value, "Account data type")


def check_tag(value: object) -> str:
    """A room tag's name: 1 to 255 bytes, no control characters."""
    return _check(value, "Tag")
