"""The only place where SQLite and PostgreSQL statements differ."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table, cast, func
from sqlalchemy.dialects import postgresql, sqlite


def insert(is_sqlite: bool, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that supports ``on_conflict_do_nothing``/``on_conflict_do_update``."""
    return sqlite.insert(table) if is_sqlite else postgresql.insert(table)


def greatest(is_sqlite: bool, *values: Any) -> ColumnElement[Any]:
    """The largest of the values (SQLite's multi-argument max, PostgreSQL's greatest)."""
    return func.max(*values) if is_sqlite else func.greatest(*values)


def json_text(is_sqlite: bool, column: Any, *path: str) -> ColumnElement[Any]:
    """The value at ``path`` in a JSON text column (a string as text; SQLite gives numbers
    and booleans as numbers, PostgreSQL as their JSON text)."""
    if is_sqlite:
        return func.json_extract(column, "$" + "".join(f'."{p}"' for p in path))
    return func.jsonb_extract_path_text(cast(column, postgresql.JSONB), *path)


def server_of(is_sqlite: bool, column: Any) -> ColumnElement[str]:
    """The server name of a user ID column (what follows the first colon)."""
    colon = func.instr(column, ":") if is_sqlite else func.strpos(column, ":")
    return func.substr(column, colon + 1)
