"""Relations (version 10), content reports (version 11), the media repository (version 12)
and URL previews (version 15)."""

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
# The admin API lists a user's uploads.
Index("media_user", media.c.user_id, media.c.created_ts)
Index("media_created", media.c.origin, media.c.created_ts)
Index("media_pending", media.c.user_id, media.c.unused_expires_ts)


# -- URL previews (version 15) -------------------------------------------------------------

# A URL's preview (the JSON answered to clients), as Synapse's
# local_media_repository_url_cache: reused by every process until expires_ts, then pruned.
url_previews = Table(
    "url_previews",
    metadata,
    Column("url", Text, primary_key=True),
    Column("og", Text, nullable=False),
    Column("created_ts", BigInteger, nullable=False),
    Column("expires_ts", BigInteger, nullable=False),
)
Index("url_previews_expires", url_previews.c.expires_ts)
