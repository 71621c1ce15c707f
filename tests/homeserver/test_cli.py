"""The ``ktchat`` command, run for real as a subprocess (DESIGN.md, "Command line")."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.crypto.signing_keys import load_signing_key
from homeserver.config import load_config
from storage import Database

_SCRIPT = Path(sys.executable).parent / "ktchat"
KTCHAT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "homeserver"]
GENERATED = ("homeserver.yaml", "signing.key", "tls.crt", "tls.key")
PASSWORD = "a long enough password"


def ktchat(*args: str, stdin: int | None = subprocess.DEVNULL, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTCHAT_")}
    return subprocess.run([*KTCHAT, *args], capture_output=True, text=True, stdin=stdin,
                          timeout=timeout, env=env, check=False)


def assert_clean_failure(result: subprocess.CompletedProcess[str], status: int) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == status, output
    assert "Traceback" not in output, output
    assert result.stderr.strip(), "a failure explains itself on stderr"


def generate(data_dir: Path, server_name: str = "chat.test", *extra: str
             ) -> subprocess.CompletedProcess[str]:
    return ktchat("generate-config", "--server-name", server_name, "--data-dir", str(data_dir),
                  *extra)


@pytest.fixture(scope="module")
def generated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "data"
    result = generate(path)
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture
def data_dir(tmp_path: Path, generated_template: Path) -> Path:
    """A generated data directory of this test's own (a copy, with the paths rewritten)."""
    path = tmp_path / "data"
    shutil.copytree(generated_template, path)
    config = path / "homeserver.yaml"
    config.write_text(config.read_text().replace(str(generated_template.resolve()),
                                                 str(path.resolve())))
    return path


# -- generate-config ------------------------------------------------------------------------


def test_generate_config_writes_every_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    result = generate(data_dir, "chat.test", "--client-port", "18008",
                      "--federation-port", "18448")
    assert result.returncode == 0, result.stderr
    for name in GENERATED:
        assert (data_dir / name).is_file(), name
        assert name in result.stdout

    key_text = (data_dir / "signing.key").read_text(encoding="utf-8")
    assert re.fullmatch(r"ed25519 [A-Za-z0-9_]+ [A-Za-z0-9+/]{43}\n?", key_text), key_text
    load_signing_key(data_dir / "signing.key")
    for secret in ("signing.key", "tls.key", "homeserver.yaml"):
        assert stat.S_IMODE((data_dir / secret).stat().st_mode) & 0o077 == 0, secret

    config = load_config(data_dir / "homeserver.yaml")
    assert config.server_name == "chat.test"
    assert [(lst.port, lst.tls, lst.resources) for lst in config.listeners] == [
        (18008, False, ("client",)), (18448, True, ("federation",))]
    assert all(lst.bind == "127.0.0.1" for lst in config.listeners)
    assert config.public_baseurl == "http://127.0.0.1:18008/"
    assert config.signing_key_path == data_dir.resolve() / "signing.key"
    assert config.tls.certificate_path == data_dir.resolve() / "tls.crt"
    assert config.database.is_sqlite
    assert str(data_dir.resolve()) in config.database.url
    assert config.registration.shared_secret
    # Where Synapse's register_new_matrix_user -c looks for it, and only there.
    data = yaml.safe_load((data_dir / "homeserver.yaml").read_text())
    assert data["registration_shared_secret"] == config.registration.shared_secret
    assert "shared_secret" not in data["registration"]


def test_generate_config_never_overwrites(data_dir: Path) -> None:
    before = {name: (data_dir / name).read_bytes() for name in GENERATED}
    result = generate(data_dir, "other.test", "--client-port", "9999")
    assert result.returncode == 0, result.stderr
    assert {name: (data_dir / name).read_bytes() for name in GENERATED} == before


def test_generate_config_keeps_existing_files_and_fills_in_missing(data_dir: Path) -> None:
    key_before = (data_dir / "signing.key").read_bytes()
    (data_dir / "homeserver.yaml").unlink()
    result = generate(data_dir)
    assert result.returncode == 0, result.stderr
    assert (data_dir / "signing.key").read_bytes() == key_before
    assert load_config(data_dir / "homeserver.yaml").server_name == "chat.test"


