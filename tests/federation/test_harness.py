"""The federation harness itself: two real servers with TLS federation listeners, server names
with ports, users, restarts and crashes. These pass without federation between the servers."""

from __future__ import annotations

import ssl
import time

import aiohttp
import pytest
import yaml
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import verify_signed_json
from unpaddedbase64 import decode_base64

from homeserver.config import load_config
from tests.federation.conftest import FedServers
from tests.helpers.federation import FedPair, FedServer, User


def _verify_keys(server: FedServer, keys: dict) -> None:
    assert keys["server_name"] == server.server_name
    assert keys["valid_until_ts"] > time.time() * 1000
    ((key_id, key),) = keys["verify_keys"].items()
    verify_key = decode_verify_key_bytes(key_id, decode_base64(key["key"]))
    verify_signed_json(keys, server.server_name, verify_key)
    file_version = (server.dir / "signing.key").read_text().split()[1]
    assert key_id == f"ed25519:{file_version}"


def test_config_has_port_in_server_name_and_federation_settings(fed_pair: FedPair) -> None:
    for server in fed_pair.servers:
        written = yaml.safe_load(server.config_path.read_text())
        assert written["federation"]["retry_initial_interval"] == "500ms"
        assert written["federation"]["retry_max_interval"] == "5s"
        config = load_config(server.config_path)  # the server accepts all of it
        assert config.server_name == f"127.0.0.1:{server.federation_port}"
        assert not config.federation.verify_tls
        assert [str(n) for n in config.federation.ip_range_allowlist] == ["127.0.0.0/8"]
        assert not config.rate_limits.enabled
        assert config.presence.enabled
        by_resource = {r: lst for lst in config.listeners for r in lst.resources}
        assert by_resource["federation"].port == server.federation_port
        assert by_resource["federation"].tls
        assert by_resource["client"].port == server.client_port
        assert not by_resource["client"].tls
    assert fed_pair.a.server_name != fed_pair.b.server_name


async def test_both_serve_signed_keys_over_tls(fed_pair: FedPair) -> None:
    for server in fed_pair.servers:
        _verify_keys(server, await server.server_keys())
    # Each certificate is the server's own: A's is not trusted for B.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"{fed_pair.b.federation_url}/_matrix/key/v2/server",
                              ssl=fed_pair.a.tls_context())
        # verify_tls: false is what lets the servers talk: an unverified context works.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        async with session.get(f"{fed_pair.b.federation_url}/_matrix/key/v2/server",
                               ssl=insecure) as resp:
            assert resp.status == 200


async def test_users_register_and_log_in(fed_pair: FedPair) -> None:
    for user, server in ((fed_pair.alice, fed_pair.a), (fed_pair.bob, fed_pair.b)):
        assert user.user_id == f"@{user.localpart}:127.0.0.1:{server.federation_port}"
        whoami = await user.whoami()
        assert whoami["user_id"] == user.user_id
        assert whoami["device_id"] == user.device_id
    again = await fed_pair.a.login("alice")
    assert again.user_id == fed_pair.alice.user_id
    assert again.device_id != fed_pair.alice.device_id
    carol = await fed_pair.b.register("carol")
    assert carol.user_id == fed_pair.b.user_id("carol")


async def test_wait_for_sees_local_events_and_explains_timeouts(fed_pair: FedPair) -> None:
    alice = fed_pair.alice
    alias_local = f"harness{time.monotonic_ns()}"
    room_id = await alice.create_room(preset="public_chat", room_alias_name=alias_local)
    assert (await alice.resolve_alias(fed_pair.a.alias(alias_local)))["room_id"] == room_id
    first_id = await alice.send_text(room_id, "one")
    second_id = await alice.send_text(room_id, "two")
    # Two waits for things that may arrive in one batch: the second is not missed.
    assert (await alice.wait_for_event(room_id, body="one"))["event_id"] == first_id
    assert (await alice.wait_for_event(room_id, body="two"))["event_id"] == second_id
    got = await alice.wait_for_timeline(room_id, 2, type="m.room.message")
    assert [ev["event_id"] for ev in got] == [first_id, second_id]
    await alice.wait_for_membership(room_id, alice.user_id, "join")
    assert [ev["event_id"] for ev in await alice.timeline(room_id)][-2:] == [first_id, second_id]

    await alice.catch_up()
    with pytest.raises(AssertionError) as failed:
        await alice.wait_for_event(room_id, body="never sent", timeout=0.5)
    assert "never sent" in str(failed.value)
    third_id = await alice.send_text(room_id, "three")
    with pytest.raises(AssertionError) as failed:
        await alice.wait_for_event(room_id, body="still never sent", timeout=0.5)
    assert "body='three'" in str(failed.value)
    assert (await alice.wait_for_event(room_id, body="three"))["event_id"] == third_id


async def test_restart_keeps_data(fed_servers: FedServers) -> None:
    server = fed_servers("solo")
    alice = await server.register("alice")
    room_id = await alice.create_room(name="kept")
    event_id = await alice.send_text(room_id, "before restart")
    assert server.restart() == 0
    assert "Stopped" in server.log()
    # The same access token still works, and the room and message are there.
    assert (await alice.whoami())["user_id"] == alice.user_id
    assert (await alice.state_event(room_id, "m.room.name"))["name"] == "kept"
    assert [ev["event_id"] for ev in await alice.timeline(room_id)][-1] == event_id
    _verify_keys(server, await server.server_keys())
    assert "Traceback" not in server.log()


async def test_kill_then_start_loses_nothing_acknowledged(fed_servers: FedServers) -> None:
    server = fed_servers("crashy")
    alice = await server.register("alice")
    room_id = await alice.create_room()
    sent = [await alice.send_text(room_id, f"m{i}") for i in range(5)]
    assert server.kill() == -9
    assert not server.running
    server.start()
    assert [ev["event_id"] for ev in await alice.timeline(room_id)][-5:] == sent
    # The sync position the user had keeps working across the crash.
    await alice.catch_up()
    after = await alice.send_text(room_id, "after crash")
    assert (await alice.wait_for_event(room_id, body="after crash"))["event_id"] == after


async def test_postgres_pair_starts(fed_pair_pg: FedPair) -> None:
    config = yaml.safe_load(fed_pair_pg.b.config_path.read_text())
    assert config["database"]["url"].startswith("postgresql+asyncpg://")
    assert (await fed_pair_pg.bob.whoami())["user_id"] == fed_pair_pg.bob.user_id
    _verify_keys(fed_pair_pg.b, await fed_pair_pg.b.server_keys())
    bob: User = fed_pair_pg.bob
    room_id = await bob.create_room()
    event_id = await bob.send_text(room_id, "on postgres")
    assert fed_pair_pg.b.restart() == 0
    assert [ev["event_id"] for ev in await bob.timeline(room_id)][-1] == event_id
