"""Config parsing: defaults, immutability, problems reported together, relative paths."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.crypto.signing_keys import generate_key_file
from core.crypto.tls import generate_self_signed
from homeserver.config import (
    ConfigError,
    HomeserverConfig,
    ListenerConfig,
    LoggingConfig,
    RateLimit,
    load_config,
    parse_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_config(directory: Path, data: Any, *, with_key: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if with_key and not (directory / "signing.key").exists():
        generate_key_file(directory / "signing.key")
    path = directory / "homeserver.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def problems_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return excinfo.value.problems


def keys_of(problems: list[str]) -> list[str]:
    return [p.split(":", 1)[0] for p in problems]


def test_minimal_config_defaults(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"server_name": "example.org"}))
    assert isinstance(config, HomeserverConfig)
    assert config.server_name == "example.org"
    assert config.public_baseurl == "https://example.org/"
    assert config.config_dir == tmp_path.resolve()
    assert config.signing_key_path == tmp_path.resolve() / "signing.key"
    assert config.listeners == ()
    assert config.tls.certificate_path is None and config.tls.private_key_path is None
    assert config.database.url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'homeserver.db'}"
    assert config.database.is_sqlite
    assert config.database.pool_size == 10
    assert config.database.sqlite_synchronous == "FULL"
    assert config.registration.enabled is False
    assert config.registration.require_token is False
    assert config.registration.shared_secret is None
    assert config.federation.enabled is True
    assert config.federation.verify_tls is True
    assert config.federation.ip_range_allowlist == ()
    denied = config.federation.ip_range_denylist
    for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.1.1",
                    "::1", "fe80::1", "fd00::1"):
        assert any(ipaddress.ip_address(address) in net for net in denied), address
    assert not any(ipaddress.ip_address("8.8.8.8") in net for net in denied)
    assert config.rate_limits.enabled is True
    assert config.rate_limits.login_per_ip == RateLimit(0.17, 5)
    assert config.media.store_path == tmp_path.resolve() / "media"
    assert config.media.max_upload_bytes == 50 * 1024 * 1024
    assert config.presence.enabled is True
    assert config.logging.level == "INFO"
    assert config.auth.password_min_length == 8
    assert config.auth.refresh_token_lifetime_ms is None
    assert config.http.max_request_body_bytes > 0


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {
        "server_name": "example.org",
        "listeners": [{"port": 8008}],
    }))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server_name = "other.org"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.database.url = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listeners[0].port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rate_limits.enabled = False  # type: ignore[misc]
    assert isinstance(config.listeners, tuple)
    assert isinstance(config.listeners[0].resources, tuple)
    assert isinstance(config.federation.ip_range_denylist, tuple)


def test_full_config(tmp_path: Path) -> None:
    generate_self_signed("example.org", tmp_path / "tls.crt", tmp_path / "tls.key")
    config = load_config(write_config(tmp_path, {
        "server_name": "example.org:8448",
        "public_baseurl": "https://chat.example.org",
        "listeners": [
            {"port": 8008, "bind": "0.0.0.0", "resources": ["client", "media"]},
            {"port": 8448, "bind": "::", "tls": True, "resources": ["federation"]},
        ],
        "tls": {"certificate_path": "tls.crt", "private_key_path": "tls.key"},
        "database": {"url": "postgresql+asyncpg://u@db/ktchat", "pool_size": 20},
        "registration": {"enabled": True, "require_token": True, "shared_secret": "s"},
        "federation": {"verify_tls": False, "ip_range_denylist": ["10.0.0.0/8"],
                       "ip_range_allowlist": ["10.1.0.0/16"]},
        "rate_limits": {"enabled": False, "login_per_ip": {"per_second": 2, "burst_count": 9}},
        "media": {"max_upload_bytes": 1000},
        "presence": {"enabled": False},
        "logging": {"level": "debug"},
    }))
    assert config.server_name == "example.org:8448"
    assert config.public_baseurl == "https://chat.example.org/"
    assert config.listeners == (
        ListenerConfig(8008, "0.0.0.0", False, ("client", "media")),
        ListenerConfig(8448, "::", True, ("federation",)),
    )
    assert config.database.url == "postgresql+asyncpg://u@db/ktchat"
    assert not config.database.is_sqlite
    assert config.database.pool_size == 20
    assert (config.registration.enabled, config.registration.require_token,
            config.registration.shared_secret) == (True, True, "s")
    assert config.federation.verify_tls is False
    assert config.federation.ip_range_denylist == (ipaddress.ip_network("10.0.0.0/8"),)
    assert config.federation.ip_range_allowlist == (ipaddress.ip_network("10.1.0.0/16"),)
    assert config.rate_limits.enabled is False
    assert config.rate_limits.login_per_ip == RateLimit(2.0, 9)
    assert config.rate_limits.login_per_account == RateLimit(0.17, 5)
    assert config.media.max_upload_bytes == 1000
    assert config.presence.enabled is False
    assert config.logging.level == "DEBUG"


def test_all_problems_reported_together(tmp_path: Path) -> None:
    path = write_config(tmp_path, {
        "server_name": "example.org",
        "listeners": [{"port": 70000}],
        "database": {"url": "mysql://localhost/db"},
        "logging": {"level": "LOUD"},
        "colour": "blue",
    })
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    problems = problems_of(excinfo)
    assert len(problems) == 4, problems
    assert sorted(keys_of(problems)) == sorted(
        ["listeners[0].port", "database.url", "logging.level", "colour"])
    for problem in problems:
        assert "\n" not in problem
    unknown = next(p for p in problems if p.startswith("colour"))
    assert "unknown" in unknown
    # The exception's text holds every problem, one per line.
    assert str(excinfo.value).splitlines() == problems


@pytest.mark.parametrize(("data", "key"), [
    ({"server_name": ""}, "server_name"),
    ({"server_name": "bad name!"}, "server_name"),
    ({"server_name": 5}, "server_name"),
    ({"public_baseurl": "ftp://example.org/"}, "public_baseurl"),
    ({"listeners": [{"port": True}]}, "listeners[0].port"),
    ({"listeners": [{"port": "8008"}]}, "listeners[0].port"),
    ({"listeners": [{"port": 0}]}, "listeners[0].port"),
    ({"listeners": [{"port": 8008, "bind": "not an ip"}]}, "listeners[0].bind"),
    ({"listeners": [{"port": 8008, "resources": ["client", "gopher"]}]},
     "listeners[0].resources"),
    ({"listeners": [{"port": 8008}, "x"]}, "listeners[1]"),
    ({"listeners": []}, "listeners"),
    ({"listeners": [{"port": 8448, "tls": True}]}, "tls.certificate_path"),
    ({"database": "sqlite"}, "database"),
    ({"database": {"pool_size": 0}}, "database.pool_size"),
    ({"database": {"sqlite_synchronous": "OFF"}}, "database.sqlite_synchronous"),
    ({"registration": {"enabled": "yes"}}, "registration.enabled"),
    ({"federation": {"ip_range_denylist": ["10.0.0.0/8", "nonsense"]}},
     "federation.ip_range_denylist[1]"),
    ({"rate_limits": {"login_per_ip": {"per_second": 0}}}, "rate_limits.login_per_ip.per_second"),
    ({"rate_limits": {"login_per_ip": {"burst_count": 0}}},
     "rate_limits.login_per_ip.burst_count"),
    ({"media": {"max_upload_bytes": -1}}, "media.max_upload_bytes"),
    ({"auth": {"refresh_token_lifetime_ms": 0}}, "auth.refresh_token_lifetime_ms"),
    ({"logging": {"level": 10}}, "logging.level"),
    ({"signing_key_path": "missing.key"}, "signing_key_path"),
])
def test_each_problem_names_its_key(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    config = {"server_name": "example.org", **data}
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, config))
    assert key in keys_of(problems_of(excinfo)), problems_of(excinfo)


@pytest.mark.parametrize("content", ["", "not a key\n", "ed25519 a_x !!!\n"])
def test_unreadable_signing_key_is_a_problem(tmp_path: Path, content: str) -> None:
    (tmp_path / "signing.key").write_text(content)
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, {"server_name": "example.org"}))
    assert keys_of(problems_of(excinfo)) == ["signing_key_path"]


def test_tls_listener_needs_existing_files(tmp_path: Path) -> None:
    path = write_config(tmp_path, {
        "server_name": "example.org",
        "listeners": [{"port": 8448, "tls": True, "resources": ["federation"]}],
        "tls": {"certificate_path": "nope.crt", "private_key_path": "nope.key"},
    })
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert sorted(keys_of(problems_of(excinfo))) == ["tls.certificate_path",
                                                     "tls.private_key_path"]


def test_relative_paths_resolve_against_config_dir(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc" / "ktchat"
    (conf_dir / "keys").mkdir(parents=True)
    generate_key_file(conf_dir / "keys" / "server.key")
    generate_self_signed("example.org", conf_dir / "keys" / "tls.crt",
                         conf_dir / "keys" / "tls.key")
    write_config(conf_dir, {
        "server_name": "example.org",
        "signing_key_path": "keys/server.key",
        "listeners": [{"port": 8448, "tls": True, "resources": ["federation"]}],
        "tls": {"certificate_path": "keys/tls.crt", "private_key_path": "./keys/tls.key"},
        "media": {"store_path": "media_store"},
    }, with_key=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("..") / "etc" / "ktchat" / "homeserver.yaml")
    base = conf_dir.resolve()
    assert config.config_dir == base
    assert config.signing_key_path == base / "keys" / "server.key"
    assert config.tls.certificate_path == base / "keys" / "tls.crt"
    assert config.tls.private_key_path is not None
    assert config.tls.private_key_path.resolve() == base / "keys" / "tls.key"
    assert config.media.store_path == base / "media_store"
    assert config.database.url == f"sqlite+aiosqlite:///{base / 'homeserver.db'}"


def test_absolute_paths_kept(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "signing.key"
    key.parent.mkdir()
    generate_key_file(key)
    config = load_config(write_config(tmp_path / "conf", {
        "server_name": "example.org",
        "signing_key_path": str(key),
        "media": {"store_path": str(tmp_path / "media")},
    }, with_key=False))
    assert config.signing_key_path == key
    assert config.media.store_path == tmp_path / "media"


def test_bad_yaml(tmp_path: Path) -> None:
    path = write_config(tmp_path, "server_name: example.org\nlisteners: [ {port: 8008\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    problems = problems_of(excinfo)
    assert len(problems) == 1
    assert "not valid YAML" in problems[0]
    assert "line" in problems[0]


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    for text in ("- a\n- b\n", "just a string\n", ""):
        with pytest.raises(ConfigError) as excinfo:
            load_config(write_config(tmp_path, text))
        assert len(problems_of(excinfo)) == 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(tmp_path / "nope.yaml")
    problems = problems_of(excinfo)
    assert len(problems) == 1 and "nope.yaml" in problems[0]


def test_parse_config_directly(tmp_path: Path) -> None:
    generate_key_file(tmp_path / "signing.key")
    config = parse_config({"server_name": "localhost"}, tmp_path)
    assert config.server_name == "localhost"
    with pytest.raises(ConfigError):
        parse_config(["not", "a", "mapping"], tmp_path)


# -- config.example.yaml --------------------------------------------------------------------

EXAMPLE = REPO_ROOT / "config.example.yaml"

# The keys DESIGN.md says tests and operators rely on; the example documents each one.
DOCUMENTED_KEYS = (
    "server_name", "public_baseurl", "listeners", "port", "bind", "tls", "resources",
    "certificate_path", "private_key_path", "signing_key_path", "database", "url",
    "registration", "enabled", "require_token", "shared_secret", "federation", "verify_tls",
    "ip_range_denylist", "ip_range_allowlist", "rate_limits", "media", "store_path",
    "max_upload_bytes", "presence", "logging", "level",
)


def test_example_config_is_valid(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in DOCUMENTED_KEYS:
        assert re.search(rf"\b{re.escape(key)}\b", text), f"config.example.yaml lacks {key}"
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    # Point the files the example names at real ones, so only the example's own content counts.
    generate_key_file(tmp_path / "signing.key")
    generate_self_signed("example.org", tmp_path / "tls.crt", tmp_path / "tls.key")
    data["signing_key_path"] = str(tmp_path / "signing.key")
    if isinstance(data.get("tls"), dict) or any(
            isinstance(lst, dict) and lst.get("tls") for lst in data.get("listeners") or []):
        data["tls"] = {**(data.get("tls") or {}), "certificate_path": str(tmp_path / "tls.crt"),
                       "private_key_path": str(tmp_path / "tls.key")}
    try:
        config = parse_config(data, tmp_path)
    except ConfigError as e:
        pytest.fail("config.example.yaml does not parse:\n" + "\n".join(e.problems))
    assert config.server_name
    # Where the example shows a value, it is the default (listeners, URLs and paths aside).
    defaults = parse_config({"server_name": config.server_name}, tmp_path)
    for section in ("registration", "federation", "rate_limits", "auth", "http", "presence",
                    "logging"):
        assert getattr(config, section) == getattr(defaults, section), section
    assert config.database.pool_size == defaults.database.pool_size
    assert config.database.sqlite_synchronous == defaults.database.sqlite_synchronous
    assert config.media == defaults.media


def test_example_config_names_every_key() -> None:
    """Every key the parser reads (the field names of the config tree) appears in the example."""
    from homeserver import config as c

    sections = [c.HomeserverConfig, c.ListenerConfig, c.TlsConfig, c.DatabaseConfig,
                c.RegistrationConfig, c.FederationConfig, c.RateLimit, c.RateLimitsConfig,
                c.AuthConfig, c.HttpConfig, c.MediaConfig, c.PresenceConfig, c.LoggingConfig]
    names = {f.name for cls in sections for f in dataclasses.fields(cls)} - {"config_dir"}
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = sorted(n for n in names if not re.search(rf"\b{re.escape(n)}\b", text))
    assert missing == [], f"config.example.yaml does not document: {missing}"


def test_relative_sqlite_path_resolves_against_config_dir(tmp_path) -> None:
    from tests.conftest import make_config

    config = make_config(tmp_path, database={"url": "sqlite+aiosqlite:///db/hs.db"})
    assert config.database.url == f"sqlite+aiosqlite:///{tmp_path / 'db' / 'hs.db'}"


def test_in_memory_sqlite_is_refused(tmp_path) -> None:
    import pytest

    from homeserver.config import ConfigError
    from tests.conftest import make_config

    with pytest.raises(ConfigError) as e:
        make_config(tmp_path, database={"url": "sqlite+aiosqlite:///:memory:"})
    assert any(p.startswith("database.url:") for p in e.value.problems)


# -- unknown keys at every depth ------------------------------------------------------------

@pytest.mark.parametrize(("data", "key"), [
    ({"registration": {"enabeld": True}}, "registration.enabeld"),
    ({"listeners": [{"port": 8008, "tsl": True}]}, "listeners[0].tsl"),
    ({"listeners": [{"port": 8008}, {"port": 8009, "resource": ["client"]}]},
     "listeners[1].resource"),
    ({"rate_limits": {"login_per_ipp": {"per_second": 1}}}, "rate_limits.login_per_ipp"),
    ({"rate_limits": {"login_per_ip": {"per_secnd": 1}}}, "rate_limits.login_per_ip.per_secnd"),
    ({"retention": {"default_policy": {"max_lifetme": "1d"}}},
     "retention.default_policy.max_lifetme"),
    ({"retention": {"purge_intervall": "1h"}}, "retention.purge_intervall"),
    ({"tls": {"certificate": "x"}}, "tls.certificate"),
    ({"database": {"uri": "x"}}, "database.uri"),
    ({"federation": {"verify_tsl": False}}, "federation.verify_tsl"),
    ({"auth": {"password_min_lenght": 3}}, "auth.password_min_lenght"),
    ({"http": {"max_body": 1}}, "http.max_body"),
    ({"media": {"path": "m"}}, "media.path"),
    ({"presence": {"enable": False}}, "presence.enable"),
    ({"logging": {"lvl": "DEBUG"}}, "logging.lvl"),
])
def test_unknown_nested_key_names_its_full_path(tmp_path: Path, data: dict[str, Any],
                                                 key: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, {"server_name": "example.org", **data}))
    problems = problems_of(excinfo)
    assert problems == [f"{key}: unknown key"], problems


def test_every_unknown_key_is_reported_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, {
            "server_name": "example.org",
            "colour": "blue",
            "registration": {"enabeld": True, "require_tokn": True},
            "listeners": [{"port": 8008, "tsl": True}],
            "rate_limits": {"login_per_ip": {"burst": 3}},
        }))
    assert sorted(keys_of(problems_of(excinfo))) == sorted([
        "colour", "registration.enabeld", "registration.require_tokn", "listeners[0].tsl",
        "rate_limits.login_per_ip.burst"])


def test_a_section_of_the_wrong_type_is_one_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, {"server_name": "example.org",
                                            "rate_limits": {"login_per_ip": 5}}))
    assert problems_of(excinfo) == ["rate_limits.login_per_ip: must be a mapping"]


# -- logging ----------------------------------------------------------------------------------

def test_logging_defaults(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"server_name": "example.org"}))
    assert config.logging == LoggingConfig("INFO", (), "text", None, 100 * 1024 * 1024, 10)


def test_logging_section(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    config = load_config(write_config(tmp_path, {"server_name": "example.org", "logging": {
        "level": "warning",
        "loggers": {"ktchat.access": "ERROR", "federation": "debug"},
        "format": "json",
        "file": "logs/ktchat.log",
        "max_bytes": 0,
        "backup_count": 3,
    }}))
    assert dict(config.logging.loggers) == {"ktchat.access": "ERROR", "federation": "DEBUG"}
    assert dataclasses.replace(config.logging, loggers=()) == LoggingConfig(
        "WARNING", (), "json", tmp_path.resolve() / "logs" / "ktchat.log", 0, 3)


@pytest.mark.parametrize(("section", "key"), [
    ({"loggers": {"ktchat.access": "LOUD"}}, "logging.loggers.ktchat.access"),
    ({"loggers": {"federation": 10}}, "logging.loggers.federation"),
    ({"loggers": ["federation"]}, "logging.loggers"),
    ({"format": "xml"}, "logging.format"),
    ({"file": "missing/dir/ktchat.log"}, "logging.file"),
    ({"file": 5}, "logging.file"),
    ({"max_bytes": -1}, "logging.max_bytes"),
    ({"backup_count": "many"}, "logging.backup_count"),
])
def test_bad_logging_section(tmp_path: Path, section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, {"server_name": "example.org", "logging": section}))
    assert keys_of(problems_of(excinfo)) == [key], problems_of(excinfo)


# -- default_room_version ---------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [(None, "12"), ("10", "10"), ("11", "11"),
                                                 (10, "10")])
def test_default_room_version(tmp_path: Path, value: Any, expected: str) -> None:
    data: dict[str, Any] = {"server_name": "example.org"}
    if value is not None:
        data["default_room_version"] = value
    assert load_config(write_config(tmp_path, data)).default_room_version == expected


@pytest.mark.parametrize("value", ["9", "13", "v12", True, 12.5, ["12"]])
def test_unsupported_default_room_version(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, {"server_name": "example.org",
                                            "default_room_version": value}))
    problems = problems_of(excinfo)
    assert keys_of(problems) == ["default_room_version"], problems
    assert "10, 11, 12" in problems[0]


# -- registration_shared_secret (Synapse's key, for register_new_matrix_user -c) ------------

@pytest.mark.parametrize(("data", "secret"), [
    ({"registration_shared_secret": "top"}, "top"),
    ({"registration": {"shared_secret": "nested"}}, "nested"),
    ({"registration_shared_secret": "same", "registration": {"shared_secret": "same"}}, "same"),
    ({"registration_shared_secret": None}, None),
])
def test_registration_shared_secret_alias(tmp_path: Path, data: dict[str, Any],
                                          secret: str | None) -> None:
    config = load_config(write_config(tmp_path, {"server_name": "example.org", **data}))
    assert config.registration.shared_secret == secret


@pytest.mark.parametrize(("data", "key"), [
    ({"registration_shared_secret": "one", "registration": {"shared_secret": "two"}},
     "registration_shared_secret"),
    ({"registration_shared_secret": 5}, "registration_shared_secret"),
])
def test_bad_registration_shared_secret(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, {"server_name": "example.org", **data}))
    assert keys_of(problems_of(excinfo)) == [key], problems_of(excinfo)


def test_listener_x_forwarded(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"server_name": "example.org", "listeners": [
        {"port": 8008, "x_forwarded": True}, {"port": 8009}]}))
    assert [lst.x_forwarded for lst in config.listeners] == [True, False]
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, {"server_name": "example.org", "listeners": [
            {"port": 8008, "x_forwarded": "yes"}]}))
    assert keys_of(problems_of(excinfo)) == ["listeners[0].x_forwarded"]


# -- http: limits on slow and idle clients ---------------------------------------------------

def test_http_limits_default_and_override(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"server_name": "example.org"}))
    assert config.http.idle_timeout_ms == 60_000
    assert config.http.request_body_timeout_ms == 20_000
    assert config.http.request_body_min_bytes_per_second == 1024
    config = load_config(write_config(tmp_path, {"server_name": "example.org", "http": {
        "idle_timeout_ms": 5000, "request_body_timeout_ms": 3000,
        "request_body_min_bytes_per_second": 100}}))
    assert (config.http.idle_timeout_ms, config.http.request_body_timeout_ms,
            config.http.request_body_min_bytes_per_second) == (5000, 3000, 100)


def test_http_limits_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(write_config(tmp_path, {"server_name": "example.org", "http": {
            "idle_timeout_ms": 0, "request_body_timeout_ms": -1,
            "request_body_min_bytes_per_second": "fast"}}))
    assert problems_of(excinfo) == [
        "http.idle_timeout_ms: must be a positive integer",
        "http.request_body_timeout_ms: must be a positive integer",
        "http.request_body_min_bytes_per_second: must be int, not str",
    ]
