"""Complement-style federation scenarios against one real ``ktchat`` process.

Black-box: the server is driven only through its federation API (by ``FakePeer``, a fake
remote homeserver with its own key) and its client API (by local users). Each test names the
Complement test or the spec section it follows; where the spec leaves the answer open, the
expected behaviour is Synapse's.

The module shares one server, one fake peer that joins a public room of alice's as
``@mallory`` (the room of most inbound tests) and also hosts rooms of its own for our users to
join, and a second fake peer that cannot help with joins (for fail-over).
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from canonicaljson import encode_canonical_json
from signedjson.key import decode_verify_key_bytes, generate_signing_key, get_verify_key
from signedjson.sign import SignatureVerifyException, verify_signed_json
from signedjson.types import VerifyKey
from unpaddedbase64 import decode_base64, encode_base64

from core.events.builder import event_from_pdu
from core.events.hashing import add_content_hash
from core.events.model import Event
from tests.helpers.fake_peer import FakePeer, ReceivedRequest, q
from tests.helpers.federation import FedServer, User, poll_until
from tests.helpers.processes import free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

JsonDict = dict[str, Any]


@dataclass
class Env:
    server: FedServer
    alice: User
    peer: FakePeer
    useless: FakePeer  # answers every make_join with an error
    room_id: str
    mallory: str
    server_keys: dict[str, VerifyKey]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    root = tmp_path_factory.mktemp("scenarios")
    server = FedServer(root, "hs")
    peer = FakePeer(root / "fake")
    useless = FakePeer(root / "useless")
    useless.make_join_error = (500, {"errcode": "M_UNKNOWN", "error": "cannot help"})
    await peer.start()
    await useless.start()
    server.start()
    try:
        alice = await server.register("alice")
        room_id = await alice.create_room(preset="public_chat", name="scenarios")
        mallory = peer.user_id("mallory")
        await peer.join(server, room_id, mallory)
        assert mallory in await alice.joined_members(room_id)
        answer = await server.server_keys()
        keys = {key_id: decode_verify_key_bytes(key_id, decode_base64(value["key"]))
                for key_id, value in answer["verify_keys"].items()}
        yield Env(server, alice, peer, useless, room_id, mallory, keys)
    finally:
        server.stop()
        await peer.close()
        await useless.close()


# -- helpers ------------------------------------------------------------------------------


def tag() -> str:
    return uuid.uuid4().hex[:10]


async def snapshot(env: Env, room_id: str | None = None
                   ) -> tuple[dict[tuple[str, str], Any], list[str]]:
    """alice's view of a room: its state (by type and key) and its latest timeline IDs."""
    room_id = room_id or env.room_id
    state = {(e["type"], e["state_key"]): (e["event_id"], e["content"])
             for e in await env.alice.state(room_id)}
    timeline = [e["event_id"] for e in await env.alice.timeline(room_id, limit=200)]
    return state, timeline


async def send_ok(env: Env, pdus: list[Any]) -> JsonDict:
    status, answer = await env.peer.send_transaction(env.server, pdus)
    assert status == 200, answer
    assert isinstance(answer, dict)
    return answer


def rejected(answer: JsonDict, event_id: str) -> bool:
    result = answer.get("pdus", {}).get(event_id)
    return isinstance(result, dict) and "error" in result


async def fresh_template(env: Env, user_id: str, room_id: str | None = None) -> JsonDict:
    """A real make_join template for a user of the fake."""
    status, answer = await env.peer.make_join(env.server, room_id or env.room_id, user_id)
    assert status == 200, answer
    return answer["event"]  # type: ignore[no-any-return]


def is_error(answer: Any, status: int, got: int, *errcodes: str) -> bool:
    return got == status and isinstance(answer, dict) and answer.get("errcode") in errcodes


# Independent checks of what our server signs (spec: "Signing events", "Calculating the
# reference hash", "Redactions" of rooms v11/v12), not using the product's own code.

_KEPT_TOP_LEVEL = ("event_id", "type", "room_id", "sender", "state_key", "content", "hashes",
                   "signatures", "depth", "prev_events", "auth_events", "origin_server_ts")


_KEPT_BEFORE_V11 = ("origin", "membership", "prev_state")
_KEPT_CONTENT: dict[str, tuple[str, ...]] = {
    "m.room.member": ("membership", "join_authorised_via_users_server"),
    "m.room.join_rules": ("join_rule", "allow"),
    "m.room.history_visibility": ("history_visibility",),
    "m.room.power_levels": ("ban", "events", "events_default", "kick", "redact",
                            "state_default", "users", "users_default"),
}


def redacted(pdu: JsonDict, version: str = "12") -> JsonDict:
    """The redaction algorithm of rooms v10 to v12 (spec: rooms v11 "Redactions")."""
    v11 = version != "10"
    kept = _KEPT_TOP_LEVEL + (() if v11 else _KEPT_BEFORE_V11)
    out = {k: v for k, v in pdu.items() if k in kept}
    content = pdu.get("content", {})
    event_type = pdu.get("type")
    if event_type == "m.room.create":
        out["content"] = content if v11 else {k: v for k, v in content.items()
                                               if k == "creator"}
        return out
    keys = _KEPT_CONTENT.get(str(event_type), ())
    if v11 and event_type == "m.room.power_levels":
        keys += ("invite",)
    if v11 and event_type == "m.room.redaction":
        keys = ("redacts",)
    out["content"] = {k: v for k, v in content.items() if k in keys}
    if v11 and event_type == "m.room.member" and isinstance(
            content.get("third_party_invite"), dict) and \
            "signed" in content["third_party_invite"]:
        out["content"]["third_party_invite"] = {"signed": content["third_party_invite"]
                                                ["signed"]}
    return out


def content_hash_ok(pdu: JsonDict) -> bool:
    stripped = {k: v for k, v in pdu.items() if k not in ("unsigned", "signatures", "hashes")}
    digest = hashlib.sha256(encode_canonical_json(stripped)).digest()
    return bool(encode_base64(digest) == pdu.get("hashes", {}).get("sha256"))


def reference_event_id(pdu: JsonDict, version: str = "12") -> str:
    body = {k: v for k, v in redacted(pdu, version).items()
            if k not in ("signatures", "unsigned")}
    digest = hashlib.sha256(encode_canonical_json(body)).digest()
    return "$" + encode_base64(digest, urlsafe=True)


