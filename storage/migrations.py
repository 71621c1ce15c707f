"""Versioned schema migrations, applied at start-up.

A new database is created from ``schema.metadata`` and stamped ``LATEST``. An existing one runs
each migration above its stamped version, in order, in one transaction. Every migration is a
function of a synchronous SQLAlchemy connection, so it can branch on the dialect.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import Connection, inspect, select, text

from storage import auth_chain_index, relations_index, schema, search_index, user_directory_index
from storage.search_text import INDEXED

Migration = Callable[[Connection], None]

# MIGRATIONS[n - 2] brings a database from version n-1 to version n. Version 1 is the first
# schema, created whole. Append only; never edit one that has shipped.


def _v2_receipts_and_presence(conn: Connection) -> None:
    schema.receipts.create(conn, checkfirst=True)
    schema.presence.create(conn, checkfirst=True)


def _v3_history(conn: Connection) -> None:
    schema.history_cleared.create(conn, checkfirst=True)
    schema.blocked_rooms.create(conn, checkfirst=True)
    schema.history_dropped.create(conn, checkfirst=True)
    for index in schema.events.indexes:
        if index.name == "events_room_state":
            index.create(conn, checkfirst=True)
    search_index.create_index(conn)
    conn.execute(text("DELETE FROM event_search"))
    # Index what is already stored (redacted events' text is not searchable).
    events = schema.events
    query = (select(events.c.nid, events.c.json)
             .where(events.c.type.in_(list(INDEXED)), events.c.stream_ordering.is_not(None),
                    events.c.rejected_reason.is_(None),
                    ~select(schema.redactions.c.event_id)
                    .where(schema.redactions.c.redacts == events.c.event_id).exists())
             .order_by(events.c.nid))
    after = 0
    while True:
        rows = conn.execute(query.where(events.c.nid > after).limit(1000)).all()
        if not rows:
            return
        search_index.add(conn, search_index.index_rows((r.nid, json.loads(r.json))
                                                       for r in rows))
        after = rows[-1].nid


def _v4_federation(conn: Connection) -> None:
    for table in (schema.server_keys, schema.federation_outbox, schema.federation_destinations,
                  schema.federation_received_txns, schema.invite_state, schema.device_inbox):
        table.create(conn, checkfirst=True)
    if "requires_server" not in {c["name"] for c in inspect(conn).get_columns("redactions")}:
        conn.execute(text("ALTER TABLE redactions ADD COLUMN requires_server TEXT"))


def _v5_auth_chain_index(conn: Connection) -> None:
    for table in (schema.auth_chain_positions, schema.auth_chain_links,
                  schema.auth_chain_pending, schema.auth_chain_missing):
        table.create(conn, checkfirst=True)
    # Index the state events stored so far (events whose auth events are not stored wait).
    auth_chain_index.rebuild(conn)


def _v6_end_to_end_encryption(conn: Connection) -> None:
    for table in schema.E2E_TABLES:
        table.create(conn, checkfirst=True)


def _v7_remote_device_lists(conn: Connection) -> None:
    for table in (schema.remote_device_lists, schema.remote_devices):
        table.create(conn, checkfirst=True)


def _v8_dehydrated_devices(conn: Connection) -> None:
    schema.dehydrated_devices.create(conn, checkfirst=True)


def _v9_device_list_announced(conn: Connection) -> None:
    columns = {c["name"] for c in inspect(conn).get_columns("device_list_changes")}
    if "announced" not in columns:
        default = "1" if conn.dialect.name == "sqlite" else "true"
        conn.execute(text("ALTER TABLE device_list_changes ADD COLUMN announced BOOLEAN "
                          f"NOT NULL DEFAULT {default}"))
    for index in schema.device_list_changes.indexes:
        if index.name == "device_list_changes_unannounced":
            index.create(conn, checkfirst=True)


def _v10_relations(conn: Connection) -> None:
    schema.event_relations.create(conn, checkfirst=True)
    relations_index.index_stored(conn)


def _v11_reports(conn: Connection) -> None:
    schema.reports.create(conn, checkfirst=True)


def _v12_media(conn: Connection) -> None:
    schema.media.create(conn, checkfirst=True)


def _v13_push(conn: Connection) -> None:
    for table in schema.PUSH_TABLES:
        table.create(conn, checkfirst=True)


def _v14_directory(conn: Connection) -> None:
    for table in schema.USER_DIRECTORY_TABLES:
        table.create(conn, checkfirst=True)
    # The directory of what is stored: local users' profiles, rooms' current members.
    user_directory_index.rebuild(conn)


def _v15_url_cache(conn: Connection) -> None:
    schema.url_previews.create(conn, checkfirst=True)


def _v16_push_rotation(conn: Connection) -> None:
    for table in schema.PUSH_ROTATION_TABLES:
        table.create(conn, checkfirst=True)
    for table in (schema.push_events, schema.push_actions):
        for index in table.indexes:
            if index.name in schema.PUSH_ROTATION_INDEXES:
                index.create(conn, checkfirst=True)


def _v17_admin(conn: Connection) -> None:
    if "erased" not in {c["name"] for c in inspect(conn).get_columns("users")}:
        default = "0" if conn.dialect.name == "sqlite" else "false"
        conn.execute(text("ALTER TABLE users ADD COLUMN erased BOOLEAN NOT NULL "
                          f"DEFAULT {default}"))
    for index in schema.media.indexes:
        if index.name == "media_user":
            index.create(conn, checkfirst=True)


MIGRATIONS: list[Migration] = [_v2_receipts_and_presence, _v3_history, _v4_federation,
                               _v5_auth_chain_index, _v6_end_to_end_encryption,
                               _v7_remote_device_lists, _v8_dehydrated_devices,
                               _v9_device_list_announced, _v10_relations, _v11_reports,
                               _v12_media, _v13_push, _v14_directory,
                               _v15_url_cache, _v16_push_rotation, _v17_admin]
LATEST = 1 + len(MIGRATIONS)


class SchemaTooNewError(RuntimeError):
    pass


def migrate(conn: Connection) -> int:
    """Bring the database to ``LATEST``; returns the version it was at (0 if new)."""
    if conn.dialect.name == "postgresql":
        # Several workers may start at once: one migrates, the others wait and find it done.
        conn.execute(text("SELECT pg_advisory_xact_lock(7447736)"))
    tables = inspect(conn).get_table_names()
    if "schema_version" not in tables:
        # An empty database is created without asking about each table first.
        schema.metadata.create_all(conn, checkfirst=bool(tables))
        search_index.create_index(conn)
        conn.execute(schema.schema_version.insert().values(lock=1, version=LATEST))
        return 0
    current = int(conn.execute(select(schema.schema_version.c.version)).scalar_one())
    if current > LATEST:
        raise SchemaTooNewError(
            f"database schema is version {current}, this code knows up to {LATEST}"
        )
    for version in range(current + 1, LATEST + 1):
        MIGRATIONS[version - 2](conn)
    if current != LATEST:
        conn.execute(schema.schema_version.update().values(version=LATEST))
    return current
