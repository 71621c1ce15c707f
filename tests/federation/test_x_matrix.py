"""X-Matrix request signing and header parsing
(https://spec.matrix.org/v1.16/server-server-api/#request-authentication)."""

from __future__ import annotations

from typing import Any

import pytest
from signedjson.key import generate_signing_key, get_verify_key

from federation.transport.x_matrix import (
    XMatrixAuth,
    is_valid_server_name,
    parse_authorization,
    sign_request,
    split_server_name,
    verify_request,
)

KEY = generate_signing_key("abc")
OTHER_KEY = generate_signing_key("abc")
URI = "/_matrix/federation/v1/send/txn%2F1?limit=10&v=a+b"
CONTENT = {"pdus": [], "edus": [{"edu_type": "m.typing", "content": {"x": "ü"}}]}


def signed_header(content: Any = CONTENT, **overrides: str) -> str:
    args = {"origin": "origin.example", "method": "PUT", "uri": URI,
            "destination": "dest.example:8448", **overrides}
    return sign_request(args["origin"], KEY, args["method"], args["uri"], args["destination"],
                        content)


def test_signed_header_round_trips_and_verifies() -> None:
    header = signed_header()
    assert header.startswith('X-Matrix origin="origin.example",destination="dest.example:8448"'
                             ',key="ed25519:abc",sig="')
    auth = parse_authorization(header)
    assert (auth.origin, auth.destination, auth.key_id) == (
        "origin.example", "dest.example:8448", "ed25519:abc")
    verify_request(auth, get_verify_key(KEY), "PUT", URI, "dest.example:8448", CONTENT)


def test_request_without_body_verifies_only_without_content() -> None:
    auth = parse_authorization(signed_header(content=None))
    verify_request(auth, get_verify_key(KEY), "PUT", URI, "dest.example:8448", None)
    with pytest.raises(ValueError, match="does not verify"):
        verify_request(auth, get_verify_key(KEY), "PUT", URI, "dest.example:8448", {})


@pytest.mark.parametrize(("change", "value"), [
    ("method", "POST"),
    ("uri", "/_matrix/federation/v1/send/txn%2F2?limit=10&v=a+b"),
    ("uri", "/_matrix/federation/v1/send/txn%2F1?limit=11&v=a+b"),
    ("uri", "/_matrix/federation/v1/send/txn/1?limit=10&v=a+b"),
    ("content", {"pdus": [], "edus": []}),
])
def test_tampered_request_does_not_verify(change: str, value: Any) -> None:
    auth = parse_authorization(signed_header())
    request = {"method": "PUT", "uri": URI, "content": CONTENT, change: value}
    with pytest.raises(ValueError, match="does not verify"):
        verify_request(auth, get_verify_key(KEY), request["method"], request["uri"],
                       "dest.example:8448", request["content"])


def flip_first(sig: str) -> str:
    """The signature with its first character changed (never to itself)."""
    return ("B" if sig[0] == "A" else "A") + sig[1:]


def test_tampered_header_does_not_verify() -> None:
    auth = parse_authorization(signed_header())
    verify_key = get_verify_key(KEY)
    for forged in (
        XMatrixAuth("evil.example", auth.destination, auth.key_id, auth.sig),
        XMatrixAuth(auth.origin, auth.destination, auth.key_id, flip_first(auth.sig)),
        XMatrixAuth(auth.origin, auth.destination, auth.key_id, "not base64!"),
    ):
        with pytest.raises(ValueError):
            verify_request(forged, verify_key, "PUT", URI, "dest.example:8448", CONTENT)
    with pytest.raises(ValueError, match="does not verify"):
        verify_request(auth, get_verify_key(OTHER_KEY), "PUT", URI, "dest.example:8448",
                       CONTENT)


def test_request_for_another_destination_is_refused() -> None:
    auth = parse_authorization(signed_header())
    with pytest.raises(ValueError, match="destination"):
        verify_request(auth, get_verify_key(KEY), "PUT", URI, "other.example", CONTENT)


def test_old_sender_without_destination_verifies_against_our_name() -> None:
    header = signed_header()
    old_style = ",".join(p for p in header.split(",") if not p.startswith("destination="))
    auth = parse_authorization(old_style)
    assert auth.destination is None
    verify_request(auth, get_verify_key(KEY), "PUT", URI, "dest.example:8448", CONTENT)


def test_signature_is_not_in_repr() -> None:
    auth = parse_authorization(signed_header())
    assert auth.sig not in repr(auth)


