"""The user directory: searching it, and the room changes that keep it current (local
users' profiles are kept by ``UserStore`` and ``ProfileStore`` in their own transactions).
The tables and how they are written: ``storage.user_directory_index``."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Select, and_, case, cast, func, literal, select, text
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause

from storage import user_directory_index
from storage.engine import DatabaseEngine
from storage.schema import (
    user_directory,
    user_directory_rooms,
    user_directory_search,
)
from storage.search_text import tokens

MAX_SEARCH_WORDS = 8
# Above every character a token can hold: the end of a prefix range.
_PREFIX_END = "\U0010ffff"


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    user_id: str
    display_name: str | None
    avatar_url: str | None


def search_words(search_term: str, server_name: str) -> list[str]:
    """The words of a search term, each to be matched as a token prefix; the words of our
    own server name are dropped (local users are not indexed by it: "@bob:our.server" is a
    search for bob)."""
    ours = set(tokens(server_name))
    return [w for w in dict.fromkeys(tokens(search_term)) if w not in ours][:MAX_SEARCH_WORDS]


def search_query(searcher: str, words: list[str], limit: int, *,
                 search_all_users: bool) -> Select[Any]:
    """The search (see ``UserDirectoryStore.search``): ``limit`` rows at most."""
    d = user_directory
    matched = []
    for word in words:
        s = user_directory_search
        matched.append(
            select(s.c.user_id,
                   func.max(case((s.c.token == word, 1), else_=0)).label("exact"))
            .where(s.c.token >= word, s.c.token < word + _PREFIX_END)
            .group_by(s.c.user_id).subquery())
    joined: FromClause = d
    for sub in matched:
        joined = joined.join(sub, sub.c.user_id == d.c.user_id)
    mine = user_directory_rooms.alias("mine")
    theirs = user_directory_rooms.alias("theirs")
    # The searcher's room mates: one set per query (uncorrelated), usually small.
    room_mates = (select(theirs.c.user_id)
                  .join(mine, mine.c.room_id == theirs.c.room_id)
                  .where(mine.c.user_id == searcher, theirs.c.user_id != searcher)
                  .cte("room_mates"))
    # Who is visible is asked of the first word's matches (the candidates), before the
    # directory is joined: the planner then joins only those who remain.
    candidate = matched[0].c.user_id
    shared = candidate.in_(select(room_mates.c.user_id))
    # Users in a public room (a partial index of those rows).
    in_public = candidate.in_(select(theirs.c.user_id).where(
        theirs.c.public == True))  # noqa: E712 (as the partial index's condition reads)
    visible: ColumnElement[bool] = (candidate != searcher) if search_all_users \
        else (shared | in_public)
    exact: ColumnElement[float] = cast(literal(0), Float)
    for sub in matched:
        exact = exact + sub.c.exact
    rank = (case((shared, 4.0), else_=1.0)
            * case((d.c.display_name.is_not(None), 1.2), else_=1.0)
            * case((d.c.avatar_url.is_not(None), 1.2), else_=1.0)
            * (3 * exact + len(words)))
    query = (select(d.c.user_id, d.c.display_name, d.c.avatar_url)
             .select_from(joined)
             .where(and_(visible))
             .order_by(rank.desc(), d.c.display_name.is_(None), d.c.avatar_url.is_(None),
                       d.c.user_id)
             .limit(limit))
    return query


class UserDirectoryStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def apply_room_changes(self, memberships: Mapping[tuple[str, str], bool],
                                 remote_profiles: Sequence[user_directory_index.UserRow],
                                 public: Mapping[str, bool], *,
                                 rooms_gone: Collection[str] = (),
                                 position: int | None = None) -> None:
        """One transaction: see ``user_directory_index.apply_room_changes``."""
        await self._db.run_write(lambda conn: user_directory_index.apply_room_changes(
            conn, memberships, remote_profiles, public, rooms_gone, position))

    async def catch_up(self) -> int:
        """See ``user_directory_index.catch_up``."""
        return await self._db.run_write(user_directory_index.catch_up)

    async def rebuild(self) -> None:
        await self._db.run_write(user_directory_index.rebuild)

    async def search(self, searcher: str, search_term: str, limit: int, *,
                     search_all_users: bool, server_name: str
                     ) -> tuple[list[DirectoryEntry], bool]:
        """Users matching every word of ``search_term`` (prefixes of their display name's or
        user ID's words), best first, and whether there were more than ``limit``.

        Visible: with ``search_all_users`` everyone in the directory but the searcher; else
        users in a public room here and users sharing a room with the searcher. Ranked as
        Synapse does: sharing a room counts four times, a display name and an avatar 1.2 each,
        times three per word matched whole plus one per word matched as a prefix; then users
        with a display name and an avatar first.
        """
        words = search_words(search_term, server_name)
        if not words or limit <= 0:
            return [], False
        query = search_query(searcher, words, limit + 1, search_all_users=search_all_users)
        async with self._db.read() as conn:
            if not self._db.is_sqlite:
                # Compiling the plan (PostgreSQL's JIT, for its cost estimate) takes longer
                # than running it.
                await conn.execute(text("SET LOCAL jit = off"))
            rows = (await conn.execute(query)).all()
        entries = [DirectoryEntry(u, n, a) for u, n, a in rows[:limit]]
        return entries, len(rows) > limit
