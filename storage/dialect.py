"""The only place where SQLite and PostgreSQL statements differ."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table, func
from sqlalchemy.dialects import postgresql, sqlite


def insert(is_sqlite: bool, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ``on_conflict_do_nothing``/``on_conflict_do_update``."""
    return sqlite.insert(table) if is_sqlite else postgresql.insert(table)


def greatest(is_sqlite: bool, *values: Any) -> ColumnElement[Any]:
    """The largest of the values (SQLite's multi-argument max, PostgreSQL's greatest)."""
    return func.max(*values) if is_sqlite else func.greatest(*values)