def signed_by(pdu: JsonDict, server_name: str, keys: dict[str, VerifyKey],
              version: str = "12") -> bool:
    """``pdu`` carries a signature of ``server_name`` that verifies with one of ``keys``."""
    signatures = pdu.get("signatures", {}).get(server_name, {})
    for key_id in signatures:
        if key_id not in keys:
            continue
        try:
            verify_signed_json(redacted(pdu, version), server_name, keys[key_id])
            return True
        except SignatureVerifyException:
            continue
    return False


_X_MATRIX_PARAM = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^,]*)')


def x_matrix_ok(method: str, uri: str, header: str, origin: str, destination: str,
                content: Any, keys: dict[str, VerifyKey]) -> bool:
    assert header.startswith("X-Matrix "), header
    params = {k: v.strip('"') for k, v in _X_MATRIX_PARAM.findall(header[len("X-Matrix "):])}
    if params.get("origin") != origin or params.get("destination") != destination:
        return False
    key = keys.get(params.get("key", ""))
    if key is None:
        return False
    signed = {"method": method, "uri": uri, "origin": origin, "destination": destination,
              "content": content,
              "signatures": {origin: {params["key"]: params.get("sig", "")}}}
    try:
        verify_signed_json(signed, origin, key)
    except SignatureVerifyException:
        return False
    return True


async def wait_sent(env: Env, wanted: Callable[[JsonDict], bool]
                    ) -> tuple[ReceivedRequest, JsonDict]:
    """The first PDU our server sent the fake (PUT /send) that ``wanted`` picks, with its
    request; waits for it."""
    def find() -> tuple[ReceivedRequest, JsonDict] | None:
        for req in env.peer.requests:
            if req.method != "PUT" or not req.path.startswith("/_matrix/federation/v1/send/") \
                    or not isinstance(req.body, dict):
                continue
            for pdu in req.body.get("pdus", []):
                if isinstance(pdu, dict) and wanted(pdu):
                    return req, pdu
        return None

    async def fetch() -> tuple[ReceivedRequest, JsonDict] | None:
        return find()
    found = await poll_until(fetch, lambda r: r is not None, what="a PDU sent to the fake")
    assert found is not None
    return found


def peer_keys(peer: FakePeer) -> dict[str, VerifyKey]:
    return {peer.key_id: get_verify_key(peer.signing_key)}


# -- 1. unknown endpoints -----------------------------------------------------------------


async def test_unknown_endpoint_and_wrong_method(env: Env) -> None:
    """Complement TestUnknownEndpoints; spec "Unsupported endpoints": 404/405 with
    ``M_UNRECOGNIZED``."""
    for path in ("/_matrix/federation/v1/not_a_real_endpoint",
                 "/_matrix/federation/v9/send/abc",
                 "/_matrix/federation/unstable/org.example.nothing"):
        for sign in (True, False):
            status, answer = await env.peer.request(env.server, "GET", path, sign=sign)
            assert is_error(answer, 404, status, "M_UNRECOGNIZED"), (path, sign, status,
                                                                      answer)
    room, user = q(env.room_id), q(env.peer.user_id("x"))
    for method, path, body in (
            ("GET", f"/_matrix/federation/v1/send/{tag()}", None),
            ("POST", f"/_matrix/federation/v1/make_join/{room}/{user}", {}),
            ("GET", f"/_matrix/federation/v2/send_join/{room}/$x", None),
            ("PUT", "/_matrix/federation/v1/version", {})):
        status, answer = await env.peer.request(env.server, method, path, body)
        assert is_error(answer, 405, status, "M_UNRECOGNIZED"), (method, path, status,
                                                                  answer)


# -- 2. send_* with the wrong membership ----------------------------------------------------


async def test_send_membership_with_wrong_membership(env: Env) -> None:
    """Synapse ``_on_send_membership_event``: a send_join of anything but a join (and so on)
    is a 400; nothing changes in the room."""
    before = await snapshot(env)
    version = env.peer.rooms[env.room_id].version
    cases = [
        ("v2/send_join", "leave"), ("v1/send_join", "leave"),
        ("v2/send_join", "invite"), ("v1/send_join", "knock"),
        ("v2/send_leave", "join"), ("v1/send_leave", "join"),
        ("v1/send_knock", "join"), ("v1/send_knock", "leave"),
    ]
    for path, membership in cases:
        user = env.peer.user_id(f"w{tag()}")
        template = await fresh_template(env, user)
        template = {**template, "content": {"membership": membership}}
        event = env.peer.sign_template(template, version)
        status, answer = await env.peer.request(
            env.server, "PUT",
            f"/_matrix/federation/{path}/{q(env.room_id)}/{q(event.event_id)}",
            dict(event.pdu))
        assert is_error(answer, 400, status, "M_BAD_JSON", "M_INVALID_PARAM"), \
            (path, membership, status, answer)
        members = await env.alice.joined_members(env.room_id)
        assert user not in members
    # Complement testValidationForSendMembershipEndpoint: a message event, a member event
    # without a state key, and a ban, on each endpoint.
    for path in ("v2/send_join", "v1/send_join", "v2/send_leave", "v1/send_leave",
                 "v1/send_knock"):
        user = env.peer.user_id(f"n{tag()}")
        template = await fresh_template(env, user)
        variants = [
            {**{k: v for k, v in template.items() if k != "state_key"},
             "type": "m.room.message", "content": {"msgtype": "m.text", "body": "hi"}},
            {k: v for k, v in template.items() if k != "state_key"},
            {**template, "content": {"membership": "ban"}},
        ]
        for variant in variants:
            event = env.peer.sign_template(variant, version)
            status, answer = await env.peer.request(
                env.server, "PUT",
                f"/_matrix/federation/{path}/{q(env.room_id)}/{q(event.event_id)}",
                dict(event.pdu))
            assert status == 400, (path, variant, status, answer)
    assert await snapshot(env) == before


# -- 3. a banned remote user --------------------------------------------------------------


