"""``ktchat port-db``: a SQLite database filled through the real server (users, rooms,
messages, media, keys) moves to PostgreSQL, in a database the test creates and drops; the
server then runs on PostgreSQL with everything there. An interrupted port resumes."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from homeserver.port_db import run_port
from storage.port import Porter
from tests.conftest import postgres_url
from tests.helpers.processes import ServerProcess, free_port, ktchat, wait_for_port

PASSWORD = "port password 1"
MESSAGES = 60
MEDIA = b"\x89PNG not really, but bytes all the same" * 20


class Interrupted(Exception):
    pass


@pytest.fixture
async def target() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database (asyncpg URL), dropped afterwards."""
    base = postgres_url()
    assert base is not None
    dsn = base.replace("postgresql+asyncpg://", "postgresql://")
    name = "ktchat_port_" + secrets.token_hex(5)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


class Site:
    """A generated config (SQLite in ``data/``) and a server run from it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        ktchat("generate-config", "--server-name", "localhost", "--data-dir", str(self.data),
               "--client-port", str(self.port), "--federation-port", str(free_port()))
        self.config_path = self.data / "homeserver.yaml"
        config = yaml.safe_load(self.config_path.read_text())
        config["registration"] = {"enabled": True, "require_token": False}
        config["rate_limits"] = {"enabled": False}
        config["logging"] = {"level": "WARNING"}
        config["federation"] = {"enabled": False}
        self.config_path.write_text(yaml.safe_dump(config))
        self.sqlite = str(self.data / "homeserver.db")
        self.base = f"http://127.0.0.1:{self.port}"
        self.server: ServerProcess | None = None

    def use_database(self, url: str) -> None:
        config = yaml.safe_load(self.config_path.read_text())
        config["database"] = {"url": url}
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self, log: str) -> None:
        self.server = ServerProcess(self.config_path, self.root / log)
        wait_for_port(self.port, self.server.proc)

    def stop(self) -> None:
        assert self.server is not None
        assert self.server.stop() == 0, self.server.log()
        self.server = None


class Client:
    def __init__(self, http: aiohttp.ClientSession, base: str, token: str = "") -> None:
        self.http = http
        self.base = base
        self.token = token

    async def call(self, method: str, path: str, body: Any = None, status: int = 200,
                   **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.http.request(method, self.base + path, json=body, headers=headers,
                                     **kwargs) as resp:
            assert resp.status == status, await resp.text()
            return await resp.json()


async def register(http: aiohttp.ClientSession, base: str, name: str) -> Client:
    anon = Client(http, base)
    body: dict[str, Any] = {"username": name, "password": PASSWORD, "device_id": "DEV"}
    session = (await anon.call("POST", "/_matrix/client/v3/register", body, 401))["session"]
    body["auth"] = {"type": "m.login.dummy", "session": session}
    answer = await anon.call("POST", "/_matrix/client/v3/register", body)
    return Client(http, base, answer["access_token"])


async def fill(site: Site) -> dict[str, Any]:
    """Users, a room with history, media and keys, through the server's API."""
    async with aiohttp.ClientSession() as http:
        alice = await register(http, site.base, "alice")
        bob = await register(http, site.base, "bob")
        room_id = (await alice.call("POST", "/_matrix/client/v3/createRoom",
                                    {"preset": "public_chat", "name": "Port room"}))["room_id"]
        await bob.call("POST", f"/_matrix/client/v3/join/{room_id}", {})
        for i in range(MESSAGES):
            sender = alice if i % 2 == 0 else bob
            await sender.call("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/"
                                     f"t{i}", {"msgtype": "m.text", "body": f"message {i}"})
        await alice.call("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/last",
                         {"msgtype": "m.text", "body": "the aardvark remembers"})
        async with http.post(f"{site.base}/_matrix/media/v3/upload", data=MEDIA,
                             headers={"Authorization": f"Bearer {alice.token}",
                                      "Content-Type": "image/png"}) as resp:
            assert resp.status == 200, await resp.text()
            mxc = (await resp.json())["content_uri"]
        device_keys = {"user_id": "@alice:localhost", "device_id": "DEV",
                       "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                       "keys": {"curve25519:DEV": "curve", "ed25519:DEV": "edkey"},
                       "signatures": {"@alice:localhost": {"ed25519:DEV": "sig"}}}
        await alice.call("POST", "/_matrix/client/v3/keys/upload", {
            "device_keys": device_keys,
            "one_time_keys": {f"curve25519:k{i}": f"otk{i}" for i in range(5)}})
        return {"room_id": room_id, "mxc": mxc, "device_keys": device_keys}


