"""The newcomer's path, on a real process: generate a config, create a user, serve, log in
with matrix-nio, check whoami, fetch the signed server key over TLS, stop with SIGTERM (a
long poll in flight answered at once)."""

from __future__ import annotations

import asyncio
import signal
import ssl
import time
from pathlib import Path

import aiohttp
import nio
import yaml
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import verify_signed_json
from unpaddedbase64 import decode_base64

from tests.helpers.processes import ServerProcess, free_port, ktchat, wait_for_port

PASSWORD = "a long enough password"


async def test_generate_register_serve_login_whoami_sigterm(tmp_path: Path) -> None:
    client_port, federation_port = free_port(), free_port()
    data = tmp_path / "data"
    ktchat("generate-config", "--server-name", "localhost", "--data-dir", str(data),
           "--client-port", str(client_port), "--federation-port", str(federation_port))
    config_path = data / "homeserver.yaml"
    config = yaml.safe_load(config_path.read_text())
    assert config["database"]["url"].startswith("sqlite+aiosqlite:///")

    created = ktchat("register-user", "-c", str(config_path), "--user", "alice",
                     "--password", PASSWORD)
    assert "@alice:localhost" in created.stdout

    server = ServerProcess(config_path, tmp_path / "server.log")
    try:
        wait_for_port(client_port, server.proc)
        wait_for_port(federation_port, server.proc)

        client = nio.AsyncClient(f"http://127.0.0.1:{client_port}", "@alice:localhost")
        try:
            login = await client.login(PASSWORD, device_name="e2e test")
            assert isinstance(login, nio.LoginResponse), login
            assert login.user_id == "@alice:localhost"
            whoami = await client.whoami()
            assert isinstance(whoami, nio.WhoamiResponse), whoami
            assert whoami.user_id == "@alice:localhost"
            assert whoami.device_id == login.device_id
            bad = nio.AsyncClient(f"http://127.0.0.1:{client_port}", "@alice:localhost")
            failed = await bad.login("wrong password")
            assert isinstance(failed, nio.LoginError)
            assert failed.status_code == "M_FORBIDDEN"
            await bad.close()
        finally:
            await client.close()

        # The federation listener serves TLS with the generated certificate and a key
        # response self-signed with the generated signing key.
        ctx = ssl.create_default_context(cafile=str(data / "tls.crt"))
        async with aiohttp.ClientSession() as session:
            async with session.get(
                    f"https://127.0.0.1:{federation_port}/_matrix/key/v2/server",
                    ssl=ctx) as resp:
                assert resp.status == 200
                keys = await resp.json()
        assert keys["server_name"] == "localhost"
        ((key_id, key),) = keys["verify_keys"].items()
        verify_key = decode_verify_key_bytes(key_id, decode_base64(key["key"]))
        verify_signed_json(keys, "localhost", verify_key)
        file_version = (data / "signing.key").read_text().split()[1]
        assert key_id == f"ed25519:{file_version}"

        # A long poll in flight does not hold the shutdown for its timeout: it is answered.
        base = f"http://127.0.0.1:{client_port}/_matrix/client/v3/sync"
        auth = {"Authorization": f"Bearer {login.access_token}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(base, headers=auth) as resp:
                since = (await resp.json())["next_batch"]
            poll = asyncio.create_task(session.get(
                base, headers=auth, params={"since": since, "timeout": "60000"}))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            resp = await asyncio.wait_for(poll, 10)
            assert resp.status == 200
            resp.release()
        assert server.proc.wait(20) == 0
        assert time.monotonic() - started < 5
        log = server.log()
        assert "Traceback" not in log
        assert "Stopped" in log
        # No credential ever reaches the log.
        assert PASSWORD not in log
        assert login.access_token not in log
    finally:
        server.stop()
