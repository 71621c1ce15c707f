"""The user directory (version 14)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)

from storage.schema.base import metadata

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
