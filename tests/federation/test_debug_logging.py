"""``logging.level: DEBUG`` says what federation and the event persister do (DESIGN.md,
``logging.*``): each outbound request (method, path, destination, status, time), each inbound
one, each transaction sent, each committed batch of events; never a token or key."""

from __future__ import annotations

import re

from tests.federation.conftest import FedServers


async def test_debug_logs_federation_traffic_and_persister_batches(
        fed_servers: FedServers) -> None:
    a = fed_servers("A", log_level="DEBUG")
    b = fed_servers("B", log_level="DEBUG")
    alice = await a.register("alice")
    bob = await b.register("bob")
    room_id = await alice.create_room(preset="public_chat")
    await bob.join(room_id, via=[a.server_name])
    await alice.send_text(room_id, "hello over federation")
    await bob.wait_for(lambda sync: "hello over federation" in str(sync), timeout=30)

    a_log, b_log = a.log(), b.log()
    # B asked A to join (outbound), A answered (inbound).
    assert re.search(rf"DEBUG federation\.transport\.client: Sent GET "
                     rf"/_matrix/federation/v1/make_join/\S+ to {re.escape(a.server_name)}: "
                     rf"200 in \d+ ms", b_log), b_log
    assert re.search(rf"DEBUG federation\.routes\._base: Received GET "
                     rf"/_matrix/federation/v1/make_join/\S+ from {re.escape(b.server_name)}: "
                     rf"200 in \d+ ms", a_log), a_log
    # A's queue sent the message to B.
    assert re.search(rf"DEBUG federation\.sender\.queue: Sent transaction \S+ to "
                     rf"{re.escape(b.server_name)}: \d+ PDUs, \d+ EDUs", a_log), a_log
    for log in (a_log, b_log):
        assert re.search(r"DEBUG roomserver\.writer: Committed \d+ events "
                         r"in \d+ rooms in [\d.]+ ms", log), log
        assert alice.access_token not in log and bob.access_token not in log
