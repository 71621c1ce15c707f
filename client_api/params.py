"""Identifiers in client requests (path segments, query parameters, body fields), checked where
they enter against their grammar in ``core.types``, and refused as Matrix errors:

- ``400 M_INVALID_PARAM`` for a malformed or over-long identifier, as Synapse answers an alias
  over 255 bytes ("Can't create aliases longer than 255 characters") and a malformed ID;
- ``413 M_TOO_LARGE`` for an event type or state key over 255 bytes, as Synapse refuses such an
  event (its ``EventSizeError``, the spec's PDU size limits);
- ``400 M_KEY_TOO_LARGE`` for a profile key over 255 bytes (the spec's profile API).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from core.errors import InvalidParam, MatrixError, TooLarge
from core.types import (
    MAX_IDENTIFIER_BYTES,
    IdentifierTooLong,
    InvalidIdentifier,
    byte_length,
    check_account_data_type,
    check_event_id,
    check_event_type,
    check_room_id,
    check_state_key,
    check_tag,
    check_transaction_id,
    parse_room_alias,
    parse_server_name,
    parse_user_id,
)


def _param(check: Callable[[str], object], value: str) -> str:
    try:
        check(value)
    except InvalidIdentifier as e:
        raise InvalidParam(str(e)) from None
    return value


def _event_field(check: Callable[[str], object], value: str) -> str:
    """An event's own field: over-long is the event being too large (413)."""
    try:
        check(value)
    except IdentifierTooLong as e:
        raise TooLarge(str(e)) from None
    except InvalidIdentifier as e:
        raise InvalidParam(str(e)) from None
    return value


def room_id(value: str) -> str:
    return _param(check_room_id, value)


def event_id(value: str) -> str:
    return _param(check_event_id, value)


def user_id(value: str) -> str:
    return _param(parse_user_id, value)


def room_alias(value: str) -> str:
    """A room alias to look up or delete."""
    return _param(parse_room_alias, value)


def new_room_alias(value: str) -> str:
    """A room alias to create: as Synapse, no whitespace in its localpart either."""
    alias = room_alias(value)
    if any(c.isspace() for c in parse_room_alias(alias).localpart):
        raise InvalidParam("Invalid characters in room alias")
    return alias


def room_id_or_alias(value: str) -> str:
    return room_alias(value) if value.startswith("#") else room_id(value)


def event_type(value: str) -> str:
    """The type of an event sent into a room."""
    return _event_field(check_event_type, value)


def state_key(value: str) -> str:
    return _event_field(check_state_key, value)


def to_device_type(value: str) -> str:
    """The type of a to-device message (not a room event: 400 whatever is wrong)."""
    return _param(check_event_type, value)


def transaction_id(value: str) -> str:
    return _param(check_transaction_id, value)


def account_data_type(value: str) -> str:
    return _param(check_account_data_type, value)


def tag(value: str) -> str:
    return _param(check_tag, value)


def profile_key(value: str) -> str:
    if byte_length(value) > MAX_IDENTIFIER_BYTES:
        raise MatrixError(f"Profile keys may not be longer than {MAX_IDENTIFIER_BYTES} bytes",
                          status=400, errcode="M_KEY_TOO_LARGE")
    return value


def server_names(values: Iterable[str]) -> list[str]:
    """``via``/``server_name`` query parameters: each a server name, each once, in order."""
    out: dict[str, None] = {}
    for value in values:
        out[_param(parse_server_name, value)] = None
    return list(out)
