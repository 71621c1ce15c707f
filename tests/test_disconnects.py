"""Clients that go away, against a real ``ktchat run`` process (its listeners cancel the work
of a closed connection): a closed SSE stream or long poll ends at once and quietly, with its
access-log line, and its user goes offline after ``presence.offline_timeout_ms``."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers.nio_server import PASSWORD, run_server

SSE = "/_matrix/client/unstable/org.ktchat.sse/sync"
OFFLINE_AFTER_S = 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("disconnects")
    for base in run_server(tmp, users=("alice", "bob", "carol"), overrides={
            "presence": {"offline_timeout_ms": int(OFFLINE_AFTER_S * 1000)}}):
        yield base, tmp / "server.log"


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str, user_id: str
                 ) -> None:
        self.session, self.base, self.user_id = session, base, user_id
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        async with self.session.request(method, f"{self.base}/_matrix/client/v3{path}",
                                        json=body, headers=self.headers) as resp:
            data: dict[str, Any] = await resp.json()
            assert resp.status == 200, data
            return data


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def login(session: aiohttp.ClientSession, base: str, user: str) -> Api:
    async with session.post(f"{base}/_matrix/client/v3/login", json={
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": PASSWORD}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    return Api(session, base, body["access_token"], body["user_id"])


def log_text(log: Path, after: int = 0) -> str:
    return log.read_text()[after:]


async def wait_for_log(log: Path, pattern: str, after: int, within: float) -> float:
    """Seconds until a line matching ``pattern`` shows up in the log past offset ``after``."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if re.search(pattern, log_text(log, after)):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"no log line matching {pattern!r} within {within}s:\n"
                         f"{log_text(log, after)[-3000:]}")


async def test_a_closed_stream_ends_quietly_and_at_once(
        server: tuple[str, Path], session: aiohttp.ClientSession) -> None:
    base, log = server
    alice, bob = await login(session, base, "alice"), await login(session, base, "bob")
    room_id = (await alice.call("POST", "/createRoom", {"preset": "public_chat"}))["room_id"]
    await bob.call("POST", f"/join/{room_id}", {})
    offset = len(log.read_text())
    async with aiohttp.ClientSession() as own:
        resp = await own.get(base + SSE, headers=bob.headers)
        assert resp.status == 200
        assert (await resp.content.readline()).startswith(b"id: ")
        resp.close()  # the client goes away
    # The stream is over (its access-log line is written) without waiting for an event.
    took = await wait_for_log(log, r'"GET /_matrix/client/unstable/org\.ktchat\.sse/sync[^"]*"'
                                   r' 200 ', offset, within=5)
    assert took < 2
    # The next event in the room finds no dead stream to write to.
    await alice.call("PUT", f"/rooms/{room_id}/send/m.room.message/after-close",
                     {"msgtype": "m.text", "body": "anyone?"})
    await asyncio.sleep(0.3)
    tail = log.read_text()[offset:]
    assert "Traceback" not in tail and " ERROR " not in tail
    assert not re.search(r'" 500 ', tail)


async def test_a_closed_long_poll_ends_at_once(server: tuple[str, Path],
                                               session: aiohttp.ClientSession) -> None:
    base, log = server
    carol = await login(session, base, "carol")
    since = (await carol.call("GET", "/sync"))["next_batch"]
    offset = len(log.read_text())
    poll = asyncio.create_task(carol.call("GET", f"/sync?since={since}&timeout=30000"))
    await asyncio.sleep(0.3)
    poll.cancel()  # closes the connection
    await asyncio.gather(poll, return_exceptions=True)
    # Logged as nginx logs a request whose client left (499), well before its 30 s timeout.
    took = await wait_for_log(log, r'"GET /_matrix/client/v3/sync[^"]*" 499 ', offset,
                              within=5)
    assert took < 2
    assert "Traceback" not in log.read_text()[offset:]


async def test_a_user_whose_stream_closed_goes_offline_on_time(
        server: tuple[str, Path], session: aiohttp.ClientSession) -> None:
    base, _ = server
    alice, bob = await login(session, base, "alice"), await login(session, base, "bob")
    await alice.call("POST", "/createRoom", {"preset": "public_chat", "invite": [bob.user_id]})

    async def presence_of_bob() -> str:
        return str((await alice.call("GET", f"/presence/{bob.user_id}/status"))["presence"])

    async with aiohttp.ClientSession() as own:
        resp = await own.get(base + SSE, headers=bob.headers)
        assert resp.status == 200
        await resp.content.readline()
        assert await presence_of_bob() == "online"
        resp.close()
    closed = time.monotonic()
    await asyncio.sleep(OFFLINE_AFTER_S / 3)
    assert await presence_of_bob() == "online"
    while await presence_of_bob() != "offline":
        assert time.monotonic() - closed < OFFLINE_AFTER_S + 2, "still online"
        await asyncio.sleep(0.1)
    assert time.monotonic() - closed >= OFFLINE_AFTER_S * 0.9


async def test_a_user_whose_long_poll_was_abandoned_goes_offline_on_time(
        server: tuple[str, Path], session: aiohttp.ClientSession) -> None:
    """An abandoned long poll (timeout 5 minutes) keeps nobody online: it ends when its client
    leaves, and the user goes offline ``presence.offline_timeout_ms`` later."""
    base, log = server
    alice, bob = await login(session, base, "alice"), await login(session, base, "bob")
    await alice.call("POST", "/createRoom", {"preset": "public_chat", "invite": [bob.user_id]})

    async def presence_of_bob() -> str:
        return str((await alice.call("GET", f"/presence/{bob.user_id}/status"))["presence"])

    since = (await bob.call("GET", "/sync"))["next_batch"]
    offset = len(log.read_text())
    async with aiohttp.ClientSession() as own:
        poll = asyncio.create_task(own.get(f"{base}/_matrix/client/v3/sync",
                                           params={"since": since, "timeout": "300000"},
                                           headers=bob.headers))
        await asyncio.sleep(0.5)
        assert await presence_of_bob() == "online"
        poll.cancel()  # the client goes away in the middle of its long poll
        await asyncio.gather(poll, return_exceptions=True)
    left = time.monotonic()
    await asyncio.sleep(OFFLINE_AFTER_S / 3)
    assert await presence_of_bob() == "online"
    while await presence_of_bob() != "offline":
        assert time.monotonic() - left < OFFLINE_AFTER_S + 2, "still online"
        await asyncio.sleep(0.1)
    assert time.monotonic() - left >= OFFLINE_AFTER_S * 0.9
    await wait_for_log(log, r'"GET /_matrix/client/v3/sync[^"]*" 499 ', offset, within=1)
    assert "Traceback" not in log.read_text()[offset:]
