"""Configuration: one YAML file parsed once into an immutable tree.

Every problem in a file is collected and reported together (``ConfigError.problems``), one line
per problem naming its key's full path, so an operator fixes them all in one go. A key that
nothing reads (a typo such as ``registration.enabeld`` or ``listeners[0].tsl``) is a problem at
any depth, never silently replaced by its default (``config_reader.py``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.crypto.signing_keys import load_signing_key
from core.events.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS
from core.oembed import OEmbedEndpoint, parse_providers
from core.types import is_valid_server_name
from core.url_preview import URL_PARTS
from homeserver.config_reader import ConfigReader
from homeserver.config_workers import (
    ListenerConfig,
    WorkerConfig,
    check_workers,
    parse_listeners,
    parse_workers,
)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")

# Outbound federation never reaches these unless allowed (SSRF protection).
DEFAULT_IP_RANGE_DENYLIST: tuple[str, ...] = (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "192.0.0.0/24", "169.254.0.0/16", "192.88.99.0/24", "198.18.0.0/15", "192.0.2.0/24",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "0.0.0.0/8", "255.255.255.255/32",
    "::1/128", "::/128", "fe80::/10", "fc00::/7", "2001:db8::/32", "ff00::/8", "fec0::/10",
    "::ffff:0:0/96", "64:ff9b::/96",
)


class ConfigError(Exception):
    """Raised with every problem found; each names the key it is about."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class TlsConfig:
    certificate_path: Path | None = None
    private_key_path: Path | None = None


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str
    pool_size: int = 10
    # SQLite only: FULL fsyncs the WAL on every commit, so an acknowledged write survives power
    # loss as well as kill -9. NORMAL survives kill -9 only.
    sqlite_synchronous: str = "FULL"

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    enabled: bool = False
    require_token: bool = False
    shared_secret: str | None = None


@dataclass(frozen=True, slots=True)
class FederationConfig:
    enabled: bool = True
    verify_tls: bool = True
    ip_range_denylist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    ip_range_allowlist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # Notaries asked for other servers' keys before the servers themselves (Synapse's
    # trusted_key_servers, as server names). Default: none, keys come from each server.
    trusted_key_servers: tuple[str, ...] = ()
    # Outbound retries: the first wait after a failure, doubled per failure up to the max.
    retry_initial_interval: int = 2_000  # ms
    retry_max_interval: int = 3_600_000  # ms


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_second: float
    burst_count: int


@dataclass(frozen=True, slots=True)
class RateLimitsConfig:
    enabled: bool = True
    login_per_ip: RateLimit = RateLimit(0.17, 5)
    login_per_account: RateLimit = RateLimit(0.17, 5)
    login_failed_per_account: RateLimit = RateLimit(0.17, 5)
    registration_per_ip: RateLimit = RateLimit(0.17, 5)
    message_per_user: RateLimit = RateLimit(10.0, 50)
    joins_per_user: RateLimit = RateLimit(0.5, 20)
    invites_per_user: RateLimit = RateLimit(0.5, 20)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    # Lifetime of access tokens issued with a refresh token (login/register `refresh_token: true`).
    refreshable_access_token_lifetime_ms: int = 5 * 60 * 1000
    # None: refresh tokens live until used or logged out.
    refresh_token_lifetime_ms: int | None = None
    password_min_length: int = 8
    ui_auth_session_timeout_ms: int = 15 * 60 * 1000


@dataclass(frozen=True, slots=True)
class HttpConfig:
    # Largest JSON request body accepted on any endpoint (media uploads have their own limit).
    max_request_body_bytes: int = 10 * 1024 * 1024
    # A connection without a complete request for this long is closed: idle between requests
    # (keep-alive), or still sending a request's head (homeserver/app.py).
    idle_timeout_ms: int = 60_000
    # A request's body must arrive within this grace plus one second for every
    # request_body_min_bytes_per_second bytes received (homeserver/http/request_body.py).
    request_body_timeout_ms: int = 20_000
    request_body_min_bytes_per_second: int = 1024


@dataclass(frozen=True, slots=True)
class ThumbnailSize:
    width: int
    height: int
    method: str  # "crop" or "scale"


# Synapse's default ``thumbnail_sizes``.
DEFAULT_THUMBNAIL_SIZES = (ThumbnailSize(32, 32, "crop"), ThumbnailSize(96, 96, "crop"),
                           ThumbnailSize(320, 240, "scale"), ThumbnailSize(640, 480, "scale"),
                           ThumbnailSize(800, 600, "scale"))