async def test_banned_remote_user_cannot_join(env: Env) -> None:
    """Complement TestBannedUserCannotSendJoin: make_join and send_join (v1 and v2) of a
    banned user are 403 M_FORBIDDEN, and the user stays banned."""
    banned = env.peer.user_id(f"banned{tag()}")
    await env.alice.ban(env.room_id, banned, reason="no")
    await poll_until(lambda: env.alice.state_event(env.room_id, "m.room.member", banned),
                     lambda c: c.get("membership") == "ban", what="the ban")
    before = await snapshot(env)

    status, answer = await env.peer.make_join(env.server, env.room_id, banned)
    assert is_error(answer, 403, status, "M_FORBIDDEN"), (status, answer)

    # A join built by hand: a real template of another user, re-targeted at the banned one,
    # with the ban among its auth events as the auth rules select them.
    version = env.peer.rooms[env.room_id].version
    template = await fresh_template(env, env.peer.user_id(f"t{tag()}"))
    state = {(e["type"], e["state_key"]): e["event_id"] for e in await env.alice.state(
        env.room_id)}
    auth = [state[k] for k in (("m.room.power_levels", ""), ("m.room.join_rules", ""),
                               ("m.room.member", banned))]
    if ("m.room.create", "") in state and not version.room_id_is_create_event_hash:
        auth.append(state[("m.room.create", "")])
    template = {**template, "sender": banned, "state_key": banned, "auth_events": auth}
    for api in ("v2", "v1"):
        event = env.peer.sign_template(template, version)
        status, answer = await env.peer.request(
            env.server, "PUT",
            f"/_matrix/federation/{api}/send_join/{q(env.room_id)}/{q(event.event_id)}",
            dict(event.pdu))
        assert is_error(answer, 403, status, "M_FORBIDDEN"), (api, status, answer)
        template = {**template, "origin_server_ts": int(time.time() * 1000) + 1}

    member = await env.alice.state_event(env.room_id, "m.room.member", banned)
    assert member.get("membership") == "ban", member
    assert await snapshot(env) == before


# -- 4. make_join: room versions and unknown rooms ----------------------------------------


async def test_make_join_incompatible_version_and_unknown_room(env: Env) -> None:
    """Spec GET /make_join: 400 M_INCOMPATIBLE_ROOM_VERSION naming the room's version when
    ``ver`` does not include it (none given means v1 only); 404 M_NOT_FOUND for a room the
    server does not know (Synapse: ``NotFoundError``)."""
    version = env.peer.rooms[env.room_id].version.identifier
    user = q(env.peer.user_id("versions"))
    for query in ("?ver=1&ver=2", "?ver=9", ""):
        status, answer = await env.peer.request(
            env.server, "GET",
            f"/_matrix/federation/v1/make_join/{q(env.room_id)}/{user}{query}")
        assert is_error(answer, 400, status, "M_INCOMPATIBLE_ROOM_VERSION"), (query, answer)
        assert answer.get("room_version") == version, answer

    # A room the user may not join (invite only): 403 M_FORBIDDEN, as Synapse's auth check.
    private = await env.alice.create_room(preset="private_chat")
    status, answer = await env.peer.make_join(env.server, private, env.peer.user_id("x"))
    assert is_error(answer, 403, status, "M_FORBIDDEN"), (status, answer)

    unknown = f"!nosuchroom{tag()}:{env.server.server_name}"
    status, answer = await env.peer.make_join(env.server, unknown, env.peer.user_id("x"))
    assert is_error(answer, 404, status, "M_NOT_FOUND"), (status, answer)


# -- 5. queries ---------------------------------------------------------------------------


async def test_query_directory_unicode_alias(env: Env) -> None:
    """Complement TestRemoteAliasRequestsUnderstandUnicode; spec GET /query/directory."""
    alias = f"#unicodé-ΩΩ-{tag()}:{env.server.server_name}"
    await env.alice.request("PUT", f"/directory/room/{q(alias)}", {"room_id": env.room_id})
    status, answer = await env.peer.request(
        env.server, "GET", f"/_matrix/federation/v1/query/directory?room_alias={q(alias)}")
    assert status == 200, answer
    assert answer["room_id"] == env.room_id, answer
    assert env.server.server_name in answer["servers"], answer

    missing = f"#nothing-é-{tag()}:{env.server.server_name}"
    status, answer = await env.peer.request(
        env.server, "GET", f"/_matrix/federation/v1/query/directory?room_alias={q(missing)}")
    assert is_error(answer, 404, status, "M_NOT_FOUND"), (status, answer)


async def test_query_profile(env: Env) -> None:
    """Spec GET /query/profile: 404 M_NOT_FOUND for an unknown local user; Synapse answers a
    user of another server with 400 ("User is not hosted on this homeserver")."""
    await env.alice.request("PUT", f"/profile/{q(env.alice.user_id)}/displayname",
                            {"displayname": "Alice Ω"})
    base = "/_matrix/federation/v1/query/profile?user_id="
    status, answer = await env.peer.request(env.server, "GET", base + q(env.alice.user_id))
    assert status == 200 and answer.get("displayname") == "Alice Ω", answer
    status, answer = await env.peer.request(
        env.server, "GET", base + q(env.alice.user_id) + "&field=displayname")
    assert status == 200 and answer == {"displayname": "Alice Ω"}, answer

    status, answer = await env.peer.request(
        env.server, "GET", base + q(env.server.user_id(f"nobody{tag()}")))
    assert is_error(answer, 404, status, "M_NOT_FOUND"), (status, answer)

    status, answer = await env.peer.request(
        env.server, "GET", base + q(env.peer.user_id("mallory")))
    assert status == 400, (status, answer)


# -- 6. outbound PDUs are signed ----------------------------------------------------------


