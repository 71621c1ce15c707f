"""What a client or another server sends about end-to-end keys, checked and taken apart: key
objects and their signatures, the keys of an upload, the users and devices of a query or a
claim, the time another server gets to answer (``E2EKeyService`` acts on them)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json
from unpaddedbase64 import decode_base64

from core.errors import BadJson, InvalidParam, MissingParam
from homeserver.services.ports import RemoteKeysFailed
from storage.stores.e2e_keys import NewKey

# Bounds on one request (a client uploads tens of keys at a time).
MAX_ONE_TIME_KEYS = 1000
MAX_QUERIED_USERS = 10_000
MAX_CLAIMED = 10_000
# How long other servers get to answer a query or claim, unless the client says (Synapse's
# default), and the longest a client may ask for.
REMOTE_TIMEOUT_MS = 10_000
MAX_REMOTE_TIMEOUT_MS = 60_000


def canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def check_key_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadJson(f"{what} must be an object")
    signatures = value.get("signatures")
    if signatures is not None and not (isinstance(signatures, dict) and all(
            isinstance(v, dict) and all(isinstance(s, str) for s in v.values())
            for v in signatures.values())):
        raise BadJson(f"{what}.signatures must map user IDs to key IDs to signatures")
    return value


def _split_key_name(name: str, what: str) -> tuple[str, str]:
    algorithm, sep, key_id = name.partition(":")
    if not sep or not algorithm or not key_id:
        raise InvalidParam(f"{what} key names must be '<algorithm>:<key_id>'")
    return algorithm, key_id


def new_keys(body: Mapping[str, Any], field: str) -> list[NewKey]:
    value = body.get(field)
    if value is None:
        return []
    if not isinstance(value, dict):
        raise BadJson(f"{field} must be an object")
    if len(value) > MAX_ONE_TIME_KEYS:
        raise InvalidParam(f"At most {MAX_ONE_TIME_KEYS} {field} at a time")
    out = []
    for name, key in value.items():
        algorithm, key_id = _split_key_name(name, field)
        if not isinstance(key, str):
            check_key_object(key, f"{field}[{name!r}]")
        out.append((algorithm, key_id, canonical(key)))
    return out


def single_key(obj: Mapping[str, Any], what: str) -> tuple[str, str]:
    """The ``(key ID, public key)`` of a cross-signing key object: one ed25519 key."""
    keys = obj.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        raise InvalidParam(f"{what}.keys must hold exactly one key")
    ((key_id, public),) = keys.items()
    if not isinstance(key_id, str) or not key_id.startswith("ed25519:") or \
            not isinstance(public, str) or key_id[len("ed25519:"):] != public:
        raise InvalidParam(f"{what}.keys must be {{'ed25519:<public key>': <public key>}}")
    return key_id, public


def verify(obj: Mapping[str, Any], user_id: str, key_id: str, public: str) -> bool:
    try:
        verify_key = decode_verify_key_bytes(key_id, decode_base64(public))
        verify_signed_json(dict(obj), user_id, verify_key)
    except (SignatureVerifyException, ValueError, TypeError, KeyError):
        return False
    except Exception:  # nacl raises errors of its own for malformed keys
        return False
    return True


def remote_timeout_s(body: Mapping[str, Any]) -> float:
    value = body.get("timeout", REMOTE_TIMEOUT_MS)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidParam("timeout must be a number of milliseconds")
    return float(min(value, MAX_REMOTE_TIMEOUT_MS)) / 1000


def failure_of(e: BaseException) -> dict[str, Any]:
    if isinstance(e, RemoteKeysFailed):
        return {"status": e.status, "message": e.message}
    return {"status": 503, "message": "No answer"}



def wanted_devices(body: Mapping[str, Any]) -> dict[str, list[str]]:
    """``device_keys`` of a query: user -> device IDs (none: all of them)."""
    wanted = body.get("device_keys")
    if wanted is None:
        raise MissingParam("Missing parameter: device_keys")
    if not isinstance(wanted, dict):
        raise BadJson("device_keys must be an object")
    if len(wanted) > MAX_QUERIED_USERS:
        raise InvalidParam(f"At most {MAX_QUERIED_USERS} users at a time")
    for user_id, device_ids in wanted.items():
        if not isinstance(device_ids, list) or not all(isinstance(d, str)
                                                       for d in device_ids):
            raise BadJson(f"device_keys[{user_id[:300]!r}] must be a list of device IDs")
    return wanted


def wanted_keys(body: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``one_time_keys`` of a claim: user -> device -> algorithm."""
    requested = body.get("one_time_keys")
    if requested is None:
        raise MissingParam("Missing parameter: one_time_keys")
    if not isinstance(requested, dict):
        raise BadJson("one_time_keys must be an object")
    for user_id, by_device in requested.items():
        if not isinstance(by_device, dict) or not all(isinstance(a, str)
                                                      for a in by_device.values()):
            raise BadJson(f"one_time_keys[{user_id[:300]!r}] must map device IDs to "
                          "algorithms")
    if sum(len(d) for d in requested.values()) > MAX_CLAIMED:
        raise InvalidParam(f"At most {MAX_CLAIMED} keys at a time")
    return requested
