"""Federation with the sending in a worker: server A is a main process (PostgreSQL, Redis)
and a ``federation_sender`` worker; server B is one plain process. A's main process receives
(its federation listener) and queues; only the worker sends, so whatever reaches B came
from it: events, typing, receipts, presence, to-device, device lists."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

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


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[tuple[FedServer, FedServer, ServerProcess]]:
    base = postgres_url()
    assert base is not None
    database = PostgresDatabase(base)
    await database.create()
    a = FedServer(tmp_path, "a", database_url=database.url)
    config = yaml.safe_load(a.config_path.read_text())
    worker_port = free_port()
    config["listeners"].append({"port": free_port(), "resources": ["replication"]})
    config["redis"] = {"url": _redis_url()}
    config["workers"] = {"sender": {"roles": ["federation_sender"], "listeners": [
        {"port": worker_port, "resources": ["metrics"]}]}}
    a.config_path.write_text(yaml.safe_dump(config))
    b = FedServer(tmp_path, "b")
    a.start()
    worker = ServerProcess(a.config_path, tmp_path / "sender.log", worker="sender")
    b.start()
    try:
        wait_for_port(worker_port, worker.proc)
        yield a, b, worker
    finally:
        code = worker.stop()
        a.stop()
        b.stop()
        await database.drop()
        assert code == 0, worker.log()
        assert "Traceback" not in worker.log(), worker.log()


async def test_what_a_sends_goes_out_through_its_sender_worker(
        servers: tuple[FedServer, FedServer, ServerProcess]) -> None:
    a, b, worker = servers
    assert worker.proc.poll() is None
    alice: User = await a.register("alice")
    bob: User = await b.register("bob")
    room_id = await alice.create_room(preset="public_chat")
    # B joins through A's main process (make_join / send_join are answered there).
    assert await bob.join(room_id, via=[a.server_name]) == room_id
    await alice.wait_for_membership(room_id, bob.user_id, "join")

    # An event sent at A reaches B: only the worker sends.
    event_id = await alice.send_text(room_id, "from A's worker")
    await bob.wait_for_event(room_id, type="m.room.message", event_id=event_id)
    # And B's events reach A (A's main process receives).
    reply = await bob.send_text(room_id, "to A's main process")
    await alice.wait_for_event(room_id, type="m.room.message", event_id=reply)

    # Typing and receipts (kept in the worker's memory until sent) reach B.
    await alice.typing(room_id, True)
    await bob.wait_for_ephemeral(room_id, "m.typing",
                                 lambda c: alice.user_id in c.get("user_ids", []))
    await alice.receipt(room_id, reply)
    await bob.wait_for_ephemeral(
        room_id, "m.receipt",
        lambda c: alice.user_id in c.get(reply, {}).get("m.read", {}))
    # To-device (queued durably by the main process, sent by the worker).
    since = await to_device_token(bob)
    await send_to_device(alice, "m.test", {bob.user_id: {bob.device_id: {"hello": "bob"}}})
    events, _ = await collect(bob, since, 1)
    assert [e["content"] for e in events] == [{"hello": "bob"}]
    # A device-list change (queued durably by the main process) reaches B.
    await alice.request("POST", "/keys/upload", {"device_keys": {
        "user_id": alice.user_id, "device_id": alice.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {f"ed25519:{alice.device_id}": "AAAA",
                 f"curve25519:{alice.device_id}": "BBBB"}, "signatures": {}}})
    await bob.wait_for(lambda r: alice.user_id in r.get("device_lists", {}).get("changed", []),
                       what="alice in device_lists.changed")
    assert "Traceback" not in a.log()
    assert worker.proc.poll() is None  # (still serving: it sent all of the above)
