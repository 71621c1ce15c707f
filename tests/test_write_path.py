"""The roomserver is the one writer of the room graph (issue 15): the events, edges,
state-group, state-key, current-state and room-head tables are written by
``roomserver/store.py`` alone, which keeps its event cache right as it does. Code outside
``roomserver/`` and ``storage/`` never calls the storage methods that write them; erasing
redacted content, dropping unseen history and purging go through ``roomserver.api``'s
``EventErasure``.

The check is by name: any attribute call of one of these names under the packages below,
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
