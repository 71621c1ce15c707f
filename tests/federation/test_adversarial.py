"""A hostile federation peer against one real ``ktchat`` process.

``FakePeer`` (tests/helpers/fake_peer.py) is a remote server with its own key; it joins a
public room of alice@ours as ``@mallory:<fake>`` with the real handshake, then sends what a
malicious or broken server would. Each test checks the refusal (status and errcode, or the
PDU's entry in the ``/send`` answer), that alice's view of the room (``/state`` and
``/messages``) did not change, and that the server still answers afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from signedjson.key import generate_signing_key

from core.events.builder import event_from_pdu
from core.events.hashing import add_content_hash
from tests.helpers.fake_peer import FakePeer, q
from tests.helpers.federation import FedServer, User

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_BODY = 1024 * 1024


@dataclass
class Env:
    server: FedServer
    alice: User
    peer: FakePeer
    room_id: str
    mallory: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp("adversarial")
    server = FedServer(root, "hs", config={"http": {"max_request_body_bytes": MAX_BODY}})
    peer = FakePeer(root / "fake")
    await peer.start()
    server.start()
    try:
        alice = await server.register("alice")
        room_id = await alice.create_room(preset="public_chat", name="target")
        mallory = peer.user_id("mallory")
        await peer.join(server, room_id, mallory)
        members = await alice.joined_members(room_id)
        assert mallory in members, members
        yield Env(server, alice, peer, room_id, mallory)
    finally:
        server.stop()
        await peer.close()


# -- helpers ------------------------------------------------------------------------------


async def snapshot(env: Env) -> tuple[dict[tuple[str, str], Any], list[str]]:
    """alice's view: the room's state (by type and key: event ID and content) and the IDs
    of the latest timeline events."""
    state = {(e["type"], e["state_key"]): (e["event_id"], e["content"])
             for e in await env.alice.state(env.room_id)}
    timeline = [e["event_id"] for e in await env.alice.timeline(env.room_id, limit=200)]
    return state, timeline


async def timeline_events(env: Env) -> list[dict[str, Any]]:
    return await env.alice.timeline(env.room_id, limit=200)


async def assert_healthy(env: Env) -> None:
    status, body = await env.peer.request(env.server, "GET", "/_matrix/federation/v1/version",
                                          sign=False)
    assert status == 200, body
    status, body = await env.peer.request(env.server, "GET", "/_matrix/key/v2/server",
                                          sign=False)
    assert status == 200 and body.get("server_name") == env.server.server_name, body
    assert env.server.running


def refused(answer: dict[str, Any], event_id: str) -> bool:
    """The /send answer does not accept the PDU: an error entry, or no entry at all."""
    result = answer.get("pdus", {}).get(event_id)
    return result is None or "error" in result


def rejected(answer: dict[str, Any], event_id: str) -> bool:
    """The /send answer names the PDU with an error."""
    result = answer.get("pdus", {}).get(event_id)
    return isinstance(result, dict) and "error" in result


def tag() -> str:
    return uuid.uuid4().hex[:10]


async def send_ok(env: Env, pdus: list[Any], **kwargs: Any) -> dict[str, Any]:
    status, answer = await env.peer.send_transaction(env.server, pdus, **kwargs)
    assert status == 200, answer
    return answer  # type: ignore[no-any-return]


# -- 10. control --------------------------------------------------------------------------


async def test_valid_message_is_accepted_and_visible(env: Env) -> None:
    body = f"hello from mallory {tag()}"
    event = env.peer.message(env.room_id, body)
    answer = await send_ok(env, [event.pdu])
    assert answer["pdus"].get(event.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(event)
    timeline = await timeline_events(env)
    seen = [e for e in timeline if e["event_id"] == event.event_id]
    assert seen and seen[0]["content"]["body"] == body and seen[0]["sender"] == env.mallory
    await assert_healthy(env)


# -- 1. request authentication ------------------------------------------------------------


async def _auth_refused(env: Env, expect_status: int, expect_errcode: str,
                        **kwargs: Any) -> None:
    before = await snapshot(env)
    body = f"should not arrive {tag()}"
    event = env.peer.message(env.room_id, body)
    status, answer = await env.peer.send_transaction(env.server, [event.pdu], **kwargs)
    assert status == expect_status, answer
    assert isinstance(answer, dict) and answer.get("errcode") == expect_errcode, answer
    assert await snapshot(env) == before
    assert all(e.get("content", {}).get("body") != body for e in await timeline_events(env))
    await assert_healthy(env)


async def test_send_without_authorization(env: Env) -> None:
    await _auth_refused(env, 401, "M_UNAUTHORIZED", sign=False)


async def test_send_with_bad_signature(env: Env) -> None:
    # Same key ID, another key: the signature does not verify with the published key.
    impostor = generate_signing_key(env.peer.signing_key.version)
    txn = tag()
    uri = f"/_matrix/federation/v1/send/{txn}"
    header = env.peer.authorization("PUT", uri, env.server.server_name, {"other": "body"},
                                    key=impostor)
    await _auth_refused(env, 401, "M_UNAUTHORIZED", txn_id=txn, authorization=header)


async def test_send_with_signature_over_other_body(env: Env) -> None:
    # The real key, but over a different body than the one sent.
    txn = tag()
    uri = f"/_matrix/federation/v1/send/{txn}"
    header = env.peer.authorization("PUT", uri, env.server.server_name,
                                    {"origin": env.peer.server_name, "pdus": [], "edus": []})
    await _auth_refused(env, 401, "M_UNAUTHORIZED", txn_id=txn, authorization=header)


async def test_send_signed_for_another_destination(env: Env) -> None:
    await _auth_refused(env, 401, "M_UNAUTHORIZED", destination="other.example")


async def test_send_body_origin_differs_from_signer(env: Env) -> None:
    await _auth_refused(env, 403, "M_FORBIDDEN", origin="evil.example")


# -- 2.-4. PDU integrity ------------------------------------------------------------------


async def test_bad_content_hash_is_redacted_or_dropped(env: Env) -> None:
    before_state, _ = await snapshot(env)
    event = env.peer.message(env.room_id, "original")
    pdu = dict(event.pdu)
    tampered = f"tampered {tag()}"
    pdu["content"] = {"msgtype": "m.text", "body": tampered}
    # Content is not covered by the signature (it is redacted away), so the signature and
    # the event ID still hold: only the content hash is wrong.
    assert event_from_pdu(pdu, event.room_version).event_id == event.event_id
    answer = await send_ok(env, [pdu])
    timeline = await timeline_events(env)
    assert all(e.get("content", {}).get("body") != tampered for e in timeline), timeline
    stored = [e for e in timeline if e["event_id"] == event.event_id]
    if stored:
        assert stored[0]["content"] == {}, stored[0]
        env.peer.rooms[env.room_id].accept(event)
    else:
        assert refused(answer, event.event_id), answer
    assert (await snapshot(env))[0] == before_state
    await assert_healthy(env)


async def test_pdu_tampered_after_signing_is_not_stored(env: Env) -> None:
    before = await snapshot(env)
    event = env.peer.message(env.room_id, "signed")
    pdu = dict(event.pdu)
    # A field the signature covers, with the content hash recomputed: only the signature
    # is wrong.
    pdu["origin_server_ts"] = pdu["origin_server_ts"] + 1
    pdu.pop("hashes")
    pdu = add_content_hash(pdu)
    pdu["signatures"] = event.pdu["signatures"]
    tampered_id = event_from_pdu(pdu, event.room_version).event_id
    answer = await send_ok(env, [pdu])
    assert refused(answer, tampered_id), answer
    assert await snapshot(env) == before
    await assert_healthy(env)


async def test_pdu_with_foreign_signature_is_not_stored(env: Env) -> None:
    before = await snapshot(env)
    body = f"foreign key {tag()}"
    event = env.peer.message(env.room_id, body, key=generate_signing_key(
        env.peer.signing_key.version))
    answer = await send_ok(env, [event.pdu])
    assert refused(answer, event.event_id), answer
    assert await snapshot(env) == before
    await assert_healthy(env)


async def test_forged_local_sender_is_not_stored(env: Env) -> None:
    before = await snapshot(env)
    body = f"I am alice {tag()}"
    event = env.peer.message(env.room_id, body, sender=env.alice.user_id)
    answer = await send_ok(env, [event.pdu])
    assert refused(answer, event.event_id), answer
    assert await snapshot(env) == before
    timeline = await timeline_events(env)
    assert all(e.get("content", {}).get("body") != body for e in timeline)
    await assert_healthy(env)


async def test_forged_local_state_event_is_not_stored(env: Env) -> None:
    before = await snapshot(env)
    event = env.peer.build(env.room_id, "m.room.name", {"name": f"pwned {tag()}"},
                           state_key="", sender=env.alice.user_id)
    answer = await send_ok(env, [event.pdu])
    assert refused(answer, event.event_id), answer
    assert await snapshot(env) == before
    await assert_healthy(env)


# -- 5. authorization ---------------------------------------------------------------------


async def test_power_level_escalation_is_rejected(env: Env) -> None:
    before = await snapshot(env)
    levels = (await env.alice.state_event(env.room_id, "m.room.power_levels"))
    assert levels.get("users", {}).get(env.mallory, levels.get("users_default", 0)) == 0
    escalated = {**levels, "users": {**levels.get("users", {}), env.mallory: 100}}
    event = env.peer.build(env.room_id, "m.room.power_levels", escalated, state_key="")
    answer = await send_ok(env, [event.pdu])
    assert rejected(answer, event.event_id), answer
    assert await snapshot(env) == before
    assert await env.alice.state_event(env.room_id, "m.room.power_levels") == levels
    await assert_healthy(env)


async def test_unauthorised_state_event_is_rejected(env: Env) -> None:
    before = await snapshot(env)
    event = env.peer.build(env.room_id, "m.room.name", {"name": f"renamed {tag()}"},
                           state_key="")
    answer = await send_ok(env, [event.pdu])
    assert rejected(answer, event.event_id), answer
    assert await snapshot(env) == before
    assert (await env.alice.state_event(env.room_id, "m.room.name"))["name"] == "target"
    await assert_healthy(env)


async def test_message_from_user_who_never_joined_is_rejected(env: Env) -> None:
    before = await snapshot(env)
    event = env.peer.message(env.room_id, f"lurker {tag()}", sender=env.peer.user_id("eve"))
    answer = await send_ok(env, [event.pdu])
    assert rejected(answer, event.event_id), answer
    assert await snapshot(env) == before
    await assert_healthy(env)


async def test_escalation_with_forged_auth_events_is_rejected(env: Env) -> None:
    # Cite alice's (PL 100) member event as mallory's own membership.
    before = await snapshot(env)
    room = env.peer.rooms[env.room_id]
    levels = await env.alice.state_event(env.room_id, "m.room.power_levels")
    escalated = {**levels, "users": {**levels.get("users", {}), env.mallory: 100}}
    auth = [room.state[("m.room.power_levels", "")],
            room.state[("m.room.member", env.alice.user_id)]]
    event = env.peer.build(env.room_id, "m.room.power_levels", escalated, state_key="",
                           auth_events=auth)
    answer = await send_ok(env, [event.pdu])
    assert rejected(answer, event.event_id), answer
    assert await snapshot(env) == before
    await assert_healthy(env)


# -- 6. replayed transactions -------------------------------------------------------------


async def test_replayed_transaction(env: Env) -> None:
    txn = tag()
    first_body = f"once {tag()}"
    event = env.peer.message(env.room_id, first_body)
    first = await send_ok(env, [event.pdu], txn_id=txn)
    assert first["pdus"].get(event.event_id) == {}, first
    env.peer.rooms[env.room_id].accept(event)
    again = await send_ok(env, [event.pdu], txn_id=txn)
    assert again == first
    timeline = await timeline_events(env)
    assert [e["event_id"] for e in timeline].count(event.event_id) == 1
    before = await snapshot(env)

    other_body = f"smuggled {tag()}"
    other = env.peer.message(env.room_id, other_body)
    third = await send_ok(env, [other.pdu], txn_id=txn)
    assert third == first, third
    assert await snapshot(env) == before
    assert all(e.get("content", {}).get("body") != other_body
               for e in await timeline_events(env))
    await assert_healthy(env)


# -- 7. sizes -----------------------------------------------------------------------------


async def test_body_over_max_size(env: Env) -> None:
    before = await snapshot(env)
    event = env.peer.message(env.room_id, "padding")
    pdu = dict(event.pdu)
    pdu["unsigned"] = {"padding": "x" * (MAX_BODY + 1024)}
    status, answer = await env.peer.send_transaction(env.server, [pdu])
    assert status == 413, answer
    assert isinstance(answer, dict) and answer.get("errcode") == "M_TOO_LARGE", answer
    assert await snapshot(env) == before
    await assert_healthy(env)


async def test_pdu_over_64k_is_refused(env: Env) -> None:
    before = await snapshot(env)
    event = env.peer.message(env.room_id, "y" * (65 * 1024))
    answer = await send_ok(env, [event.pdu])
    assert refused(answer, event.event_id), answer
    assert await snapshot(env) == before
    await assert_healthy(env)


async def test_more_than_50_pdus(env: Env) -> None:
    before = await snapshot(env)
    room = env.peer.rooms[env.room_id]
    pdus = [env.peer.message(env.room_id, f"flood {i}", depth=room.depth + 1 + i).pdu
            for i in range(51)]
    status, answer = await env.peer.send_transaction(env.server, pdus)
    assert status == 400, answer
    assert isinstance(answer, dict) and answer.get("errcode") in ("M_BAD_JSON",
                                                                   "M_INVALID_PARAM"), answer
    assert await snapshot(env) == before
    await assert_healthy(env)


# -- 8. malformed input -------------------------------------------------------------------


async def test_malformed_json(env: Env) -> None:
    before = await snapshot(env)
    txn = tag()
    uri = f"/_matrix/federation/v1/send/{txn}"
    header = env.peer.authorization("PUT", uri, env.server.server_name, None)
    status, answer = await env.peer.request(env.server, "PUT", uri, raw_body=b'{"pdus": [',
                                            authorization=header)
    assert status == 400, answer
    assert isinstance(answer, dict) and answer.get("errcode") == "M_NOT_JSON", answer
    status, answer = await env.peer.request(env.server, "PUT", uri, raw_body=b"\xff\xfe{}",
                                            authorization=header)
    assert status == 400 and answer.get("errcode") == "M_NOT_JSON", answer
    assert await snapshot(env) == before
    await assert_healthy(env)


async def test_malformed_pdus_refused_per_pdu(env: Env) -> None:
    before_state, before_timeline = await snapshot(env)
    good = env.peer.message(env.room_id, f"good {tag()}")
    base = dict(env.peer.message(env.room_id, "shape").pdu)

    def variant(**changes: Any) -> dict[str, Any]:
        pdu = {**base, **changes}
        return {k: v for k, v in pdu.items() if v is not _DROP}

    bad = [
        variant(type=_DROP),
        variant(sender=_DROP),
        variant(depth="7"),
        variant(depth=True),
        variant(depth=-1),
        variant(prev_events="not a list"),
        variant(auth_events=[1, 2]),
        variant(content=["a list"]),
        variant(hashes=_DROP),
        variant(hashes={"sha256": 5}),
        variant(signatures="x"),
        variant(sender="not-a-user-id"),
        variant(state_key=5),
        variant(origin_server_ts=1.5),
        variant(prev_events=[f"$e{i}" for i in range(21)]),
        variant(room_id=12345),
        variant(room_id=_DROP),
        "a string",
        17,
        None,
        [],
    ]
    answer = await send_ok(env, [*bad, good.pdu])
    assert answer["pdus"].get(good.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(good)
    assert all(v != {} for k, v in answer["pdus"].items() if k != good.event_id), answer
    state, timeline = await snapshot(env)
    assert state == before_state
    assert timeline == [*before_timeline, good.event_id][-len(timeline):], timeline
    await assert_healthy(env)


class _Drop:
    pass


_DROP: Any = _Drop()


async def test_transaction_of_wrong_shape(env: Env) -> None:
    before = await snapshot(env)
    for body in ({"pdus": "x", "edus": []}, {"pdus": [], "edus": {}},
                 {"pdus": {"a": 1}}):
        status, answer = await env.peer.request(
            env.server, "PUT", f"/_matrix/federation/v1/send/{tag()}", body)
        assert status == 400, (body, answer)
        assert answer.get("errcode") == "M_BAD_JSON", (body, answer)
    status, answer = await env.peer.request(
        env.server, "PUT", f"/_matrix/federation/v1/send/{tag()}", raw_body=b"[1, 2]",
        authorization=env.peer.authorization("PUT", "/x", env.server.server_name, None))
    assert status == 400, answer
    # EDUs of every wrong shape are dropped without failing the transaction.
    edus = [None, "x", {"edu_type": "m.typing"}, {"edu_type": "m.typing", "content": []},
            {"edu_type": "m.presence", "content": {"push": "x"}},
            {"edu_type": "m.receipt", "content": {env.room_id: "x"}},
            {"edu_type": "m.typing", "content": {"user_id": env.alice.user_id,
                                                  "room_id": env.room_id, "typing": True}}]
    answer = await send_ok(env, [], edus=edus)
    assert answer == {"pdus": {}}, answer
    assert await snapshot(env) == before
    await assert_healthy(env)


# -- 9. membership handshakes -------------------------------------------------------------


async def test_make_join_for_user_of_another_server(env: Env) -> None:
    for user in (env.server.user_id("victim"), "@someone:other.example"):
        status, answer = await env.peer.make_join(env.server, env.room_id, user)
        assert status == 403, (user, answer)
        assert answer.get("errcode") == "M_FORBIDDEN", answer
    await assert_healthy(env)


async def test_send_join_for_user_of_another_server(env: Env) -> None:
    before = await snapshot(env)
    # A real template for a user of the fake, re-targeted at a user of our server.
    status, answer = await env.peer.make_join(env.server, env.room_id,
                                              env.peer.user_id(f"j{tag()}"))
    assert status == 200, answer
    version = env.peer.rooms[env.room_id].version
    victim = env.server.user_id("victim")
    template = {**answer["event"], "sender": victim, "state_key": victim}
    event = env.peer.sign_template(template, version)
    status, answer = await env.peer.send_join(env.server, event)
    assert status in (400, 403), answer
    assert answer.get("errcode") in ("M_BAD_JSON", "M_FORBIDDEN"), answer
    assert await snapshot(env) == before
    await assert_healthy(env)


async def test_send_join_for_someone_elses_event(env: Env) -> None:
    # A join of a user of a third server, signed by it is impossible; signed by the fake it
    # must not pass either.
    before = await snapshot(env)
    status, answer = await env.peer.make_join(env.server, env.room_id,
                                              env.peer.user_id(f"k{tag()}"))
    assert status == 200, answer
    version = env.peer.rooms[env.room_id].version
    stranger = "@stranger:127.0.0.1:1"
    event = env.peer.sign_template({**answer["event"], "sender": stranger,
                                    "state_key": stranger}, version)
    status, answer = await env.peer.send_join(env.server, event)
    assert status in (400, 403), answer
    assert await snapshot(env) == before
    await assert_healthy(env)


async def test_send_join_path_mismatch(env: Env) -> None:
    before = await snapshot(env)
    status, answer = await env.peer.make_join(env.server, env.room_id,
                                              env.peer.user_id(f"m{tag()}"))
    assert status == 200, answer
    event = env.peer.sign_template(answer["event"], env.peer.rooms[env.room_id].version)
    status, answer = await env.peer.request(
        env.server, "PUT",
        f"/_matrix/federation/v2/send_join/{q(env.room_id)}/{q('$notthisone')}",
        dict(event.pdu))
    assert status == 400, answer
    assert await snapshot(env) == before
    await assert_healthy(env)


async def test_invite_for_user_not_on_our_server(env: Env) -> None:
    before = await snapshot(env)
    target = env.peer.user_id("victim")
    event = env.peer.build(env.room_id, "m.room.member", {"membership": "invite"},
                           state_key=target)
    status, answer = await env.peer.request(
        env.server, "PUT",
        f"/_matrix/federation/v2/invite/{q(env.room_id)}/{q(event.event_id)}",
        {"room_version": event.room_version.identifier, "event": dict(event.pdu),
         "invite_room_state": []})
    assert status == 400, answer
    assert answer.get("errcode") == "M_BAD_JSON", answer
    assert await snapshot(env) == before
    await assert_healthy(env)


async def test_invite_signed_with_wrong_key(env: Env) -> None:
    before = await snapshot(env)
    target = env.server.user_id("alice")
    version = env.peer.rooms[env.room_id].version
    event = env.peer.build(env.room_id, "m.room.member", {"membership": "invite"},
                           state_key=target, key=generate_signing_key("fake1"))
    status, answer = await env.peer.request(
        env.server, "PUT",
        f"/_matrix/federation/v2/invite/{q(env.room_id)}/{q(event.event_id)}",
        {"room_version": version.identifier, "event": dict(event.pdu),
         "invite_room_state": []})
    assert status in (400, 403), answer
    assert await snapshot(env) == before
    await assert_healthy(env)



# -- extras: what a valid-looking PDU may still smuggle -------------------------------------


async def _fresh_room(env: Env, name: str) -> str:
    room_id = await env.alice.create_room(preset="public_chat", name=name)
    await env.peer.join(env.server, room_id, env.mallory)
    return room_id


async def test_duplicate_pdu_in_one_transaction_stored_once(env: Env) -> None:
    event = env.peer.message(env.room_id, f"twice {tag()}")
    answer = await send_ok(env, [event.pdu, event.pdu])
    assert answer["pdus"].get(event.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(event)
    ids = [e["event_id"] for e in await timeline_events(env)]
    assert ids.count(event.event_id) == 1
    # And once more in a later transaction: still once.
    await send_ok(env, [event.pdu])
    ids = [e["event_id"] for e in await timeline_events(env)]
    assert ids.count(event.event_id) == 1
    await assert_healthy(env)


async def test_remote_unsigned_data_not_shown_to_clients(env: Env) -> None:
    """A peer's ``unsigned`` is not covered by hashes or signatures: what it claims there
    (a redaction, a previous content, a relation summary) must not reach clients."""
    body = f"unsigned {tag()}"
    event = env.peer.message(env.room_id, body)
    pdu = dict(event.pdu)
    pdu["unsigned"] = {
        "redacted_because": {"type": "m.room.redaction", "sender": env.alice.user_id,
                             "content": {}, "event_id": "$fake"},
        "prev_content": {"membership": "join"},
        "m.relations": {"m.replace": {"event_id": "$fake"}},
        "transaction_id": "stolen",
    }
    answer = await send_ok(env, [pdu])
    assert answer["pdus"].get(event.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(event)
    seen = [e for e in await timeline_events(env) if e["event_id"] == event.event_id]
    assert seen and seen[0]["content"]["body"] == body
    unsigned = seen[0].get("unsigned", {})
    for key in ("redacted_because", "prev_content", "m.relations", "transaction_id"):
        assert key not in unsigned, unsigned
    await assert_healthy(env)


async def test_huge_depth_does_not_wedge_the_room(env: Env) -> None:
    """A joined peer sends a message at the largest depth canonical JSON allows; local users
    must still be able to send in the room afterwards."""
    room_id = await _fresh_room(env, "depth")
    event = env.peer.message(room_id, f"deep {tag()}", depth=2**53 - 1)
    status, answer = await env.peer.send_transaction(env.server, [event.pdu])
    assert status == 200, answer
    status, sent = await env.alice.raw(
        "PUT", f"/rooms/{q(room_id)}/send/m.room.message/{tag()}",
        {"msgtype": "m.text", "body": "still works"})
    assert status == 200, (status, sent, answer)
    await assert_healthy(env)
