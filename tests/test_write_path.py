"""The roomserver is the one writer of the room graph (issue 15): the events, edges,
state-group, state-key, current-state and room-head tables are written by
``roomserver/store.py`` alone, which keeps its event cache right as it does. Code outside
``roomserver/`` and ``storage/`` never calls the storage methods that write them; erasing
redacted content, dropping unseen history and purging go through ``roomserver.api``'s
``EventErasure``. Federation reads them through ``roomserver.api``'s ``RoomReader`` too: it
never reaches the event and state stores.

The checks are by name: any attribute call of one of these names under the packages below,
whatever it is called on (an alias of a store is caught too)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHECKED = ("core", "homeserver", "client_api", "federation")

TABLE_WRITES = frozenset({
    "persist_batch",       # EventStore: new events and everything they change
    "erase_redacted",      # EventStore: redacted events' JSON pruned
    "drop_content",        # EventStore: unseen history's JSON pruned
    "delete_events",       # PurgeStore: events, edges, redactions deleted
    "remember_layer",      # StateStore: a state group's layer cached as if stored
    "remember_event_nid",  # StateStore: event nids cached
    "remember_key",        # StateStore: state key nids cached
})


def table_writes(root: Path) -> list[str]:
    """``path:line: name`` of every attribute call of a table-writing method under
    ``root``'s checked packages."""
    found = []
    for package in CHECKED:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            calls = sorted((node.lineno, node.func.attr) for node in ast.walk(tree)
                           if isinstance(node, ast.Call)
                           and isinstance(node.func, ast.Attribute)
                           and node.func.attr in TABLE_WRITES)
            found += [f"{path.relative_to(root).as_posix()}:{line}: {name}"
                      for line, name in calls]
    return found


def test_only_the_roomserver_writes_the_room_graph() -> None:
    assert table_writes(REPO) == []


def test_the_check_sees_calls(tmp_path: Path) -> None:
    """It finds calls however they are reached, and only calls."""
    (tmp_path / "homeserver").mkdir()
    for package in CHECKED:
        (tmp_path / package).mkdir(exist_ok=True)
    (tmp_path / "homeserver" / "x.py").write_text(
        "async def f(db, events):\n"
        "    await db.events.persist_batch([])\n"
        "    await events.erase_redacted({})\n"
        "    g = db.purge.delete_events\n"  # not a call
        "    db.state.remember_layer(None)\n")
    assert table_writes(tmp_path) == ["homeserver/x.py:2: persist_batch",
                                      "homeserver/x.py:3: erase_redacted",
                                      "homeserver/x.py:5: remember_layer"]


# -- federation reads the room through the roomserver -------------------------------------

ROOM_STORES = frozenset({"EventStore", "StateStore"})
ROOM_STORE_ATTRIBUTES = frozenset({"events", "state"})


def _is_db(node: ast.expr) -> bool:
    """``db``, ``_db``, ``x.db`` or ``x._db``."""
    name = node.id if isinstance(node, ast.Name) else \
        node.attr if isinstance(node, ast.Attribute) else None
    return name in ("db", "_db")


def room_store_uses(root: Path, package: str = "federation") -> list[str]:
    """``path:line: what`` of every use of the event or state store under ``package``:
    ``db.events``, ``db.state`` (on a ``db`` or ``_db`` however reached), and the names
    ``EventStore`` and ``StateStore`` (imported, annotated or called)."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        uses: set[tuple[int, str]] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ROOM_STORE_ATTRIBUTES \
                    and _is_db(node.value):
                uses.add((node.lineno, f"db.{node.attr}"))
            elif isinstance(node, ast.Attribute) and node.attr in ROOM_STORES:
                uses.add((node.lineno, node.attr))
            elif isinstance(node, ast.Name) and node.id in ROOM_STORES:
                uses.add((node.lineno, node.id))
            elif isinstance(node, ast.ImportFrom):
                uses |= {(node.lineno, a.name) for a in node.names if a.name in ROOM_STORES}
            elif isinstance(node, ast.Constant) and node.value in ROOM_STORES:
                uses.add((node.lineno, node.value))  # a quoted annotation
        found += [f"{path.relative_to(root).as_posix()}:{line}: {what}"
                  for line, what in sorted(uses)]
    return found


def test_federation_reads_rooms_through_the_roomserver() -> None:
    assert room_store_uses(REPO) == []


def test_the_federation_check_sees_uses(tmp_path: Path) -> None:
    (tmp_path / "federation").mkdir()
    (tmp_path / "federation" / "x.py").write_text(
        "from storage.stores.events import EventStore\n"
        "async def f(fed, db, s: 'StateStore'):\n"
        "    await fed.db.events.get_event('$e')\n"
        "    g = db.state\n"
        "    self._db.state.x\n"
        "    await fed.db.users.get_user('@u:x')\n"  # not a room store
        "    h = fed.events\n")  # not a database
    assert room_store_uses(tmp_path) == ["federation/x.py:1: EventStore",
                                         "federation/x.py:2: StateStore",
                                         "federation/x.py:3: db.events",
                                         "federation/x.py:4: db.state",
                                         "federation/x.py:5: db.state"]
