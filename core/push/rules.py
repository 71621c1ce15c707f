"""The spec's predefined push rules
(https://spec.matrix.org/v1.19/client-server-api/#predefined-rules) and the order of a
ruleset's kinds.

The rules are built once with placeholders for the user (:data:`USER_ID`, :data:`LOCALPART`),
so every user who keeps the defaults shares one compiled ruleset; :func:`for_user` fills the
placeholders in for clients.
"""

from __future__ import annotations

from typing import Any

# Evaluation order of the kinds (the spec's priority classes, highest first).
KINDS = ("override", "content", "room", "sender", "underride")

# Stand-ins for the user in the predefined rules (no real user ID or word looks like these).
USER_ID = "\x00user_id"
LOCALPART = "\x00localpart"

_SOUND = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT = {"set_tweak": "highlight"}


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def _rule(rule_id: str, conditions: list[dict[str, Any]], actions: list[Any], *,
          enabled: bool = True) -> dict[str, Any]:
    return {"rule_id": rule_id, "default": True, "enabled": enabled,
            "conditions": conditions, "actions": actions}


def _defaults() -> dict[str, list[dict[str, Any]]]:
    override = [
        _rule(".m.rule.master", [], [], enabled=False),
        _rule(".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
        _rule(".m.rule.invite_for_me", [
            _match("type", "m.room.member"), _match("content.membership", "invite"),
            _match("state_key", USER_ID)], ["notify", _SOUND]),
        _rule(".m.rule.member_event", [_match("type", "m.room.member")], []),
        _rule(".m.rule.is_user_mention", [{
            "kind": "event_property_contains", "key": "content.m\\.mentions.user_ids",
            "value": USER_ID}], ["notify", _SOUND, _HIGHLIGHT]),
        _rule(".m.rule.contains_display_name", [{"kind": "contains_display_name"}],
              ["notify", _SOUND, _HIGHLIGHT]),
        _rule(".m.rule.is_room_mention", [
            {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
            {"kind": "sender_notification_permission", "key": "room"}],
            ["notify", _HIGHLIGHT]),
        _rule(".m.rule.roomnotif", [
            {"kind": "sender_notification_permission", "key": "room"},
            _match("content.body", "@room")], ["notify", _HIGHLIGHT]),
        _rule(".m.rule.tombstone", [_match("type", "m.room.tombstone"),
                                    _match("state_key", "")], ["notify", _HIGHLIGHT]),
        _rule(".m.rule.reaction", [_match("type", "m.reaction")], []),
        _rule(".m.rule.room.server_acl", [_match("type", "m.room.server_acl"),
                                          _match("state_key", "")], []),
        _rule(".m.rule.suppress_edits", [{
            "kind": "event_property_is", "key": "content.m\\.relates_to.rel_type",
            "value": "m.replace"}], []),
    ]
    content = [{"rule_id": ".m.rule.contains_user_name", "default": True, "enabled": True,
                "pattern": LOCALPART, "actions": ["notify", _SOUND, _HIGHLIGHT]}]
    underride = [
        _rule(".m.rule.call", [_match("type", "m.call.invite")],
              ["notify", {"set_tweak": "sound", "value": "ring"}]),
        _rule(".m.rule.encrypted_room_one_to_one", [
            {"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
            ["notify", _SOUND]),
        _rule(".m.rule.room_one_to_one", [
            {"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message")],
            ["notify", _SOUND]),
        _rule(".m.rule.message", [_match("type", "m.room.message")], ["notify"]),
        _rule(".m.rule.encrypted", [_match("type", "m.room.encrypted")], ["notify"]),
    ]
    return {"override": override, "content": content, "room": [], "sender": [],
            "underride": underride}


DEFAULT_RULES: dict[str, list[dict[str, Any]]] = _defaults()
DEFAULT_RULE_KINDS: dict[str, str] = {
    r["rule_id"]: kind for kind, rules in DEFAULT_RULES.items() for r in rules}


def _fill(value: Any, user_id: str, localpart: str) -> Any:
    if isinstance(value, str):
        return value.replace(USER_ID, user_id).replace(LOCALPART, localpart)
    if isinstance(value, list):
        return [_fill(v, user_id, localpart) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, user_id, localpart) for k, v in value.items()}
    return value


def for_user(rule: dict[str, Any], user_id: str) -> dict[str, Any]:
    """A rule as the user sees it: the placeholders replaced by their user ID and localpart."""
    return _fill(rule, user_id, user_id[1:].split(":", 1)[0])  # type: ignore[no-any-return]
