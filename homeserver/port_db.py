"""``ktchat port-db -c FILE --sqlite PATH [--postgres URL]``: move a server from SQLite to
PostgreSQL (README, "Moving to PostgreSQL").

The target is ``--postgres`` or else the config's ``database.url`` (the config the server will
run with afterwards). Stop the server first: a listener of the config that still answers is
reported, and the port refuses to start unless ``--force``. Run it again after an
interruption: it continues where it stopped. Exit status 0 when every table's row count
matches, 1 otherwise (or when it could not finish), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from homeserver.config import HomeserverConfig, load_config
from storage.port import BATCH_ROWS, OnBatch, Porter, PortError, TableCount, open_engines

EXIT_USAGE = 2


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    port = sub.add_parser("port-db", help="copy a SQLite database into PostgreSQL")
    port.add_argument("-c", "--config", required=True,
                      help="the config the server runs with on PostgreSQL")
    port.add_argument("--sqlite", required=True, help="the SQLite database file to copy")
    port.add_argument("--postgres",
                      help="target PostgreSQL URL (default: the config's database.url)")
    port.add_argument("--batch-size", type=int, default=BATCH_ROWS)
    port.add_argument("--force", action="store_true",
                      help="port even though the server seems to be running")
    port.set_defaults(func=port_db)


def _listening(config: HomeserverConfig) -> list[str]:
    """The config's listeners that accept connections now (the server is running?)."""
    found = []
    for listener in config.listeners:
        host = "127.0.0.1" if listener.bind in ("*", "0.0.0.0") else listener.bind  # noqa: S104
        try:
            with socket.create_connection((host, listener.port), timeout=0.5):
                found.append(listener.url)
        except OSError:
            pass
    return found


async def run_port(sqlite_path: str, target_url: str, *, batch_rows: int = BATCH_ROWS,
                   on_batch: OnBatch | None = None) -> list[TableCount]:
    """Copy (or continue copying) and verify; the row counts of every table."""
    source, target = open_engines(sqlite_path, target_url)
    try:
        porter = Porter(source, target, batch_rows=batch_rows, on_batch=on_batch)
        await porter.prepare()
        await porter.copy_all()
        return await porter.verify()
    finally:
        await source.dispose()
        await target.dispose()


def port_db(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    problems = []
    if not Path(args.sqlite).is_file():
        problems.append(f"--sqlite: no such file: {args.sqlite}")
    target = args.postgres or config.database.url
    if not target.startswith(("postgresql", "postgres://")):
        problems.append("--postgres: required when the config's database.url is not "
                        "PostgreSQL" if not args.postgres else
                        f"--postgres: not a PostgreSQL URL: {args.postgres}")
    if args.batch_size < 1:
        problems.append("--batch-size: must be at least 1")
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    running = _listening(config)
    if running:
        print("ktchat port-db: something answers on " + ", ".join(running) + ": stop the "
              "server before porting (what it writes meanwhile would be lost)"
              + ("; going on (--force)" if args.force else ""), file=sys.stderr)
        if not args.force:
            return 1
    started = time.monotonic()
    last_report = [started]

    def progress(table: str, copied: int) -> None:
        now = time.monotonic()
        if now - last_report[0] >= 5:
            last_report[0] = now
            print(f"  {table}: {copied} rows", flush=True)

    try:
        counts = asyncio.run(run_port(args.sqlite, target, batch_rows=args.batch_size,
                                      on_batch=progress))
    except PortError as e:
        print(f"ktchat port-db: {e}", file=sys.stderr)
        return 1
    except (OSError, SQLAlchemyError) as e:
        print(f"ktchat port-db: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        print("(run it again to continue where it stopped)", file=sys.stderr)
        return 1
    wrong = [c for c in counts if not c.matches]
    for count in counts:
        mark = "" if count.matches else f"   MISMATCH (PostgreSQL has {count.target})"
        print(f"  {count.table}: {count.source} rows{mark}")
    if wrong:
        print(f"ktchat port-db: row counts differ in {len(wrong)} tables: "
              + ", ".join(c.table for c in wrong), file=sys.stderr)
        return 1
    where = f"with {args.config}" if target == config.database.url else \
        f"with database.url set to {target}"
    print(f"ported {sum(c.source for c in counts)} rows in {len(counts)} tables in "
          f"{time.monotonic() - started:.1f} s; start the server {where}")
    return 0