def counts(sqlite_path: str) -> dict[str, int]:
    with sqlite3.connect(sqlite_path) as db:
        return {t: db.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                for t in ("users", "events", "media", "device_keys", "one_time_keys")}


async def progress(url: str) -> dict[str, tuple[int, bool]]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT table_name, rows_copied, done FROM port_db_progress")
        return {r["table_name"]: (r["rows_copied"], r["done"]) for r in rows}
    finally:
        await conn.close()


async def test_port_interrupted_resumed_and_served_from_postgres(tmp_path: Path,
                                                                 target: str) -> None:
    site = Site(tmp_path)
    site.start("sqlite.log")
    try:
        filled = await fill(site)
        # The server is running: the port refuses (what it writes would be lost).
        refused = ktchat("port-db", "-c", str(site.config_path), "--sqlite", site.sqlite,
                         "--postgres", target, check=False)
        assert refused.returncode == 1
        assert "stop the server" in refused.stderr
    finally:
        site.stop()
    source = counts(site.sqlite)
    assert source["events"] > MESSAGES and source["media"] == 1
    assert source["one_time_keys"] == 5 and source["device_keys"] >= 1

    # Interrupted part-way through the events.
    def interrupt(table: str, copied: int) -> None:
        if table == "events" and copied >= 20:
            raise Interrupted

    with pytest.raises(Interrupted):
        await run_port(site.sqlite, target, batch_rows=10, on_batch=interrupt)
    halfway = await progress(target)
    assert halfway["events"] == (20, False)
    order = [t.name for t in Porter.tables()]
    at = order.index("events")
    assert all(halfway[t][1] for t in order[:at])  # the tables before: done
    assert not any(t in halfway for t in order[at + 1:]) and "event_search" not in halfway

    # Run again: it continues, copies the rest and verifies every table.
    done = ktchat("port-db", "-c", str(site.config_path), "--sqlite", site.sqlite,
                  "--postgres", target, "--batch-size", "10", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"events: {source['events']} rows" in done.stdout
    assert "MISMATCH" not in done.stdout
    finished = await progress(target)
    assert finished["events"] == (source["events"], True)
    assert all(is_done for _, is_done in finished.values())
    # A third run finds everything copied and says so again.
    again = ktchat("port-db", "-c", str(site.config_path), "--sqlite", site.sqlite,
                   "--postgres", target, check=False)
    assert again.returncode == 0, again.stderr

    # The server on PostgreSQL: the same users, rooms, history, media and keys.
    site.use_database(target)
    site.start("postgres.log")
    try:
        async with aiohttp.ClientSession() as http:
            anon = Client(http, site.base)
            login = await anon.call("POST", "/_matrix/client/v3/login", {
                "type": "m.login.password", "password": PASSWORD,
                "identifier": {"type": "m.id.user", "user": "alice"}})
            alice = Client(http, site.base, login["access_token"])
            room_id = filled["room_id"]
            assert room_id in (await alice.call("GET", "/_matrix/client/v3/joined_rooms"))[
                "joined_rooms"]
            page = await alice.call("GET", f"/_matrix/client/v3/rooms/{room_id}/messages",
                                    params={"dir": "b", "limit": "100"})
            bodies = [e["content"].get("body") for e in page["chunk"]
                      if e["type"] == "m.room.message"]
            assert bodies[0] == "the aardvark remembers"
            assert bodies[1:MESSAGES + 1] == [f"message {i}" for i in reversed(range(MESSAGES))]
            name = await alice.call("GET", f"/_matrix/client/v3/rooms/{room_id}/state/"
                                           "m.room.name/")
            assert name == {"name": "Port room"}
            found = await alice.call("POST", "/_matrix/client/v3/search", {
                "search_categories": {"room_events": {"search_term": "aardvark"}}})
            results = found["search_categories"]["room_events"]["results"]
            assert [r["result"]["content"]["body"] for r in results] == \
                ["the aardvark remembers"]
            server_name, media_id = filled["mxc"][len("mxc://"):].split("/")
            async with http.get(f"{site.base}/_matrix/client/v1/media/download/{server_name}/"
                                f"{media_id}",
                                headers={"Authorization": f"Bearer {alice.token}"}) as resp:
                assert resp.status == 200
                assert await resp.read() == MEDIA
            keys = await alice.call("POST", "/_matrix/client/v3/keys/query",
                                    {"device_keys": {"@alice:localhost": []}})
            assert keys["device_keys"]["@alice:localhost"]["DEV"]["keys"] == \
                filled["device_keys"]["keys"]
            claimed = await alice.call("POST", "/_matrix/client/v3/keys/claim", {
                "one_time_keys": {"@alice:localhost": {"DEV": "curve25519"}}})
            assert claimed["one_time_keys"]["@alice:localhost"]["DEV"]
            # New rows after the copied ones (identity columns, ID allocators).
            sent = await alice.call("PUT", f"/_matrix/client/v3/rooms/{room_id}/send/"
                                           "m.room.message/after", {"msgtype": "m.text",
                                                                    "body": "on postgres"})
            page = await alice.call("GET", f"/_matrix/client/v3/rooms/{room_id}/messages",
                                    params={"dir": "b", "limit": "2"})
            assert page["chunk"][0]["event_id"] == sent["event_id"]
            carol = await register(http, site.base, "carol")
            await carol.call("POST", f"/_matrix/client/v3/join/{room_id}", {})
            async with http.post(f"{site.base}/_matrix/media/v3/upload", data=b"more",
                                 headers={"Authorization": f"Bearer {carol.token}",
                                          "Content-Type": "text/plain"}) as resp:
                assert resp.status == 200, await resp.text()
    finally:
        site.stop()


async def test_port_refuses_other_schema_versions_and_reports_mismatches(
        tmp_path: Path, target: str) -> None:
    site = Site(tmp_path)
    site.start("sqlite.log")
    try:
        async with aiohttp.ClientSession() as http:
            await register(http, site.base, "dave")
    finally:
        site.stop()
    older = str(tmp_path / "older.db")
    with sqlite3.connect(site.sqlite) as db, sqlite3.connect(older) as copy:
        db.backup(copy)
    with sqlite3.connect(older) as copy:
        copy.execute("UPDATE schema_version SET version = version - 1")
    refused = ktchat("port-db", "-c", str(site.config_path), "--sqlite", older,
                     "--postgres", target, check=False)
    assert refused.returncode == 1
    assert "schema version" in refused.stderr
    assert await _tables(target) == set()  # nothing was created

    ported = ktchat("port-db", "-c", str(site.config_path), "--sqlite", site.sqlite,
                    "--postgres", target, check=False)
    assert ported.returncode == 0, ported.stderr
    # A row lost on the way (here: deleted afterwards) fails the verification.
    conn = await asyncpg.connect(target.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("DELETE FROM profiles")
    finally:
        await conn.close()
    checked = ktchat("port-db", "-c", str(site.config_path), "--sqlite", site.sqlite,
                     "--postgres", target, check=False)
    assert checked.returncode == 1
    assert "profiles: 1 rows   MISMATCH (PostgreSQL has 0)" in checked.stdout
    assert "row counts differ" in checked.stderr

    missing = ktchat("port-db", "-c", str(site.config_path), "--sqlite",
                     str(tmp_path / "nothing.db"), check=False)
    assert missing.returncode == 2
    assert "--sqlite: no such file" in missing.stderr
    assert "--postgres: required" in missing.stderr


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()
