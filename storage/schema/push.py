"""Push (version 13): rules, per-user notifications, pushers and their queue."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
)

from storage.schema.base import metadata

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
    # Rotation's batches, in stream order.
    Index("push_events_stream", "stream_ordering"),
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
    Index("push_actions_stream", "stream_ordering"),
)

# Rotation (homeserver/services/push_rotation.py): per user, room and thread ("main" too),
# the non-highlight notifications rotation counted before deleting them (as Synapse's
# ``event_push_summary``): ``notif`` after ``start`` (the user's read receipt or join then),
# ``thread_notif`` after ``thread_start`` (the thread's own receipt when later), both up to
# the rotation's position (``push_positions`` "rotated").
push_summaries = Table(
    "push_summaries",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("room_id", Text, nullable=False),
    Column("thread_id", Text, nullable=False),
    Column("start", BigInteger, nullable=False),
    Column("thread_start", BigInteger, nullable=False),
    Column("notif", BigInteger, nullable=False),
    Column("thread_notif", BigInteger, nullable=False),
    PrimaryKeyConstraint("user_id", "room_id", "thread_id"),
    Index("push_summaries_room", "room_id"),
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
# Version 15: what rotation keeps of the notifications it deletes.
PUSH_ROTATION_TABLES = (push_summaries,)
PUSH_ROTATION_INDEXES = ("push_events_stream", "push_actions_stream")
