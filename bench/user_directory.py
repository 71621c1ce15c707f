"""The user directory at scale: ``--users`` users (100,000 by default) in ``--rooms`` rooms,
then ``POST /user_directory/search`` over HTTP, on SQLite and on PostgreSQL.

For each backend:

1. load: the database is created (migrated) in this process and the directory's tables are
   filled through ``storage.user_directory_index`` (the functions the profile writes and the
   migration use): every user with a display name of one or two words from a vocabulary of
   ~3,000 generated names (a few without a display name), users spread over the rooms
   (``--per-room`` each), a tenth of the rooms public. The searcher is in ``--searcher-rooms``
   rooms.
2. search: the server is started on that database, the searcher is registered, and one client
   sends ``--queries`` searches one after another (limit 10): one-, two- and three-letter
   prefixes, whole names, two-word names, user IDs, and words nobody has. p50/p99 per kind and
   overall, and the server's peak RSS; then the same with ``user_directory.search_all_users``.

PostgreSQL comes from ``KTCHAT_TEST_POSTGRES_URL``, in a throwaway role and schema (as
``bench/search.py``). Prints one JSON line. Every loop is bounded in count and time.

    python bench/user_directory.py [--users 100000] [--backends sqlite,postgres] [--queries 600]
    python bench/user_directory.py --users 5000 --backends sqlite --queries 100   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from sqlalchemy import Connection, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, BenchServer, emit, machine, percentiles
from search import Backend, drop_backend, log, postgres_backend, sqlite_backend

sys.path.insert(0, str(REPO))
from storage import user_directory_index
from storage.schema import user_directory_public_rooms, user_directory_rooms

PASSWORD = "benchmark password"
POSTGRES_URL_ENV = "KTCHAT_TEST_POSTGRES_URL"
SERVER = "bench.local"
SEARCHER = f"@searcher:{SERVER}"
_SYLLABLES = ["ka", "lo", "mi", "ra", "sen", "tor", "vel", "an", "bri", "dan", "el", "fi",
              "gor", "ha", "is", "jo", "kel", "lu", "mar", "no", "pe", "qui", "ros", "sa",
              "ti", "ul", "vi", "wen", "xa", "yo", "zed"]


def vocabulary(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))))
    return sorted(words)


async def fill(backend: Backend, args: argparse.Namespace, names: list[str],
               rng: random.Random) -> dict[str, Any]:
    db = backend.database()
    await db.open()
    started = time.monotonic()
    users: list[str] = []

    def chunk(start: int, end: int) -> Any:
        def run(conn: Connection) -> None:
            rows = []
            for i in range(start, end):
                user_id = f"@u{i}:{SERVER}"
                users.append(user_id)
                roll = rng.random()
                name = None if roll < 0.05 else rng.choice(names).capitalize() if roll < 0.4 \
                    else f"{rng.choice(names).capitalize()} {rng.choice(names).capitalize()}"
                rows.append((user_id, name, f"mxc://{SERVER}/a{i}" if roll < 0.5 else None))
            user_directory_index.upsert_users(conn, rows)
        return run

    step = 2000
    for start in range(0, args.users, step):
        await db.engine.run_write(chunk(start, min(args.users, start + step)))
    loaded_users = time.monotonic() - started

    def rooms(conn: Connection) -> None:
        memberships = [{"user_id": users[(r * args.per_room + j) % len(users)],
                        "room_id": f"!r{r}:{SERVER}", "public": r % 10 == 0}
                       for r in range(args.rooms) for j in range(args.per_room)]
        memberships += [{"user_id": SEARCHER, "room_id": f"!r{r}:{SERVER}",
                         "public": r % 10 == 0}
                        for r in rng.sample(range(args.rooms), args.searcher_rooms)]
        for i in range(0, len(memberships), 5000):
            conn.execute(user_directory_rooms.insert(), memberships[i:i + 5000])
        conn.execute(user_directory_public_rooms.insert(),
                     [{"room_id": f"!r{r}:{SERVER}"} for r in range(0, args.rooms, 10)])
        if conn.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))

    await db.engine.run_write(rooms)
    await db.close()
    return {"users_per_s": round(args.users / loaded_users),
            "load_seconds": round(time.monotonic() - started, 1)}


def queries(rng: random.Random, names: list[str], count: int) -> list[tuple[str, str]]:
    kinds = {
        "prefix1": lambda: rng.choice(names)[:1],
        "prefix2": lambda: rng.choice(names)[:2],
        "prefix3": lambda: rng.choice(names)[:3],
        "name": lambda: rng.choice(names),
        "two_words": lambda: f"{rng.choice(names)} {rng.choice(names)[:3]}",
        "user_id": lambda: f"@u{rng.randrange(1000)}",
        "nobody": lambda: "qqqzz" + str(rng.randrange(1000)),
    }
    order = list(kinds) * (count // len(kinds) + 1)
    rng.shuffle(order)
    return [(kind, kinds[kind]()) for kind in order[:count]]


async def run_searches(backend: Backend, args: argparse.Namespace,
                       plan: list[tuple[str, str]], search_all: bool) -> dict[str, Any]:
    server = BenchServer(database_url=backend.url)
    server.stop()  # started with the default config: set search_all_users
    config_path = server.dir / "homeserver.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["user_directory"] = {"search_all_users": search_all}
    config_path.write_text(yaml.safe_dump(config))
    server = _restart(server)
    try:
        async with aiohttp.ClientSession() as session:
            searcher = await _searcher(server, session)
            headers = {"Authorization": f"Bearer {searcher['access_token']}"}
            by_kind: dict[str, list[float]] = {}
            found = 0
            deadline = time.monotonic() + args.seconds
            for kind, term in plan:
                if time.monotonic() > deadline:
                    break
                start = time.perf_counter()
                async with session.post(f"{server.base}/_matrix/client/v3/user_directory/search",
                                        json={"search_term": term, "limit": 10},
                                        headers=headers) as resp:
                    body = await resp.json()
                    resp.raise_for_status()
                by_kind.setdefault(kind, []).append((time.perf_counter() - start) * 1000)
                found += len(body["results"])
            every = [ms for samples in by_kind.values() for ms in samples]
            return {"queries": len(every),
                    "results_per_query": round(found / max(1, len(every)), 2),
                    **percentiles(every),
                    "by_kind": {k: percentiles(v) for k, v in sorted(by_kind.items())},
                    "server_peak_rss_mib": server.peak_rss_mib()}
    finally:
        server.stop()


def _restart(old: BenchServer) -> BenchServer:
    """Start a server again in ``old``'s directory (its edited config)."""
    import socket
    import subprocess

    old.proc = subprocess.Popen(
        [sys.executable, "-m", "homeserver", "run", "-c", str(old.dir / "homeserver.yaml")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(old.dir / "server.log", "a"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", old.port), timeout=0.5).close()
            return old
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


async def _searcher(server: BenchServer, session: aiohttp.ClientSession) -> dict[str, Any]:
    try:
        return await server.register(session, "searcher", PASSWORD)
    except aiohttp.ClientResponseError:  # registered by the first run: log in
        async with session.post(f"{server.base}/_matrix/client/v3/login", json={
                "type": "m.login.password", "password": PASSWORD,
                "identifier": {"type": "m.id.user", "user": "searcher"}}) as resp:
            resp.raise_for_status()
            return await resp.json()  # type: ignore[no-any-return]


async def run_backend(backend: Backend, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(7)
    names = vocabulary(rng, 3000)
    figures: dict[str, Any] = {"load": await fill(backend, args, names, rng)}
    log(f"{backend.name}: loaded {args.users} users")
    plan = queries(rng, names, args.queries)
    figures["search"] = await run_searches(backend, args, plan, False)
    log(f"{backend.name}: searched, p99 {figures['search']['p99_ms']} ms")
    figures["search_all_users"] = await run_searches(backend, args, plan, True)
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rooms", type=int, default=2000)
    parser.add_argument("--per-room", type=int, default=50)
    parser.add_argument("--searcher-rooms", type=int, default=20)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--queries", type=int, default=700)
    parser.add_argument("--seconds", type=float, default=300.0, help="bound of the searches")
    args = parser.parse_args()
    results: dict[str, Any] = {"bench": "user_directory", "users": args.users,
                               "rooms": args.rooms, "machine": machine()}
    for name in args.backends.split(","):
        if name == "postgres":
            base = os.environ.get(POSTGRES_URL_ENV)
            if not base:
                log(f"postgres: skipped ({POSTGRES_URL_ENV} is not set)")
                continue
            backend = await postgres_backend(base)
        else:
            backend = sqlite_backend()
        try:
            results[name] = await run_backend(backend, args)
        finally:
            await drop_backend(backend)
    emit(results)


if __name__ == "__main__":
    asyncio.run(main())
