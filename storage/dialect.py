"""The only place where SQLite and PostgreSQL statements differ."""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite


def insert(is_sqlite: bool, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ``on_conflict_do_nothing``/``on_conflict_do_update``."""
    return sqlite.insert(table) if is_sqlite else postgresql.insert(table)