@dataclass(frozen=True, slots=True)
class UrlPreviewConfig:
    """``media.url_preview``: GET .../preview_url (off: 404 M_UNRECOGNIZED, as Synapse without
    ``url_preview_enabled``). Pages are fetched under ``federation.ip_range_denylist``."""

    enabled: bool = False
    # At most this much of a page or an image is read (larger: 502 M_TOO_LARGE).
    max_spider_bytes: int = 10 * 1024 * 1024
    # Synapse's url_preview_url_blacklist: entries of (URL part, glob or ^regex) pairs; a URL
    # (or a redirect) matching every pair of an entry is refused (403).
    url_blacklist: tuple[tuple[tuple[str, str], ...], ...] = ()
    # oEmbed providers beyond the built-in ones (core.oembed), oembed.com's providers.json form.
    oembed_providers: tuple[OEmbedEndpoint, ...] = ()


@dataclass(frozen=True, slots=True)
class MediaConfig:
    store_path: Path
    max_upload_bytes: int = 50 * 1024 * 1024
    # The legacy unauthenticated /_matrix/media/v3/download|thumbnail (off: 404, as Synapse
    # with authenticated media).
    legacy_unauthenticated: bool = False
    thumbnail_sizes: tuple[ThumbnailSize, ...] = DEFAULT_THUMBNAIL_SIZES
    # Images with more pixels than this are not thumbnailed (decompression bombs).
    max_image_pixels: int = 32_000_000
    # A media ID from /create that is not uploaded to within this long is forgotten.
    unused_expiration_ms: int = 24 * 3600 * 1000
    # Media IDs a user may hold from /create without having uploaded to them.
    max_pending_uploads: int = 5
    url_preview: UrlPreviewConfig = UrlPreviewConfig()


@dataclass(frozen=True, slots=True)
class PresenceConfig:
    enabled: bool = True
    # Online users with no activity for this long become `unavailable`.
    idle_timeout_ms: int = 5 * 60 * 1000
    # A user whose last sync connection ended this long ago becomes `offline`.
    offline_timeout_ms: int = 30 * 1000


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """TURN servers handed to clients for VoIP (Synapse's ``turn_*`` keys): with
    ``shared_secret``, time-limited credentials in coturn's REST API scheme; else the static
    ``username``/``password``; with neither (or no ``uris``), clients get none."""

    uris: tuple[str, ...] = ()
    shared_secret: str | None = None
    username: str | None = None
    password: str | None = None
    user_lifetime_ms: int = 3_600_000


@dataclass(frozen=True, slots=True)
class PushConfig:
    # Deliver notifications to users' http pushers (push gateways).
    enabled: bool = True
    # Send the event's content to the gateway (pushers with format event_id_only never get it).
    include_content: bool = True


@dataclass(frozen=True, slots=True)
class UserDirectoryConfig:
    # True: a search finds every local user (and remote users seen in rooms here); False
    # (as Synapse): only users who share a room with the searcher or are in a public room.
    search_all_users: bool = False


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """Message retention (Synapse's ``retention`` section): rooms' ``m.room.retention``
    policies and a server default, enforced by a purge job."""

    enabled: bool = False
    # The policy of rooms without m.room.retention (None: keep for ever).
    default_min_lifetime_ms: int | None = None
    default_max_lifetime_ms: int | None = None
    # Rooms' max_lifetime is clamped to these.
    allowed_lifetime_min_ms: int | None = None
    allowed_lifetime_max_ms: int | None = None
    # How often the purge job runs.
    purge_interval_ms: int = 3_600_000


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "INFO"
    # (logger name, level): e.g. ("ktchat.access", "WARNING"), ("federation", "DEBUG").
    loggers: tuple[tuple[str, str], ...] = ()
    format: str = "text"  # or json: one object per line
    # None: stderr. A file is rotated when it reaches max_bytes (0: never), keeping
    # backup_count old ones (file.1, file.2, ...).
    file: Path | None = None
    max_bytes: int = 100 * 1024 * 1024
    backup_count: int = 10


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str | None = None


