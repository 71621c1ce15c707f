# ruff: noqa: E501  (the spec's JSON is kept verbatim, long lines included)
"""The spec's cryptographic test vectors (https://spec.matrix.org/v1.19/appendices/#cryptographic-test-vectors),
as copied verbatim into /work/shared/spec/VECTORS.md, plus the values derived there (marked).

The JSON texts are kept as text and parsed by the tests, so they stay byte-comparable with the
spec.
"""

from __future__ import annotations

import json
from typing import Any

from signedjson.key import decode_signing_key_base64, get_verify_key
from signedjson.types import SigningKey, VerifyKey

SIGNING_KEY_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
SERVER_NAME = "domain"
KEY_ID = "ed25519:1"
# Derived in VECTORS.md, not published by the spec.
VERIFY_KEY_BASE64 = "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"


def spec_signing_key() -> SigningKey:
    """The spec's test key: ``ed25519:1`` from ``SIGNING_KEY_SEED``."""
    return decode_signing_key_base64("ed25519", "1", SIGNING_KEY_SEED)


def spec_verify_key() -> VerifyKey:
    return get_verify_key(spec_signing_key())


def load(text: str) -> Any:
    return json.loads(text)


# -- JSON signing -----------------------------------------------------------------------------

JSON_SIGNING_VECTORS: list[tuple[str, str]] = [
    (
        "{}",
        """{
    "signatures": {
        "domain": {
            "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
        }
    }
}""",
    ),
    (
        """{
    "one": 1,
    "two": "Two"
}""",
        """{
    "one": 1,
    "signatures": {
        "domain": {
            "ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        }
    },
    "two": "Two"
}""",
    ),
]

# -- Event signing: the minimally-sized event -------------------------------------------------

MINIMAL_EVENT = """{
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "signatures": {},
    "hashes": {},
    "type": "X",
    "content": {},
    "prev_events": [],
    "auth_events": [],
    "depth": 3,
    "unsigned": {
        "age_ts": 1000000
    }
}"""

MINIMAL_EVENT_SIGNED = """{
    "auth_events": [],
    "content": {},
    "depth": 3,
    "hashes": {
        "sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"
    },
    "origin": "domain",
    "origin_server_ts": 1000000,
    "prev_events": [],
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "signatures": {
        "domain": {
            "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
        }
    },
    "type": "X",
    "unsigned": {
        "age_ts": 1000000
    }
}"""

# Derived in VECTORS.md (not published): the intermediate canonical strings, the signature
# under the v11/v12 redaction rules (which drop `origin`), and the event IDs.
MINIMAL_EVENT_CONTENT_HASH_INPUT = (
    '{"auth_events":[],"content":{},"depth":3,"origin":"domain","origin_server_ts":1000000,'
    '"prev_events":[],"room_id":"!x:domain","sender":"@a:domain","type":"X"}'
)
MINIMAL_EVENT_SIGNING_INPUT_V10 = (
    '{"auth_events":[],"content":{},"depth":3,'
    '"hashes":{"sha256":"5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},"origin":"domain",'
    '"origin_server_ts":1000000,"prev_events":[],"room_id":"!x:domain","sender":"@a:domain",'
    '"type":"X"}'
)
MINIMAL_EVENT_SIGNATURE_V11 = (
    "Jxp+1glFcZM+nnHpY0EkedRR7u0VmKsJYGnQqIvqus3UvL5X/p1y6wSkLhGoTBel6MZ9lrMIzUqrjqFquWJKBw"
)
MINIMAL_EVENT_ID_V10 = "$8yif6p8EqgoSten2BLje9ntKm720NyFLWQv9tn8memc"
MINIMAL_EVENT_ID_V11 = "$70O_oKlXzFbkfu0KE88USi98DjSWrOELrPj-8tisl8I"

# -- Event signing: the event containing redactable content ----------------------------------

REDACTABLE_EVENT = """{
    "content": {
        "body": "Here is the message content"
    },
    "event_id": "$0:domain",
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {},
    "unsigned": {
        "age_ts": 1000000
    }
}"""

REDACTABLE_EVENT_SIGNED = """{
    "content": {
        "body": "Here is the message content"
    },
    "event_id": "$0:domain",
    "hashes": {
        "sha256": "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"
    },
    "origin": "domain",
    "origin_server_ts": 1000000,
    "type": "m.room.message",
    "room_id": "!r:domain",
    "sender": "@u:domain",
    "signatures": {
        "domain": {
            "ed25519:1": "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
        }
    },
    "unsigned": {
        "age_ts": 1000000
    }
}"""

# Derived in VECTORS.md (not published).
REDACTABLE_EVENT_CONTENT_HASH_INPUT = (
    '{"content":{"body":"Here is the message content"},"event_id":"$0:domain",'
    '"origin":"domain","origin_server_ts":1000000,"room_id":"!r:domain","sender":"@u:domain",'
    '"type":"m.room.message"}'
)
REDACTABLE_EVENT_SIGNING_INPUT_V10 = (
    '{"content":{},"event_id":"$0:domain",'
    '"hashes":{"sha256":"onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"},"origin":"domain",'
    '"origin_server_ts":1000000,"room_id":"!r:domain","sender":"@u:domain",'
    '"type":"m.room.message"}'
)
REDACTABLE_EVENT_SIGNATURE_V11 = (
    "4WQB/6LN2OtkUN/+18xUNB/U4RTX1N3EeKBdlCxux08YO8izKDrSRqML1XB8V97IK7AujkNO1xMl7TaBLA4kDw"
)
