"""Push rules: the defaults SDK clients fetch before their first sync, and editing them
(PUT with before/after, DELETE, enabled, actions) with the errors. SQLite and PostgreSQL."""

from __future__ import annotations

from tests.conftest import bearer, register_user
from tests.helpers.harness import harness_services
from tests.helpers.room_api import User, api, assert_error
from tests.helpers.spec import assert_matches_spec

services = harness_services


async def test_default_rules_match_the_spec_and_name_the_user(client) -> None:
    alice = await register_user(client, "alice")
    resp = await client.get("/_matrix/client/v3/pushrules/", headers=bearer(alice["access_token"]))
    assert resp.status == 200
    body = await resp.json()
    assert_matches_spec("client-server", "GET", "/pushrules/", 200, body)
    rules = body["global"]
    override_ids = [r["rule_id"] for r in rules["override"]]
    assert override_ids[0] == ".m.rule.master"
    assert ".m.rule.invite_for_me" in override_ids
    invite = next(r for r in rules["override"] if r["rule_id"] == ".m.rule.invite_for_me")
    assert {"kind": "event_match", "key": "state_key", "pattern": "@alice:test.local"} in \
        invite["conditions"]
    assert rules["content"][0]["pattern"] == "alice"
    assert [r["rule_id"] for r in rules["underride"]][-1] == ".m.rule.encrypted"


async def test_one_rule_and_unknown_rule(client) -> None:
    alice = await register_user(client, "alice")
    headers = bearer(alice["access_token"])
    resp = await client.get("/_matrix/client/v3/pushrules/global/underride/.m.rule.message",
                            headers=headers)
    assert resp.status == 200
    assert (await resp.json())["actions"] == ["notify"]
    resp = await client.get("/_matrix/client/v3/pushrules/global/override/nope", headers=headers)
    assert resp.status == 404
    assert (await resp.json())["errcode"] == "M_NOT_FOUND"


async def test_push_rules_need_auth(client) -> None:
    resp = await client.get("/_matrix/client/v3/pushrules/")
    assert resp.status == 401


# -- editing rules ------------------------------------------------------------------------------



async def _ids(client, user: User, kind: str) -> list[str]:
    status, body = await api(client, "GET", f"/pushrules/global/{kind}/", user,
                             spec=False)  # the spec lists no per-kind GET
    assert status == 200
    return [r["rule_id"] for r in body]


async def test_put_get_delete_own_rules_with_ordering(client, alice: User) -> None:
    rule = {"actions": ["notify"], "conditions": [
        {"kind": "event_match", "key": "content.body", "pattern": "cake*"}]}
    for name in ("a", "b"):
        status, _ = await api(client, "PUT", f"/pushrules/global/override/{name}", alice, rule)
        assert status == 200
    # A new rule is the most important of its kind, after the master rule.
    assert (await _ids(client, alice, "override"))[:3] == [".m.rule.master", "b", "a"]
    status, _ = await api(client, "PUT", "/pushrules/global/override/c", alice, rule,
                          query={"after": "a"})
    assert status == 200
    status, _ = await api(client, "PUT", "/pushrules/global/override/d", alice, rule,
                          query={"before": "b"})
    assert (await _ids(client, alice, "override"))[:5] == [".m.rule.master", "d", "b", "a", "c"]
    status, body = await api(client, "GET", "/pushrules/global/override/c", alice)
    assert status == 200
    assert body == {"rule_id": "c", "default": False, "enabled": True, **rule}
    status, _ = await api(client, "PUT", "/pushrules/global/content/cakes", alice,
                          {"actions": ["notify"], "pattern": "cake"})
    assert status == 200
    status, body = await api(client, "GET", "/pushrules/", alice)
    assert body["global"]["content"][0]["pattern"] == "cake"
    status, _ = await api(client, "DELETE", "/pushrules/global/override/a", alice)
    assert status == 200
    assert "a" not in await _ids(client, alice, "override")
    status, body = await api(client, "DELETE", "/pushrules/global/override/a", alice)
    assert_error(status, body, 404, "M_NOT_FOUND")


