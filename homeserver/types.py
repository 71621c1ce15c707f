"""Matrix identifier types and their grammar (https://spec.matrix.org/v1.19/appendices/#identifier-grammar)."""

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

# Localparts we hand out: the spec's current grammar (lower case only).
_LOCALPART_RE = re.compile(r"^[a-z0-9._=\-/+]+$")
# Historical user IDs (from other servers) may use any printable ASCII except ':'.
_HISTORICAL_LOCALPART_RE = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")
_DNS_NAME_RE = re.compile(r"^[A-Za-z0-9\-.]{1,255}$")
_IPV4_RE = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$")
_IPV6_RE = re.compile(r"^\[[0-9A-Fa-f:.]{2,45}\]$")


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


def is_valid_localpart(localpart: str) -> bool:
    """Whether ``localpart`` may be used for a new user on this server."""
    return bool(_LOCALPART_RE.match(localpart))


@dataclass(frozen=True, slots=True)
class ParsedUserID:
    localpart: str
    server_name: ServerName

    def __str__(self) -> str:
        return f"@{self.localpart}:{self.server_name}"


def parse_user_id(value: str) -> ParsedUserID:
    """Split a user ID; raises ``ValueError`` when it does not follow the grammar."""
    if not isinstance(value, str) or not value.startswith("@") or ":" not in value:
        raise ValueError("User ID must look like @localpart:server")
    if len(value.encode("utf-8")) > MAX_USER_ID_LENGTH:
        raise ValueError("User ID is too long")
    localpart, server = value[1:].split(":", 1)
    if not localpart or not _HISTORICAL_LOCALPART_RE.match(localpart):
        raise ValueError("Invalid user ID localpart")
    if not is_valid_server_name(server):
        raise ValueError("Invalid server name in user ID")
    return ParsedUserID(localpart, ServerName(server))
