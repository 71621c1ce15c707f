"""The default push rules that SDK clients fetch before their first sync."""

from __future__ import annotations

from tests.conftest import bearer, register_user
from tests.helpers.spec import assert_matches_spec


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
