"""Federation with the sending in workers: server A is a main process (PostgreSQL, Redis)
and two ``federation_sender`` workers, sharded by destination; servers B and C are plain
processes, one in each worker's shard. A's main process receives (its federation listener)
and queues; only the workers send, so whatever reaches B came from B's worker: events,
typing, receipts, presence, to-device, device lists; and nothing went to B from the other."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from federation.sender.queue import Shard
from tests.conftest import postgres_url
from tests.federation.test_to_device_federation import collect, send_to_device, to_device_token
from tests.helpers.federation import FedServer, PostgresDatabase, User
from tests.helpers.processes import ServerProcess, free_port, wait_for_port


def _redis_url() -> str:
    url = os.environ.get("KTCHAT_TEST_REDIS_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("KTCHAT_TEST_REDIS_URL must be set under CI=true")
        pytest.skip("KTCHAT_TEST_REDIS_URL is not set")
    return url


async def ephemeral_and_to_device_reach(sender: User, receiver: User, room_id: str,
                                        event_id: str) -> None:
    """``sender`` types in the room, reads ``event_id`` and sends ``receiver`` a to-device
    message: each reaches ``receiver``, on another server."""
    await sender.typing(room_id, True)
    await receiver.wait_for_ephemeral(room_id, "m.typing",
                                      lambda c: sender.user_id in c.get("user_ids", []))
    await sender.receipt(room_id, event_id)
    await receiver.wait_for_ephemeral(
        room_id, "m.receipt", lambda c: sender.user_id in c.get(event_id, {}).get("m.read", {}))
    since = await to_device_token(receiver)
    await send_to_device(sender, "m.test",
                         {receiver.user_id: {receiver.device_id: {"hello": receiver.user_id}}})
    events, _ = await collect(receiver, since, 1)
    assert [e["content"] for e in events] == [{"hello": receiver.user_id}]


async def metric_samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A worker's metrics listener: every sample, (name, sorted labels) -> value."""
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


Servers = tuple[FedServer, FedServer, FedServer, list[ServerProcess], list[int]]
_SENT = re.compile(r"Sent transaction \S+ to (\S+):")


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Servers]:
    base = postgres_url()
    assert base is not None
    database = PostgresDatabase(base)
    await database.create()
    a = FedServer(tmp_path, "a", database_url=database.url)
    config = yaml.safe_load(a.config_path.read_text())
    config["listeners"].append({"port": free_port(), "resources": ["replication"]})
    config["redis"] = {"url": _redis_url()}
    ports = [free_port(), free_port()]
    config["workers"] = {f"sender{i}": {"roles": ["federation_sender"], "listeners": [
        {"port": port, "resources": ["metrics"]}]} for i, port in enumerate(ports)}
    # (what each worker sent, and to whom, in its log)
    config["logging"]["loggers"] = {"federation.sender.queue": "DEBUG"}
    a.config_path.write_text(yaml.safe_dump(config))
    b = FedServer(tmp_path, "b")
    # C in the other worker's shard than B's (a server's name is its port here).
    c = FedServer(tmp_path, "c0")
    for attempt in range(1, 20):
        if Shard(0, 2).owns(c.server_name) != Shard(0, 2).owns(b.server_name):
            break
        c = FedServer(tmp_path, f"c{attempt}")
    a.start()
    workers = [ServerProcess(a.config_path, tmp_path / f"sender{i}.log", worker=f"sender{i}")
               for i in range(2)]
    b.start()
    c.start()
    try:
        for port, worker in zip(ports, workers, strict=True):
            wait_for_port(port, worker.proc)
        yield a, b, c, workers, ports
    finally:
        codes = [worker.stop() for worker in workers]
        a.stop()
        b.stop()
        c.stop()
        await database.drop()
        assert codes == [0, 0], "".join(worker.log() for worker in workers)
        for worker in workers:
            assert "Traceback" not in worker.log(), worker.log()


async def test_what_a_sends_goes_out_through_its_sender_workers(servers: Servers) -> None:
    a, b, c, workers, ports = servers
    alice: User = await a.register("alice")
    bob: User = await b.register("bob")
    carol: User = await c.register("carol")
    room_id = await alice.create_room(preset="public_chat")
    # B and C join through A's main process (make_join / send_join are answered there).
    for user in (bob, carol):
        assert await user.join(room_id, via=[a.server_name]) == room_id
        await alice.wait_for_membership(room_id, user.user_id, "join")

    # An event sent at A reaches B and C: only the workers send.
    event_id = await alice.send_text(room_id, "from A's workers")
    await bob.wait_for_event(room_id, type="m.room.message", event_id=event_id)
    await carol.wait_for_event(room_id, type="m.room.message", event_id=event_id)
    # And B's events reach A (A's main process receives).
    reply = await bob.send_text(room_id, "to A's main process")
    await alice.wait_for_event(room_id, type="m.room.message", event_id=reply)

    # Typing and receipts (kept in the worker's memory until sent) reach B, and to-device
    # messages (queued durably by the main process, sent by the worker).
    await ephemeral_and_to_device_reach(alice, bob, room_id, reply)
    # A device-list change (queued durably by the main process) reaches B.
    await alice.request("POST", "/keys/upload", {"device_keys": {
        "user_id": alice.user_id, "device_id": alice.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {f"ed25519:{alice.device_id}": "AAAA",
                 f"curve25519:{alice.device_id}": "BBBB"}, "signatures": {}}})
    await bob.wait_for(lambda r: alice.user_id in r.get("device_lists", {}).get("changed", []),
                       what="alice in device_lists.changed")
    assert "Traceback" not in a.log()
    # Each destination had one sender: the worker whose shard holds it.
    for i, worker in enumerate(workers):
        assert worker.proc.poll() is None  # (still serving)
        sent_to = set(_SENT.findall(worker.log()))
        owned = {s.server_name for s in (b, c) if Shard(i, 2).owns(s.server_name)}
        assert sent_to == owned, (i, sent_to, owned)
        # Its metrics: its sender's queue, and the bus it followed the commits on.
        samples = await metric_samples(ports[i])
        assert ("ktchat_federation_outbound_queue_depth", ()) in samples
        assert samples[("ktchat_replication_received_total", ())] > 0
        assert samples[("ktchat_replication_resubscribes_total", ())] == 0
        assert samples[("ktchat_replication_published_total", ())] >= 1  # (it started)
        assert ("ktchat_replication_backlog", ()) in samples
