"""Federation with receiving and sending in workers: server A is a main process (PostgreSQL,
Redis), a ``federation_inbound`` worker listening on the port A's server name points to (so
every request of B reaches the worker), and a ``federation_sender`` worker; server B is one
plain process. The worker answers reads and checks transactions itself, passes their checked
PDUs and EDUs to the persister, and relays joins, invites and key claims to the main
process's own federation listener (on a port B never hears of)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
import yaml

from core.events.hashing import compute_event_id
from federation.inbound.forwarded import FEDERATION_SEND
from tests.conftest import postgres_url
from tests.federation.test_federation_sender_worker import (
    _redis_url,
    ephemeral_and_to_device_reach,
    metric_samples,
)
from tests.helpers.fake_peer import FakePeer
from tests.helpers.federation import FedServer, PostgresDatabase, User
from tests.helpers.processes import ServerProcess, free_port, wait_for_port

_SEND = re.compile(r"\"PUT /_matrix/federation/v1/send/\S+\" 200 ")


# A, B, A's inbound worker, the port of its metrics listener.
Servers = tuple[FedServer, FedServer, ServerProcess, int]


@pytest.fixture
async def servers(tmp_path: Path
                  ) -> AsyncIterator[Servers]:
    base = postgres_url()
    assert base is not None
    database = PostgresDatabase(base)
    await database.create()
    a = FedServer(tmp_path, "a", database_url=database.url)
    config = yaml.safe_load(a.config_path.read_text())
    # The port in A's name is the inbound worker's; the main process's federation listener
    # moves to a port of its own (the worker relays to it).
    public_port = a.federation_port
    main_federation = next(lst for lst in config["listeners"]
                           if "federation" in lst["resources"])
    main_federation["port"] = a.federation_port = free_port()
    config["listeners"].append({"port": free_port(), "resources": ["replication"]})
    config["redis"] = {"url": _redis_url()}
    sender_port, metrics_port = free_port(), free_port()
    config["workers"] = {
        "inbound": {"roles": ["federation_inbound"], "listeners": [
            {"port": public_port, "tls": True, "resources": ["federation"]},
            {"port": metrics_port, "resources": ["metrics"]}]},
        "sender": {"roles": ["federation_sender"], "listeners": [
            {"port": sender_port, "resources": ["metrics"]}]},
    }
    a.config_path.write_text(yaml.safe_dump(config))
    b = FedServer(tmp_path, "b")
    a.start()
    inbound = ServerProcess(a.config_path, tmp_path / "inbound.log", worker="inbound")
    sender = ServerProcess(a.config_path, tmp_path / "sender.log", worker="sender")
    b.start()
    try:
        wait_for_port(public_port, inbound.proc)
        wait_for_port(sender_port, sender.proc)
        yield a, b, inbound, metrics_port
    finally:
        codes = [inbound.stop(), sender.stop()]
        a.stop()
        b.stop()
        await database.drop()
        assert codes == [0, 0], inbound.log() + sender.log()
        for worker in (inbound, sender):
            assert "Traceback" not in worker.log(), worker.log()


async def test_b_talks_to_a_through_its_inbound_worker(
        servers: Servers) -> None:
    a, b, inbound, metrics_port = servers
    alice: User = await a.register("alice")
    bob: User = await b.register("bob")
    room_id = await alice.create_room(preset="public_chat")
    # make_join is answered by the worker, send_join relayed to the main process.
    assert await bob.join(room_id, via=[a.server_name]) == room_id
    await alice.wait_for_membership(room_id, bob.user_id, "join")

    # B's events arrive in transactions the worker checks and the persister stores.
    for i in range(3):
        reply = await bob.send_text(room_id, f"to A's inbound worker {i}")
        await alice.wait_for_event(room_id, type="m.room.message", event_id=reply)
    # A's events go out through the sender worker.
    event_id = await alice.send_text(room_id, "from A")
    await bob.wait_for_event(room_id, type="m.room.message", event_id=event_id)

    # EDUs of the transactions: typing, receipts, to-device.
    await ephemeral_and_to_device_reach(bob, alice, room_id, event_id)

    # An invite from B (relayed to the main process), and A's user joining B's room.
    other = await bob.create_room(preset="private_chat")
    await bob.invite(other, alice.user_id)
    await alice.wait_for_invite(other)
    assert await alice.join(other, via=[b.server_name]) == other
    await bob.wait_for_membership(other, alice.user_id, "join")
    greeting = await bob.send_text(other, "welcome")
    await alice.wait_for_event(other, type="m.room.message", event_id=greeting)

    # Every transaction went to the worker; the main process's federation listener got only
    # what the worker relays.
    assert _SEND.search(inbound.log()), inbound.log()
    assert not _SEND.search(a.log()), a.log()
    assert "/_matrix/federation/v1/send_join/" in a.log() or \
        "/_matrix/federation/v2/send_join/" in a.log()
    assert "Traceback" not in a.log()
    # The worker counts what it received and what it relayed.
    samples = await metric_samples(metrics_port)
    assert samples[("ktchat_federation_inbound_transactions_total",
                    (("outcome", "accepted"),))] >= 3
    assert samples[("ktchat_worker_relayed_requests_total", ())] >= 2  # send_join, invite


async def test_a_peers_transactions_are_checked_at_the_worker(
        servers: Servers, tmp_path: Path) -> None:
    """Unsigned requests, PDUs whose signature or hash is wrong: refused or redacted by the
    worker's checks, in the answer the persister's outcome joins; the persister is never
    reachable without the workers' secret."""
    a, _b, inbound, _metrics_port = servers
    peer = await FakePeer(tmp_path / "peer").start()
    try:
        alice = await a.register("alice")
        room_id = await alice.create_room(preset="public_chat")
        mallory = peer.user_id("mallory")
        await peer.join(a, room_id, mallory)
        await alice.wait_for_membership(room_id, mallory, "join")

        status, answer = await peer.send_transaction(
            a, [peer.message(room_id, "unsigned").pdu], sign=False)
        assert (status, answer.get("errcode")) == (401, "M_UNAUTHORIZED"), answer

        good = peer.message(room_id, "signed")
        forged = dict(peer.message(room_id, "forged signature").pdu)
        forged["signatures"] = {peer.server_name: {peer.key_id: "A" * 86}}
        tampered = dict(peer.message(room_id, "tampered").pdu)
        tampered["content"] = {"msgtype": "m.text", "body": "changed after hashing"}
        version = good.room_version
        forged_id = compute_event_id(forged, version)
        tampered_id = compute_event_id(tampered, version)
        status, answer = await peer.send_transaction(a, [good.pdu, forged, tampered])
        assert status == 200, answer
        assert answer["pdus"][good.event_id] == {}
        assert "error" in answer["pdus"][forged_id]
        # A content hash mismatch keeps the redacted copy (the spec's step 3).
        assert answer["pdus"][tampered_id] == {}
        await alice.wait_for_event(room_id, type="m.room.message", event_id=good.event_id)
        redacted = await alice.event(room_id, tampered_id)
        assert redacted["content"] == {}
        await alice.request("GET", f"/rooms/{quote(room_id)}/event/{quote(forged_id)}",
                            expect=404)
        assert _SEND.search(inbound.log()) and not _SEND.search(a.log())

        # The persister's endpoint wants the workers' secret.
        config = yaml.safe_load(a.config_path.read_text())
        port = next(lst["port"] for lst in config["listeners"]
                    if "replication" in lst["resources"])
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}{FEDERATION_SEND}", json={
                    "origin": peer.server_name, "txn_id": "x", "edus": [],
                    "rooms": []}) as response:
                assert response.status == 403
    finally:
        await peer.close()
    assert "Traceback" not in inbound.log()