async def test_outbound_pdu_is_signed_and_hashed(env: Env) -> None:
    """A local message reaches the joined fake in PUT /send: the transaction is signed
    (X-Matrix), the PDU carries a valid content hash and our signature, verified with the key
    of /_matrix/key/v2/server, and its reference hash is the event ID alice was given."""
    body = f"outbound {tag()}"
    event_id = await env.alice.send_text(env.room_id, body)

    req, pdu = await wait_sent(env, lambda p: p.get("content", {}).get("body") == body)
    txn = req.body
    assert txn["origin"] == env.server.server_name, txn
    assert isinstance(txn.get("origin_server_ts"), int), txn
    assert x_matrix_ok("PUT", req.path, req.headers.get("Authorization", ""),
                       env.server.server_name, env.peer.server_name, txn, env.server_keys), \
        req.headers.get("Authorization")
    assert "event_id" not in pdu, pdu  # v3+ PDUs carry no event ID
    assert pdu["sender"] == env.alice.user_id and pdu["room_id"] == env.room_id, pdu
    assert content_hash_ok(pdu), pdu
    assert signed_by(pdu, env.server.server_name, env.server_keys), pdu
    assert reference_event_id(pdu) == event_id, (pdu, event_id)
    # Its prev_events are events the fake knows of the room (its own join at least).
    assert pdu["prev_events"] and pdu["auth_events"], pdu
    env.peer.rooms[env.room_id].accept(event_from_pdu(pdu, env.peer.rooms[env.room_id].version))


# -- 7. a redaction of an event never seen ------------------------------------------------


async def test_redaction_of_unknown_event_is_accepted(env: Env) -> None:
    """Complement TestFederationRedactSendsWithoutEvent: the redaction reaches alice."""
    await env.alice.catch_up()
    unknown = "$" + encode_base64(hashlib.sha256(tag().encode()).digest(), urlsafe=True)
    version = env.peer.rooms[env.room_id].version
    content: JsonDict = {"reason": "gone"}
    if version.identifier in ("11", "12"):
        content["redacts"] = unknown
        event = env.peer.build(env.room_id, "m.room.redaction", content)
    else:
        pytest.fail(f"unexpected room version {version.identifier}")
    answer = await send_ok(env, [event.pdu])
    assert answer["pdus"].get(event.event_id) == {}, answer
    env.peer.rooms[env.room_id].accept(event)
    seen = await env.alice.wait_for_event(env.room_id, event_id=event.event_id)
    assert seen["type"] == "m.room.redaction" and seen["sender"] == env.mallory, seen
    redacts = seen.get("redacts") or seen["content"].get("redacts")
    assert redacts == unknown, seen



async def test_redaction_received_before_its_event_applies(env: Env) -> None:
    """The other half of TestFederationRedactSendsWithoutEvent: when the redacted event
    arrives after its redaction, local users get it redacted (spec, rooms v3+ "Handling
    redactions": a redaction is applied once both events are seen and valid; Synapse keeps
    the redaction and applies it whenever the event is read)."""
    room = env.peer.rooms[env.room_id]
    body = f"redacted before it arrived {tag()}"
    target = env.peer.message(env.room_id, body)
    redaction = env.peer.build(env.room_id, "m.room.redaction",
                               {"redacts": target.event_id, "reason": "early"})
    answer = await send_ok(env, [redaction.pdu])
    assert answer["pdus"].get(redaction.event_id) == {}, answer
    room.accept(redaction)
    answer = await send_ok(env, [target.pdu])
    assert answer["pdus"].get(target.event_id) == {}, answer
    room.events[target.event_id] = dict(target.pdu)
    room.extremities = [redaction.event_id, target.event_id]

    got = await env.alice.event(env.room_id, target.event_id)
    assert got["content"] == {}, got
    assert got.get("unsigned", {}).get("redacted_because", {}).get("event_id") == \
        redaction.event_id, got
    timeline = await env.alice.timeline(env.room_id, limit=50)
    seen = [e for e in timeline if e["event_id"] == target.event_id]
    assert seen and seen[0]["content"] == {}, seen
    # Back to one head for the next tests.
    follow = env.peer.message(env.room_id, f"merge {tag()}")
    answer = await send_ok(env, [follow.pdu])
    assert answer["pdus"].get(follow.event_id) == {}, answer
    room.accept(follow)


async def test_unprivileged_remote_redaction_of_local_event_not_applied(env: Env) -> None:
    """Rooms v3+ "Handling redactions": a redaction is applied only if its sender may
    redact the event (power level ``redact``, or the same server as the event's sender);
    otherwise the redaction event is kept but the original stays whole (Synapse's
    ``_check_redaction``/``is_event_redacted``)."""
    body = f"alice says {tag()}"
    event_id = await env.alice.send_text(env.room_id, body)

    _req, pdu = await wait_sent(env, lambda p: reference_event_id(p) == event_id)
    env.peer.rooms[env.room_id].accept(event_from_pdu(pdu, env.peer.rooms[env.room_id].version))
    redaction = env.peer.build(env.room_id, "m.room.redaction",
                               {"redacts": event_id, "reason": "not mine"})
    answer = await send_ok(env, [redaction.pdu])
    # Accepted (v3+ auth rules do not look at ``redacts``) or not: either way not applied.
    if answer["pdus"].get(redaction.event_id) == {}:
        env.peer.rooms[env.room_id].accept(redaction)
    got = await env.alice.event(env.room_id, event_id)
    assert got["content"].get("body") == body, got
    assert "redacted_because" not in got.get("unsigned", {}), got
    timeline = await env.alice.timeline(env.room_id, limit=50)
    seen = [e for e in timeline if e["event_id"] == event_id]
    assert seen and seen[0]["content"].get("body") == body, seen

# -- 8. events citing rejected auth events ------------------------------------------------


async def test_event_with_rejected_auth_event_is_rejected(env: Env) -> None:
    """Complement TestInboundFederationRejectsEventsWithRejectedAuthEvents: an event whose
    auth_events name a rejected event is rejected too, and local users never see it."""
    room = env.peer.rooms[env.room_id]
    levels = await env.alice.state_event(env.room_id, "m.room.power_levels")
    # A: mallory (power 0) raises herself to 100 - rejected.
    escalated = {**levels, "users": {**levels.get("users", {}), env.mallory: 100}}
    bad = env.peer.build(env.room_id, "m.room.power_levels", escalated, state_key="")
    answer = await send_ok(env, [bad.pdu])
    assert rejected(answer, bad.event_id), answer
    before = await snapshot(env)

    # B: a message by mallory citing A as the power levels it is authorised by. The fake
    # would even serve A in B's /event_auth.
    room.events[bad.event_id] = dict(bad.pdu)
    auth = [bad.event_id if e == room.state[("m.room.power_levels", "")] else e
            for e in env.peer.message(env.room_id, "x").auth_event_ids]
    assert bad.event_id in auth
    body = f"citing a rejected event {tag()}"
    follower = env.peer.message(env.room_id, body, auth_events=auth)
    room.events[follower.event_id] = dict(follower.pdu)
    answer = await send_ok(env, [follower.pdu])
    assert rejected(answer, follower.event_id), answer

    # A sentinel after both: once it is visible, B would have been too.
    sentinel = env.peer.message(env.room_id, f"sentinel {tag()}")
    answer = await send_ok(env, [sentinel.pdu])
    assert answer["pdus"].get(sentinel.event_id) == {}, answer
    room.accept(sentinel)
    timeline = await env.alice.timeline(env.room_id, limit=200)
    ids = [e["event_id"] for e in timeline]
    assert sentinel.event_id in ids
    assert follower.event_id not in ids and bad.event_id not in ids
    assert all(e.get("content", {}).get("body") != body for e in timeline)
    for event_id in (bad.event_id, follower.event_id):
        status, got = await env.alice.raw(
            "GET", f"/rooms/{q(env.room_id)}/event/{q(event_id)}")
        assert status == 404, (event_id, got)
    state, _ = await snapshot(env)
    assert state == before[0]


