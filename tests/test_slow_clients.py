"""Slow, idle and malformed clients, against a real ``ktchat run`` process (its listeners, its
log): idle and half-sent connections are closed after ``http.idle_timeout_ms`` and free what
they held; a request head or body dribbled too slowly is cut off; a body announced beyond
``http.max_request_body_bytes`` is refused on its header; a client that leaves is logged as
one that left (499), and a malformed request as one line, never a traceback or a 500."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers.nio_server import PASSWORD, run_server

IDLE_S = 3.0
BODY_GRACE_S = 1.0
MIN_BODY_RATE = 1000  # bytes per second after the grace
MAX_BODY = 64 * 1024
CONNECTIONS = 500  # of each kind: idle, half-sent
LOGIN = "/_matrix/client/v3/login"


@dataclass(frozen=True)
class Server:
    base: str
    port: int
    pid: int
    log: Path

    def log_text(self, after: int = 0) -> str:
        return self.log.read_text()[after:]

    def log_size(self) -> int:
        return len(self.log.read_text())

    def open_files(self) -> int:
        return len(list(Path(f"/proc/{self.pid}/fd").iterdir()))

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))


def _pid_serving(config: Path) -> int:
    """The process running ``ktchat run -c config``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"run" in cmdline and str(config).encode() in cmdline:
            return int(proc.name)
    raise LookupError(f"no process serves {config}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("slow_clients")
    for base in run_server(tmp, users=("alice", "bob"), overrides={
            "http": {"idle_timeout_ms": int(IDLE_S * 1000),
                     "request_body_timeout_ms": int(BODY_GRACE_S * 1000),
                     "request_body_min_bytes_per_second": MIN_BODY_RATE,
                     "max_request_body_bytes": MAX_BODY},
            "presence": {"offline_timeout_ms": 1500}}):
        port = int(base.rsplit(":", 1)[1])
        yield Server(base, port, _pid_serving(tmp / "data" / "homeserver.yaml"),
                     tmp / "server.log")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def login(session: aiohttp.ClientSession, base: str, user: str) -> str:
    async with session.post(f"{base}{LOGIN}", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": PASSWORD}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    return str(body["access_token"])


def login_body(padding: int = 0) -> bytes:
    """A login request's body, with ``padding`` spaces of JSON whitespace in it."""
    return json.dumps({"type": "m.login.password", "password": PASSWORD,
                       "identifier": {"type": "m.id.user", "user": "alice"}}
                      ).replace(", ", "," + " " * padding, 1).encode()


def post_head(path: str, length: int, *, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


async def connect(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_response(reader: asyncio.StreamReader, within: float
                        ) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one response (with Content-Length)."""
    async with asyncio.timeout(within):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closes the connection within ``within`` seconds (anything it
    still sends is read and dropped)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def assert_quiet(log: str) -> None:
    """Nothing in ``log`` is a traceback, an error or a 500."""
    assert "Traceback" not in log, log[-5000:]
    assert " ERROR " not in log, log[-5000:]
    assert not re.search(r'" 500 ', log), log[-5000:]


# -- idle connections -------------------------------------------------------------------------

Connection = tuple[float, asyncio.StreamReader, asyncio.StreamWriter]


async def _open_idle_and_half_sent(server: Server) -> list[Connection]:
    """CONNECTIONS connections that send nothing and CONNECTIONS that send half a head, each
    with the time it was opened."""
    async def timed_connect() -> Connection:
        reader, writer = await connect(server)
        return time.monotonic(), reader, writer

    connections: list[Connection] = []
    for _ in range(2 * CONNECTIONS // 100):  # (within the listen backlog, 128)
        connections += await asyncio.gather(*(timed_connect() for _ in range(100)))
    for _, _, writer in connections[CONNECTIONS:]:
        writer.write(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\nX-Half: ")
    await asyncio.gather(*(writer.drain() for _, _, writer in connections))
    return connections


async def _held_for(connection: Connection, within: float) -> float | None:
    """How long the server kept ``connection`` open (None: still open after ``within``)."""
    opened, reader, _ = connection
    if not await closed_by_server(reader, within):
        return None
    return time.monotonic() - opened


async def _wait_until(check: Any, within: float, what: Any) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not in time: {what()}"
        await asyncio.sleep(0.05)


async def test_idle_and_half_sent_connections_are_closed_and_free_their_memory(
        server: Server, session: aiohttp.ClientSession) -> None:
    await login(session, server.base, "alice")  # the server has done some work before
    await session.close()
    offset = server.log_size()
    files_before = server.open_files()
    rss = [server.rss_kib()]
    for _ in range(3):  # each wave reuses what the one before it freed
        connections = await _open_idle_and_half_sent(server)
        rss.append(server.rss_kib())
        held = await asyncio.gather(*(_held_for(c, IDLE_S + 5) for c in connections))
        assert None not in held, f"{held.count(None)} connections still open"
        # (Not before the limit; the client times its connections only roughly, 1000 at once.)
        assert min(held) >= IDLE_S * 0.66, f"one closed after {min(held):.1f}s"  # type: ignore
        for _, _, writer in connections:
            writer.close()
        # Whatever a connection held is let go: the server's open files are back to before.
        await _wait_until(lambda: server.open_files() <= files_before + 2, within=5,
                          what=lambda: (files_before, server.open_files()))
        rss.append(server.rss_kib())
    # RSS in KiB: [before, wave 1 open, closed, wave 2 open, closed, wave 3 open, closed].
    # Python keeps freed memory for reuse rather than giving it back to the system, so RSS
    # stays near the first wave's peak; held connections would add a wave's worth each time.
    first_wave = rss[1] - rss[0]
    assert first_wave > 1024, rss  # 1000 connections are visible
    assert rss[6] - rss[2] < first_wave / 2, f"RSS in KiB: {rss}"
    assert_quiet(server.log_text(offset))


async def test_a_keep_alive_connection_is_closed_once_idle(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n\r\n")
    status, headers, _ = await read_response(reader, within=5)
    assert status == 200 and headers.get("connection") != "close"
    answered = time.monotonic()
    assert await closed_by_server(reader, within=IDLE_S + 3)
    assert time.monotonic() - answered >= IDLE_S * 0.9
    writer.close()


async def test_a_head_sent_byte_by_byte_is_cut_off(server: Server) -> None:
    """A slowloris: the head keeps coming, one byte at a time, but not in time."""
    reader, writer = await connect(server)
    opened = time.monotonic()
    head = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n" + b"X-Slow: a" * 100

    async def dribble() -> None:
        for i in range(len(head)):
            writer.write(head[i:i + 1])
            await asyncio.sleep(0.05)

    sending = asyncio.create_task(dribble())
    try:
        assert await closed_by_server(reader, within=IDLE_S + 3)
        assert not sending.done(), "the head was all sent before the cut"
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.close()
    assert IDLE_S * 0.9 <= time.monotonic() - opened


# -- request bodies ---------------------------------------------------------------------------

async def test_a_body_sent_byte_by_byte_is_cut_off(server: Server) -> None:
    offset = server.log_size()
    body = login_body(padding=200)
    reader, writer = await connect(server)
    writer.write(post_head(LOGIN, len(body)))
    started = time.monotonic()

    async def dribble() -> None:
        for i in range(len(body)):
            writer.write(body[i:i + 1])
            await asyncio.sleep(0.05)

    sending = asyncio.create_task(dribble())
    try:
        status, headers, answer = await read_response(reader, within=BODY_GRACE_S + 3)
        took = time.monotonic() - started
        assert status == 408, answer
        assert json.loads(answer)["errcode"] == "M_UNKNOWN"
        assert headers.get("connection") == "close"
        assert BODY_GRACE_S * 0.9 <= took <= BODY_GRACE_S + 2
        assert not sending.done()
        assert await closed_by_server(reader, within=3)
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.close()
    await asyncio.sleep(0.2)
    log = server.log_text(offset)
    assert re.search(r'"POST /_matrix/client/v3/login" 408 ', log), log
    assert_quiet(log)


async def test_a_slow_but_steady_body_is_accepted(server: Server) -> None:
    """Past the grace, a body keeps coming at the minimum rate or better: it is read."""
    body = login_body(padding=4 * MIN_BODY_RATE)
    reader, writer = await connect(server)
    writer.write(post_head(LOGIN, len(body)))
    started = time.monotonic()
    chunk = MIN_BODY_RATE // 10
    for i in range(0, len(body), chunk):  # twice the minimum rate, for over 2 s
        writer.write(body[i:i + chunk])
        await asyncio.sleep(0.05)
    status, _, answer = await read_response(reader, within=5)
    assert time.monotonic() - started > 2 * BODY_GRACE_S
    assert status == 200, answer
    assert json.loads(answer)["user_id"] == "@alice:localhost"
    writer.close()


async def test_a_body_announced_too_large_is_refused_on_its_header(server: Server) -> None:
    offset = server.log_size()
    reader, writer = await connect(server)
    writer.write(post_head(LOGIN, 1_000_000_000))
    sent = time.monotonic()
    writer.write(b"x" * (256 * 1024))  # of the announced gigabyte, this much comes
    status, headers, answer = await read_response(reader, within=2)
    assert time.monotonic() - sent < 1
    assert status == 413, answer
    assert json.loads(answer)["errcode"] == "M_TOO_LARGE"
    assert headers.get("connection") == "close"
    assert await closed_by_server(reader, within=3)
    writer.close()
    await asyncio.sleep(0.2)
    log = server.log_text(offset)
    assert re.search(r'"POST /_matrix/client/v3/login" 413 ', log), log
    assert_quiet(log)


async def test_a_body_larger_than_announced_by_chunks_is_refused(server: Server) -> None:
    """Without a Content-Length (chunked), the limit applies as the body comes."""
    reader, writer = await connect(server)
    writer.write(b"POST " + LOGIN.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 16384
    for _ in range(MAX_BODY // len(chunk) + 2):
        writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    status, headers, answer = await read_response(reader, within=5)
    assert status == 413, answer
    assert json.loads(answer)["errcode"] == "M_TOO_LARGE"
    assert headers.get("connection") == "close"
    writer.close()


async def test_a_client_that_leaves_mid_body_is_logged_as_gone(server: Server) -> None:
    offset = server.log_size()
    _, writer = await connect(server)
    writer.write(post_head(LOGIN, 5000) + b'{"type": "m.login.password", ')
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()
    deadline = time.monotonic() + 5
    while not re.search(r'"POST /_matrix/client/v3/login" 499 ', server.log_text(offset)):
        assert time.monotonic() < deadline, server.log_text(offset)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert_quiet(server.log_text(offset))


# -- malformed requests -----------------------------------------------------------------------

VERSIONS = b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n"
LOGIN_HEAD = b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: localhost\r\n"
# Each answered 400 (the first after a well-formed request on the same connection: as the
# first request, aiohttp takes garbage for a TLS or port probe and logs it at DEBUG only).
MALFORMED = [
    b"HELLO THERE\r\n\r\n",
    VERSIONS + b"Bad Header\r\n\r\n",
    VERSIONS + b"X: \x01\r\n\r\n",
    b"GET /_matrix/client/versions HTTP/9.9\r\nHost: localhost\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
    VERSIONS + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n",
    LOGIN_HEAD + b"Content-Length: x\r\n\r\n",
    LOGIN_HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    LOGIN_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
]


async def test_malformed_requests_are_one_line_each_in_the_log(server: Server) -> None:
    offset = server.log_size()
    for request in MALFORMED:
        reader, writer = await connect(server)
        if request.startswith(b"HELLO"):
            writer.write(VERSIONS + b"\r\n")
            status, _, answer = await read_response(reader, within=5)
            assert status == 200, answer
        writer.write(request)
        status, _, answer = await read_response(reader, within=5)
        assert status == 400, (request[:100], answer)
        writer.close()
    await asyncio.sleep(0.5)
    log = server.log_text(offset)
    assert_quiet(log)
    assert " WARNING " not in log, log
    reasons = [line for line in log.splitlines() if "Bad HTTP request from 127.0.0.1" in line]
    assert len(reasons) == len(MALFORMED), log
    assert all(" INFO " in line for line in reasons), reasons


async def test_a_body_that_cannot_be_decoded_is_one_line_in_the_log(server: Server) -> None:
    """The head is fine and the route runs; the body then proves not to be what its
    Content-Encoding says."""
    offset = server.log_size()
    reader, writer = await connect(server)
    writer.write(post_head(LOGIN, 20, extra="Content-Encoding: gzip\r\n"))
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.write(b"this is not gzip....")
    status, headers, answer = await read_response(reader, within=5)
    assert status == 400, answer
    assert headers.get("connection") == "close"
    writer.close()
    await asyncio.sleep(0.3)
    log = server.log_text(offset)
    assert_quiet(log)
    reasons = [line for line in log.splitlines() if "Bad HTTP request from 127.0.0.1" in line]
    assert len(reasons) == 1 and " INFO " in reasons[0], log


# -- long polls -------------------------------------------------------------------------------

async def test_a_sync_timeout_beyond_any_bound_is_a_long_poll(
        server: Server, session: aiohttp.ClientSession) -> None:
    """``timeout=2**64``: no 500, no 400 (Synapse takes any non-negative integer), a long poll
    (clamped to 5 minutes) that answers when something happens."""
    offset = server.log_size()
    token = await login(session, server.base, "bob")
    headers = {"Authorization": f"Bearer {token}"}
    async with session.get(f"{server.base}/_matrix/client/v3/sync", headers=headers) as resp:
        since = (await resp.json())["next_batch"]

    async def poll() -> tuple[int, Any]:
        async with session.get(f"{server.base}/_matrix/client/v3/sync",
                               params={"since": since, "timeout": str(2 ** 64)},
                               headers=headers) as resp:
            return resp.status, await resp.json()

    polling = asyncio.create_task(poll())
    await asyncio.sleep(1)
    assert not polling.done()
    async with session.put(f"{server.base}/_matrix/client/v3/user/@bob:localhost/account_data/"
                           "org.example.wake", json={"now": True}, headers=headers) as resp:
        assert resp.status == 200
    status, body = await asyncio.wait_for(polling, 5)
    assert status == 200, body
    assert [e["type"] for e in body["account_data"]["events"]] == ["org.example.wake"]
    assert_quiet(server.log_text(offset))
