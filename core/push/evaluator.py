"""Evaluating push rules
(https://spec.matrix.org/v1.19/client-server-api/#push-rules).

A ruleset is compiled once (:class:`Ruleset`) and an event is looked at once
(:class:`EventFacts`): its properties flattened to dotted keys (``content.m\\.mentions.room``,
dots in names escaped). :meth:`Ruleset.plan` walks the rules for one event with the
conditions that do not depend on the user, and stops at the first rule that matches for
everyone; what is left is a short list of rules whose user-dependent conditions (mentions of
the user, their display name, their user name, ``state_key`` of an invite) decide per user,
which :meth:`Plan.pick` does in a few cheap tests. So a message to a room of a thousand members
who keep the default rules costs one walk of the rules and a thousand small checks.
"""

from __future__ import annotations

import functools
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.push.rules import KINDS, LOCALPART, USER_ID

Scalar = str | int | bool | None

# Skipped for events with ``m.mentions`` (https://spec.matrix.org/v1.19/client-server-api/#user-and-room-mentions).
LEGACY_MENTION_RULES = frozenset((".m.rule.contains_display_name", ".m.rule.contains_user_name",
                                  ".m.rule.roomnotif"))


def _escape(key: str) -> str:
    return key.replace("\\", "\\\\").replace(".", "\\.")


def flatten(value: Mapping[str, Any], prefix: str = "",
            out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Dotted key -> value for the event's scalars and arrays of scalars (dots and
    backslashes in names escaped, as push rule keys write them)."""
    out = {} if out is None else out
    for name, item in value.items():
        key = prefix + _escape(name)
        if isinstance(item, Mapping):
            flatten(item, key + ".", out)
        elif isinstance(item, list):
            out[key] = [v for v in item if v is None or (isinstance(v, str | int | bool)
                        and not isinstance(v, float))]
        elif item is None or (isinstance(item, str | bool | int) and not isinstance(item, float)):
            out[key] = item
    return out


@functools.lru_cache(maxsize=4096)
def glob_regex(pattern: str, words: bool) -> re.Pattern[str]:
    """A glob (``*`` any run, ``?`` one character) as a case-insensitive regex: matching the
    whole value, or (``words``) a run of whole words of it (``content.body``)."""
    body = re.escape(pattern).replace(r"\*", ".*?").replace(r"\?", ".")
    if words:
        return re.compile(rf"(?:^|\W){body}(?:\W|$)", re.IGNORECASE | re.DOTALL)
    return re.compile(rf"\A{body}\Z", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class UserFacts:
    user_id: str
    display_name: str | None = None
    localpart: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "localpart", self.user_id[1:].split(":", 1)[0])


class EventFacts:
    """What the conditions read of one event in its room."""

    __slots__ = ("body", "body_lower", "flat", "has_mentions", "member_count",
                 "notification_levels", "sender_level")

    def __init__(self, pdu: Mapping[str, Any], member_count: int, sender_level: float,
                 notification_levels: Mapping[str, Any] | None = None) -> None:
        self.flat = flatten(pdu)
        body = self.flat.get("content.body")
        self.body = body if isinstance(body, str) else None
        self.body_lower = self.body.lower() if self.body is not None else None
        content = pdu.get("content")
        # Intentional mentions: with m.mentions the legacy mention rules do not apply.
        self.has_mentions = isinstance(content, Mapping) and \
            isinstance(content.get("m.mentions"), Mapping)
        self.member_count = member_count
        self.sender_level = sender_level
        self.notification_levels = notification_levels or {}


class Condition(ABC):
    """One compiled condition; ``user_dependent`` ones are decided per user."""

    __slots__ = ("user_dependent",)

    def __init__(self, user_dependent: bool = False) -> None:
        self.user_dependent = user_dependent

    @abstractmethod
    def test(self, event: EventFacts, user: UserFacts | None) -> bool: ...


class _Never(Condition):
    def test(self, event: EventFacts, user: UserFacts | None) -> bool:
        return False


class _EventMatch(Condition):
    __slots__ = ("key", "pattern", "regex", "who", "words")

    def __init__(self, key: str, pattern: str) -> None:
        self.who = pattern if pattern in (USER_ID, LOCALPART) else None
        super().__init__(self.who is not None)
        self.key = key
        self.words = key == "content.body"
        self.pattern = pattern
        self.regex = None if self.who else glob_regex(pattern, self.words)

    def test(self, event: EventFacts, user: UserFacts | None) -> bool:
        value = event.flat.get(self.key)
        if not isinstance(value, str):
            return False
        if self.regex is not None:
            return self.regex.search(value) is not None
        assert user is not None
        wanted = user.user_id if self.who == USER_ID else user.localpart
        if not self.words:
            return value.lower() == wanted.lower()
        lowered = event.body_lower if value is event.body else value.lower()
        if lowered is None or wanted.lower() not in lowered:  # the cheap test first
            return False
        return glob_regex(wanted, True).search(value) is not None


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps booleans and integers apart (``true`` is not ``1``)."""
    return type(a) is type(b) and a == b