# -- 9. invites from the fake -------------------------------------------------------------


async def test_inbound_invite(env: Env) -> None:
    """Spec PUT /v2/invite; Complement TestIsDirectFlagFederation and invite_room_state:
    the answer is the event with our signature added; the invitee sees the invite with the
    stripped state the inviter sent, and ``is_direct`` kept."""
    bob = await env.server.register(f"bob{tag()}")
    await bob.catch_up()
    name = f"Invitation Ω {tag()}"
    room_id = env.peer.create_room(version="11", name=name, join_rule="invite")
    room = env.peer.rooms[room_id]
    creator = env.peer.user_id("creator")
    event = env.peer.build(room_id, "m.room.member",
                           {"membership": "invite", "is_direct": True},
                           sender=creator, state_key=bob.user_id)
    stripped = [{k: room.events[room.state[key]][k] for k in ("type", "state_key", "content",
                                                                "sender")}
                for key in (("m.room.create", ""), ("m.room.join_rules", ""),
                            ("m.room.name", ""), ("m.room.member", creator))]
    status, answer = await env.peer.request(
        env.server, "PUT",
        f"/_matrix/federation/v2/invite/{q(room_id)}/{q(event.event_id)}",
        {"room_version": "11", "event": dict(event.pdu), "invite_room_state": stripped})
    assert status == 200, answer
    signed = answer["event"]
    assert reference_event_id(signed) == event.event_id
    assert signed_by(signed, env.server.server_name, env.server_keys), signed
    assert signed_by(signed, env.peer.server_name, peer_keys(env.peer)), signed
    assert signed["content"] == {"membership": "invite", "is_direct": True}, signed
    room.accept(event_from_pdu(signed, room.version))

    invite_state = await bob.wait_for_invite(room_id)
    by_type = {(e["type"], e.get("state_key")): e for e in invite_state}
    assert by_type[("m.room.name", "")]["content"] == {"name": name}, invite_state
    assert by_type[("m.room.join_rules", "")]["content"] == {"join_rule": "invite"}, \
        invite_state
    member = by_type.get(("m.room.member", bob.user_id))
    assert member is not None, invite_state
    assert member["content"].get("membership") == "invite", member
    assert member["content"].get("is_direct") is True, member
    assert member["sender"] == creator, member


# -- 10. joining rooms the fake hosts -----------------------------------------------------


async def test_join_room_hosted_by_fake(env: Env) -> None:
    """Spec "Joining rooms" from the joining side: our user joins a room of the fake by ID
    with its server name; the room's state is ours afterwards, and our messages reach the
    fake."""
    user = await env.server.register(f"joiner{tag()}")
    room_id = env.peer.create_room(version="10", name="hosted")
    # Only the pre-v1.12 ``server_name`` parameter (Complement TestJoinViaRoomIDAndServerName).
    answer = await user.request("POST", f"/join/{q(room_id)}", {},
                                params=[("server_name", env.peer.server_name)])
    assert answer["room_id"] == room_id, answer
    members = await user.joined_members(room_id)
    assert set(members) == {env.peer.user_id("creator"), user.user_id}, members
    assert (await user.state_event(room_id, "m.room.name"))["name"] == "hosted"
    room = env.peer.rooms[room_id]
    assert room.state.get(("m.room.member", user.user_id)) is not None
    join = room.events[room.state[("m.room.member", user.user_id)]]
    assert signed_by(join, env.server.server_name, env.server_keys, "10"), join

    # The fake's message reaches our user, and theirs reaches the fake.
    hello = env.peer.message(room_id, "hello joiner", sender=env.peer.user_id("creator"))
    answer = await send_ok(env, [hello.pdu])
    assert answer["pdus"].get(hello.event_id) == {}, answer
    room.accept(hello)
    await user.wait_for_event(room_id, event_id=hello.event_id)
    sent = await user.send_text(room_id, "hello fake")

    async def fetch() -> bool:
        return sent in room.events
    await poll_until(fetch, bool, what="our message in the fake's room")


