"""``ktchat admin -c FILE ...`` run for real as a subprocess, on SQLite and PostgreSQL: what it
writes is what the server then serves (checked through the server's own HTTP API), exit
status 0/1/2, and passwords never printed."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from homeserver.app import build_app
from homeserver.config import load_config
from homeserver.services.container import build_services
from tests.conftest import bearer, postgres_url
from tests.helpers.federation import PostgresDatabase
from tests.helpers.processes import KTCHAT, REPO, ktchat

PASSWORD = "a long enough password"
NEW_PASSWORD = "another long password"
V3 = "/_matrix/client/v3"


@pytest.fixture(params=["sqlite", "postgres"])
async def config_path(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Path]:
    """A generated config, its database SQLite or a throwaway PostgreSQL database."""
    ktchat("generate-config", "--server-name", "chat.test", "--data-dir", str(tmp_path))
    path = tmp_path / "homeserver.yaml"
    database: PostgresDatabase | None = None
    if request.param == "postgres":
        url = postgres_url()
        assert url is not None
        database = PostgresDatabase(url)
        await database.create()
        data = yaml.safe_load(path.read_text())
        data["database"] = {"url": database.url}
        path.write_text(yaml.safe_dump(data))
    try:
        yield path
    finally:
        if database is not None:
            await database.drop()


def admin(config: Path, *args: str, stdin: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KTCHAT, "admin", "-c", str(config), *args], capture_output=True,
                          text=True, input=stdin if stdin is not None else "", timeout=120,
                          cwd=REPO, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    for secret in (PASSWORD, NEW_PASSWORD):
        assert secret not in result.stdout + result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], status: int) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == status, output
    assert "Traceback" not in output and result.stderr.strip(), output
    assert PASSWORD not in output
    return result.stderr


async def with_server(config: Path, aiohttp_client: Callable[..., Any],
                      check: Callable[[TestClient], Any]) -> None:
    """Run the server on the config's database (in this process) while ``check`` talks to
    it over HTTP."""
    services = build_services(load_config(config))
    await services.start()
    try:
        await check(await aiohttp_client(build_app(services)))
    finally:
        await services.stop()


async def login(client: TestClient, user: str, password: str) -> tuple[int, Any]:
    resp = await client.post(f"{V3}/login", json={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
        "password": password})
    return resp.status, await resp.json()


async def test_create_user_and_make_admin(config_path: Path,
                                          aiohttp_client: Callable[..., Any],
                                          tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    out = ok(admin(config_path, "create-user", "alice", "--admin", "--password-file",
                   str(password_file)))
    assert out.strip() == "created @alice:chat.test (admin)"
    out = ok(admin(config_path, "create-user", "@bob:chat.test", "--password-file", "-",
                   stdin=PASSWORD + "\n"))
    assert out.strip() == "created @bob:chat.test"
    ok(admin(config_path, "make-admin", "bob"))
    ok(admin(config_path, "make-admin", "alice", "--revoke"))

    async def check(client: TestClient) -> None:
        for user, is_admin in (("alice", False), ("bob", True)):
            status, session = await login(client, user, PASSWORD)
            assert status == 200, session
            resp = await client.get("/_synapse/admin/v2/users",
                                    headers=bearer(session["access_token"]))
            assert resp.status == (200 if is_admin else 403), user

    await with_server(config_path, aiohttp_client, check)


@pytest.fixture
def sqlite_config_path(tmp_path: Path) -> Path:
    ktchat("generate-config", "--server-name", "chat.test", "--data-dir", str(tmp_path))
    return tmp_path / "homeserver.yaml"


async def test_refusals_and_usage(sqlite_config_path: Path, tmp_path: Path) -> None:
    config_path = sqlite_config_path
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    ok(admin(config_path, "create-user", "alice", "--password-file", str(password_file)))
    # Refused: exit status 1.
    assert "taken" in refused(admin(config_path, "create-user", "alice", "--password-file",
                                    str(password_file)), 1)
    refused(admin(config_path, "create-user", "@carol:elsewhere.test", "--password-file",
                  str(password_file)), 1)
    short = tmp_path / "short"
    short.write_text("x")
    refused(admin(config_path, "create-user", "dave", "--password-file", str(short)), 1)
    assert "no such user" in refused(admin(config_path, "deactivate", "nobody"), 1)
    # Usage: exit status 2.
    refused(admin(config_path, "create-user", "erin"), 2)  # no terminal to ask on
    empty = tmp_path / "empty"
    empty.write_text("")
    refused(admin(config_path, "create-user", "erin", "--password-file", str(empty)), 2)
    refused(admin(config_path, "launch-rockets"), 2)
    refused(admin(tmp_path / "no-such.yaml", "list-users"), 2)
    # Nothing of that created anyone.
    out = ok(admin(config_path, "list-users"))
    assert [line.split("\t")[0] for line in out.splitlines()[1:]] == ["@alice:chat.test"]


async def test_reset_password_and_deactivate(config_path: Path,
                                             aiohttp_client: Callable[..., Any],
                                             tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text(PASSWORD)
    new.write_text(NEW_PASSWORD)
    for name in ("alice", "bob"):
        ok(admin(config_path, "create-user", name, "--password-file", str(old)))
    tokens: dict[str, str] = {}

    async def sessions(client: TestClient) -> None:
        for name in ("alice", "bob"):
            status, session = await login(client, name, PASSWORD)
            assert status == 200
            tokens[name] = session["access_token"]
        resp = await client.put(f"{V3}/profile/@bob:chat.test/displayname",
                                json={"displayname": "Bobby"}, headers=bearer(tokens["bob"]))
        assert resp.status == 200

    await with_server(config_path, aiohttp_client, sessions)
    out = ok(admin(config_path, "reset-password", "alice", "--password-file", str(new)))
    assert out.strip() == "reset the password of @alice:chat.test; its devices are logged out"
    ok(admin(config_path, "deactivate", "bob", "--erase"))

    async def check(client: TestClient) -> None:
        assert (await login(client, "alice", PASSWORD))[0] == 403
        assert (await login(client, "alice", NEW_PASSWORD))[0] == 200
        resp = await client.get(f"{V3}/account/whoami", headers=bearer(tokens["alice"]))
        assert resp.status == 401
        status, body = await login(client, "bob", PASSWORD)
        assert (status, body["errcode"]) == (403, "M_USER_DEACTIVATED")
        resp = await client.get(f"{V3}/profile/@bob:chat.test")
        assert (await resp.json()).get("displayname") is None

    await with_server(config_path, aiohttp_client, check)
    out = ok(admin(config_path, "list-users"))
    assert [line.split("\t")[0] for line in out.splitlines()[1:]] == ["@alice:chat.test"]
    out = ok(admin(config_path, "list-users", "--deactivated"))
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows[0] == ["user_id", "admin", "deactivated", "displayname", "created_ts"]
    assert [(r[0], r[2]) for r in rows[1:]] == [("@alice:chat.test", "no"),
                                                ("@bob:chat.test", "yes")]


async def test_list_rooms(config_path: Path, aiohttp_client: Callable[..., Any],
                          tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    ok(admin(config_path, "create-user", "alice", "--password-file", str(password_file)))
    created: dict[str, str] = {}

    async def rooms(client: TestClient) -> None:
        status, session = await login(client, "alice", PASSWORD)
        assert status == 200, session
        for name, alias in (("Lobby", "lobby"), ("Kitchen", None)):
            body: dict[str, Any] = {"name": name}
            if alias:
                body["room_alias_name"] = alias
            resp = await client.post(f"{V3}/createRoom", json=body,
                                     headers=bearer(session["access_token"]))
            assert resp.status == 200, await resp.text()
            created[name] = (await resp.json())["room_id"]

    await with_server(config_path, aiohttp_client, rooms)
    out = ok(admin(config_path, "list-rooms"))
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows == [["room_id", "name", "canonical_alias", "joined_members", "creator"],
                    [created["Kitchen"], "Kitchen", "", "1", "@alice:chat.test"],
                    [created["Lobby"], "Lobby", "#lobby:chat.test", "1", "@alice:chat.test"]]
    out = ok(admin(config_path, "list-rooms", "--search", "lob"))
    assert [line.split("\t")[0] for line in out.splitlines()[1:]] == [created["Lobby"]]
