"""Server access control lists: ``m.room.server_acl``
(https://spec.matrix.org/v1.19/client-server-api/#server-access-control-lists-acls-for-rooms).

A server named by ``deny``, or not named by ``allow``, or (unless ``allow_ip_literals``) an IP
literal, takes no part in the room: its events and requests for the room are refused.
Patterns are globs (``*`` any run of characters, ``?`` one), matched case-insensitively
against the server's host, without its port. Pure code.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _host(server_name: str) -> str:
    if server_name.startswith("["):  # [IPv6]:port
        return server_name[1:server_name.find("]")] if "]" in server_name else server_name
    return server_name.rsplit(":", 1)[0] if server_name.count(":") == 1 else server_name


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def server_allowed(server_name: str, acl: Mapping[str, Any] | None) -> bool:
    """Whether ``server_name`` may take part in a room with this ACL content (None: no ACL)."""
    if acl is None:
        return True
    host = _host(server_name)
    if acl.get("allow_ip_literals", True) is False and _is_ip_literal(host):
        return False
    deny = acl.get("deny")
    if isinstance(deny, list) and any(isinstance(p, str) and _glob(p).fullmatch(host)
                                      for p in deny):
        return False
    allow = acl.get("allow")
    return isinstance(allow, list) and any(isinstance(p, str) and _glob(p).fullmatch(host)
                                           for p in allow)
