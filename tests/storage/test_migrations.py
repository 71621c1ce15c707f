"""Schema creation, versioning and migrations; SQLite connection set-up and its single writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import Connection, func, inspect, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from storage import Database, migrations, schema
from storage.migrations import SchemaTooNewError
from tests.conftest import PostgresSchema, postgres_url

DbFactory = Callable[[], Database]


@pytest.fixture(params=["sqlite", "postgres"])
async def new_database(request: pytest.FixtureRequest, tmp_path: Path
                       ) -> AsyncIterator[DbFactory]:
    """Makes unopened ``Database`` objects that all point at the same (initially empty) store."""
    made: list[Database] = []
    pg_schema: PostgresSchema | None = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'sub' / 'homeserver.db'}"

        def factory() -> Database:
            db = Database(url)
            made.append(db)
            return db
    else:
        pg_url = postgres_url()
        assert pg_url is not None
        pg_schema = PostgresSchema(pg_url)
        await pg_schema.create()
        name = pg_schema.name

        def factory() -> Database:
            db = Database(pg_url, postgres_search_path=name)
            made.append(db)
            return db
    try:
        yield factory
    finally:
        for db in made:
            await db.close()
        if pg_schema is not None:
            await pg_schema.drop()


async def stamped_versions(db: Database) -> list[int]:
    async with db.engine.read() as conn:
        return list((await conn.execute(select(schema.schema_version.c.version))).scalars())


async def table_names(db: Database) -> set[str]:
    async with db.engine.read() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_fresh_database_is_created_and_stamped_latest(new_database: DbFactory) -> None:
    db = new_database()
    assert await db.engine.migrate() == 0
    assert await stamped_versions(db) == [migrations.LATEST]
    assert set(schema.metadata.tables) <= await table_names(db)


async def test_opening_twice_is_idempotent(new_database: DbFactory) -> None:
    first = new_database()
    await first.open()
    await first.users.create_user("@alice:test.local", password_hash=None, created_ts=1)
    await first.close()
    # Same object again, then a new one on the same store.
    assert await first.engine.migrate() == migrations.LATEST
    second = new_database()
    await second.open()
    assert await second.engine.migrate() == migrations.LATEST
    assert await stamped_versions(second) == [migrations.LATEST]
    assert await second.users.get_user("@alice:test.local") is not None


async def test_concurrent_opens_migrate_once(new_database: DbFactory) -> None:
    """Several workers starting at once: one creates the schema, the others find it done."""
    dbs = [new_database() for _ in range(3)]
    # PostgreSQL: an advisory lock; SQLite: BEGIN IMMEDIATE and busy_timeout serialise them.
    results = await asyncio.gather(*(db.engine.migrate() for db in dbs))
    assert sorted(results) == [0, migrations.LATEST, migrations.LATEST]
    assert await stamped_versions(dbs[0]) == [migrations.LATEST]


async def test_schema_too_new_is_refused(new_database: DbFactory) -> None:
    db = new_database()
    await db.open()
    async with db.engine.write() as conn:
        await conn.execute(update(schema.schema_version)
                           .values(version=migrations.LATEST + 1))
    await db.close()
    newer = new_database()
    with pytest.raises(SchemaTooNewError, match=str(migrations.LATEST + 1)):
        await newer.open()
    # Refusing changes nothing.
    assert await stamped_versions(newer) == [migrations.LATEST + 1]


async def test_pending_migrations_run_in_order(new_database: DbFactory,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    db = new_database()
    await db.open()
    await db.users.create_user("@alice:test.local", password_hash=None, created_ts=1)
    await db.close()
    ran: list[int] = []

    def to_v2(conn: Connection) -> None:
        ran.append(2)
        conn.execute(text("CREATE TABLE extra_v2 (x INTEGER)"))

    def to_v3(conn: Connection) -> None:
        ran.append(3)
        conn.execute(text("INSERT INTO extra_v2 (x) VALUES (3)"))

    base = migrations.LATEST
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, to_v2, to_v3])
    monkeypatch.setattr(migrations, "LATEST", base + 2)
    upgraded = new_database()
    assert await upgraded.engine.migrate() == base
    assert ran == [2, 3]
    assert await stamped_versions(upgraded) == [base + 2]
    async with upgraded.engine.read() as conn:
        assert (await conn.execute(text("SELECT x FROM extra_v2"))).scalar_one() == 3
    assert await upgraded.users.get_user("@alice:test.local") is not None
    # Nothing is pending any more.
    assert await upgraded.engine.migrate() == base + 2
    assert ran == [2, 3]


async def test_failed_migration_rolls_back_entirely(new_database: DbFactory,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    db = new_database()
    await db.open()
    await db.close()

    def to_v2(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE extra_v2 (x INTEGER)"))
        conn.execute(text("INSERT INTO extra_v2 (x) VALUES (1)"))

    def to_v3(conn: Connection) -> None:
        raise RuntimeError("migration bug")

    base = migrations.LATEST
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, to_v2, to_v3])
    monkeypatch.setattr(migrations, "LATEST", base + 2)
    upgraded = new_database()
    with pytest.raises(RuntimeError, match="migration bug"):
        await upgraded.engine.migrate()
    assert await stamped_versions(upgraded) == [base]
    assert "extra_v2" not in await table_names(upgraded)


# -- SQLite specifics -----------------------------------------------------------------------


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'homeserver.db'}")
    await db.open()
    try:
        yield db
    finally:
        await db.close()


async def _pragma(conn: object, name: str) -> object:
    return (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()  # type: ignore[attr-defined]


async def test_sqlite_pragmas_on_write_connection(sqlite_db: Database) -> None:
    async with sqlite_db.engine.write() as conn:
        assert str(await _pragma(conn, "journal_mode")).lower() == "wal"
        assert await _pragma(conn, "foreign_keys") == 1
        assert await _pragma(conn, "busy_timeout") == 10000
        assert await _pragma(conn, "synchronous") == 2  # FULL
        assert await _pragma(conn, "query_only") == 0


async def test_sqlite_pragmas_on_read_connections(sqlite_db: Database) -> None:
    async def check() -> None:
        async with sqlite_db.engine.read() as conn:
            assert str(await _pragma(conn, "journal_mode")).lower() == "wal"
            assert await _pragma(conn, "foreign_keys") == 1
            assert await _pragma(conn, "busy_timeout") == 10000
            assert await _pragma(conn, "query_only") == 1
            await asyncio.sleep(0.01)  # hold it, so several pooled connections are used

    await asyncio.gather(*(check() for _ in range(4)))


async def test_sqlite_read_connections_cannot_write(sqlite_db: Database) -> None:
    with pytest.raises(OperationalError):
        async with sqlite_db.engine.read() as conn:
            await conn.execute(schema.users.insert().values(
                user_id="@x:test.local", admin=False, deactivated=False, created_ts=1))


async def test_sqlite_synchronous_setting(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'homeserver.db'}",
                  sqlite_synchronous="NORMAL")
    try:
        await db.open()
        async with db.engine.write() as conn:
            assert await _pragma(conn, "synchronous") == 1  # NORMAL
    finally:
        await db.close()


async def test_sqlite_foreign_keys_enforced(sqlite_db: Database) -> None:
    with pytest.raises(IntegrityError):
        async with sqlite_db.engine.write() as conn:
            await conn.execute(schema.profiles.insert().values(user_id="@ghost:test.local"))
    async with sqlite_db.engine.read() as conn:
        count = (await conn.execute(select(func.count()).select_from(schema.profiles))).scalar()
    assert count == 0


async def test_sqlite_write_rolls_back_on_error(sqlite_db: Database) -> None:
    with pytest.raises(ZeroDivisionError):
        async with sqlite_db.engine.write() as conn:
            await conn.execute(schema.registration_nonces.insert().values(nonce="n",
                                                                          created_ts=1))
            1 / 0
    assert await sqlite_db.nonces.consume("n", not_before_ts=0) is False
    # The single writer is free again afterwards.
    await sqlite_db.nonces.add("m", now=1)
    assert await sqlite_db.nonces.consume("m", not_before_ts=0) is True


async def test_sqlite_concurrent_writes(sqlite_db: Database) -> None:
    """Many writers at once (with readers in between) all succeed: no 'database is locked'."""
    n = 200

    async def create(i: int) -> bool:
        ok = await sqlite_db.users.create_user(f"@u{i}:test.local", password_hash=None,
                                               created_ts=i, displayname=f"U{i}")
        await sqlite_db.profiles.set_profile_field(f"@u{i}:test.local", "avatar_url", f"mxc://{i}")
        return ok

    async def read(i: int) -> None:
        await sqlite_db.users.get_user(f"@u{i}:test.local")
        await sqlite_db.users.count_users()

    results = await asyncio.gather(*(create(i) for i in range(n)),
                                   *(read(i) for i in range(n)))
    assert results[:n] == [True] * n
    assert await sqlite_db.users.count_users() == n
    profile = await sqlite_db.profiles.get_profile("@u123:test.local")
    assert profile is not None and profile.avatar_url == "mxc://123"


async def test_sqlite_concurrent_writes_from_two_databases(tmp_path: Path) -> None:
    """Two Database objects on one file (e.g. `ktchat register-user` beside a running server):
    busy_timeout and BEGIN IMMEDIATE let both write without 'database is locked'."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'homeserver.db'}"
    first, second = Database(url), Database(url)
    try:
        await first.open()
        await second.open()
        await asyncio.gather(*(
            (first if i % 2 else second).users.create_user(
                f"@u{i}:test.local", password_hash=None, created_ts=i)
            for i in range(100)))
        assert await first.users.count_users() == 100
        assert await second.users.count_users() == 100
    finally:
        await first.close()
        await second.close()


async def test_a_version_1_database_gains_receipts_and_presence(new_database: DbFactory
                                                                ) -> None:
    """The first shipped schema (version 1) is brought to today's: its data stays, the
    receipt and presence tables appear and work."""
    db = new_database()
    await db.open()
    await db.users.create_user("@alice:test.local", password_hash=None, created_ts=1)
    async with db.engine.write() as conn:
        await conn.execute(text("DROP TABLE receipts"))
        await conn.execute(text("DROP TABLE presence"))
        await conn.execute(update(schema.schema_version).values(version=1))
    await db.close()
    upgraded = new_database()
    await upgraded.open()
    assert await stamped_versions(upgraded) == [migrations.LATEST]
    assert {"receipts", "presence"} <= await table_names(upgraded)
    assert await upgraded.users.get_user("@alice:test.local") is not None
    assert await upgraded.receipts.put("!r:test.local", "m.read", "@alice:test.local", "",
                                       "$e", 5, 1) == 1
    assert await upgraded.receipts.read_up_to("@alice:test.local", ["!r:test.local"]) == {
        "!r:test.local": 5}
