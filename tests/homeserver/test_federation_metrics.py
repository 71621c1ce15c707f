"""Federation metrics against a real ``ktchat`` process and a fake remote server: inbound
transactions counted by outcome, and the backoff of a destination that went away."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.fake_peer import FakePeer
from tests.helpers.federation import FedServer
from tests.helpers.processes import free_port, wait_for_port


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def outcome(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return samples.get(("ktchat_federation_inbound_transactions_total",
                        (("outcome", name),)), 0.0)


async def test_inbound_outcomes_and_outbound_backoff(tmp_path: Path) -> None:
    server = FedServer(tmp_path, "hs")
    metrics_port = free_port()
    config = yaml.safe_load(server.config_path.read_text())
    config["listeners"].append({"port": metrics_port, "resources": ["metrics"]})
    server.config_path.write_text(yaml.safe_dump(config))
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    peer = FakePeer(tmp_path / "fake")
    await peer.start()
    server.start()
    try:
        assert server.proc is not None
        wait_for_port(metrics_port, server.proc)
        alice = await server.register("alice")
        room_id = await alice.create_room(preset="public_chat")
        await peer.join(server, room_id, peer.user_id("mallory"))
        before = await scrape(metrics)

        status, answer = await peer.send_transaction(server, [dict(peer.message(room_id,
                                                                                "hello").pdu)])
        assert status == 200 and not any("error" in r for r in answer["pdus"].values())
        forged = dict(peer.message(room_id, "forged").pdu)
        forged["origin_server_ts"] += 1  # after signing: the signature no longer holds
        status, answer = await peer.send_transaction(server, [forged])
        assert status == 200 and any("error" in r for r in answer["pdus"].values()), answer
        status, _ = await peer.send_transaction(server, [{}] * 51)  # over the limit of 50
        assert status == 400
        after = await scrape(metrics)
        assert outcome(after, "accepted") - outcome(before, "accepted") == 1
        assert outcome(after, "some_pdus_refused") - outcome(before, "some_pdus_refused") == 1
        assert outcome(after, "refused") - outcome(before, "refused") == 1
        assert outcome(after, "failed") == outcome(before, "failed")

        # The peer goes away: what is sent to it waits, and the destination backs off.
        await peer.close()
        await alice.send_text(room_id, "are you there?")
        backoff = ("ktchat_federation_destination_backoff_seconds",
                   (("destination", peer.server_name),))
        for _ in range(200):
            samples = await scrape(metrics)
            if backoff in samples:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("no backoff shown for the unreachable peer")
        assert samples[backoff] > 0
        assert samples[("ktchat_federation_destinations_pending", ())] >= 1
    finally:
        server.stop()
        await peer.close()