@dataclass(frozen=True, slots=True)
class HomeserverConfig:
    server_name: str
    public_baseurl: str
    signing_key_path: Path
    database: DatabaseConfig
    media: MediaConfig
    listeners: tuple[ListenerConfig, ...] = ()
    tls: TlsConfig = TlsConfig()
    registration: RegistrationConfig = RegistrationConfig()
    federation: FederationConfig = FederationConfig()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    auth: AuthConfig = AuthConfig()
    http: HttpConfig = HttpConfig()
    presence: PresenceConfig = PresenceConfig()
    retention: RetentionConfig = RetentionConfig()
    turn: TurnConfig = TurnConfig()
    push: PushConfig = PushConfig()
    user_directory: UserDirectoryConfig = UserDirectoryConfig()
    logging: LoggingConfig = LoggingConfig()
    # Redis, between the processes of one server (required with workers).
    redis: RedisConfig = RedisConfig()
    workers: tuple[WorkerConfig, ...] = ()
    config_dir: Path = field(default=Path("."))
    # The version of rooms created without one (createRoom's room_version, DM rooms of the
    # friends API), advertised in /capabilities. v12 room IDs have no server part.
    default_room_version: str = DEFAULT_ROOM_VERSION.identifier
    # Milliseconds a redacted event's content is kept before it is erased from storage
    # (None: never; 0: at once). Synapse's key, with its duration syntax in the file.
    redaction_retention_period: int | None = 7 * 86_400_000

    def worker(self, name: str) -> WorkerConfig | None:
        return next((w for w in self.workers if w.name == name), None)

    def shard_of(self, worker: WorkerConfig, role: str) -> tuple[int, int]:
        """``(index, count)``: which of the workers with ``role`` (sharded among them, in
        the config's order) ``worker`` is."""
        having = [w.name for w in self.workers if role in w.roles]
        return having.index(worker.name), len(having)

    def replication_url(self) -> str | None:
        """Where the main process takes the workers' internal calls (its listener with the
        ``replication`` resource)."""
        return next((lst.url.replace("://*:", "://127.0.0.1:") for lst in self.listeners
                     if "replication" in lst.resources), None)

    def main_federation_url(self) -> str | None:
        """The main process's federation listener (federation_inbound workers relay to it
        what writes other than transactions)."""
        return next((lst.url.replace("://*:", "://127.0.0.1:") for lst in self.listeners
                     if "federation" in lst.resources), None)

    def main_client_url(self) -> str | None:
        """The main process's client listener (workers relay to it what they do not serve)."""
        return next((lst.url.replace("://*:", "://127.0.0.1:") for lst in self.listeners
                     if "client" in lst.resources), None)


def _rate_limit(reader: ConfigReader, name: str, default: RateLimit) -> RateLimit:
    sub = reader.section(name)
    per_second = sub.get("per_second", (int, float), default.per_second)
    burst = sub.get("burst_count", int, default.burst_count)
    if per_second <= 0:
        sub.problem("per_second", "must be greater than 0")
        per_second = default.per_second
    if burst < 1:
        sub.problem("burst_count", "must be at least 1")
        burst = default.burst_count
    return RateLimit(float(per_second), burst)


def _turn(reader: ConfigReader) -> TurnConfig:
    uris = []
    for i, uri in enumerate(reader.get("uris", list, [])):
        if isinstance(uri, str) and uri:
            uris.append(uri)
        else:
            reader.problem(f"uris[{i}]", "must be a non-empty string")
    return TurnConfig(
        tuple(uris),
        reader.get("shared_secret", str, None) or None,
        reader.get("username", str, None) or None,
        reader.get("password", str, None) or None,
        reader.positive("user_lifetime_ms", TurnConfig().user_lifetime_ms),
    )


def _logging(reader: ConfigReader, config_dir: Path) -> LoggingConfig:
    defaults = LoggingConfig()
    loggers_r = reader.section("loggers")
    loggers = []
    for name in loggers_r.keys():
        level = loggers_r.choice(name, LOG_LEVELS, "", upper=True)
        if level:
            loggers.append((str(name), level))
    file = reader.path("file", config_dir, None)
    if file is not None and not file.parent.is_dir():
        reader.problem("file", f"directory not found: {file.parent}")
    max_bytes = reader.get("max_bytes", int, defaults.max_bytes)
    if max_bytes < 0:
        reader.problem("max_bytes", "must be 0 (never rotate) or more")
    backup_count = reader.get("backup_count", int, defaults.backup_count)
    if backup_count < 0:
        reader.problem("backup_count", "must be 0 or more")
    return LoggingConfig(
        level=reader.choice("level", LOG_LEVELS, defaults.level, upper=True),
        loggers=tuple(loggers),
        format=reader.choice("format", LOG_FORMATS, defaults.format),
        file=file, max_bytes=max_bytes, backup_count=backup_count,
    )


