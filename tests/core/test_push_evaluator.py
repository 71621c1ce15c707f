"""Push rule conditions and rulesets (core.push), as the spec defines them."""

from __future__ import annotations

from typing import Any

import pytest

from core.push.evaluator import EventFacts, Ruleset, UserFacts, compile_condition, flatten, ordered
from core.push.rules import DEFAULT_RULES

BOB = UserFacts("@bob:hs", "Bobby Tables")


def event(content: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {"type": "m.room.message", "sender": "@alice:hs", "room_id": "!r:hs",
            "content": content or {"msgtype": "m.text", "body": "hello"}, **fields}


def holds(condition: dict[str, Any], pdu: dict[str, Any], *, members: int = 5,
          level: float = 0, notifications: dict[str, Any] | None = None) -> bool:
    facts = EventFacts(pdu, members, level, notifications)
    return compile_condition(condition).test(facts, BOB)


def test_flatten_escapes_dots_and_keeps_scalars_and_lists() -> None:
    flat = flatten({"content": {"m.mentions": {"user_ids": ["@a:b", {"x": 1}], "room": True},
                                "a\\b": 1.5, "n": None}})
    assert flat == {"content.m\\.mentions.user_ids": ["@a:b"],
                    "content.m\\.mentions.room": True, "content.n": None}


@pytest.mark.parametrize("key, pattern, pdu, expected", [
    ("type", "m.room.message", event(), True),
    ("type", "m.room.*", event(), True),
    ("type", "M.ROOM.MESSAGE", event(), True),  # case-insensitive
    ("type", "m.room", event(), False),  # the whole value
    ("type", "m.room.messag?", event(), True),
    ("content.body", "hello", event(), True),
    ("content.body", "hell", event(), False),  # whole words in the body
    ("content.body", "cake*lie", event({"body": "the cake is a lie!"}), True),
    ("content.body", "@room", event({"body": "hey @room!"}), True),
    ("content.m\\.relates_to.rel_type", "m.thread",
     event({"m.relates_to": {"rel_type": "m.thread"}}), True),
    ("content.m.relates_to.rel_type", "m.thread",
     event({"m.relates_to": {"rel_type": "m.thread"}}), False),  # unescaped: another path
    ("content.n", "1", event({"n": 1}), False),  # not a string
    ("state_key", "", event(state_key=""), True),
])
def test_event_match(key: str, pattern: str, pdu: dict[str, Any], expected: bool) -> None:
    assert holds({"kind": "event_match", "key": key, "pattern": pattern}, pdu) is expected


def test_event_property_is_and_contains_keep_types_apart() -> None:
    pdu = event({"flag": True, "n": 1, "none": None, "ids": ["@bob:hs", 1, True]})
    cases = [({"kind": "event_property_is", "key": "content.flag", "value": True}, True),
             ({"kind": "event_property_is", "key": "content.n", "value": True}, False),
             ({"kind": "event_property_is", "key": "content.n", "value": 1}, True),
             ({"kind": "event_property_is", "key": "content.none", "value": None}, True),
             ({"kind": "event_property_is", "key": "content.missing", "value": None}, False),
             ({"kind": "event_property_contains", "key": "content.ids", "value": "@bob:hs"},
              True),
             ({"kind": "event_property_contains", "key": "content.ids", "value": 1}, True),
             ({"kind": "event_property_contains", "key": "content.ids", "value": False},
              False),
             ({"kind": "event_property_contains", "key": "content.flag", "value": True},
              False)]
    for condition, expected in cases:
        assert holds(condition, pdu) is expected, condition


@pytest.mark.parametrize("spec, members, expected", [
    ("2", 2, True), ("==2", 3, False), ("<3", 2, True), (">3", 3, False), (">=3", 3, True),
    ("<=1", 2, False), ("x2", 2, False), ("", 0, False)])
def test_room_member_count(spec: str, members: int, expected: bool) -> None:
    assert holds({"kind": "room_member_count", "is": spec}, event(),
                 members=members) is expected


def test_sender_notification_permission_and_display_name() -> None:
    condition = {"kind": "sender_notification_permission", "key": "room"}
    assert holds(condition, event(), level=50)
    assert not holds(condition, event(), level=49)
    assert holds(condition, event(), level=10, notifications={"room": 10})
    assert holds(condition, event(), level=float("inf"), notifications={"room": 100})
    name = {"kind": "contains_display_name"}
    assert holds(name, event({"body": "hi bobby tables!"}))
    assert not holds(name, event({"body": "hi bobbytables"}))
    assert not holds({"kind": "unknown"}, event())
    assert not holds({"kind": "event_match", "key": "type"}, event())  # malformed


def test_default_rules_decide_per_user_from_one_plan() -> None:
    rules = Ruleset(ordered(DEFAULT_RULES))
    users = [UserFacts("@bob:hs", "Bobby"), UserFacts("@carol:hs"), UserFacts("@dan:hs")]
    plan = rules.plan(EventFacts(event({"body": "hi Bobby and dan"}), 10, 0))
    picked = [plan.pick(u) for u in users]
    assert [o.rule_id if o else None for o in picked] == [
        ".m.rule.contains_display_name", ".m.rule.message", ".m.rule.contains_user_name"]
    assert [o.highlight for o in picked if o] == [True, False, True]
    dm = rules.plan(EventFacts(event(), 2, 0)).pick(users[1])
    assert dm is not None and dm.rule_id == ".m.rule.room_one_to_one"
    # With m.mentions, the legacy rules stand aside.
    mentions = rules.plan(EventFacts(event({"body": "Bobby", "m.mentions": {
        "user_ids": ["@carol:hs"]}}), 10, 0))
    assert [o.rule_id if o else None for o in map(mentions.pick, users)] == [
        ".m.rule.message", ".m.rule.is_user_mention", ".m.rule.message"]
    notice = rules.plan(EventFacts(event({"msgtype": "m.notice", "body": "bob"}), 10, 0))
    assert not any(o and o.notify for o in map(notice.pick, users))
    invite = event({"membership": "invite"}, type="m.room.member", state_key="@carol:hs")
    outcome = rules.evaluate(EventFacts(invite, 10, 0), users[1])
    assert outcome is not None and outcome.rule_id == ".m.rule.invite_for_me"
    assert not rules.evaluate(EventFacts(invite, 10, 0), users[0]).notify  # type: ignore[union-attr]
    edit = event({"body": "* x", "m.relates_to": {"rel_type": "m.replace"}})
    assert not rules.evaluate(EventFacts(edit, 10, 0), users[1]).notify  # type: ignore[union-attr]
    tombstone = event({}, type="m.room.tombstone", state_key="")
    assert rules.evaluate(EventFacts(tombstone, 10, 0), users[1]).highlight  # type: ignore[union-attr]
