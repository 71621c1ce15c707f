"""Every table, defined once. Column types are dialect-neutral (SQLite and PostgreSQL).

This is the newest schema: a new database is created from it directly and stamped with
``migrations.LATEST``; an older database is brought here by the numbered migrations.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
    true,
)

metadata = MetaData()

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

# --- rooms and events ------------------------------------------------------------------------

rooms = Table(
    "rooms",
    metadata,
    Column("room_id", Text, primary_key=True),
    Column("room_version", Text, nullable=False),
    Column("creator", Text, nullable=False),
    Column("is_public", Boolean, nullable=False, default=False),  # in the room directory
    Column("created_ts", BigInteger, nullable=False),
    # The room's head, moved by every new event: the state group of its current state, its
    # forward extremities (a JSON list of event IDs) and the greatest depth.
    Column("current_state_group", BigInteger, nullable=True),
    Column("forward_extremities", Text, nullable=False, default="[]"),
    Column("depth", BigInteger, nullable=False, default=0),
)

events = Table(
    "events",
    metadata,
    # Internal numeric ID: state groups refer to events by it (8 bytes, not a 44-char ID).
    Column("nid", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("event_id", Text, nullable=False, unique=True),
    Column("room_id", Text, nullable=False),
    # Position in the server-wide stream (sync); NULL for outliers.
    Column("stream_ordering", BigInteger, nullable=True, unique=True),
    Column("depth", BigInteger, nullable=False),
    Column("type", Text, nullable=False),
    Column("state_key", Text, nullable=True),
    Column("sender", Text, nullable=False),
    Column("origin_server_ts", BigInteger, nullable=False),
    Column("received_ts", BigInteger, nullable=False),
    # The PDU as signed (canonical JSON), never with local metadata.
    Column("json", Text, nullable=False),
    Column("outlier", Boolean, nullable=False, default=False),
    Column("rejected_reason", Text, nullable=True),
    # State groups: the state before the event, and after it (the same for non-state events).
    Column("state_group_before", BigInteger, nullable=True),
    Column("state_group_after", BigInteger, nullable=True),
    # For a state event: the event it replaced in the room's state (unsigned.prev_content).
    Column("replaces_state", Text, nullable=True),
    # Who sent it from here (for transaction IDs and unsigned.transaction_id).
    Column("device_id", Text, nullable=True),
    Column("txn_id", Text, nullable=True),
    Index("events_room_order", "room_id", "depth", "stream_ordering"),
    Index("events_room_stream", "room_id", "stream_ordering"),
    Index("events_txn", "room_id", "sender", "device_id", "txn_id", unique=True),
    # A user's member events in a room (history visibility asks on every read); version 3.
    Index("events_room_state", "room_id", "type", "state_key"),
)

event_edges = Table(
    "event_edges",
    metadata,
    Column("event_id", Text, nullable=False),
    Column("prev_event_id", Text, nullable=False),
    PrimaryKeyConstraint("event_id", "prev_event_id"),
    Index("event_edges_prev", "prev_event_id"),
)

current_state = Table(
    "current_state",
    metadata,
    Column("room_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("state_key", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    # For m.room.member: the membership, so "rooms of a user" is one index lookup.
    Column("membership", Text, nullable=True),
    PrimaryKeyConstraint("room_id", "type", "state_key"),
    Index("current_state_members", "state_key", "membership", "type"),
)

# Interned (type, state_key) pairs, so state maps are pairs of integers.
state_keys = Table(
    "state_keys",
    metadata,
    Column("nid", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("type", Text, nullable=False),
    Column("state_key", Text, nullable=False),
    Index("state_keys_unique", "type", "state_key", unique=True),
)

# Layered state: a group is its parent's state plus `added` minus `removed`, each a packed
# array of (state key nid, event nid) pairs. A root (no parent) holds the full state. Layers
# are at most a few deep and merge as they grow (storage/state_groups.py), so a room's state
# is never copied per event.
state_groups = Table(
    "state_groups",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("room_id", Text, nullable=False),
    Column("parent_id", BigInteger, nullable=True),
    Column("added", LargeBinary, nullable=False),
    Column("removed", LargeBinary, nullable=False),
)

redactions = Table(
    "redactions",
    metadata,
    Column("event_id", Text, primary_key=True),  # the redaction
    Column("redacts", Text, nullable=False),
    Column("received_ts", BigInteger, nullable=False),
    # Set once the redacted event's stored JSON has been pruned.
    Column("censored", Boolean, nullable=False, default=False),
    # A redaction received before its event waits here until the event arrives: NULL once it
    # applies; "*" if its sender may redact anything (only the room is left to check); else
    # the server the redacted event's sender must be on (spec: rooms v3+, "Handling
    # redactions"). A pending redaction redacts nothing.
    Column("requires_server", Text, nullable=True),
    Index("redactions_redacts", "redacts"),
)

room_aliases = Table(
    "room_aliases",
    metadata,
    Column("alias", Text, primary_key=True),
    Column("room_id", Text, nullable=False),
    Column("creator", Text, nullable=False),
    Index("room_aliases_room", "room_id"),
)

account_data = Table(
    "account_data",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("room_id", Text, nullable=False),  # "" for global account data
    Column("type", Text, nullable=False),
    Column("content", Text, nullable=False),
    Column("stream_id", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "room_id", "type"),
    Index("account_data_stream", "user_id", "stream_id"),
)

room_forgotten = Table(
    "room_forgotten",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("room_id", Text, nullable=False),
    PrimaryKeyConstraint("user_id", "room_id"),
)

user_filters = Table(
    "user_filters",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("filter_id", BigInteger, nullable=False),
    Column("filter_json", Text, nullable=False),
    PrimaryKeyConstraint("user_id", "filter_id"),
)

# -- schema version 2: receipts and presence ------------------------------------------------

receipts = Table(
    "receipts",
    metadata,
    Column("room_id", Text, nullable=False),
    Column("receipt_type", Text, nullable=False),  # m.read, m.read.private
    Column("user_id", Text, nullable=False),
    Column("thread_id", Text, nullable=False),  # "" when unthreaded
    Column("event_id", Text, nullable=False),
    # Where the event is in the room's stream (what unread counts start after).
    Column("event_stream_ordering", BigInteger, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("stream_id", BigInteger, nullable=False),
    PrimaryKeyConstraint("room_id", "receipt_type", "user_id", "thread_id"),
    Index("receipts_stream", "stream_id"),
    Index("receipts_user", "user_id", "room_id"),
)

presence = Table(
    "presence",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("state", Text, nullable=False),  # online, unavailable, offline
    Column("status_msg", Text),
    Column("last_active_ts", BigInteger, nullable=False),
    Column("stream_id", BigInteger, nullable=False),
)

# -- schema version 3: history (search index, cleared history, purges) ---------------------
# The full-text index `event_search` is dialect-specific (FTS5 / tsvector): search_index.py.

history_cleared = Table(
    "history_cleared",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("room_id", Text, nullable=False),
    # The user sees nothing at or before this event (its place in topological order).
    Column("event_id", Text, nullable=False),
    Column("depth", BigInteger, nullable=False),
    Column("stream_ordering", BigInteger, nullable=False),
    Column("ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "room_id"),
)

# Where a room's history stops being visible to anyone here: the content of the non-state
# events up to this point was dropped (history.py).
history_dropped = Table(
    "history_dropped",
    metadata,
    Column("room_id", Text, primary_key=True),
    Column("depth", BigInteger, nullable=False),
    Column("stream_ordering", BigInteger, nullable=False),
)

blocked_rooms = Table(
    "blocked_rooms",
    metadata,
    Column("room_id", Text, primary_key=True),
    Column("user_id", Text, nullable=False),  # the admin who blocked it
    Column("ts", BigInteger, nullable=False),
)

# -- federation (version 4) ------------------------------------------------------------------

# Other servers' signing keys, as fetched (directly or through a notary) and verified.
server_keys = Table(
    "server_keys",
    metadata,
    Column("server_name", Text, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("verify_key", Text, nullable=False),  # unpadded Base64 ed25519 public key
    # Until when the key may be used to check signatures (for an old key: when it expired).
    Column("valid_until_ts", BigInteger, nullable=False),
    # Set for keys listed under old_verify_keys: they only check what was signed before.
    Column("expired_ts", BigInteger, nullable=True),
    Column("fetched_ts", BigInteger, nullable=False),
    # The key server's own signed response this key came in (what our notary serves).
    Column("key_json", Text, nullable=False),
    PrimaryKeyConstraint("server_name", "key_id"),
)

# The durable outbound queue: what each destination still has to receive. A PDU row is
# written in the same transaction as its event, so an acknowledged event always reaches
# every server that was in the room.
federation_outbox = Table(
    "federation_outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("destination", Text, nullable=False),
    Column("event_id", Text, nullable=True),  # a PDU
    Column("edu_json", Text, nullable=True),  # or a persistent EDU ({"edu_type", "content"})
    Column("created_ts", BigInteger, nullable=False),
    Index("federation_outbox_destination", "destination", "id"),
)

# Backoff per destination, so a dead server is not hammered, even across restarts.
federation_destinations = Table(
    "federation_destinations",
    metadata,
    Column("destination", Text, primary_key=True),
    Column("retry_last_ts", BigInteger, nullable=False, default=0),
    Column("retry_interval_ms", BigInteger, nullable=False, default=0),
    Column("failure_ts", BigInteger, nullable=True),
)

# Transactions received (origin, txn ID) and the answer given, so a repeat is answered the
# same without being processed again.
federation_received_txns = Table(
    "federation_received_txns",
    metadata,
    Column("origin", Text, nullable=False),
    Column("txn_id", Text, nullable=False),
    Column("response_json", Text, nullable=False),
    Column("received_ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("origin", "txn_id"),
    Index("federation_received_txns_ts", "received_ts"),
)

# Stripped state that came with an invite (or knock) to a room this server is not in: what
# the invited user's sync shows.
invite_state = Table(
    "invite_state",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("stripped_json", Text, nullable=False),
)

# Send-to-device messages waiting for a device (to_device in its sync); a message is deleted
# once a sync after the one that delivered it shows the device got it.
device_inbox = Table(
    "device_inbox",
    metadata,
    Column("stream_id", BigInteger, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("device_id", Text, nullable=False),
    Column("message_json", Text, nullable=False),  # {"type", "sender", "content"}
    Column("received_ts", BigInteger, nullable=False),
    Index("device_inbox_device", "user_id", "device_id", "stream_id"),
)

# -- the auth chain cover index (version 5): storage/auth_chain_index.py ---------------------
# Every stored state event whose auth events are all indexed has a place on a chain: events of
# one chain are each in the auth chain of the next (an event follows its auth event of the same
# type and state key when that one is the chain's last). Links join chains: from
# (origin_chain, origin_seq) the events up to (target_chain, target_seq) are reachable, and so
# is everything those reach. Rows are facts about the auth DAG (event IDs are content hashes):
# they are written once and never change.

auth_chain_positions = Table(
    "auth_chain_positions",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("chain_id", BigInteger, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Index("auth_chain_positions_chain", "chain_id", "seq", unique=True),
)

auth_chain_links = Table(
    "auth_chain_links",
    metadata,
    Column("origin_chain", BigInteger, nullable=False),
    Column("origin_seq", BigInteger, nullable=False),
    Column("target_chain", BigInteger, nullable=False),
    Column("target_seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("origin_chain", "origin_seq", "target_chain"),
    Index("auth_chain_links_target", "target_chain", "target_seq"),
)

# Stored state events not indexed yet, because some of their auth events are not (not stored
# here, or waiting themselves); `auth_events` is their JSON list. Each is indexed in the write
# that indexes the last of its `auth_chain_missing` events.
auth_chain_pending = Table(
    "auth_chain_pending",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("room_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("state_key", Text, nullable=False),
    Column("auth_events", Text, nullable=False),
)

auth_chain_missing = Table(
    "auth_chain_missing",
    metadata,
    Column("event_id", Text, nullable=False),  # a pending event
    Column("missing_id", Text, nullable=False),  # one of its auth events without a place
    PrimaryKeyConstraint("event_id", "missing_id"),
    Index("auth_chain_missing_missing", "missing_id"),
)

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

# -- relations (version 10): the index of events' ``m.relates_to`` ----------------------------

# One row per timeline event that relates to another (``content["m.relates_to"]`` with a
# ``rel_type`` and an ``event_id``), written with the event; a redaction of the event deletes
# its row. ``thread_id``: the thread root the event belongs to (its parent for ``m.thread``,
# else its parent's thread), if any.
event_relations = Table(
    "event_relations",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("relates_to_id", Text, nullable=False),
    Column("rel_type", Text, nullable=False),
    Column("room_id", Text, nullable=False),
    Column("sender", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("depth", BigInteger, nullable=False),
    Column("stream_ordering", BigInteger, nullable=False),
    Column("origin_server_ts", BigInteger, nullable=False),
    Column("thread_id", Text, nullable=True),
    Index("event_relations_parent", "relates_to_id", "rel_type", "depth", "stream_ordering"),
    Index("event_relations_threads", "room_id", "rel_type", "relates_to_id"),
)

# -- content reports (version 11), for server admins ------------------------------------------

# A user's report of an event (event_id set) or of a whole room (event_id None).
reports = Table(
    "reports",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("room_id", Text, nullable=False),
    Column("event_id", Text, nullable=True),
    Column("user_id", Text, nullable=False),  # who reported it
    Column("event_sender", Text, nullable=True),  # who sent the reported event
    Column("reason", Text, nullable=True),
    Column("score", BigInteger, nullable=True),
    Column("received_ts", BigInteger, nullable=False),
)

# -- the media repository (version 12) -----------------------------------------------------

# One piece of media, local (origin: our server name) or another server's cached here. A
# local ID reserved by /create and not yet uploaded to has no sha256 (and an
# unused_expires_ts); the content is a file named by its sha256 under media.store_path,
# shared by every row with the same content.
media = Table(
    "media",
    metadata,
    Column("origin", Text, nullable=False),
    Column("media_id", Text, nullable=False),
    Column("content_type", Text, nullable=True),
    Column("upload_name", Text, nullable=True),
    Column("size", BigInteger, nullable=True),
    Column("sha256", Text, nullable=True),
    Column("user_id", Text, nullable=True),  # the uploader (local media)
    Column("created_ts", BigInteger, nullable=False),
    Column("unused_expires_ts", BigInteger, nullable=True),
    Column("quarantined_by", Text, nullable=True),
    PrimaryKeyConstraint("origin", "media_id"),
)
Index("media_sha256", media.c.sha256)
Index("media_created", media.c.origin, media.c.created_ts)
Index("media_pending", media.c.user_id, media.c.unused_expires_ts)

# -- push (version 13): rules, per-user notifications, pushers and their queue ----------------

# A user's own push rules, and their changes to server-default rules (``is_default``: only
# ``enabled``/``actions`` are kept, None where unchanged). ``priority``: higher goes first
# within its kind.
push_rules = Table(
    "push_rules",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("rule_id", Text, nullable=False),
    Column("is_default", Boolean, nullable=False),
    Column("priority", BigInteger, nullable=False),
    Column("conditions_json", Text, nullable=True),
    Column("pattern", Text, nullable=True),
    Column("actions_json", Text, nullable=True),
    Column("enabled", Boolean, nullable=True),
    PrimaryKeyConstraint("user_id", "kind", "rule_id"),
)

# Push rules' verdict on an event for its room's local members (written per commit batch):
# one row per event that notifies most of them (``push_events``: what the members sharing
# the default rules get, the sender aside), and a row per user whose verdict differs
# (``push_actions``: mentions, their own rules, an invitee). So a message to a room of a
# thousand members is one row, not a thousand.
push_events = Table(
    "push_events",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("room_id", Text, nullable=False),
    Column("stream_ordering", BigInteger, nullable=False),
    Column("sender", Text, nullable=False),
    # "main", or the thread root's event ID.
    Column("thread_id", Text, nullable=False),
    Column("highlight", Boolean, nullable=False),
    Column("actions_json", Text, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Index("push_events_room", "room_id", "stream_ordering"),
)

push_actions = Table(
    "push_actions",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("room_id", Text, nullable=False),
    Column("stream_ordering", BigInteger, nullable=False),
    Column("thread_id", Text, nullable=False),
    Column("notify", Boolean, nullable=False),
    Column("highlight", Boolean, nullable=False),
    Column("actions_json", Text, nullable=False),
    Column("ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "event_id"),
    Index("push_actions_user_room", "user_id", "room_id", "stream_ordering"),
    Index("push_actions_user_stream", "user_id", "stream_ordering"),
)

# How far the push rule evaluation has got in the event stream (one row, name "events").
push_positions = Table(
    "push_positions",
    metadata,
    Column("name", Text, primary_key=True),
    Column("stream_ordering", BigInteger, nullable=False),
)

pushers = Table(
    "pushers",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("app_id", Text, nullable=False),
    Column("pushkey", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("app_display_name", Text, nullable=False),
    Column("device_display_name", Text, nullable=False),
    Column("profile_tag", Text, nullable=True),
    Column("lang", Text, nullable=False),
    Column("data_json", Text, nullable=False),
    Column("pushkey_ts", BigInteger, nullable=False),
    PrimaryKeyConstraint("app_id", "pushkey", "user_id"),
    Index("pushers_user", "user_id"),
)

# Notifications waiting for a push gateway (retried with backoff; kept across restarts).
push_queue = Table(
    "push_queue",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("app_id", Text, nullable=False),
    Column("pushkey", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("room_id", Text, nullable=False),
    Column("actions_json", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_try_ts", BigInteger, nullable=False),
    Column("created_ts", BigInteger, nullable=False),
    Index("push_queue_due", "next_try_ts"),
)

PUSH_TABLES = (push_rules, push_events, push_actions, push_positions, pushers, push_queue)

# -- the user directory (version 14): who can be found by /user_directory/search ------------

# Tokens are compared byte by byte (prefix ranges must use the index whatever the database's
# collation is): PostgreSQL's "C" collation, SQLite's default BINARY.
_Token = Text().with_variant(Text(collation="C"), "postgresql")

# Every user who may be found: local users (from their profile) and other servers' users
# while they are joined to a room here (from their member event). ``search_text``: the
# tokens of the display name and user ID, space-separated (what user_directory_search holds).
user_directory = Table(
    "user_directory",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("display_name", Text, nullable=True),
    Column("avatar_url", Text, nullable=True),
    Column("search_text", Text, nullable=False, default=""),
)

# One row per (token, user): a search word is a prefix range over ``token``.
user_directory_search = Table(
    "user_directory_search",
    metadata,
    Column("token", _Token, nullable=False),
    Column("user_id", Text, nullable=False),
    PrimaryKeyConstraint("token", "user_id"),
    Index("user_directory_search_user", "user_id"),
)

# The rooms here each user is joined to (kept from the commits' state deltas), and which
# rooms are public for the directory (join rule public or history world_readable): users in
# a public room can be found by anyone, the others by who shares a room with them.
user_directory_rooms = Table(
    "user_directory_rooms",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("room_id", Text, nullable=False),
    # The room's publicity (user_directory_public_rooms), copied so that "is in a public
    # room" is one index range of the user's own rows.
    Column("public", Boolean, nullable=False, default=False),
    PrimaryKeyConstraint("user_id", "room_id"),
    Index("user_directory_rooms_room", "room_id"),
    Index("user_directory_rooms_public", "user_id",
          postgresql_where=text("public"), sqlite_where=text("public = 1")),
)

user_directory_public_rooms = Table(
    "user_directory_public_rooms",
    metadata,
    Column("room_id", Text, primary_key=True),
)

# The stream position up to which commits are applied to the directory (one row): at
# start-up, rooms changed after it are synced again (updates lost to a crash).
user_directory_stream = Table(
    "user_directory_stream",
    metadata,
    Column("lock", Integer, primary_key=True, default=1),
    Column("stream_ordering", BigInteger, nullable=False),
)

USER_DIRECTORY_TABLES = (user_directory, user_directory_search, user_directory_rooms,
                         user_directory_public_rooms, user_directory_stream)
