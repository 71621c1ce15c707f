"""Federation (version 4) and the auth chain cover index (version 5)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
)

from storage.schema.base import metadata

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