class _PropertyIs(Condition):
    __slots__ = ("key", "value")

    def __init__(self, key: str, value: Any) -> None:
        super().__init__(value == USER_ID)
        self.key = key
        self.value = value

    def test(self, event: EventFacts, user: UserFacts | None) -> bool:
        if self.key not in event.flat:
            return False
        wanted = user.user_id if self.user_dependent and user is not None else self.value
        return _same(event.flat[self.key], wanted)


class _PropertyContains(Condition):
    __slots__ = ("key", "value")

    def __init__(self, key: str, value: Any) -> None:
        super().__init__(value == USER_ID)
        self.key = key
        self.value = value

    def test(self, event: EventFacts, user: UserFacts | None) -> bool:
        values = event.flat.get(self.key)
        if not isinstance(values, list):
            return False
        wanted = user.user_id if self.user_dependent and user is not None else self.value
        return any(_same(v, wanted) for v in values)


class _DisplayName(Condition):
    def __init__(self) -> None:
        super().__init__(True)

    def test(self, event: EventFacts, user: UserFacts | None) -> bool:
        name = user.display_name if user is not None else None
        body = event.body
        if not name or body is None or name.lower() not in (event.body_lower or ""):
            return False
        return re.search(rf"(?:^|\W){re.escape(name)}(?:\W|$)", body,
                         re.IGNORECASE) is not None


_MEMBER_COUNT = re.compile(r"^(==|<=|>=|<|>)?([0-9]+)$")


class _MemberCount(Condition):
    __slots__ = ("number", "op")

    def __init__(self, spec: str) -> None:
        super().__init__()
        match = _MEMBER_COUNT.match(spec)
        self.op = match.group(1) or "==" if match else ""
        self.number = int(match.group(2)) if match else -1

    def test(self, event: EventFacts, user: UserFacts | None) -> bool:
        n, op = event.member_count, self.op
        return ((op == "==" and n == self.number) or (op == "<" and n < self.number)
                or (op == ">" and n > self.number) or (op == "<=" and n <= self.number)
                or (op == ">=" and n >= self.number))


class _SenderPermission(Condition):
    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def test(self, event: EventFacts, user: UserFacts | None) -> bool:
        needed = event.notification_levels.get(self.key, 50)
        if not isinstance(needed, int) or isinstance(needed, bool):
            needed = 50
        return event.sender_level >= needed