def _url_preview(r: ConfigReader) -> UrlPreviewConfig:
    defaults = UrlPreviewConfig()
    providers: tuple[OEmbedEndpoint, ...] = ()
    raw_providers = r.get("oembed_providers", list, [])
    try:
        providers = parse_providers(raw_providers)
    except ValueError as e:
        r.problem("oembed_providers", str(e))
    return UrlPreviewConfig(r.get("enabled", bool, defaults.enabled),
                            r.positive("max_spider_bytes", defaults.max_spider_bytes),
                            _url_blacklist(r), providers)


def _url_blacklist(r: ConfigReader) -> tuple[tuple[tuple[str, str], ...], ...]:
    entries = []
    for i, entry in enumerate(r.get("url_blacklist", list, [])):
        key = f"url_blacklist[{i}]"
        if not isinstance(entry, dict) or not entry:
            r.problem(key, "must be a mapping of URL parts to globs or ^regular expressions")
            continue
        pairs = []
        for part, pattern in entry.items():
            if part not in URL_PARTS:
                r.problem(f"{key}.{part}", f"must be one of {', '.join(URL_PARTS)}")
                continue
            if isinstance(pattern, int) and not isinstance(pattern, bool):
                pattern = str(pattern)  # port: 8080
            if not isinstance(pattern, str):
                r.problem(f"{key}.{part}", "must be a string")
                continue
            if pattern.startswith("^"):
                try:
                    re.compile(pattern)
                except re.error as e:
                    r.problem(f"{key}.{part}", f"not a regular expression: {e}")
                    continue
            pairs.append((part, pattern))
        if len(pairs) == len(entry):
            entries.append(tuple(pairs))
    return tuple(entries)


def _thumbnail_sizes(media_r: ConfigReader) -> tuple[ThumbnailSize, ...]:
    if not media_r.has("thumbnail_sizes"):
        return DEFAULT_THUMBNAIL_SIZES
    sizes = []
    for item in media_r.items("thumbnail_sizes"):
        width, height = item.positive("width", 1), item.positive("height", 1)
        sizes.append(ThumbnailSize(width, height, item.choice("method", ("crop", "scale"),
                                                              "scale")))
    if not sizes:
        media_r.problem("thumbnail_sizes", "must list at least one size")
        return DEFAULT_THUMBNAIL_SIZES
    return tuple(sizes)