async def test_rule_errors(client, alice: User) -> None:
    ok = {"actions": ["notify"]}
    cases = [
        ("PUT", "/pushrules/global/override/x", ok, {"before": "nope"}, 400, "M_UNKNOWN"),
        ("PUT", "/pushrules/global/override/x", ok, {"after": ".m.rule.master"}, 400,
         "M_UNKNOWN"),
        ("PUT", "/pushrules/global/override/.mine", ok, None, 400, "M_INVALID_PARAM"),
        ("PUT", "/pushrules/global/nonsense/x", ok, None, 400, "M_INVALID_PARAM"),
        ("PUT", "/pushrules/device/override/x", ok, None, 400, "M_INVALID_PARAM"),
        ("PUT", "/pushrules/global/override/x", {}, None, 400, "M_MISSING_PARAM"),
        ("PUT", "/pushrules/global/override/x", {"actions": "notify"}, None, 400,
         "M_INVALID_PARAM"),
        ("PUT", "/pushrules/global/override/x", {"actions": ["explode"]}, None, 400,
         "M_INVALID_PARAM"),
        ("PUT", "/pushrules/global/override/x", {"actions": [], "conditions": [1]}, None, 400,
         "M_INVALID_PARAM"),
        ("PUT", "/pushrules/global/content/x", ok, None, 400, "M_MISSING_PARAM"),
        ("DELETE", "/pushrules/global/override/.m.rule.master", None, None, 404,
         "M_NOT_FOUND"),
        ("GET", "/pushrules/global/override/nope/enabled", None, None, 404, "M_NOT_FOUND"),
        ("PUT", "/pushrules/global/override/.m.rule.master/enabled", {"enabled": "yes"}, None,
         400, "M_INVALID_PARAM"),
        ("PUT", "/pushrules/global/override/nope/actions", {"actions": []}, None, 404,
         "M_NOT_FOUND"),
    ]
    for method, path, body, query, status_wanted, errcode in cases:
        status, answer = await api(client, method, path, alice, body, query=query)
        assert_error(status, answer, status_wanted, errcode)
    resp = await client.put("/_matrix/client/v3/pushrules/global/override/x",
                            data=b"{not json", headers=bearer(alice.token))
    assert resp.status == 400
    assert (await resp.json())["errcode"] == "M_NOT_JSON"


async def test_enabled_and_actions_of_default_rules_are_kept(client, alice: User) -> None:
    status, _ = await api(client, "PUT", "/pushrules/global/override/.m.rule.master/enabled",
                          alice, {"enabled": True})
    assert status == 200
    status, body = await api(client, "GET", "/pushrules/global/override/.m.rule.master/enabled",
                             alice)
    assert body == {"enabled": True}
    status, _ = await api(client, "PUT", "/pushrules/global/underride/.m.rule.message/actions",
                          alice, {"actions": ["notify", {"set_tweak": "sound",
                                                         "value": "default"}]})
    assert status == 200
    status, body = await api(client, "GET", "/pushrules/global/underride/.m.rule.message",
                             alice)
    assert body["actions"] == ["notify", {"set_tweak": "sound", "value": "default"}]
    assert body["default"] is True and body["enabled"] is True
    status, body = await api(client, "GET", "/pushrules/", alice)
    assert body["global"]["override"][0] == {
        "rule_id": ".m.rule.master", "default": True, "enabled": True, "conditions": [],
        "actions": []}


async def test_the_full_default_set(client, alice: User) -> None:
    _, body = await api(client, "GET", "/pushrules/", alice)
    rules = body["global"]
    assert [r["rule_id"] for r in rules["override"]] == [
        ".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me",
        ".m.rule.member_event", ".m.rule.is_user_mention", ".m.rule.contains_display_name",
        ".m.rule.is_room_mention", ".m.rule.roomnotif", ".m.rule.tombstone",
        ".m.rule.reaction", ".m.rule.room.server_acl", ".m.rule.suppress_edits"]
    assert [r["rule_id"] for r in rules["underride"]] == [
        ".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one",
        ".m.rule.message", ".m.rule.encrypted"]
    mention = rules["override"][4]
    assert mention["conditions"][0]["value"] == alice.user_id