@pytest.mark.parametrize(("header", "expected"), [
    ('X-Matrix origin="a.example",destination="b.example",key="ed25519:k1",sig="c2ln"',
     ("a.example", "b.example", "ed25519:k1", "c2ln")),
    # Unquoted values, colons and base64 '/' and '+' included.
    ("X-Matrix origin=a.example:8448,key=ed25519:k1,sig=ab/c+d",
     ("a.example:8448", None, "ed25519:k1", "ab/c+d")),
    # Case-insensitive scheme and names, any order, spaces and tabs around commas.
    ('x-matrix  SIG="s" ,\tKey="ed25519:k1" , Origin="[::1]:8448"',
     ("[::1]:8448", None, "ed25519:k1", "s")),
    # Backslash escapes are undone; unknown parameters ignored.
    (r'X-Matrix origin="a.ex\ample",key="ed25519:k\1",sig="\"s\\",foo="bar, baz"',
     ("a.example", None, "ed25519:k1", '"s\\')),
    ('X-Matrix origin="1.2.3.4",key="ed25519:a_b",sig="s"', ("1.2.3.4", None, "ed25519:a_b", "s")),
])
def test_parse_authorization(header: str, expected: tuple[str, str | None, str, str]) -> None:
    auth = parse_authorization(header)
    assert (auth.origin, auth.destination, auth.key_id, auth.sig) == expected


@pytest.mark.parametrize("header", [
    "",
    "X-Matrix",
    "X-Matrix ",
    'Bearer origin="a.example",key="ed25519:k",sig="s"',
    'X-Matrixorigin="a.example",key="ed25519:k",sig="s"',
    'X-Matrix key="ed25519:k",sig="s"',                               # no origin
    'X-Matrix origin="a.example",sig="s"',                            # no key
    'X-Matrix origin="a.example",key="ed25519:k"',                    # no sig
    'X-Matrix origin="a.example",key="ed25519:k",sig=""',             # empty sig
    'X-Matrix origin="a.example",key="rsa:k",sig="s"',                # not ed25519
    'X-Matrix origin="a.example",key="ed25519:",sig="s"',             # no key version
    'X-Matrix origin="a.example",key="ed25519",sig="s"',
    'X-Matrix origin="bad_name!",key="ed25519:k",sig="s"',            # bad server name
    'X-Matrix origin="a.example:99999",key="ed25519:k",sig="s"',
    'X-Matrix origin="a.example",destination="[::1",key="ed25519:k",sig="s"',
    'X-Matrix origin="a.example",key="ed25519:k",sig="s",',           # trailing comma
    'X-Matrix origin="a.example",,key="ed25519:k",sig="s"',
    'X-Matrix origin="a.example" key="ed25519:k",sig="s"',            # missing comma
    'X-Matrix origin="a.example",key="ed25519:k",sig="s',             # unterminated quote
    'X-Matrix origin="a.example",key="ed25519:k",sig=s"t"',
    'X-Matrix origin="a.example",key="ed25519:k",sig',                # no value
    'X-Matrix origin="a.example",key="ed25519:k",sig=',
    'X-Matrix origin="a.example",key="ed25519:k",="s"',               # no name
    'X-Matrix origin="a.example",origin="b.example",key="ed25519:k",sig="s"',  # duplicate
    'X-Matrix origin="a.example",ORIGIN="b.example",key="ed25519:k",sig="s"',
])
def test_malformed_authorization_is_refused(header: str) -> None:
    with pytest.raises(ValueError):
        parse_authorization(header)


@pytest.mark.parametrize(("name", "split"), [
    ("example.org", ("example.org", None)),
    ("example.org:8448", ("example.org", 8448)),
    ("1.2.3.4", ("1.2.3.4", None)),
    ("1.2.3.4:1", ("1.2.3.4", 1)),
    ("[::1]", ("::1", None)),
    ("[2001:db8::1]:65535", ("2001:db8::1", 65535)),
    ("localhost", ("localhost", None)),
])
def test_split_server_name(name: str, split: tuple[str, int | None]) -> None:
    assert is_valid_server_name(name)
    assert split_server_name(name) == split


@pytest.mark.parametrize("name", [
    "", "example.org:", "example.org:0", "example.org:65536", "example.org:80a", "exa mple.org",
    "ex_ample.org", "[::1", "[::1]8448", "[::1]:", "::1", "a.example:1:2", "@user:example.org",
])
def test_invalid_server_names(name: str) -> None:
    assert not is_valid_server_name(name)
    with pytest.raises(ValueError):
        split_server_name(name)
