"""End-to-end encryption (version 6) and other servers' device lists (versions 7 to 9)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
    true,
)

from storage.schema.base import metadata

# -- end-to-end encryption (version 6): keys a client uploads and others fetch --------------
# JSON columns hold objects exactly as uploaded (signatures must stay verifiable).

# A device's identity keys (the signed `device_keys` object of /keys/upload).
device_keys = Table(
    "device_keys",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("device_id", Text, nullable=False),
    Column("key_json", Text, nullable=False),
    Column("added_ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "device_id"),
)

# Signed one-time keys, each handed out once by /keys/claim.
one_time_keys = Table(
    "one_time_keys",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("device_id", Text, nullable=False),
    Column("algorithm", Text, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("key_json", Text, nullable=False),
    Column("added_ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "device_id", "algorithm", "key_id"),
)

# The fallback key per device and algorithm, handed out (and marked used) when no one-time
# key is left.
fallback_keys = Table(
    "fallback_keys",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("device_id", Text, nullable=False),
    Column("algorithm", Text, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("key_json", Text, nullable=False),
    Column("used", Boolean, nullable=False, default=False),
    PrimaryKeyConstraint("user_id", "device_id", "algorithm"),
)

# A user's cross-signing keys: usage is master, self_signing or user_signing.
cross_signing_keys = Table(
    "cross_signing_keys",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("usage", Text, nullable=False),
    Column("key_json", Text, nullable=False),
    Column("added_ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "usage"),
)

# Signatures uploaded through /keys/signatures/upload, merged into the signed object's
# `signatures` when it is queried. target_key_id: a device ID, or a cross-signing key's ID.
cross_signing_signatures = Table(
    "cross_signing_signatures",
    metadata,
    Column("signer_user_id", Text, nullable=False),
    Column("signer_key_id", Text, nullable=False),
    Column("target_user_id", Text, nullable=False),
    Column("target_key_id", Text, nullable=False),
    Column("signature", Text, nullable=False),
    PrimaryKeyConstraint("target_user_id", "target_key_id", "signer_user_id", "signer_key_id"),
)

# The device-list stream: a row per change of a user's devices or cross-signing keys, which
# sync's device_lists.changed and /keys/changes read "after N" of. announced: a local user's
# change whose EDUs are queued for other servers (version 9; changes of other servers' users
# are born announced), so those a crash left out are queued at start-up.
device_list_changes = Table(
    "device_list_changes",
    metadata,
    Column("stream_id", BigInteger, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("device_id", Text, nullable=True),  # None: cross-signing keys changed
    Column("changed_ts", BigInteger, nullable=False),
    Column("announced", Boolean, nullable=False, server_default=true()),
    Index("device_list_changes_user", "user_id", "stream_id"),
    Index("device_list_changes_unannounced", "stream_id",
          sqlite_where=text("NOT announced"), postgresql_where=text("NOT announced")),
)

# Server-side key backup (room_keys): versions, and the session keys in each.
room_key_versions = Table(
    "room_key_versions",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("algorithm", Text, nullable=False),
    Column("auth_data_json", Text, nullable=False),
    Column("etag", BigInteger, nullable=False, default=0),
    Column("deleted", Boolean, nullable=False, default=False),
    PrimaryKeyConstraint("user_id", "version"),
)

room_keys = Table(
    "room_keys",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("room_id", Text, nullable=False),
    Column("session_id", Text, nullable=False),
    Column("first_message_index", BigInteger, nullable=False),
    Column("forwarded_count", BigInteger, nullable=False),
    Column("is_verified", Boolean, nullable=False),
    Column("session_data_json", Text, nullable=False),
    PrimaryKeyConstraint("user_id", "version", "room_id", "session_id"),
)

E2E_TABLES = (device_keys, one_time_keys, fallback_keys, cross_signing_keys,
              cross_signing_signatures, device_list_changes, room_key_versions, room_keys)

# -- other servers' users' device lists (version 7), cached while they share a room here ----

# A cached user: the position in their server's device-list stream the cache is at, and
# their master and self-signing keys (JSON as their server sent them; None: none).
remote_device_lists = Table(
    "remote_device_lists",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("stream_id", BigInteger, nullable=False),
    Column("master_key_json", Text, nullable=True),
    Column("self_signing_key_json", Text, nullable=True),
    Column("synced_ts", BigInteger, nullable=False),
)

# A user's dehydrated device (MSC3814): a device with no session whose encrypted account
# (device_data, opaque to the server) a new login of the user can take over.
dehydrated_devices = Table(
    "dehydrated_devices",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("device_id", Text, nullable=False),
    Column("device_data_json", Text, nullable=False),
    Column("created_ts", BigInteger, nullable=False),
)

# A cached user's devices with their keys (as their server sent them).
remote_devices = Table(
    "remote_devices",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("device_id", Text, nullable=False),
    Column("key_json", Text, nullable=False),
    PrimaryKeyConstraint("user_id", "device_id"),
)
