"""Server ACL matching (m.room.server_acl), table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from core.rooms.server_acl import server_allowed

ACL = {"allow": ["*"], "deny": ["evil.example", "*.bad.example", "ba?.example"],
       "allow_ip_literals": False}


@pytest.mark.parametrize(("server", "acl", "allowed"), [
    ("good.example", None, True),
    ("good.example", ACL, True),
    ("good.example:8448", ACL, True),
    ("evil.example", ACL, False),
    ("EVIL.example:443", ACL, False),  # case-insensitive, port ignored
    ("a.bad.example", ACL, False),
    ("bad.example", ACL, False),  # "ba?.example"
    ("bat.example", ACL, False),
    ("baad.example", ACL, True),
    ("1.2.3.4", ACL, False),
    ("1.2.3.4:8448", ACL, False),
    ("[::1]:8448", ACL, False),
    ("1.2.3.4", {"allow": ["*"]}, True),  # IP literals allowed by default
    ("good.example", {"deny": []}, False),  # no allow list: nobody
    ("good.example", {"allow": ["other.example"]}, False),
    ("x.good.example", {"allow": ["*.good.example"]}, True),
    ("good.example", {"allow": ["*.good.example"]}, False),
    ("good.example", {"allow": "*"}, False),  # malformed: not a list
    ("good.example", {"allow": ["*"], "deny": [5, None]}, True),
])
def test_server_allowed(server: str, acl: dict[str, Any] | None, allowed: bool) -> None:
    assert server_allowed(server, acl) is allowed
