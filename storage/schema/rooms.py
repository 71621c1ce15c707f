"""Rooms and events: the event graph, state, aliases, account data, filters, receipts,
presence and history clearing (versions 1 to 3)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Identity,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    Table,
    Text,
)

from storage.schema.base import metadata

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