def compile_condition(condition: Mapping[str, Any]) -> Condition:
    """A condition of a rule; an unknown or malformed one never matches (spec: a rule with
    a condition the server does not understand does not apply)."""
    kind, key = condition.get("kind"), condition.get("key")
    if kind == "event_match" and isinstance(key, str) \
            and isinstance(condition.get("pattern"), str):
        return _EventMatch(key, condition["pattern"])
    if kind == "event_property_is" and isinstance(key, str) and "value" in condition:
        return _PropertyIs(key, condition["value"])
    if kind == "event_property_contains" and isinstance(key, str) and "value" in condition:
        return _PropertyContains(key, condition["value"])
    if kind == "contains_display_name":
        return _DisplayName()
    if kind == "room_member_count" and isinstance(condition.get("is"), str):
        return _MemberCount(condition["is"])
    if kind == "sender_notification_permission" and isinstance(key, str):
        return _SenderPermission(key)
    return _Never()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a matching rule says: notify, highlight, and the tweaks for the push gateway."""

    rule_id: str
    actions: tuple[Any, ...]
    notify: bool
    highlight: bool
    tweaks: Mapping[str, Any]


def outcome_of(rule_id: str, actions: Sequence[Any]) -> Outcome:
    tweaks: dict[str, Any] = {}
    for action in actions:
        if isinstance(action, Mapping) and isinstance(action.get("set_tweak"), str):
            tweaks[action["set_tweak"]] = action.get("value", True)
    notify = "notify" in actions
    highlight = notify and tweaks.get("highlight", False) is True
    return Outcome(rule_id, tuple(actions), notify, highlight, tweaks)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    conditions: tuple[Condition, ...]
    outcome: Outcome


class Plan:
    """One event's rules for everyone sharing a ruleset: the rules left to decide per user,
    in order (the last has no user-dependent condition when some rule matches for all)."""

    __slots__ = ("_steps", "event")

    def __init__(self, event: EventFacts,
                 steps: list[tuple[CompiledRule, tuple[Condition, ...]]]) -> None:
        self.event = event
        self._steps = steps

    @property
    def base(self) -> Outcome | None:
        """The outcome for a user for whom no user-dependent condition holds."""
        if self._steps and not self._steps[-1][1]:
            return self._steps[-1][0].outcome
        return None

    def pick(self, user: UserFacts) -> Outcome | None:
        """The outcome of the first rule that matches for ``user`` (None: no rule does)."""
        event = self.event
        for rule, pending in self._steps:
            for condition in pending:
                if not condition.test(event, user):
                    break
            else:
                return rule.outcome
        return None


class Ruleset:
    """A user's enabled rules in evaluation order, compiled."""

    def __init__(self, rules: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """``rules``: (kind, rule as the API shows it) in priority order, enabled only."""
        compiled = []
        for kind, rule in rules:
            conditions: list[Condition]
            if kind in ("override", "underride"):
                conditions = [compile_condition(c) if isinstance(c, Mapping) else _Never()
                              for c in rule.get("conditions") or []]
            elif kind == "content":
                pattern = rule.get("pattern")
                conditions = [_EventMatch("content.body", pattern)
                              if isinstance(pattern, str) else _Never()]
            elif kind == "room":
                conditions = [_EventMatch("room_id", rule["rule_id"])]
            elif kind == "sender":
                conditions = [_EventMatch("sender", rule["rule_id"])]
            else:
                continue
            compiled.append(CompiledRule(tuple(conditions),
                                         outcome_of(rule["rule_id"], rule.get("actions") or [])))
        self.rules = tuple(compiled)

    def plan(self, event: EventFacts) -> Plan:
        steps: list[tuple[CompiledRule, tuple[Condition, ...]]] = []
        for rule in self.rules:
            if event.has_mentions and rule.outcome.rule_id in LEGACY_MENTION_RULES:
                continue
            pending = []
            for condition in rule.conditions:
                if condition.user_dependent:
                    pending.append(condition)
                elif not condition.test(event, None):
                    break
            else:
                steps.append((rule, tuple(pending)))
                if not pending:
                    break
        return Plan(event, steps)

    def evaluate(self, event: EventFacts, user: UserFacts) -> Outcome | None:
        return self.plan(event).pick(user)


def ordered(rules: Mapping[str, Sequence[Mapping[str, Any]]]
            ) -> list[tuple[str, Mapping[str, Any]]]:
    """(kind, rule) of the enabled rules of a ruleset, in evaluation order."""
    return [(kind, rule) for kind in KINDS for rule in rules.get(kind, ())
            if rule.get("enabled", True)]
