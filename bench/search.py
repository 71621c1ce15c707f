"""Full-text search at scale: index ``--messages`` messages across ``--rooms`` rooms, then
search, on SQLite and on PostgreSQL.

For each backend:

1. setup: a real server creates the rooms over HTTP (8 at a time) for one user, who is in all
   of them; a second user is invited to and joins every tenth room. The server is stopped.
2. load: the database is opened in this process and the messages are written in batches of
   ``--batch`` through ``EventStore.persist_batch``, the events' real write path (events,
   edges, room heads and the search index in one transaction per batch). Texts are varied:
   a Zipf-distributed vocabulary of ~4,000 words, 8-25 words a message, some Chinese
   sentences (written without spaces), now and then a rare ticket-like token. The index
   build rate is messages per second spent inside ``persist_batch``.
3. size: the database's size (SQLite: the file and its WAL after a checkpoint, per table from
   ``dbstat``; PostgreSQL: ``pg_total_relation_size`` of the schema's tables, after ANALYZE
   as autovacuum would have done).
4. search: the server is started again on that database and one client sends ``--queries``
   searches one after another (``POST /search``, limit 10): common words, rare words, very
   rare tokens, two-word queries and Chinese words, each ordered by rank and by recency, and
   common words by the user who is in a tenth of the rooms. p50/p99 per category and overall,
   and the server's peak RSS.
5. rebuild: the index is dropped and rebuilt from the stored events the way the migration
   that introduced it backfills it (``storage/migrations.py``); its rate and size.

PostgreSQL comes from ``KTCHAT_TEST_POSTGRES_URL`` (e.g. postgresql://postgres@127.0.0.1/test);
the run uses a throwaway role and a schema of the same name (a role's own schema is first on
its default ``search_path``, so the unmodified server uses it), both dropped at the end.
Prints one JSON line. Every loop is bounded in count and time.

    python bench/search.py [--messages 1000000] [--rooms 1000] [--backends sqlite,postgres]
                           [--queries 600] [--seconds 300]
    python bench/search.py --messages 20000 --rooms 100 --backends sqlite   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
from sqlalchemy import Connection, func, select, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, BenchServer, emit, machine, percentiles, run_bounded

sys.path.insert(0, str(REPO))
from core.events.canonical import encode_canonical
from core.events.room_versions import KNOWN_ROOM_VERSIONS
from core.rooms.auth import auth_types_for_event
from storage import Database, search_index
from storage.schema import current_state, events, redactions, rooms
from storage.search_text import INDEXED
from storage.stores.events import PersistItem

PASSWORD = "benchmark password"
POSTGRES_URL_ENV = "KTCHAT_TEST_POSTGRES_URL"
V3 = "/_matrix/client/v3"
SECOND_USER_EVERY = 10  # the second user is in every tenth room
SECOND_USER_SHARE = 0.3  # of the messages in those rooms
CHINESE_SHARE = 0.04
NEEDLE_SHARE = 0.002  # messages holding a rare token; ~10 messages per token
REBUILD_SELECT = 1000  # rows per select when rebuilding (as the migration)
REBUILD_TXN_SELECTS = 50  # selects per rebuild transaction
DUMMY_HASH = base64.b64encode(hashlib.sha256(b"bench").digest()).decode().rstrip("=")
DUMMY_SIGNATURE = base64.b64encode(hashlib.sha512(b"bench").digest()).decode().rstrip("=")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- texts ----------------------------------------------------------------------------------

COMMON = """the to and you that for this with have are not but was what just can all
will about get like know out there they one think yes would there good time now when
from some could also need people see right here going make really well then back today
work because more right thanks sure want how much even over why look still only let new
tomorrow please meeting server deploy release build test issue fix update check link
morning afternoon week team project review merge branch code data database room message
team lunch coffee weekend holiday call video later maybe great nice cool okay done
working problem error crash logs version client phone laptop office home remote
""".split()
# Chinese sentences (no spaces between words); the query words below occur in several.
CHINESE = [
    "我们明天下午开会讨论项目进度", "服务器昨天晚上又出问题了", "请把测试报告发到群里",
    "数据库迁移已经完成了", "这个问题我们下周再讨论", "会议改到明天上午十点",
    "新版本已经部署到生产环境", "大家周末愉快", "谁能帮我看一下这个错误",
    "项目的截止日期是下个月", "我已经修复了登录的问题", "今天的会议记录在文档里",
    "服务器的内存占用太高了", "测试环境暂时不能用", "请大家更新一下客户端",
    "搜索功能现在快多了", "明天我请假一天", "这个需求需要产品经理确认",
    "部署脚本有一个小错误", "数据库备份每天凌晨执行", "我们需要更多的测试用例",
    "午饭吃什么", "这个周末有人加班吗", "文档已经更新了请查看",
]
CHINESE_WORDS = ["会议", "服务器", "数据库", "测试", "项目", "明天", "问题", "部署", "文档"]


class Texts:
    """Message bodies: Zipf-distributed words, some Chinese, some rare tokens."""

    def __init__(self, rng: random.Random, messages: int, vocabulary: int = 4000) -> None:
        self.rng = rng
        words = list(dict.fromkeys(COMMON))
        seen = set(words)
        onsets = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t",
                  "v", "w", "z", "br", "cr", "dr", "fl", "gr", "pl", "st", "tr", "sh", "ch",
                  "th", "qu"]
        vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io"]
        codas = ["", "", "", "n", "r", "s", "l", "t", "m", "nd", "st"]
        while len(words) < vocabulary:
            word = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                           for _ in range(rng.choice((2, 2, 3, 3, 4))))
            if word not in seen:
                seen.add(word)
                words.append(word)
        self.words = words
        weights = [1 / (rank + 1) for rank in range(len(words))]
        self.cum_weights = list(_accumulate(weights))
        self.needles = [f"{rng.choice(words[len(COMMON):])}{rng.randrange(100, 1000)}"
                        for _ in range(max(1, int(messages * NEEDLE_SHARE / 10)))]

    def message(self) -> str:
        rng = self.rng
        if rng.random() < CHINESE_SHARE:
            sentence = rng.choice(CHINESE)
            if rng.random() < 0.6:
                return sentence
            extra = " ".join(rng.choices(self.words, cum_weights=self.cum_weights,
                                         k=rng.randint(3, 8)))
            return f"{sentence} {extra}" if rng.random() < 0.5 else f"{extra} {sentence}"
        picked = rng.choices(self.words, cum_weights=self.cum_weights, k=rng.randint(8, 25))
        if rng.random() < NEEDLE_SHARE:
            picked[rng.randrange(len(picked))] = rng.choice(self.needles)
        body = " ".join(picked)
        return body[0].upper() + body[1:] + rng.choice((".", ".", "", "?", "!", " :)"))


def _accumulate(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for v in values:
        total += v
        out.append(total)
    return out


# -- databases ------------------------------------------------------------------------------


@dataclass
class Backend:
    """One database to run on: its URL for the server and the in-process ``Database``, and
    how to size and drop it."""

    name: str
    url: str
    workdir: Path
    sqlite_path: Path | None = None
    admin_dsn: str | None = None  # PostgreSQL: the connection that made the role and schema
    schema: str | None = None
    role_dsn: str | None = None

    def database(self) -> Database:
        return Database(self.url, postgres_search_path=self.schema)


def sqlite_backend() -> Backend:
    workdir = Path(tempfile.mkdtemp(prefix="ktchat-bench-search-"))
    path = workdir / "homeserver.db"
    return Backend("sqlite", f"sqlite+aiosqlite:///{path}", workdir, sqlite_path=path)


async def postgres_backend(base: str) -> Backend:
    """A throwaway role and its own schema (first on the role's default search_path)."""
    url = make_url("postgresql+asyncpg://" + base.split("://", 1)[1])
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = "kb_" + secrets.token_hex(6)
    password = secrets.token_hex(16)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
        try:
            await conn.execute(f'CREATE SCHEMA "{name}" AUTHORIZATION "{name}"')
        except Exception:
            await conn.execute(f'DROP ROLE "{name}"')
            raise
    finally:
        await conn.close()
    role_url = url.set(username=name, password=password)
    return Backend("postgres", role_url.render_as_string(hide_password=False),
                   Path(tempfile.mkdtemp(prefix="ktchat-bench-search-")),
                   admin_dsn=admin_dsn, schema=name,
                   role_dsn=role_url.set(drivername="postgresql")
                   .render_as_string(hide_password=False))


async def drop_backend(backend: Backend) -> None:
    shutil.rmtree(backend.workdir, ignore_errors=True)
    if backend.admin_dsn is None:
        return
    conn = await asyncpg.connect(backend.admin_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{backend.schema}" CASCADE')
        await conn.execute(f'DROP ROLE IF EXISTS "{backend.schema}"')
    finally:
        await conn.close()


def _mib(size: float) -> float:
    return round(size / 2**20, 1)


async def database_size(backend: Backend, messages: int) -> dict[str, Any]:
    """Size on disk: the whole database, the events table and the search index (each with
    its indexes)."""
    if backend.sqlite_path is not None:
        path = backend.sqlite_path

        def measure() -> dict[str, Any]:
            conn = sqlite3.connect(path)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                wal = Path(f"{path}-wal")
                file_size = path.stat().st_size
                wal_size = wal.stat().st_size if wal.exists() else 0
                owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master"))
                free = conn.execute("PRAGMA freelist_count").fetchone()[0] * \
                    conn.execute("PRAGMA page_size").fetchone()[0]
                per_table: dict[str, int] = {}
                try:
                    for name, size in conn.execute(
                            "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
                        table = owner.get(name, name)
                        if table.startswith("event_search"):
                            table = "event_search"
                        per_table[table] = per_table.get(table, 0) + int(size)
                except sqlite3.OperationalError:  # built without dbstat
                    pass
            finally:
                conn.close()
            return {"total_mib": _mib(file_size + wal_size), "file_mib": _mib(file_size),
                    "wal_mib": _mib(wal_size), "free_pages_mib": _mib(free),
                    "events_mib": _mib(per_table.get("events", 0)),
                    "event_search_mib": _mib(per_table.get("event_search", 0)),
                    "bytes_per_message": round((file_size + wal_size) / max(1, messages))}

        return await asyncio.to_thread(measure)
    assert backend.role_dsn is not None
    conn = await asyncpg.connect(backend.role_dsn)
    try:
        rows = await conn.fetch(
            "SELECT c.relname, pg_total_relation_size(c.oid) AS total FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'm')", backend.schema)
    finally:
        await conn.close()
    sizes = {r["relname"]: int(r["total"]) for r in rows}
    total = sum(sizes.values())
    return {"total_mib": _mib(total), "events_mib": _mib(sizes.get("events", 0)),
            "event_search_mib": _mib(sizes.get("event_search", 0)),
            "bytes_per_message": round(total / max(1, messages)),
            "note": "sum of pg_total_relation_size (heap, indexes, TOAST) of the schema's tables"}


async def analyze_postgres(backend: Backend) -> float:
    """ANALYZE the schema's tables (what autovacuum does after a bulk load); seconds."""
    assert backend.role_dsn is not None
    started = time.monotonic()
    conn = await asyncpg.connect(backend.role_dsn)
    try:
        names = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1", backend.schema)
        for row in names:
            await conn.execute(f'ANALYZE "{backend.schema}"."{row["tablename"]}"')
    finally:
        await conn.close()
    return round(time.monotonic() - started, 1)


# -- the server -----------------------------------------------------------------------------


def stop_server(server: BenchServer) -> dict[str, Any]:
    """Stop the server, report the errors it logged, and remove its directory."""
    server.stop()
    errors = 0
    with contextlib.suppress(OSError):
        lines = (server.dir / "server.log").read_text(errors="replace").splitlines()
        errors = sum(" ERROR " in line for line in lines)
        first = next((i for i, line in enumerate(lines) if " ERROR " in line), None)
        if first is not None:  # the first error with its traceback
            end = next((j for j in range(first + 1, len(lines))
                        if lines[j][:4].isdigit()), len(lines))
            for line in lines[first:min(end, first + 60)]:
                log(f"server log: {line}")
    shutil.rmtree(server.dir, ignore_errors=True)
    return {"server_log_errors": errors}




@dataclass
class Users:
    searcher: dict[str, Any] = field(default_factory=dict)  # in every room
    second: dict[str, Any] = field(default_factory=dict)  # in every tenth room


async def setup_rooms(backend: Backend, session: aiohttp.ClientSession, room_count: int,
                      seconds: float) -> tuple[Users, dict[str, Any]]:
    server = BenchServer(database_url=backend.url)
    try:
        users = Users(await server.register(session, "searcher", PASSWORD),
                      await server.register(session, "second", PASSWORD))

        async def call(method: str, path: str, token: str, body: Any) -> dict[str, Any]:
            async with session.request(method, server.base + V3 + path, json=body,
                                       headers={"Authorization": f"Bearer {token}"}) as resp:
                data = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"{method} {path}: {resp.status} {data}")
                return data  # type: ignore[no-any-return]

        def create(i: int) -> Callable[[], Any]:
            async def job() -> None:
                invite = i % SECOND_USER_EVERY == 0
                room = await call("POST", "/createRoom", users.searcher["access_token"], {
                    "preset": "private_chat", "name": f"room {i}",
                    **({"invite": [users.second["user_id"]]} if invite else {})})
                if invite:
                    await call("POST", f"/join/{quote(room['room_id'])}",
                               users.second["access_token"], {})
            return job

        started = time.monotonic()
        created = await run_bounded([create(i) for i in range(room_count)], 8, started + seconds)
        elapsed = time.monotonic() - started
    finally:
        logged = stop_server(server)
    return users, {"rooms_created": created, "seconds": round(elapsed, 1),
                   "rooms_per_s": round(created / elapsed, 1), **logged}


# -- the bulk load ----------------------------------------------------------------------------


@dataclass
class RoomHead:
    room_id: str
    version: str
    state_group: int | None
    last_event: str
    depth: int
    auth: dict[str, list[str]]  # sender -> auth event IDs
    members: list[str]


async def room_heads(db: Database, users: Users) -> list[RoomHead]:
    wanted = {users.searcher["user_id"], users.second["user_id"]}
    async with db.engine.read() as conn:
        room_rows = (await conn.execute(select(
            rooms.c.room_id, rooms.c.room_version, rooms.c.current_state_group,
            rooms.c.forward_extremities, rooms.c.depth).order_by(rooms.c.created_ts))).all()
        state_rows = (await conn.execute(select(
            current_state.c.room_id, current_state.c.type, current_state.c.state_key,
            current_state.c.event_id, current_state.c.membership).where(
            current_state.c.type.in_(["m.room.create", "m.room.power_levels",
                                      "m.room.member"])))).all()
    state: dict[str, dict[tuple[str, str], tuple[str, str | None]]] = {}
    for r in state_rows:
        state.setdefault(r.room_id, {})[(r.type, r.state_key)] = (r.event_id, r.membership)
    heads = []
    for r in room_rows:
        room_state = state.get(r.room_id, {})
        members = [u for u in sorted(wanted)
                   if room_state.get(("m.room.member", u), ("", None))[1] == "join"]
        if users.searcher["user_id"] not in members:
            continue
        auth = {}
        for user in members:
            # As the persister picks them (v12 leaves the create event out).
            keys = sorted(auth_types_for_event(KNOWN_ROOM_VERSIONS[r.room_version],
                                               "m.room.message", None, user, {}))
            auth[user] = [room_state[k][0] for k in keys if k in room_state]
        extremities = json.loads(r.forward_extremities)
        heads.append(RoomHead(r.room_id, r.room_version, r.current_state_group,
                              extremities[-1], int(r.depth), auth, members))
    return heads


class Generator:
    """Synthetic m.room.message PersistItems continuing each room's DAG."""

    def __init__(self, heads: list[RoomHead], texts: Texts, rng: random.Random, nid: int,
                 stream: int, tag: str) -> None:
        self.heads = heads
        self.texts = texts
        self.rng = rng
        self.nid = nid
        self.stream = stream
        self.tag = tag
        self.ts = int(time.time() * 1000)

    def batch(self, size: int) -> list[PersistItem]:
        rng = self.rng
        items = []
        for _ in range(size):
            head = self.heads[rng.randrange(len(self.heads))]
            sender = head.members[0]
            if len(head.members) > 1 and rng.random() < SECOND_USER_SHARE:
                sender = head.members[1]
            self.nid += 1
            self.stream += 1
            self.ts += 1
            head.depth += 1
            pdu: dict[str, Any] = {
                "auth_events": head.auth[sender],
                "content": {"body": self.texts.message(), "msgtype": "m.text"},
                "depth": head.depth,
                "hashes": {"sha256": DUMMY_HASH},
                "origin_server_ts": self.ts,
                "prev_events": [head.last_event],
                "room_id": head.room_id,
                "sender": sender,
                "signatures": {"bench.local": {"ed25519:bench": DUMMY_SIGNATURE}},
                "type": "m.room.message",
            }
            digest = hashlib.sha256(f"{self.tag}:{self.nid}".encode()).digest()
            event_id = "$" + base64.urlsafe_b64encode(digest).decode().rstrip("=")
            items.append(PersistItem(
                event_id=event_id, room_id=head.room_id,
                pdu_json=encode_canonical(pdu).decode(), nid=self.nid,
                stream_ordering=self.stream, depth=head.depth, type="m.room.message",
                state_key=None, sender=sender, origin_server_ts=self.ts, received_ts=self.ts,
                prev_event_ids=[head.last_event], auth_event_ids=head.auth[sender],
                state_group_before=head.state_group, state_group_after=head.state_group,
                extremities_after=[event_id], pdu=pdu, room_version=head.version))
            head.last_event = event_id
        return items


async def bulk_load(backend: Backend, users: Users, texts: Texts, args: argparse.Namespace
                    ) -> dict[str, Any]:
    db = backend.database()
    await db.open()
    try:
        heads = await room_heads(db, users)
        async with db.engine.read() as conn:
            nid = (await conn.execute(select(func.max(events.c.nid)))).scalar() or 0
            stream = (await conn.execute(select(func.max(events.c.stream_ordering)))
                      ).scalar() or 0
        generator = Generator(heads, texts, random.Random(args.seed + 1), int(nid),
                              int(stream), secrets.token_hex(4))
        written = 0
        write_s = generate_s = 0.0
        batch_ms: list[float] = []
        started = time.monotonic()
        deadline = started + args.load_seconds
        next_report = started + 30
        while written < args.messages and time.monotonic() < deadline:
            t = time.perf_counter()
            items = generator.batch(min(args.batch, args.messages - written))
            generate_s += time.perf_counter() - t
            t = time.perf_counter()
            await db.events.persist_batch(items)
            elapsed = time.perf_counter() - t
            write_s += elapsed
            batch_ms.append(elapsed * 1000)
            written += len(items)
            if time.monotonic() > next_report:
                next_report += 30
                log(f"  {backend.name}: {written} messages, "
                    f"{written / write_s:.0f}/s in persist_batch")
        wall = time.monotonic() - started
    finally:
        await db.close()
    return {"messages": written, "rooms": len(heads),
            "index_build_rate_msgs_per_s": round(written / max(write_s, 1e-9)),
            "rate_note": "write path incl. events: messages / seconds inside persist_batch",
            "write_seconds": round(write_s, 1), "generate_seconds": round(generate_s, 1),
            "wall_seconds": round(wall, 1), "batch_size": args.batch,
            "batch_ms": percentiles(batch_ms)}


async def rebuild_index(backend: Backend, seconds: float) -> dict[str, Any]:
    """Drop the index and backfill it from the stored events as the migration that created
    it does (same query, ``search_index.index_rows`` + ``add``), ``REBUILD_SELECT`` rows per
    select and ``REBUILD_TXN_SELECTS`` selects per transaction."""
    db = backend.database()
    await db.open()
    try:
        index, key = search_index.index_and_key(db.is_sqlite)
        async with db.engine.read() as conn:
            before = int((await conn.execute(select(func.count()).select_from(index))
                          ).scalar() or 0)

        def drop(conn: Connection) -> None:
            conn.execute(text("DROP TABLE event_search"))
            search_index.create_index(conn)

        t = time.monotonic()
        await db.engine.run_write(drop)
        drop_s = time.monotonic() - t
        query = (select(events.c.nid, events.c.json)
                 .where(events.c.type.in_(list(INDEXED)),
                        events.c.stream_ordering.is_not(None),
                        events.c.rejected_reason.is_(None),
                        ~select(redactions.c.event_id)
                        .where(redactions.c.redacts == events.c.event_id).exists())
                 .order_by(events.c.nid))
        after = 0
        done = 0
        finished = False

        def chunk(conn: Connection) -> tuple[int, int, bool]:
            last, count = after, 0
            for _ in range(REBUILD_TXN_SELECTS):
                rows = conn.execute(query.where(events.c.nid > last)
                                    .limit(REBUILD_SELECT)).all()
                if not rows:
                    return last, count, True
                search_index.add(conn, search_index.index_rows(
                    (r.nid, json.loads(r.json)) for r in rows))
                last, count = rows[-1].nid, count + len(rows)
            return last, count, False

        started = time.monotonic()
        deadline = started + seconds
        while not finished and time.monotonic() < deadline:
            after, count, finished = await db.engine.run_write(chunk)
            done += count
        elapsed = time.monotonic() - started
        async with db.engine.read() as conn:
            rebuilt = int((await conn.execute(select(func.count(key))
                                              .select_from(index))).scalar() or 0)
    finally:
        await db.close()
    return {"events_read": done, "index_rows_before": before, "index_rows_after": rebuilt,
            "complete": finished, "seconds": round(elapsed, 1),
            "rows_per_s": round(done / max(elapsed, 1e-9)), "drop_seconds": round(drop_s, 1),
            "select_rows": REBUILD_SELECT,
            "rows_per_transaction": REBUILD_SELECT * REBUILD_TXN_SELECTS}


# -- searching ------------------------------------------------------------------------------


def query_plan(texts: Texts, rng: random.Random) -> dict[str, list[tuple[str, str, str]]]:
    """Category -> a pool of (user, search term, order_by) to draw from."""
    words = texts.words
    common = [w for w in words[:60] if len(w) >= 3][:25]
    mid = words[40:400]
    rare = [w for w in words[int(len(words) * 0.6):] if len(w) >= 6]
    pools: dict[str, list[tuple[str, str, str]]] = {}
    for order in ("rank", "recent"):
        pools[f"common_{order}"] = [("searcher", w, order) for w in common]
        pools[f"rare_{order}"] = [("searcher", w, order) for w in rng.sample(rare, 50)]
        pools[f"needle_{order}"] = [("searcher", w, order) for w in texts.needles[:50]]
        pools[f"two_words_{order}"] = [
            ("searcher", f"{a} {b}", order) for a, b in
            (rng.sample(mid, 2) for _ in range(50))]
        pools[f"chinese_{order}"] = [("searcher", w, order) for w in CHINESE_WORDS]
    pools["common_rank_tenth_of_rooms"] = [("second", w, "rank") for w in common]
    return pools


async def run_searches(backend: Backend, users: Users, texts: Texts, args: argparse.Namespace
                       ) -> dict[str, Any]:
    rng = random.Random(args.seed + 2)
    pools = query_plan(texts, rng)
    started = time.monotonic()
    server = BenchServer(database_url=backend.url)
    start_s = time.monotonic() - started
    tokens = {"searcher": users.searcher["access_token"],
              "second": users.second["access_token"]}
    latencies: dict[str, list[float]] = {name: [] for name in pools}
    counts: dict[str, list[int]] = {name: [] for name in pools}
    returned: dict[str, list[int]] = {name: [] for name in pools}
    warmup: dict[str, float] = {}
    errors: list[str] = []
    try:
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def search(category: str, user: str, term: str, order: str) -> None:
                body = {"search_categories": {"room_events": {
                    "search_term": term, "order_by": order, "filter": {"limit": 10}}}}
                t = time.perf_counter()
                async with session.post(f"{server.base}{V3}/search", json=body,
                                        headers={"Authorization": f"Bearer {tokens[user]}"}
                                        ) as resp:
                    raw = await resp.read()
                ms = (time.perf_counter() - t) * 1000
                if resp.status != 200:
                    errors.append(f"{category} {term!r}: {resp.status} {raw[:200]!r}")
                    return
                found = json.loads(raw)["search_categories"]["room_events"]
                if category not in warmup:
                    warmup[category] = round(ms, 1)  # the first (cold) query: not counted
                    return
                latencies[category].append(ms)
                counts[category].append(int(found.get("count", 0)))
                returned[category].append(len(found.get("results", [])))

            names = list(pools)
            deadline = time.monotonic() + args.seconds
            issued = 0
            search_started = time.monotonic()
            while issued < args.queries + len(names) and time.monotonic() < deadline:
                category = names[issued % len(names)]
                user, term, order = rng.choice(pools[category])
                await search(category, user, term, order)
                issued += 1
            search_s = time.monotonic() - search_started
        peak = server.peak_rss_mib()
    finally:
        logged = stop_server(server)
    for line in errors[:10]:
        log(f"search error: {line}")
    every = [ms for samples in latencies.values() for ms in samples]
    by_category = {}
    for name, samples in latencies.items():
        by_category[name] = {
            "n": len(samples), **percentiles(samples),
            "median_count": statistics.median(counts[name]) if counts[name] else 0,
            "median_results": statistics.median(returned[name]) if returned[name] else 0,
            "example": pools[name][0][1]}
    return {"queries": len(every), "errors": len(errors), "seconds": round(search_s, 1),
            "queries_per_s": round(len(every) / max(search_s, 1e-9), 2),
            "overall": percentiles(every), "by_category": by_category,
            "warmup_first_query_ms": warmup, "server_start_s": round(start_s, 1),
            "server_peak_rss_mib": peak, **logged}


# -- one backend, and all ---------------------------------------------------------------------


async def run_backend(backend: Backend, args: argparse.Namespace) -> dict[str, Any]:
    phases: dict[str, float] = {}
    out: dict[str, Any] = {}

    def phase(name: str, since: float) -> None:
        phases[name] = round(time.monotonic() - since, 1)
        log(f"{backend.name}: {name} done in {phases[name]:.0f} s")

    t = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        users, out["setup"] = await setup_rooms(backend, session, args.rooms,
                                                args.setup_seconds)
    phase("setup_rooms", t)
    texts = Texts(random.Random(args.seed), args.messages)
    t = time.monotonic()
    out["load"] = await bulk_load(backend, users, texts, args)
    phase("bulk_load", t)
    messages = out["load"]["messages"]
    t = time.monotonic()
    if backend.schema is not None:
        out["analyze_seconds"] = await analyze_postgres(backend)
    out["database"] = await database_size(backend, messages)
    phase("size", t)
    t = time.monotonic()
    out["search"] = await run_searches(backend, users, texts, args)
    phase("search", t)
    if not args.skip_rebuild:
        t = time.monotonic()
        out["rebuild"] = await rebuild_index(backend, args.load_seconds)
        out["rebuild"]["database_after"] = await database_size(backend, messages)
        phase("index_rebuild", t)
    out["phases_s"] = phases
    return out


async def versions(backend: Backend) -> dict[str, str]:
    if backend.role_dsn is None:
        return {"sqlite": sqlite3.sqlite_version}
    conn = await asyncpg.connect(backend.role_dsn)
    try:
        return {"postgres": str(await conn.fetchval("SHOW server_version"))}
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,postgres",
                        help="comma-separated: sqlite, postgres")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=300.0, help="bound of the searches")
    parser.add_argument("--setup-seconds", type=float, default=900.0)
    parser.add_argument("--load-seconds", type=float, default=3600.0,
                        help="bound of the bulk load (and of the rebuild)")
    parser.add_argument("--skip-rebuild", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(wanted) - {"sqlite", "postgres"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")

    results: dict[str, Any] = {}
    info = machine()
    for name in wanted:
        if name == "postgres" and not os.environ.get(POSTGRES_URL_ENV):
            results[name] = {"skipped": f"{POSTGRES_URL_ENV} is not set"}
            log(f"postgres: skipped, {POSTGRES_URL_ENV} is not set")
            continue
        backend = (sqlite_backend() if name == "sqlite"
                   else await postgres_backend(os.environ[POSTGRES_URL_ENV]))
        started = time.monotonic()
        load_before = [round(x, 2) for x in os.getloadavg()]
        try:
            info.update(await versions(backend))
            results[name] = await run_backend(backend, args)
            results[name]["total_seconds"] = round(time.monotonic() - started, 1)
            # Other work on the machine skews every figure: the 1/5/15-minute load averages.
            results[name]["load_average"] = {
                "start": load_before, "end": [round(x, 2) for x in os.getloadavg()]}
        finally:
            await drop_backend(backend)
    emit({"bench": "search", "messages": args.messages, "rooms": args.rooms,
          "backends": results, "machine": info})


if __name__ == "__main__":
    asyncio.run(main())
