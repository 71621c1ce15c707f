"""``ktchat port-db`` at scale: a SQLite database with ``--messages`` messages in ``--rooms``
rooms (made as bench/search.py makes its: rooms over HTTP, messages through the events' real
write path), ported into a new PostgreSQL database; then the port's rate, the row counts it
verified, and how long the server takes to start on the result and answer a login.

PostgreSQL comes from ``KTCHAT_TEST_POSTGRES_URL``; the database is created and dropped.
Prints one JSON line.

    python bench/port_db.py [--messages 100000] [--rooms 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit, free_port, machine
from search import Texts, bulk_load, drop_backend, log, setup_rooms, sqlite_backend


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--setup-seconds", type=float, default=600.0)
    parser.add_argument("--load-seconds", type=float, default=1800.0)
    args = parser.parse_args()
    base = os.environ.get("KTCHAT_TEST_POSTGRES_URL")
    if not base:
        sys.exit("KTCHAT_TEST_POSTGRES_URL is required")
    admin_dsn = "postgresql://" + base.split("://", 1)[1]
    name = "ktchat_bench_port_" + secrets.token_hex(4)
    target = "postgresql+asyncpg://" + admin_dsn.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name

    backend = sqlite_backend()
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    try:
        async with aiohttp.ClientSession() as session:
            users, _ = await setup_rooms(backend, session, args.rooms, args.setup_seconds)
        load = await bulk_load(backend, users, Texts(random.Random(args.seed), args.messages),
                               args)
        assert backend.sqlite_path is not None
        config_path = backend.workdir / "port.yaml"
        port = free_port()
        await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "homeserver", "generate-config",
                             "--server-name", "bench.local", "--data-dir",
                             str(backend.workdir / "pg"), "--client-port", str(port),
                             "--federation-port", str(free_port())],
            check=True, capture_output=True, cwd=REPO)
        config = yaml.safe_load((backend.workdir / "pg" / "homeserver.yaml").read_text())
        config["database"] = {"url": target}
        config["federation"] = {"enabled": False}
        config_path.write_text(yaml.safe_dump(config))
        log("porting")
        started = time.monotonic()
        ported = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "homeserver", "port-db", "-c",
                             str(config_path), "--sqlite", str(backend.sqlite_path)],
            capture_output=True, text=True, cwd=REPO, timeout=3600)
        seconds = time.monotonic() - started
        rows = {line.strip().split(":")[0]: int(line.split(":")[1].split()[0])
                for line in ported.stdout.splitlines() if line.startswith("  ")}
        started = time.monotonic()
        server = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "homeserver", "run", "-c",
                               str(config_path)], cwd=REPO, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            answered = None
            async with aiohttp.ClientSession() as session:
                while time.monotonic() - started < 120 and answered is None:
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                            if resp.status == 200:
                                answered = time.monotonic() - started
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)
        finally:
            server.terminate()
            await asyncio.to_thread(server.wait, 30)
        emit({"bench": "port_db", "messages": load["messages"], "rooms": args.rooms,
              "exit_status": ported.returncode,
              "rows": sum(rows.values()), "events": rows.get("events"),
              "tables": len(rows), "port_seconds": round(seconds, 1),
              "rows_per_s": round(sum(rows.values()) / seconds) if seconds else None,
              "server_ready_on_postgres_s": round(answered, 1) if answered else None,
              "machine": machine()})
    finally:
        await drop_backend(backend)
        conn = await asyncpg.connect(admin_dsn)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
