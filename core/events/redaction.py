"""The redaction algorithm, which also defines what hashes and signatures cover.

Room version 10 uses the rules of v9 (https://spec.matrix.org/v1.19/rooms/v10/#redactions,
https://spec.matrix.org/v1.19/rooms/v9/#redactions). Room version 11 changed them (MSC2176,
MSC3821, MSC3989; https://spec.matrix.org/v1.19/rooms/v11/#redactions): the top-level
``origin``, ``membership`` and ``prev_state`` are no longer kept; ``m.room.create`` keeps its
whole ``content``; ``m.room.redaction`` keeps ``content.redacts``; ``m.room.power_levels``
keeps ``invite``; ``m.room.member`` keeps ``third_party_invite.signed``. Room version 12 keeps
the v11 rules unchanged (https://spec.matrix.org/v1.19/rooms/v12/): MSC4289's
``additional_creators`` lives in the create event's content, which v11 already keeps whole,
and MSC4291's create event simply has no ``room_id`` to keep.

Reference: Synapse ``synapse.events.utils.prune_event_dict``, which this follows key for key
(including ``content`` always being present in the output), except that ``unsigned`` is
dropped entirely, as the spec says: local bookkeeping that Synapse keeps there is not part of
the federation form of an event.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from core.events.room_versions import RoomVersion

_ALLOWED_KEYS_V11 = frozenset({
    "event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures",
    "depth", "prev_events", "auth_events", "origin_server_ts",
})
# Up to v10, three more top-level keys survive redaction.
_ALLOWED_KEYS_V10 = _ALLOWED_KEYS_V11 | {"prev_state", "origin", "membership"}

_CONTENT_KEYS_V10: dict[str, tuple[str, ...]] = {
    "m.room.member": ("membership", "join_authorised_via_users_server"),
    "m.room.create": ("creator",),
    "m.room.join_rules": ("join_rule", "allow"),
    "m.room.power_levels": (
        "ban", "events", "events_default", "kick", "redact", "state_default", "users",
        "users_default",
    ),
    "m.room.history_visibility": ("history_visibility",),
}
_CONTENT_KEYS_V11: dict[str, tuple[str, ...]] = {
    "m.room.member": ("membership", "join_authorised_via_users_server"),
    "m.room.join_rules": ("join_rule", "allow"),
    "m.room.power_levels": (
        "ban", "events", "events_default", "invite", "kick", "redact", "state_default",
        "users", "users_default",
    ),
    "m.room.history_visibility": ("history_visibility",),
    "m.room.redaction": ("redacts",),
}


def redact(pdu: Mapping[str, Any], room_version: RoomVersion) -> dict[str, Any]:
    """The redacted form of ``pdu`` under the rules of ``room_version``.

    Spec: https://spec.matrix.org/v1.19/rooms/v11/#redactions (v11, v12) and
    https://spec.matrix.org/v1.19/rooms/v9/#redactions (v10); the client-server API's
    "Redactions" section explains the purpose.

    Args:
        pdu: The event in federation form. Not modified.
        room_version: The version of the event's room.

    Returns:
        A new, independent dict: the allowed top-level keys, and ``content`` stripped to the
        allowed keys of the event's type (``{}`` for other types, or when ``content`` is
        missing or not an object). ``signatures`` and ``hashes`` survive, so a redacted event
        still verifies; ``unsigned`` does not.
    """
    updated = room_version.updated_redaction_rules
    allowed_keys = _ALLOWED_KEYS_V11 if updated else _ALLOWED_KEYS_V10
    redacted = {key: value for key, value in pdu.items() if key in allowed_keys}
    raw_content = pdu.get("content")
    content: Mapping[str, Any] = raw_content if isinstance(raw_content, Mapping) else {}
    redacted["content"] = _redact_content(pdu.get("type"), content, updated)
    return copy.deepcopy(redacted)


def _redact_content(
    event_type: object, content: Mapping[str, Any], updated_rules: bool
) -> dict[str, Any]:
    if updated_rules and event_type == "m.room.create":
        # v11 (MSC2176): the create event's content is never redacted.
        return dict(content)
    rules = _CONTENT_KEYS_V11 if updated_rules else _CONTENT_KEYS_V10
    allowed = rules.get(event_type, ()) if isinstance(event_type, str) else ()
    new_content = {key: content[key] for key in allowed if key in content}
    if updated_rules and event_type == "m.room.member":
        # v11 (MSC3821): keep the `signed` block of a third-party invite, so the invite's
        # auth check still passes on a redacted copy. Like Synapse, an object without
        # `signed` leaves an empty object behind.
        third_party_invite = content.get("third_party_invite")
        if isinstance(third_party_invite, Mapping):
            new_content["third_party_invite"] = {
                key: value for key, value in third_party_invite.items() if key == "signed"
            }
    return new_content