async def test_join_with_unverifiable_events_in_send_join_state(env: Env) -> None:
    """Complement TestJoinFederatedRoomWithUnverifiableEvents: events of the send_join
    answer's state that fail signature checks are dropped; the join succeeds."""
    user = await env.server.register(f"unverif{tag()}")
    room_id = env.peer.create_room(version="10", name="unverifiable")
    room = env.peer.rooms[room_id]
    # charlie's join, signed by a key that is not the fake's (same key ID)...
    charlie = env.peer.user_id("charlie")
    charlie_join = env.peer.build(room_id, "m.room.member", {"membership": "join"},
                                  sender=charlie, state_key=charlie,
                                  key=generate_signing_key(env.peer.signing_key.version))
    # ...dave's with no signature at all...
    dave = env.peer.user_id("dave")
    dave_join = dict(env.peer.build(room_id, "m.room.member", {"membership": "join"},
                                    sender=dave, state_key=dave).pdu)
    dave_join["signatures"] = {}
    # ...and erin's, of a server that cannot be reached for its keys.
    nowhere = f"127.0.0.1:{free_port()}"
    erin = f"@erin:{nowhere}"
    erin_join = env.peer.build(room_id, "m.room.member", {"membership": "join"},
                               sender=erin, state_key=erin, server_name=nowhere,
                               key=generate_signing_key("x"))
    # ...and frank's displayname change, correctly signed, whose auth events include his
    # earlier join that has a bad signature (that one only in the auth chain).
    frank = env.peer.user_id("frank")
    frank_join = env.peer.build(room_id, "m.room.member", {"membership": "join"},
                                sender=frank, state_key=frank,
                                key=generate_signing_key(env.peer.signing_key.version))
    auth = [e for e in frank_join.auth_event_ids] + [frank_join.event_id]
    frank_rename = env.peer.build(room_id, "m.room.member",
                                  {"membership": "join", "displayname": "Frank"},
                                  sender=frank, state_key=frank, auth_events=auth,
                                  prev_events=[frank_join.event_id])
    room.send_join_extra_state = [dict(charlie_join.pdu), dave_join, dict(erin_join.pdu),
                                  dict(frank_rename.pdu)]
    room.send_join_extra_auth_chain = [dict(frank_join.pdu)]

    assert await user.join(room_id, via=[env.peer.server_name]) == room_id
    members = await user.joined_members(room_id)
    assert set(members) == {env.peer.user_id("creator"), user.user_id}, members
    state_ids = {e["event_id"] for e in await user.state(room_id)}
    assert not {charlie_join.event_id, frank_rename.event_id,
                frank_join.event_id} & state_ids, state_ids
    # The room works: the fake's next message arrives.
    hello = env.peer.send_local(room_id, env.peer.message(
        room_id, "after unverifiable", sender=env.peer.user_id("creator")))
    answer = await send_ok(env, [hello.pdu])
    assert answer["pdus"].get(hello.event_id) == {}, answer
    assert hello.event_id in [e["event_id"] for e in await user.timeline(room_id)]


async def test_join_fails_over_to_next_server(env: Env) -> None:
    """Complement TestJoinFederatedRoomFailOver: a server that cannot be reached and one
    that answers make_join with an error are skipped; the join goes through the next."""
    user = await env.server.register(f"failover{tag()}")
    room_id = env.peer.create_room(version="10", name="failover")
    unreachable = f"127.0.0.1:{free_port()}"
    asked_before = sum(1 for r in env.useless.requests if "/make_join/" in r.path)
    joined = await user.join(room_id, via=[unreachable, env.useless.server_name,
                                           env.peer.server_name])
    assert joined == room_id
    assert sum(1 for r in env.useless.requests if "/make_join/" in r.path) > asked_before
    assert user.user_id in await user.joined_members(room_id)


@pytest.mark.parametrize("gap", [3, 45])
async def test_get_missing_events_fills_gap(env: Env, gap: int) -> None:
    """Complement TestGetMissingEventsGapFilling: an event whose prev_events are unknown
    makes the server ask the sender (/get_missing_events); the events it gets end up in the
    local user's /messages, in order. A gap longer than one answer (20) is asked for again
    from where the last answer ended, so all of it arrives (up to 200 events)."""
    user = await env.server.register(f"gap{tag()}")
    room_id = env.peer.create_room(version="10", name="gaps")
    await user.join(room_id, via=[env.peer.server_name])
    creator = env.peer.user_id("creator")
    missing = [env.peer.send_local(room_id, env.peer.message(room_id, f"missing {i}",
                                                             sender=creator))
               for i in range(gap)]
    # The fake knows its own event before sending it (it is asked what precedes it).
    last = env.peer.send_local(room_id, env.peer.message(room_id, "after the gap",
                                                         sender=creator))
    answer = await send_ok(env, [last.pdu])
    assert answer["pdus"].get(last.event_id) == {}, answer
    asked = [r for r in env.peer.requests
             if r.path.startswith(f"/_matrix/federation/v1/get_missing_events/{q(room_id)}")]
    assert asked, "the server did not call /get_missing_events"
    assert asked[0].body["latest_events"] == [last.event_id], asked[0].body

    async def fetch() -> list[str]:
        return [e["event_id"] for e in await user.timeline(room_id, limit=100)]
    want = [e.event_id for e in [*missing, last]]
    ids = await poll_until(fetch, lambda ids: all(w in ids for w in want),
                           what="the gap's events in /messages")
    assert [i for i in ids if i in want] == want
    if gap > 20:
        assert len(asked) > 1, "a long gap takes more than one /get_missing_events"


# -- extra: the handshake the other way, checked like Synapse does ------------------------


async def test_send_join_answer_is_complete(env: Env) -> None:
    """Spec PUT /v2/send_join: the answer's state and auth chain are signed by their
    senders' servers and let the joining server authorise its join; the join is sent on."""
    user = env.peer.user_id(f"complete{tag()}")
    version = env.peer.rooms[env.room_id].version
    event = env.peer.sign_template(await fresh_template(env, user), version)
    status, answer = await env.peer.send_join(env.server, event)
    assert status == 200, answer
    assert answer["origin"] == env.server.server_name
    assert answer.get("members_omitted") in (False, None), answer
    assert isinstance(answer.get("servers_in_room", []), list)
    types = {(p["type"], p.get("state_key")) for p in answer["state"]}
    assert {("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.join_rules", ""),
            ("m.room.member", env.alice.user_id)} <= types, types
    assert ("m.room.member", user) not in types  # the state *before* the join
    for pdu in answer["state"]:
        assert content_hash_ok(pdu), pdu
        if pdu["sender"].endswith(":" + env.server.server_name):
            assert signed_by(pdu, env.server.server_name, env.server_keys), pdu
    assert user in await env.alice.joined_members(env.room_id)


