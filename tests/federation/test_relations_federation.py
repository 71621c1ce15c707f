"""Relations received over federation are indexed like local ones: two real servers (B on
SQLite, then on PostgreSQL); bob@B replies in a thread, edits and reacts in alice@A's room,
and A bundles them with its events and lists them in /relations and /threads; a redaction
from B takes its relation out on A."""

from __future__ import annotations

from typing import Any

from tests.helpers.federation import FedPair, poll_until, q

V1 = "/_matrix/client/v1"


def _relations(event: dict[str, Any]) -> dict[str, Any]:
    return dict(event.get("unsigned", {}).get("m.relations", {}))


async def test_relations_received_over_federation_are_aggregated(fed_pair: FedPair) -> None:
    await _scenario(fed_pair)


async def test_relations_received_over_federation_on_postgres(fed_pair_pg: FedPair) -> None:
    await _scenario(fed_pair_pg)


async def _scenario(pair: FedPair) -> None:
    alice, bob = pair.alice, pair.bob
    room_id = await alice.create_room(preset="public_chat")
    await bob.join(room_id, via=[pair.a.server_name])
    root = await alice.send_text(room_id, "root on A")
    await bob.wait_for_event(room_id, body="root on A")
    reply = await bob.send(room_id, "m.room.message", {
        "msgtype": "m.text", "body": "reply from B",
        "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    edit = await bob.send(room_id, "m.room.message", {
        "msgtype": "m.text", "body": "* edited on B",
        "m.new_content": {"msgtype": "m.text", "body": "edited on B"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": reply}})
    reaction = await bob.send(room_id, "m.reaction", {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": root, "key": "+1"}})
    await alice.wait_for_event(room_id, event_id=reaction)

    event = await alice.event(room_id, root)
    thread = _relations(event)["m.thread"]
    assert (thread["count"], thread["latest_event"]["event_id"]) == (1, reply)
    assert _relations(thread["latest_event"])["m.replace"]["event_id"] == edit
    listed = await alice.request("GET", f"{V1}/rooms/{q(room_id)}/threads")
    assert [e["event_id"] for e in listed["chunk"]] == [root]
    found = await alice.request(
        "GET", f"{V1}/rooms/{q(room_id)}/relations/{q(root)}", params={"recurse": "true"})
    assert [e["event_id"] for e in found["chunk"]] == [reaction, edit, reply]

    await bob.redact(room_id, reaction)

    async def annotations() -> list[str]:
        body = await alice.request(
            "GET", f"{V1}/rooms/{q(room_id)}/relations/{q(root)}/m.annotation")
        return [e["event_id"] for e in body["chunk"]]

    await poll_until(annotations, lambda ids: ids == [], what="the redacted reaction gone")