def parse_config(data: Any, config_dir: Path) -> HomeserverConfig:
    """Build the config tree from parsed YAML, or raise ``ConfigError`` with every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError(["(top level): the config file must be a YAML mapping"])
    r = ConfigReader(data, problems)

    server_name = r.get("server_name", str, "")
    if not server_name:
        r.problem("server_name", "is required")
    elif not is_valid_server_name(server_name):
        r.problem("server_name", f"not a valid server name: {server_name!r}")
    public_baseurl = r.get("public_baseurl", str, f"https://{server_name}/")
    if not public_baseurl.startswith(("http://", "https://")):
        r.problem("public_baseurl", "must start with http:// or https://")
    if not public_baseurl.endswith("/"):
        public_baseurl += "/"

    listeners = parse_listeners(r)
    if not listeners and "listeners" in data:
        r.problem("listeners", "needs at least one listener")

    tls_r = r.section("tls")
    tls = TlsConfig(
        tls_r.path("certificate_path", config_dir, None),
        tls_r.path("private_key_path", config_dir, None),
    )
    if any(lst.tls for lst in listeners):
        for name, value in (("certificate_path", tls.certificate_path),
                            ("private_key_path", tls.private_key_path)):
            if value is None:
                tls_r.problem(name, "is required when a listener has tls: true")
            elif not value.is_file():
                tls_r.problem(name, f"file not found: {value}")

    signing_key_path = r.path("signing_key_path", config_dir, config_dir / "signing.key")
    assert signing_key_path is not None
    if not signing_key_path.is_file():
        r.problem("signing_key_path", f"file not found: {signing_key_path}")
    else:
        try:
            load_signing_key(signing_key_path)
        except (OSError, ValueError) as e:
            r.problem("signing_key_path", f"{signing_key_path}: {e}")

    db_r = r.section("database")
    url = db_r.get("url", str, f"sqlite+aiosqlite:///{config_dir / 'homeserver.db'}")
    sqlite_prefix = "sqlite+aiosqlite:///"
    if not url.startswith((sqlite_prefix, "postgresql+asyncpg://")):
        db_r.problem("url", "must start with sqlite+aiosqlite:/// or postgresql+asyncpg://")
    elif url.startswith(sqlite_prefix):
        sqlite_path = url[len(sqlite_prefix):]
        if not sqlite_path or sqlite_path.startswith(":memory:"):
            db_r.problem("url", "needs a file path (an in-memory database would lose everything)")
        elif not sqlite_path.startswith("/"):
            # A relative path is relative to the config file, like every other path here.
            url = sqlite_prefix + str(config_dir / sqlite_path)
    sync_mode = db_r.get("sqlite_synchronous", str, "FULL").upper()
    if sync_mode not in ("FULL", "NORMAL", "EXTRA"):
        db_r.problem("sqlite_synchronous", "must be FULL, NORMAL or EXTRA")
    database = DatabaseConfig(url, db_r.positive("pool_size", 10), sync_mode)

    reg_r = r.section("registration")
    shared_secret = reg_r.get("shared_secret", str, None)
    # Synapse's name for it, where its register_new_matrix_user -c looks.
    synapse_secret = r.get("registration_shared_secret", str, None)
    if synapse_secret is not None:
        if shared_secret is not None and shared_secret != synapse_secret:
            r.problem("registration_shared_secret",
                      "differs from registration.shared_secret (set one of them)")
        shared_secret = synapse_secret
    registration = RegistrationConfig(
        reg_r.get("enabled", bool, False),
        reg_r.get("require_token", bool, False),
        shared_secret,
    )

    fed_r = r.section("federation")
    federation = FederationConfig(
        fed_r.get("enabled", bool, True),
        fed_r.get("verify_tls", bool, True),
        fed_r.networks("ip_range_denylist", DEFAULT_IP_RANGE_DENYLIST),
        fed_r.networks("ip_range_allowlist", ()),
        tuple(str(name) for name in fed_r.get("trusted_key_servers", list, [])),
        fed_r.duration_ms("retry_initial_interval", 2_000) or 2_000,
        fed_r.duration_ms("retry_max_interval", 3_600_000) or 3_600_000,
    )

    rl_r = r.section("rate_limits")
    defaults = RateLimitsConfig()
    rate_limits = RateLimitsConfig(
        rl_r.get("enabled", bool, True),
        _rate_limit(rl_r, "login_per_ip", defaults.login_per_ip),
        _rate_limit(rl_r, "login_per_account", defaults.login_per_account),
        _rate_limit(rl_r, "login_failed_per_account", defaults.login_failed_per_account),
        _rate_limit(rl_r, "registration_per_ip", defaults.registration_per_ip),
        _rate_limit(rl_r, "message_per_user", defaults.message_per_user),
        _rate_limit(rl_r, "joins_per_user", defaults.joins_per_user),
        _rate_limit(rl_r, "invites_per_user", defaults.invites_per_user),
    )

    auth_r = r.section("auth")
    auth_defaults = AuthConfig()
    refresh_lifetime = auth_r.get("refresh_token_lifetime_ms", int, None)
    if refresh_lifetime is not None and refresh_lifetime <= 0:
        auth_r.problem("refresh_token_lifetime_ms", "must be a positive integer or null")
    auth = AuthConfig(
        auth_r.positive("refreshable_access_token_lifetime_ms",
                        auth_defaults.refreshable_access_token_lifetime_ms),
        refresh_lifetime,
        auth_r.get("password_min_length", int, auth_defaults.password_min_length),
        auth_r.positive("ui_auth_session_timeout_ms", auth_defaults.ui_auth_session_timeout_ms),
    )

    http_r = r.section("http")
    http_defaults = HttpConfig()
    http = HttpConfig(
        http_r.positive("max_request_body_bytes", http_defaults.max_request_body_bytes),
        http_r.positive("idle_timeout_ms", http_defaults.idle_timeout_ms),
        http_r.positive("request_body_timeout_ms", http_defaults.request_body_timeout_ms),
        http_r.positive("request_body_min_bytes_per_second",
                        http_defaults.request_body_min_bytes_per_second),
    )

    media_r = r.section("media")
    store_path = media_r.path("store_path", config_dir, config_dir / "media")
    assert store_path is not None
    media = MediaConfig(store_path, media_r.positive("max_upload_bytes", 50 * 1024 * 1024),
                        media_r.get("legacy_unauthenticated", bool, False),
                        _thumbnail_sizes(media_r),
                        media_r.positive("max_image_pixels", 32_000_000),
                        media_r.positive("unused_expiration_ms", 24 * 3600 * 1000),
                        media_r.positive("max_pending_uploads", 5),
                        _url_preview(media_r.section("url_preview")))

    presence_r = r.section("presence")
    presence_defaults = PresenceConfig()
    presence = PresenceConfig(
        presence_r.get("enabled", bool, True),
        presence_r.positive("idle_timeout_ms", presence_defaults.idle_timeout_ms),
        presence_r.positive("offline_timeout_ms", presence_defaults.offline_timeout_ms),
    )

    push_r = r.section("push")
    push = PushConfig(push_r.get("enabled", bool, True),
                      push_r.get("include_content", bool, True))

    logging_config = _logging(r.section("logging"), config_dir)
    turn = _turn(r.section("turn"))

    user_directory = UserDirectoryConfig(
        r.section("user_directory").get("search_all_users", bool, False))

    room_version = r.raw("default_room_version", DEFAULT_ROOM_VERSION.identifier)
    if isinstance(room_version, int) and not isinstance(room_version, bool):
        room_version = str(room_version)  # default_room_version: 10
    if not isinstance(room_version, str) or room_version not in KNOWN_ROOM_VERSIONS:
        r.problem("default_room_version",
                  f"must be one of the supported room versions {', '.join(KNOWN_ROOM_VERSIONS)}")
        room_version = DEFAULT_ROOM_VERSION.identifier

    redaction_retention = r.duration_ms("redaction_retention_period", 7 * 86_400_000)

    ret_r = r.section("retention")
    policy_r = ret_r.section("default_policy")
    retention = RetentionConfig(
        ret_r.get("enabled", bool, False),
        policy_r.duration_ms("min_lifetime", None),
        policy_r.duration_ms("max_lifetime", None),
        ret_r.duration_ms("allowed_lifetime_min", None),
        ret_r.duration_ms("allowed_lifetime_max", None),
        ret_r.duration_ms("purge_interval", 3_600_000) or 0,
    )
    for reader, low, high, low_name, high_name in (
            (policy_r, retention.default_min_lifetime_ms, retention.default_max_lifetime_ms,
             "min_lifetime", "max_lifetime"),
            (ret_r, retention.allowed_lifetime_min_ms, retention.allowed_lifetime_max_ms,
             "allowed_lifetime_min", "allowed_lifetime_max")):
        if low is not None and high is not None and low > high:
            reader.problem(low_name, f"must not be greater than {high_name}")
    if not retention.purge_interval_ms:
        ret_r.problem("purge_interval", "must be a positive duration")

    redis_r = r.section("redis")
    redis_url: str | None = redis_r.get("url", str, "") if redis_r.raw("url") is not None \
        else None
    redis_url = redis_url or None
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        redis_r.problem("url", "must start with redis://, rediss:// or unix://")
    workers = parse_workers(r.section("workers"), listeners)
    check_workers(r, workers, listeners, url, redis_url)

    r.report_unknown_keys()

    if problems:
        raise ConfigError(problems)
    return HomeserverConfig(
        server_name=server_name,
        public_baseurl=public_baseurl,
        signing_key_path=signing_key_path,
        database=database,
        media=media,
        listeners=listeners,
        tls=tls,
        registration=registration,
        federation=federation,
        rate_limits=rate_limits,
        auth=auth,
        http=http,
        presence=presence,
        retention=retention,
        turn=turn,
        push=push,
        user_directory=user_directory,
        logging=logging_config,
        config_dir=config_dir,
        default_room_version=str(room_version),
        redaction_retention_period=redaction_retention,
        redis=RedisConfig(redis_url),
        workers=workers,
    )


def load_config(path: Path) -> HomeserverConfig:
    """Read and validate the YAML file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"(file) {path}: cannot read: {e.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"(file) {path}: not valid YAML{where}"]) from None
    return parse_config(data, path.resolve().parent)
