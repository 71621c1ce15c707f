"""Push rules (https://spec.matrix.org/v1.19/client-server-api/#push-rules): every user's
ruleset is the spec's predefined rules (:mod:`core.push.rules`) with their changes to them
(``enabled``, ``actions``) and their own rules, stored per user.

Rulesets are compiled once per user and cached until the user changes a rule; everyone who
keeps the defaults shares one compiled ruleset (the rule evaluation then decides for all of
them at once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from core.errors import BadRequest, InvalidParam, MissingParam, NotFound
from core.push.evaluator import Ruleset, ordered
from core.push.rules import DEFAULT_RULE_KINDS, DEFAULT_RULES, KINDS, for_user
from homeserver.services.ports import ALONE, Replication
from storage.stores.push import PushStore, StoredRule

_TOP_DEFAULTS = (".m.rule.master",)  # default rules that go before the user's own
MAX_RULES_PER_KIND = 500
_ACTION_WORDS = ("notify", "dont_notify", "coalesce")


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidParam(f"Unknown push rule kind {kind!r}")
    return kind


def _scope(scope: str) -> None:
    if scope != "global":
        raise InvalidParam("The only push rule scope is 'global'")


def check_actions(actions: Any) -> list[Any]:
    if not isinstance(actions, list):
        raise InvalidParam("'actions' must be a list")
    for action in actions:
        if isinstance(action, str):
            if action not in _ACTION_WORDS:
                raise InvalidParam(f"Unknown action {action!r}")
        elif not (isinstance(action, dict) and isinstance(action.get("set_tweak"), str)):
            raise InvalidParam("An action is a string or an object with 'set_tweak'")
    return actions


class PushRuleService:
    CACHE_SIZE = 50_000

    def __init__(self, store: PushStore, replication: Replication = ALONE) -> None:
        """``replication``: the other processes hear of each user whose rules changed."""
        self._store = store
        self._replication = replication
        self._default = Ruleset(ordered(DEFAULT_RULES))
        # User -> their compiled ruleset (the shared default one when they changed nothing).
        # A plain dict (evaluation looks up every member of a room per batch; an LRU's
        # bookkeeping costs more than the lookups), emptied when full.
        self._compiled: dict[str, Ruleset] = {}
        # User -> their ruleset as GET /pushrules and sliding sync show it, dropped with the
        # compiled ruleset when a rule changes.
        self._shown: dict[str, dict[str, Any]] = {}
        self._changes = 0

    @property
    def default_ruleset(self) -> Ruleset:
        """The ruleset of everyone who keeps the defaults (one object, shared)."""
        return self._default

    # -- reading ----------------------------------------------------------------------------

    async def _stored(self, user_id: str) -> list[StoredRule]:
        return (await self._store.rules_of([user_id])).get(user_id, [])

    @staticmethod
    def _merge(user_id: str | None, stored: Sequence[StoredRule]
               ) -> dict[str, list[dict[str, Any]]]:
        """The ruleset by kind, in priority order (placeholders kept when ``user_id`` is
        None: for compiling)."""
        changes = {(r.kind, r.rule_id): r for r in stored if r.is_default}
        own: dict[str, list[StoredRule]] = {}
        for row in stored:
            if not row.is_default:
                own.setdefault(row.kind, []).append(row)
        out: dict[str, list[dict[str, Any]]] = {}
        for kind in KINDS:
            defaults: list[dict[str, Any]] = []
            for default in DEFAULT_RULES[kind]:
                change = changes.get((kind, default["rule_id"]))
                shown = dict(default)
                if change is not None and change.enabled is not None:
                    shown["enabled"] = change.enabled
                if change is not None and change.actions is not None:
                    shown["actions"] = change.actions
                defaults.append(for_user(shown, user_id) if user_id is not None else shown)
            mine: list[dict[str, Any]] = []
            for r in sorted(own.get(kind, []), key=lambda r: -r.priority):
                rule: dict[str, Any] = {"rule_id": r.rule_id, "default": False,
                                        "enabled": r.enabled is not False,
                                        "actions": r.actions or []}
                if kind in ("override", "underride"):
                    rule["conditions"] = r.conditions or []
                if kind == "content":
                    rule["pattern"] = r.pattern or ""
                mine.append(rule)
            top = [d for d in defaults if d["rule_id"] in _TOP_DEFAULTS]
            rest = [d for d in defaults if d["rule_id"] not in _TOP_DEFAULTS]
            out[kind] = top + mine + rest
        return out

    async def ruleset(self, user_id: str) -> dict[str, Any]:
        """GET /pushrules/ (the ``global`` scope). Shared between callers: not to be
        changed."""
        shown = self._shown.get(user_id)
        if shown is None:
            changes = self._changes
            shown = self._merge(user_id, await self._stored(user_id))
            if changes == self._changes:  # no rule changed while loading
                if len(self._shown) >= self.CACHE_SIZE:
                    self._shown.clear()
                self._shown[user_id] = shown
        return shown

    async def rule(self, user_id: str, scope: str, kind: str, rule_id: str) -> dict[str, Any]:
        _scope(scope)
        for rule in (await self.ruleset(user_id))[_kind(kind)]:
            if rule["rule_id"] == rule_id:
                return dict(rule)
        raise NotFound("Unknown push rule")

    async def compiled(self, user_ids: Sequence[str]) -> dict[str, Ruleset]:
        """User -> compiled ruleset (one query for those not cached)."""
        out: dict[str, Ruleset] = {}
        missing = []
        for user_id in user_ids:
            cached = self._compiled.get(user_id)
            if cached is None:
                missing.append(user_id)
            else:
                out[user_id] = cached
        if missing:
            changes = self._changes
            stored = await self._store.rules_of(missing)
            for user_id in missing:
                rows = stored.get(user_id)
                ruleset = self._default if not rows else \
                    Ruleset(ordered(self._merge(None, rows)))
                out[user_id] = ruleset
                if changes == self._changes:  # no rule changed while loading
                    if len(self._compiled) >= self.CACHE_SIZE:
                        self._compiled.clear()
                    self._compiled[user_id] = ruleset
        return out

    def _changed(self, user_id: str) -> None:
        self._replication.publish("push_rules_changed", user_id)
        self.changed_elsewhere(user_id)

    def changed_elsewhere(self, user_id: str) -> None:
        """The user's rules changed (here, or in the process that writes them)."""
        self._changes += 1
        self._compiled.pop(user_id, None)
        self._shown.pop(user_id, None)

    # -- writing ----------------------------------------------------------------------------

    async def put_rule(self, user_id: str, scope: str, kind: str, rule_id: str,
                       body: Mapping[str, Any], before: str | None, after: str | None
                       ) -> None:
        """PUT /pushrules/global/{kind}/{ruleId}"""
        try:
            await self._put_rule(user_id, scope, kind, rule_id, body, before, after)
        finally:
            # Even after a failure part-way: what is stored may have changed.
            self._changed(user_id)

    async def _put_rule(self, user_id: str, scope: str, kind: str, rule_id: str,
                        body: Mapping[str, Any], before: str | None, after: str | None
                        ) -> None:
        _scope(scope)
        _kind(kind)
        if not rule_id or "/" in rule_id or "\\" in rule_id:
            raise InvalidParam("A rule ID may not be empty or contain '/' or '\\'")
        if rule_id.startswith("."):
            raise InvalidParam("Rule IDs starting with '.' are the server's")
        if "actions" not in body:
            raise MissingParam("'actions' is required")
        actions = check_actions(body["actions"])
        conditions: list[Any] | None = None
        pattern: str | None = None
        if kind in ("override", "underride"):
            conditions = body.get("conditions", [])
            if not isinstance(conditions, list) or not all(
                    isinstance(c, dict) and isinstance(c.get("kind"), str) for c in conditions):
                raise InvalidParam("'conditions' must be a list of objects with a 'kind'")
        elif kind == "content":
            if "pattern" not in body:
                raise MissingParam("A content rule needs a 'pattern'")
            pattern = body["pattern"]
            if not isinstance(pattern, str):
                raise InvalidParam("'pattern' must be a string")
        stored = await self._stored(user_id)
        own = sorted((r for r in stored if r.kind == kind and not r.is_default),
                     key=lambda r: -r.priority)
        existing = next((r for r in own if r.rule_id == rule_id), None)
        order = [r for r in own if r.rule_id != rule_id]
        if len(order) >= MAX_RULES_PER_KIND:
            raise InvalidParam("Too many push rules of this kind")
        for anchor in (before, after):
            if anchor is not None and not any(r.rule_id == anchor for r in order):
                raise BadRequest(f"before/after rule not found: {anchor}")
        new = StoredRule(kind, rule_id, False, 0, conditions, pattern, actions,
                         existing.enabled if existing is not None else True)
        if before is not None:
            index = next(i for i, r in enumerate(order) if r.rule_id == before)
        elif after is not None:
            index = next(i for i, r in enumerate(order) if r.rule_id == after) + 1
        elif existing is not None:
            index = own.index(existing)
        else:
            index = 0  # a new rule is the most important of its kind
        order.insert(index, new)
        for position, rule in enumerate(order):
            priority = len(order) - position
            if rule is new or rule.priority != priority:
                await self._store.put_rule(user_id, StoredRule(
                    rule.kind, rule.rule_id, False, priority, rule.conditions, rule.pattern,
                    rule.actions, rule.enabled))

    async def delete_rule(self, user_id: str, scope: str, kind: str, rule_id: str) -> None:
        """DELETE /pushrules/global/{kind}/{ruleId}: the user's own rules (server-default
        rules cannot be deleted: 404, as Synapse)."""
        try:
            await self._delete_rule(user_id, scope, kind, rule_id)
        finally:
            # Even after a failure part-way: what is stored may have changed.
            self._changed(user_id)

    async def _delete_rule(self, user_id: str, scope: str, kind: str, rule_id: str) -> None:
        _scope(scope)
        _kind(kind)
        if rule_id.startswith(".") or not await self._store.delete_rule(user_id, kind, rule_id):
            raise NotFound("Unknown push rule")

    async def _find(self, user_id: str, kind: str, rule_id: str
                    ) -> tuple[StoredRule | None, dict[str, Any]]:
        stored = await self._stored(user_id)
        shown = next((r for r in self._merge(user_id, stored)[kind]
                      if r["rule_id"] == rule_id), None)
        if shown is None:
            raise NotFound("Unknown push rule")
        row = next((r for r in stored if r.kind == kind and r.rule_id == rule_id), None)
        return row, shown

    async def set_attribute(self, user_id: str, scope: str, kind: str, rule_id: str,
                            attr: str, value: Any) -> None:
        """PUT /pushrules/global/{kind}/{ruleId}/enabled|actions"""
        try:
            await self._set_attribute(user_id, scope, kind, rule_id, attr, value)
        finally:
            # Even after a failure part-way: what is stored may have changed.
            self._changed(user_id)

    async def _set_attribute(self, user_id: str, scope: str, kind: str, rule_id: str,
                             attr: str, value: Any) -> None:
        _scope(scope)
        _kind(kind)
        if attr == "enabled":
            if not isinstance(value, bool):
                raise InvalidParam("'enabled' must be a boolean")
        else:
            value = check_actions(value)
        row, _ = await self._find(user_id, kind, rule_id)
        if row is None:  # a server-default rule the user had not changed yet
            row = StoredRule(kind, rule_id, True, 0, None, None, None, None)
        elif not row.is_default and DEFAULT_RULE_KINDS.get(rule_id) == kind:
            raise InvalidParam("Inconsistent rule")
        row = StoredRule(row.kind, row.rule_id, row.is_default, row.priority, row.conditions,
                         row.pattern, value if attr == "actions" else row.actions,
                         value if attr == "enabled" else row.enabled)
        await self._store.put_rule(user_id, row)

    async def get_attribute(self, user_id: str, scope: str, kind: str, rule_id: str,
                            attr: str) -> dict[str, Any]:
        """GET /pushrules/global/{kind}/{ruleId}/enabled|actions"""
        rule = await self.rule(user_id, scope, kind, rule_id)
        return {attr: rule[attr]}