async def test_tampered_invite_is_refused(env: Env) -> None:
    """Spec PUT /v2/invite: an invite whose event was altered after signing (a field the
    signature covers) is refused, and nobody sees it."""
    carol = await env.server.register(f"carol{tag()}")
    room_id = env.peer.create_room(version="11", name="tampered", join_rule="invite")
    event = env.peer.build(room_id, "m.room.member", {"membership": "invite"},
                           sender=env.peer.user_id("creator"), state_key=carol.user_id)
    pdu = dict(event.pdu)
    pdu["origin_server_ts"] += 1
    pdu.pop("hashes")
    pdu = add_content_hash(pdu)
    pdu["signatures"] = event.pdu["signatures"]
    tampered: Event = event_from_pdu(pdu, event.room_version)
    status, answer = await env.peer.request(
        env.server, "PUT",
        f"/_matrix/federation/v2/invite/{q(room_id)}/{q(tampered.event_id)}",
        {"room_version": "11", "event": pdu, "invite_room_state": []})
    assert status in (400, 401, 403), (status, answer)
    sync = await carol.sync()
    assert room_id not in sync.get("rooms", {}).get("invite", {}), sync
    # The untampered invite is taken: the refusal was the tampering's.
    status, answer = await env.peer.request(
        env.server, "PUT",
        f"/_matrix/federation/v2/invite/{q(room_id)}/{q(event.event_id)}",
        {"room_version": "11", "event": dict(event.pdu), "invite_room_state": []})
    assert status == 200, answer
    await carol.wait_for_invite(room_id)


async def test_reject_invite_from_fake_room(env: Env) -> None:
    """Complement TestFederationRejectInvite: rejecting an invite to a room our server is not
    in goes through make_leave/send_leave on the inviting server."""
    dan = await env.server.register(f"dan{tag()}")
    room_id = env.peer.create_room(version="11", name="reject me", join_rule="invite")
    room = env.peer.rooms[room_id]
    creator = env.peer.user_id("creator")
    invite = env.peer.build(room_id, "m.room.member", {"membership": "invite"},
                            sender=creator, state_key=dan.user_id)
    status, answer = await env.peer.request(
        env.server, "PUT",
        f"/_matrix/federation/v2/invite/{q(room_id)}/{q(invite.event_id)}",
        {"room_version": "11", "event": dict(invite.pdu), "invite_room_state": []})
    assert status == 200, answer
    room.accept(event_from_pdu(answer["event"], room.version))
    await dan.wait_for_invite(room_id)

    await dan.leave(room_id)
    leave_id = room.state.get(("m.room.member", dan.user_id))
    assert leave_id is not None
    leave = room.events[leave_id]
    assert leave["content"]["membership"] == "leave", leave
    assert signed_by(leave, env.server.server_name, env.server_keys, "11"), leave
    assert any(r.path.startswith(f"/_matrix/federation/v2/send_leave/{q(room_id)}/")
               for r in env.peer.requests)
    await dan.wait_for_left(room_id)
    sync = await dan.sync()
    assert room_id not in sync.get("rooms", {}).get("invite", {}), sync


async def test_remote_knock_and_leave(env: Env) -> None:
    """Spec make_knock/send_knock and make_leave/send_leave on the resident side: a knock is
    answered with the room's stripped state and shows to the room's members; a member of
    the fake leaves with the handshake."""
    room_id = await env.alice.create_room(preset="private_chat", name="knock here",
                                          initial_state=[{"type": "m.room.join_rules",
                                                          "state_key": "",
                                                          "content": {"join_rule": "knock"}}])
    knocker = env.peer.user_id(f"knocker{tag()}")
    status, answer = await env.peer.request(
        env.server, "GET",
        f"/_matrix/federation/v1/make_knock/{q(room_id)}/{q(knocker)}?ver=12&ver=11")
    assert status == 200, answer
    version = env.peer.rooms[env.room_id].version  # the server's default, as this room
    assert answer["room_version"] == version.identifier, answer
    event = env.peer.sign_template(answer["event"], version)
    status, answer = await env.peer.request(
        env.server, "PUT",
        f"/_matrix/federation/v1/send_knock/{q(room_id)}/{q(event.event_id)}",
        dict(event.pdu))
    assert status == 200, answer
    types = {e["type"]: e for e in answer["knock_room_state"]}
    assert types["m.room.join_rules"]["content"]["join_rule"] == "knock", answer
    assert types["m.room.name"]["content"]["name"] == "knock here", answer
    member = await env.alice.state_event(room_id, "m.room.member", knocker)
    assert member.get("membership") == "knock", member

    # A fake user joins the public room and leaves it again through make_leave/send_leave.
    leaver = env.peer.user_id(f"leaver{tag()}")
    await env.peer.join(env.server, env.room_id, leaver)
    status, answer = await env.peer.request(
        env.server, "GET", f"/_matrix/federation/v1/make_leave/{q(env.room_id)}/{q(leaver)}")
    assert status == 200, answer
    leave = env.peer.sign_template(answer["event"], version)
    status, answer = await env.peer.request(
        env.server, "PUT",
        f"/_matrix/federation/v2/send_leave/{q(env.room_id)}/{q(leave.event_id)}",
        dict(leave.pdu))
    assert status == 200 and answer == {}, answer
    env.peer.rooms[env.room_id].accept(leave)
    member = await env.alice.state_event(env.room_id, "m.room.member", leaver)
    assert member.get("membership") == "leave", member
    assert leaver not in await env.alice.joined_members(env.room_id)


@pytest.mark.parametrize("visibility", ["world_readable", "shared", "invited", "joined"])
async def test_get_missing_events_respects_history_visibility(env: Env, visibility: str
                                                              ) -> None:
    """Complement TestInboundCanReturnMissingEvents: events from before the fake's user
    joined are answered in full for ``shared``/``world_readable`` rooms and redacted (no
    content) for ``invited``/``joined`` ones; state events keep their fields either way."""
    room_id = await env.alice.create_room(
        preset="public_chat", initial_state=[{"type": "m.room.history_visibility",
                                              "state_key": "",
                                              "content": {"history_visibility": visibility}}])
    secret = f"before the join {tag()}"
    message_id = await env.alice.send_text(room_id, secret)
    join = await env.peer.join(env.server, room_id, env.peer.user_id(f"v{tag()}"))
    create_id = env.peer.rooms[room_id].state[("m.room.create", "")]
    status, answer = await env.peer.request(
        env.server, "POST", f"/_matrix/federation/v1/get_missing_events/{q(room_id)}",
        {"earliest_events": [create_id], "latest_events": [join.event_id], "limit": 20,
         "min_depth": 0})
    assert status == 200, answer
    events = answer["events"]
    version = env.peer.rooms[room_id].version.identifier
    by_id = {reference_event_id(p, version): p for p in events}
    assert message_id in by_id, (message_id, list(by_id))
    message = by_id[message_id]
    if visibility in ("world_readable", "shared"):
        assert message["content"].get("body") == secret, message
    else:
        assert message["content"] == {}, message
    for event_id, pdu in by_id.items():
        # Redacted or not, each verifies: the hashes and signatures are the original's.
        assert signed_by(pdu, env.server.server_name, env.server_keys, version), pdu
        if event_id != message_id and pdu.get("type") == "m.room.history_visibility":
            assert pdu["content"] == {"history_visibility": visibility}, pdu
    depths = [p["depth"] for p in events]
    assert depths == sorted(depths), depths


