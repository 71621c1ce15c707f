"""Accounts: users, profiles, devices, tokens, user-interactive auth and registration."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
)

from storage.schema.base import metadata

schema_version = Table(
    "schema_version",
    metadata,
    Column("lock", Integer, primary_key=True, default=1),  # one row only
    Column("version", Integer, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("password_hash", Text, nullable=True),
    Column("admin", Boolean, nullable=False, default=False),
    Column("deactivated", Boolean, nullable=False, default=False),
    Column("user_type", Text, nullable=True),
    Column("created_ts", BigInteger, nullable=False),
    # Deactivated with erase: the admin API shows it (Synapse's erased_users).
    Column("erased", Boolean, nullable=False, default=False, server_default="0"),
)

profiles = Table(
    "profiles",
    metadata,
    Column("user_id", Text, ForeignKey("users.user_id"), primary_key=True),
    Column("displayname", Text, nullable=True),
    Column("avatar_url", Text, nullable=True),
)

devices = Table(
    "devices",
    metadata,
    Column("user_id", Text, ForeignKey("users.user_id"), nullable=False),
    Column("device_id", Text, nullable=False),
    Column("display_name", Text, nullable=True),
    Column("created_ts", BigInteger, nullable=False),
    Column("last_seen_ts", BigInteger, nullable=True),
    Column("last_seen_ip", Text, nullable=True),
    Column("last_seen_user_agent", Text, nullable=True),
    PrimaryKeyConstraint("user_id", "device_id"),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("token_hash", Text, nullable=False, unique=True),
    Column("user_id", Text, nullable=False),
    Column("device_id", Text, nullable=False),
    Column("created_ts", BigInteger, nullable=False),
    Column("expires_ts", BigInteger, nullable=True),
    # Set when this token was exchanged; it stays valid until its successor is first used,
    # so a client whose /refresh response was lost can try again.
    Column("next_token_id", BigInteger, nullable=True),
    Index("refresh_tokens_device", "user_id", "device_id"),
)

access_tokens = Table(
    "access_tokens",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("token_hash", Text, nullable=False, unique=True),
    Column("user_id", Text, nullable=False),
    Column("device_id", Text, nullable=False),
    Column("created_ts", BigInteger, nullable=False),
    Column("expires_ts", BigInteger, nullable=True),
    Column("refresh_token_id", BigInteger, nullable=True),
    Column("used", Boolean, nullable=False, default=False),
    Index("access_tokens_device", "user_id", "device_id"),
)

ui_auth_sessions = Table(
    "ui_auth_sessions",
    metadata,
    Column("session_id", Text, primary_key=True),
    Column("created_ts", BigInteger, nullable=False),
    Column("method", Text, nullable=False),
    Column("uri", Text, nullable=False),
    Column("user_id", Text, nullable=True),
    # JSON object: stage type -> what completing it proved (e.g. the user ID, the token).
    Column("completed", Text, nullable=False, default="{}"),
)

registration_tokens = Table(
    "registration_tokens",
    metadata,
    Column("token", Text, primary_key=True),
    Column("uses_allowed", Integer, nullable=True),
    Column("pending", Integer, nullable=False, default=0),
    Column("completed", Integer, nullable=False, default=0),
    Column("expiry_time", BigInteger, nullable=True),
)

registration_nonces = Table(
    "registration_nonces",
    metadata,
    Column("nonce", Text, primary_key=True),
    Column("created_ts", BigInteger, nullable=False),
)