def test_generate_config_with_python_m(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "homeserver", "generate-config", "--server-name", "localhost",
         "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert all((tmp_path / "d" / name).is_file() for name in GENERATED)


@pytest.mark.parametrize("server_name", ["bad name!", "", "example.org:99999", "[::1"])
def test_generate_config_invalid_server_name(tmp_path: Path, server_name: str) -> None:
    result = generate(tmp_path / "data", server_name)
    assert_clean_failure(result, 2)
    assert "--server-name" in result.stderr
    assert not (tmp_path / "data" / "homeserver.yaml").exists()


def test_generate_config_invalid_ports(tmp_path: Path) -> None:
    result = generate(tmp_path / "data", "chat.test", "--client-port", "0",
                      "--federation-port", "70000")
    assert_clean_failure(result, 2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert "--client-port" in lines[0] and "--federation-port" in lines[1]


def test_missing_arguments_exit_2(tmp_path: Path) -> None:
    result = ktchat("generate-config", "--data-dir", str(tmp_path))
    assert_clean_failure(result, 2)
    assert "--server-name" in result.stderr
    assert_clean_failure(ktchat(), 2)
    assert_clean_failure(ktchat("no-such-command"), 2)


# -- run with a bad config ------------------------------------------------------------------


def test_run_bad_config_reports_every_problem(data_dir: Path) -> None:
    path = data_dir / "homeserver.yaml"
    data = yaml.safe_load(path.read_text())
    data["listeners"][0]["port"] = 123456
    data["database"]["url"] = "mysql://nope"
    data["logging"]["level"] = "CHATTY"
    data["no_such_key"] = 1
    path.write_text(yaml.safe_dump(data))
    result = ktchat("run", "-c", str(path), timeout=30)
    assert_clean_failure(result, 2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4, result.stderr
    for key in ("listeners[0].port", "database.url", "logging.level", "no_such_key"):
        assert sum(key in line for line in lines) == 1, (key, lines)


def test_run_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "homeserver.yaml"
    path.write_text("server_name: [oops\n")
    result = ktchat("run", "-c", str(path), timeout=30)
    assert_clean_failure(result, 2)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "YAML" in result.stderr


def test_run_missing_config_file(tmp_path: Path) -> None:
    result = ktchat("run", "-c", str(tmp_path / "nope.yaml"), timeout=30)
    assert_clean_failure(result, 2)
    assert "nope.yaml" in result.stderr


@pytest.mark.parametrize("command", ["run", "register-user"])
def test_unreadable_signing_key_is_a_config_problem(data_dir: Path, command: str) -> None:
    (data_dir / "signing.key").write_text("this is not a key\n")
    args = ["--user", "x", "--password", PASSWORD] if command == "register-user" else []
    result = ktchat(command, "-c", str(data_dir / "homeserver.yaml"), *args, timeout=30)
    assert_clean_failure(result, 2)
    assert "signing_key_path" in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_run_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    client_port, fed_port = _free_port(), _free_port()
    assert generate(data_dir, "chat.test", "--client-port", str(client_port),
                    "--federation-port", str(fed_port)).returncode == 0
    proc = subprocess.Popen([*KTCHAT, "run", "-c", str(data_dir / "homeserver.yaml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{client_port}/_matrix/client/versions"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stdout + stderr, stderr


# -- register-user --------------------------------------------------------------------------


async def _get_user(config_path: Path, user_id: str) -> tuple[bool, bool] | None:
    config = load_config(config_path)
    db = Database(config.database.url)
    await db.open()
    try:
        user = await db.users.get_user(user_id)
    finally:
        await db.close()
    return (user.admin, user.password_hash is not None) if user is not None else None


def get_user(config_path: Path, user_id: str) -> tuple[bool, bool] | None:
    return asyncio.run(_get_user(config_path, user_id))


def test_register_user(data_dir: Path) -> None:
    config = data_dir / "homeserver.yaml"
    result = ktchat("register-user", "-c", str(config), "--user", "alice",
                    "--password", PASSWORD)
    assert result.returncode == 0, result.stderr
    assert "@alice:chat.test" in result.stdout
    assert get_user(config, "@alice:chat.test") == (False, True)


def test_register_user_twice_fails(data_dir: Path) -> None:
    config = data_dir / "homeserver.yaml"
    args = ("register-user", "-c", str(config), "--user", "bob", "--password", PASSWORD)
    assert ktchat(*args).returncode == 0
    again = ktchat(*args)
    assert again.returncode != 0
    assert "Traceback" not in again.stdout + again.stderr, again.stderr
    assert "taken" in again.stderr.lower() or "in use" in again.stderr.lower(), again.stderr


def test_register_user_admin_with_full_user_id(data_dir: Path) -> None:
    config = data_dir / "homeserver.yaml"
    result = ktchat("register-user", "-c", str(config), "--user", "@Carol:chat.test",
                    "--password", PASSWORD, "--admin")
    assert result.returncode == 0, result.stderr
    assert "admin" in result.stdout
    assert get_user(config, "@carol:chat.test") == (True, True)


def test_register_user_of_another_server_fails(data_dir: Path) -> None:
    result = ktchat("register-user", "-c", str(data_dir / "homeserver.yaml"),
                    "--user", "@dave:elsewhere.test", "--password", PASSWORD)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert "elsewhere.test" in result.stderr


def test_register_user_weak_password_fails(data_dir: Path) -> None:
    config = data_dir / "homeserver.yaml"
    result = ktchat("register-user", "-c", str(config), "--user", "erin", "--password", "short")
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert "password" in result.stderr.lower()
    assert get_user(config, "@erin:chat.test") is None


def test_register_user_invalid_name_fails(data_dir: Path) -> None:
    result = ktchat("register-user", "-c", str(data_dir / "homeserver.yaml"),
                    "--user", "no spaces please", "--password", PASSWORD)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip()


def test_register_user_without_password_and_tty(data_dir: Path) -> None:
    config = data_dir / "homeserver.yaml"
    result = ktchat("register-user", "-c", str(config), "--user", "frank")
    assert_clean_failure(result, 2)
    assert "--password" in result.stderr
    assert get_user(config, "@frank:chat.test") is None


def test_register_user_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "homeserver.yaml"
    path.write_text("server_name: 'not valid!'\n")
    result = ktchat("register-user", "-c", str(path), "--user", "x", "--password", PASSWORD)
    assert_clean_failure(result, 2)
    assert "server_name" in result.stderr


def test_register_user_database_unreachable(data_dir: Path) -> None:
    path = data_dir / "homeserver.yaml"
    data = yaml.safe_load(path.read_text())
    data["database"]["url"] = f"postgresql+asyncpg://nobody@127.0.0.1:{_free_port()}/nothing"
    path.write_text(yaml.safe_dump(data))
    result = ktchat("register-user", "-c", str(path), "--user", "gina", "--password", PASSWORD)
    assert_clean_failure(result, 1)


def test_register_user_schema_too_new(data_dir: Path) -> None:
    from sqlalchemy import update

    from storage import migrations, schema

    config = data_dir / "homeserver.yaml"

    async def bump() -> None:
        db = Database(load_config(config).database.url)
        await db.open()
        try:
            async with db.engine.write() as conn:
                await conn.execute(update(schema.schema_version)
                                   .values(version=migrations.LATEST + 1))
        finally:
            await db.close()

    asyncio.run(bump())
    result = ktchat("register-user", "-c", str(config), "--user", "hank", "--password", PASSWORD)
    assert_clean_failure(result, 1)
    assert "version" in result.stderr


def test_run_reports_typos_at_every_depth(data_dir: Path) -> None:
    path = data_dir / "homeserver.yaml"
    data = yaml.safe_load(path.read_text())
    data["registration"]["enabeld"] = True
    data["listeners"][0]["tsl"] = True
    data["rate_limits"] = {"login_per_ipp": {"per_second": 1}}
    path.write_text(yaml.safe_dump(data))
    result = ktchat("run", "-c", str(path), timeout=30)
    assert_clean_failure(result, 2)
    lines = result.stderr.strip().splitlines()
    assert sorted(lines) == sorted(f"{path}: {key}: unknown key" for key in (
        "registration.enabeld", "listeners[0].tsl", "rate_limits.login_per_ipp")), lines


def test_synapse_register_new_matrix_user_reads_the_config(data_dir: Path) -> None:
    """Synapse's own tool, with ``-c``, against a running server (DESIGN.md, "Files")."""
    from tests.helpers.synapse import synapse_python

    tool = synapse_python().parent / "register_new_matrix_user"
    path = data_dir / "homeserver.yaml"
    data = yaml.safe_load(path.read_text())
    port = data["listeners"][0]["port"] = _free_port()
    data["listeners"] = data["listeners"][:1]
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen([*KTCHAT, "run", "-c", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_until_serving(proc, port)
        result = subprocess.run(
            [str(tool), "-c", str(path), "-u", "bob", "-p", PASSWORD, "--no-admin",
             f"http://127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Success" in result.stdout, result.stdout
        login = urllib.request.Request(
            f"http://127.0.0.1:{port}/_matrix/client/v3/login", method="POST",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"type": "m.login.password", "password": PASSWORD,
                             "identifier": {"type": "m.id.user", "user": "bob"}}).encode())
        with urllib.request.urlopen(login, timeout=10) as resp:
            assert json.load(resp)["user_id"] == "@bob:chat.test"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _wait_until_serving(proc: subprocess.Popen[str], port: int) -> None:
    url = f"http://127.0.0.1:{port}/_matrix/client/versions"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.1)


# -- show-listeners and make run ------------------------------------------------------------


def test_show_listeners_prints_where_the_config_listens(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert generate(data_dir, "chat.test", "--client-port", "18008",
                    "--federation-port", "18448").returncode == 0
    path = data_dir / "homeserver.yaml"
    data = yaml.safe_load(path.read_text())
    data["listeners"].append({"port": 19090, "bind": "::1", "resources": ["client", "media"]})
    path.write_text(yaml.safe_dump(data))
    result = ktchat("show-listeners", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "  client: http://127.0.0.1:18008",
        "  federation: https://127.0.0.1:18448",
        "  client, media: http://[::1]:19090",
    ]


def test_show_listeners_with_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "homeserver.yaml"
    path.write_text("server_name: example.org\nlisteners: [{port: 0}]\n")
    result = ktchat("show-listeners", "-c", str(path))
    assert_clean_failure(result, 2)
    assert "listeners[0].port" in result.stderr


def test_make_run_passes_ports_and_prints_the_real_listeners(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    repo = Path(__file__).resolve().parents[2]
    data = tmp_path / "data"
    result = subprocess.run(
        ["make", "-n", "run", "CLIENT_PORT=9999", "FEDERATION_PORT=9998", f"DATA={data}",
         "SERVER_NAME=chat.test"],
        cwd=repo, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    commands = result.stdout
    assert (f"ktchat generate-config --server-name chat.test --data-dir {data} "
            f"--client-port 9999 --federation-port 9998") in commands, commands
    assert f"ktchat show-listeners -c {data}/homeserver.yaml" in commands, commands
    assert f"ktchat run -c {data}/homeserver.yaml" in commands, commands
    assert "8008" not in commands and "8448" not in commands, commands


# -- start-up warnings ----------------------------------------------------------------------


@pytest.mark.parametrize(("registration", "warned"), [
    ({"enabled": True, "require_token": False}, True),
    ({"enabled": True, "require_token": True}, False),
    ({"enabled": False, "require_token": False}, False),
])
def test_open_registration_is_warned_about_at_start_up(data_dir: Path, registration: dict[str, Any],
                                                       warned: bool) -> None:
    path = data_dir / "homeserver.yaml"
    data = yaml.safe_load(path.read_text())
    data["registration"] = registration
    port = data["listeners"][0]["port"] = _free_port()
    data["listeners"] = data["listeners"][:1]
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen([*KTCHAT, "run", "-c", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_until_serving(proc, port)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    warnings = [line for line in stderr.splitlines() if " WARNING " in line]
    if warned:
        assert len(warnings) == 1, stderr
        assert "registration" in warnings[0] and "require_token" in warnings[0], warnings
    else:
        assert warnings == [], stderr