async def test_outbound_queries_and_join_by_alias(env: Env) -> None:
    """Complement TestOutboundFederationProfile and joining by a remote alias: a local user
    reads the profile of a user of the fake and resolves and joins the fake's room by its
    (unicode) alias; both go to the fake's /query endpoints."""
    user = await env.server.register(f"asker{tag()}")
    remote = env.peer.user_id("famous")
    env.peer.profiles[remote] = {"displayname": "Famous Ω", "avatar_url": "mxc://x/y"}
    profile = await user.request("GET", f"/profile/{q(remote)}")
    assert profile.get("displayname") == "Famous Ω", profile
    assert profile.get("avatar_url") == "mxc://x/y", profile
    status, answer = await user.raw("GET", f"/profile/{q(env.peer.user_id('nobody'))}")
    assert status == 404 and answer.get("errcode") == "M_NOT_FOUND", answer

    alias = f"#ünïcode-{tag()}:{env.peer.server_name}"
    room_id = env.peer.create_room(version="11", name="by alias", alias=alias)
    resolved = await user.resolve_alias(alias)
    assert resolved["room_id"] == room_id, resolved
    assert env.peer.server_name in resolved["servers"], resolved
    status, answer = await user.raw(
        "GET", f"/directory/room/{q('#missing-' + tag() + ':' + env.peer.server_name)}")
    assert status == 404 and answer.get("errcode") == "M_NOT_FOUND", answer
    assert await user.join(alias) == room_id
    assert user.user_id in await user.joined_members(room_id)


async def test_key_server_response(env: Env) -> None:
    """Complement TestInboundFederationKeys: /_matrix/key/v2/server names the server, is
    signed by its own key, is valid for a while yet, and lists ``old_verify_keys``."""
    answer = await env.server.server_keys()
    assert answer["server_name"] == env.server.server_name, answer
    assert answer["valid_until_ts"] > int(time.time() * 1000), answer
    assert isinstance(answer.get("old_verify_keys"), dict), answer
    assert answer["verify_keys"], answer
    verify_signed_json(answer, env.server.server_name, next(iter(env.server_keys.values())))


async def test_outbound_invite(env: Env) -> None:
    """Spec PUT /v2/invite from the inviting side (sytest "Outbound federation can send
    invites via v2 API"): the request names the room version, carries our signed event and
    stripped state of the room (Synapse's default prejoin state: create, join rules, name);
    the countersigned invite becomes the room's state."""
    name = f"invite out {tag()}"
    room_id = await env.alice.create_room(preset="private_chat", name=name)
    guest = env.peer.user_id(f"guest{tag()}")
    await env.alice.invite(room_id, guest)
    requests = [r for r in env.peer.requests
                if r.path.startswith(f"/_matrix/federation/v2/invite/{q(room_id)}/")]
    assert len(requests) == 1, [r.path for r in env.peer.requests]
    body = requests[0].body
    version = body["room_version"]
    event = body["event"]
    assert event["type"] == "m.room.member" and event["state_key"] == guest, event
    assert event["content"]["membership"] == "invite", event
    assert requests[0].path.endswith("/" + q(reference_event_id(event, version))), \
        requests[0].path
    assert signed_by(event, env.server.server_name, env.server_keys, version), event
    stripped = {(e["type"], e.get("state_key")): e for e in body["invite_room_state"]}
    assert ("m.room.join_rules", "") in stripped, stripped
    assert ("m.room.create", "") in stripped, stripped
    assert stripped[("m.room.name", "")]["content"] == {"name": name}, stripped
    member = await env.alice.state_event(room_id, "m.room.member", guest)
    assert member.get("membership") == "invite", member
    invite_event_id = next(e["event_id"] for e in await env.alice.state(room_id)
                           if e["type"] == "m.room.member" and e["state_key"] == guest)
    assert invite_event_id == reference_event_id(event, version)


async def test_invite_unsupported_room_version(env: Env) -> None:
    """Spec PUT /v2/invite: a room version the server does not support is
    400 M_INCOMPATIBLE_ROOM_VERSION (Synapse: ``IncompatibleRoomVersionError``)."""
    bob = await env.server.register(f"ver{tag()}")
    room_id = env.peer.create_room(version="11", name="odd version")
    event = env.peer.build(room_id, "m.room.member", {"membership": "invite"},
                           sender=env.peer.user_id("creator"), state_key=bob.user_id)
    status, answer = await env.peer.request(
        env.server, "PUT",
        f"/_matrix/federation/v2/invite/{q(room_id)}/{q(event.event_id)}",
        {"room_version": "org.example.unknown", "event": dict(event.pdu),
         "invite_room_state": []})
    assert is_error(answer, 400, status, "M_INCOMPATIBLE_ROOM_VERSION"), (status, answer)
    assert answer.get("room_version") == "org.example.unknown", answer


async def test_leave_room_hosted_by_fake(env: Env) -> None:
    """A local member of a fake-hosted room leaves: the leave, signed by us, reaches the
    fake in a transaction, and the local user's view shows the room left."""
    user = await env.server.register(f"goer{tag()}")
    room_id = env.peer.create_room(version="10", name="leave me")
    await user.join(room_id, via=[env.peer.server_name])
    await user.catch_up()
    room = env.peer.rooms[room_id]
    await user.leave(room_id)

    async def fetch() -> JsonDict | None:
        event_id = room.state.get(("m.room.member", user.user_id))
        return room.events.get(event_id) if event_id else None
    leave = await poll_until(fetch, lambda e: e is not None and
                             e["content"].get("membership") == "leave",
                             what="our leave at the fake")
    assert leave is not None
    assert signed_by(leave, env.server.server_name, env.server_keys, "10"), leave
    await user.wait_for_left(room_id)
    assert room_id not in await user.joined_rooms()
