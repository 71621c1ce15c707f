"""End-to-end encryption across client stacks: a matrix-js-sdk client with its Rust crypto
(``initRustCrypto``, in Node: ``tests/js/e2e_client.mjs``) and a matrix-nio client with
encryption, on a real ``ktchat run`` process, each decrypt the other's message in an
encrypted room. Skipped when Node or the packages in ``tests/js`` (``make test`` installs them
with npm) are not there."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nio
import pytest

from tests.helpers.nio_server import PASSWORD, run_server
from tests.helpers.processes import REPO
from tests.test_e2e_nio import encrypted_client, receive, turn

JS_DIR = REPO / "tests" / "js"
# Node's own deadline for the whole script (it exits with an error line after it).
JS_TIMEOUT_SECONDS = 60


def node_or_skip() -> str:
    """The node binary, with tests/js/node_modules installed (by npm ci if it is not), or a
    skip saying what is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (matrix-js-sdk runs in Node; CI installs it)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    if int(version.lstrip("v").split(".")[0]) < 20:
        pytest.skip(f"matrix-js-sdk in tests/js needs Node 20 or newer, found {version.strip()}")
    if not (JS_DIR / "node_modules" / "matrix-js-sdk").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("tests/js/node_modules is not installed and npm is not there to do it")
        done = subprocess.run([npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund"],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            pytest.skip(f"npm ci in tests/js failed: {done.stderr.strip()[-500:]}")
    return node


@pytest.fixture(scope="module")
def node() -> str:
    return node_or_skip()


@pytest.fixture(scope="module")
def server(node: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from run_server(tmp_path_factory.mktemp("js-e2e"))


class JsClient:
    """``e2e_client.mjs`` as a child process: its JSON lines out, commands in; its stderr (the
    SDK's log) is kept to show when something fails."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log = bytearray()
        self._drain = asyncio.create_task(self._read_log())

    @classmethod
    async def start(cls, node: str, base: str, user: str) -> JsClient:
        return cls(await asyncio.create_subprocess_exec(
            node, str(JS_DIR / "e2e_client.mjs"), base, user, PASSWORD, str(JS_TIMEOUT_SECONDS),
            cwd=JS_DIR, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE))

    async def _read_log(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.log += chunk

    def log_tail(self) -> str:
        return self.log[-3000:].decode(errors="replace")

    async def expect(self, event: str, seconds: float = 20, **fields: Any) -> dict[str, Any]:
        """The next line reporting ``event`` with these ``fields`` (others are skipped)."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(seconds):
                while line := await self.proc.stdout.readline():
                    message = json.loads(line)
                    if message["event"] == "error":
                        raise AssertionError(f"js-sdk client failed: {message['message']}\n"
                                             f"{self.log_tail()}")
                    if message["event"] == event and all(message.get(key) == value
                                                         for key, value in fields.items()):
                        return dict(message)
        except TimeoutError:
            raise AssertionError(f"no {event} {fields} from the js-sdk client in {seconds} s\n"
                                 f"{self.log_tail()}") from None
        raise AssertionError(f"js-sdk client exited ({await self.proc.wait()}) before "
                             f"{event} {fields}\n{self.log_tail()}")

    async def command(self, **command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.command(cmd="stop")
                await asyncio.wait_for(self.proc.wait(), 10)
            except (OSError, TimeoutError):
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        await self._drain


@pytest.fixture
async def js_bob(node: str, server: str) -> AsyncIterator[JsClient]:
    client = await JsClient.start(node, server, "bob")
    try:
        yield client
    finally:
        await client.stop()


async def test_nio_and_js_sdk_rust_crypto_decrypt_each_others_messages(
        server: str, js_bob: JsClient, tmp_path: Path) -> None:
    ready = await js_bob.expect("ready")  # logged in, synced, its device keys on the server
    bob, bob_device = ready["user_id"], ready["device_id"]
    alice = await encrypted_client(server, "alice", tmp_path)
    try:
        await turn(alice)
        created = await alice.room_create(
            invite=[bob],
            initial_state=[{"type": "m.room.encryption", "state_key": "",
                            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        assert isinstance(created, nio.RoomCreateResponse), created
        room_id = created.room_id
        await js_bob.expect("joined", room_id=room_id)

        # nio sees Bob in the room and his js-sdk device (device_lists, /keys/query).
        async with asyncio.timeout(10):
            while not (room_id in alice.rooms and bob in alice.rooms[room_id].users
                       and bob_device in alice.device_store[bob]):
                await turn(alice, 200)

        sent = await alice.room_send(room_id, "m.room.message",
                                     {"msgtype": "m.text", "body": "hello js-sdk, secretly"},
                                     ignore_unverified_devices=True)
        assert isinstance(sent, nio.RoomSendResponse), sent
        got = await js_bob.expect("decrypted", event_id=sent.event_id)
        assert (got["body"], got["sender"], got["room_id"]) == (
            "hello js-sdk, secretly", alice.user_id, room_id)

        await js_bob.command(cmd="send", room_id=room_id, body="hello nio, secretly")
        await js_bob.expect("sent", room_id=room_id)
        await receive(alice, room_id, "hello nio, secretly")
    finally:
        await alice.close()
