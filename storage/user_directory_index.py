"""The user directory's tables, written in the transactions that change what they hold.

``user_directory`` has one row per findable user with the tokens of their display name and
user ID (folded and split as message search does, ``storage.search_text``); each token is a
row of ``user_directory_search``, so a search word is one prefix range over an index on both
databases. ``user_directory_rooms`` holds who is joined to which room here and
``user_directory_public_rooms`` which rooms are public for the directory: "shares a room with
the searcher" and "is in a public room" are index lookups.

Local users' rows follow their profile (written with it: registration, profile changes,
erasure, deactivation); other servers' users' rows follow their member events while they are
joined to a room here. Functions here take a synchronous connection: the stores run them in
their write transaction, the migration builds the directory with them.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, exists, func, select, update

from storage.dialect import insert
from storage.schema import (
    current_state,
    events,
    profiles,
    user_directory,
    user_directory_public_rooms,
    user_directory_rooms,
    user_directory_search,
    user_directory_stream,
    users,
)
from storage.search_text import tokens

MAX_TOKENS_PER_USER = 64
MAX_NAME_CHARS = 256
MAX_AVATAR_CHARS = 1000
_CHUNK = 500

UserRow = tuple[str, str | None, str | None]
"""``(user_id, display_name, avatar_url)``"""


def user_tokens(user_id: str, display_name: str | None, *, remote: bool) -> list[str]:
    """The distinct tokens a user is found by: their display name's, then their user ID's
    (of a local user, the localpart's: our own server name would make every local user a
    match of its prefixes, and a search drops its words, ``UserDirectoryStore.search``)."""
    user_part = user_id if remote else user_id.split(":", 1)[0]
    found = dict.fromkeys(tokens(display_name or "") + tokens(user_part))
    return list(found)[:MAX_TOKENS_PER_USER]


def profile_of(content: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The display name and avatar URL of a member event's content (wrong types ignored,
    text cut short, U+0000 left out: another server's event may hold it, and PostgreSQL's
    text cannot)."""
    name = content.get("displayname")
    avatar = content.get("avatar_url")
    name = name.replace("\x00", "")[:MAX_NAME_CHARS] if isinstance(name, str) else None
    avatar = avatar.replace("\x00", "")[:MAX_AVATAR_CHARS] if isinstance(avatar, str) \
        else None
    return name or None, avatar or None


def is_public(join_rule: Any, history_visibility: Any) -> bool:
    """Public for the directory, as Synapse's ``is_room_world_readable_or_publicly_joinable``:
    anyone can join it or read its history."""
    return bool(join_rule == "public" or history_visibility == "world_readable")


def _chunks(items: Sequence[Any]) -> Iterable[list[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield list(items[i:i + _CHUNK])


def upsert_users(conn: Connection, rows: Sequence[UserRow], *, remote: bool = False) -> None:
    """Add or update users (the last row of a user wins), with their tokens; ``remote``:
    other servers' users."""
    latest = {user_id: (user_id, name, avatar) for user_id, name, avatar in rows}
    if not latest:
        return
    remove_users(conn, list(latest))
    conn.execute(user_directory.insert(), [
        {"user_id": u, "display_name": n, "avatar_url": a,
         "search_text": " ".join(user_tokens(u, n, remote=remote))}
        for u, n, a in latest.values()])
    conn.execute(user_directory_search.insert(), [
        {"token": token, "user_id": u} for u, n, _ in latest.values()
        for token in user_tokens(u, n, remote=remote)])


def remove_users(conn: Connection, user_ids: Sequence[str]) -> None:
    for chunk in _chunks(user_ids):
        conn.execute(delete(user_directory_search)
                     .where(user_directory_search.c.user_id.in_(chunk)))
        conn.execute(delete(user_directory).where(user_directory.c.user_id.in_(chunk)))


def apply_room_changes(conn: Connection, memberships: Mapping[tuple[str, str], bool],
                       remote_profiles: Sequence[UserRow],
                       public: Mapping[str, bool], rooms_gone: Collection[str] = (),
                       position: int | None = None) -> None:
    """Apply what commits changed: ``memberships`` ``(user, room) -> joined``, the profiles of
    other servers' users from their new member events, rooms that became public or not, and
    ``rooms_gone``, rooms this server left (their members are forgotten). Other servers'
    users joined to no room here any more leave the directory."""
    for room_id, is_room_public in public.items():
        conn.execute(delete(user_directory_public_rooms)
                     .where(user_directory_public_rooms.c.room_id == room_id))
        if is_room_public:
            conn.execute(user_directory_public_rooms.insert().values(room_id=room_id))
        conn.execute(update(user_directory_rooms)
                     .where(user_directory_rooms.c.room_id == room_id)
                     .values(public=is_room_public))
    joined = [(u, r) for (u, r), is_joined in memberships.items() if is_joined]
    left = [{"u": u, "r": r} for (u, r), is_joined in memberships.items() if not is_joined]
    if left:
        conn.execute(delete(user_directory_rooms).where(
            user_directory_rooms.c.user_id == bindparam("u"),
            user_directory_rooms.c.room_id == bindparam("r")), left)
    if joined:
        public_rooms = _public_among(conn, sorted({r for _, r in joined}))
        conn.execute(insert(conn.dialect.name == "sqlite", user_directory_rooms)
                     .values(user_id=bindparam("u"), room_id=bindparam("r"),
                             public=bindparam("p"))
                     .on_conflict_do_nothing(index_elements=["user_id", "room_id"]),
                     [{"u": u, "r": r, "p": r in public_rooms} for u, r in joined])
    upsert_users(conn, remote_profiles, remote=True)
    left_users = {row["u"] for row in left}
    for room_id in rooms_gone:
        left_users.update(conn.execute(select(user_directory_rooms.c.user_id).where(
            user_directory_rooms.c.room_id == room_id)).scalars())
        conn.execute(delete(user_directory_rooms)
                     .where(user_directory_rooms.c.room_id == room_id))
        conn.execute(delete(user_directory_public_rooms)
                     .where(user_directory_public_rooms.c.room_id == room_id))
    _drop_roomless_remote_users(conn, sorted(left_users))
    if position is not None:
        set_position(conn, position)


def _public_among(conn: Connection, room_ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(room_ids):
        found.update(conn.execute(select(user_directory_public_rooms.c.room_id).where(
            user_directory_public_rooms.c.room_id.in_(chunk))).scalars())
    return found


def _drop_roomless_remote_users(conn: Connection, user_ids: Sequence[str]) -> None:
    """Of ``user_ids``, those with no account here and no room left leave the directory."""
    for chunk in _chunks(user_ids):
        gone = list(conn.execute(select(user_directory.c.user_id).where(
            user_directory.c.user_id.in_(chunk),
            ~exists().where(users.c.user_id == user_directory.c.user_id),
            ~exists().where(user_directory_rooms.c.user_id == user_directory.c.user_id),
        )).scalars())
        remove_users(conn, gone)


def rebuild(conn: Connection) -> None:
    """Build the directory from what is stored: local users (not deactivated) from their
    profiles, then every room (``sync_rooms``). Replaces whatever the tables held."""
    for table in (user_directory_search, user_directory, user_directory_rooms,
                  user_directory_public_rooms, user_directory_stream):
        conn.execute(delete(table))
    local = conn.execute(
        select(users.c.user_id, profiles.c.displayname, profiles.c.avatar_url)
        .select_from(users.outerjoin(profiles, profiles.c.user_id == users.c.user_id))
        .where(users.c.deactivated.is_(False))).all()
    for chunk in _chunks(local):
        upsert_users(conn, [(u, (n or None) and n[:MAX_NAME_CHARS],
                             (a or None) and a[:MAX_AVATAR_CHARS]) for u, n, a in chunk])
    sync_rooms(conn, None)
    set_position(conn, _stream_head(conn))


def sync_rooms(conn: Connection, room_ids: Sequence[str] | None) -> None:
    """Make what the directory holds of these rooms (every room: None) their current state:
    the joined members of rooms a local user is joined to (other servers' users with the
    profile of their member event) and which of them are public. Other servers' users left
    in no room leave the directory."""
    cs = current_state
    for chunk in [None] if room_ids is None else list(_chunks(room_ids)):
        before: set[str] = set()
        if chunk is not None:
            before = set(conn.execute(select(user_directory_rooms.c.user_id).where(
                user_directory_rooms.c.room_id.in_(chunk))).scalars())
            for table in (user_directory_rooms, user_directory_public_rooms):
                conn.execute(delete(table).where(table.c.room_id.in_(chunk)))
        where = [] if chunk is None else [cs.c.room_id.in_(chunk)]
        members = conn.execute(
            select(cs.c.state_key, cs.c.room_id, cs.c.event_id)
            .where(cs.c.type == "m.room.member", cs.c.membership == "join", *where)).all()
        candidates = sorted({u for u, _, _ in members})
        local: set[str] = set()
        for ids in _chunks(candidates):
            local.update(conn.execute(select(users.c.user_id)
                                      .where(users.c.user_id.in_(ids))).scalars())
        ours = {r for u, r, _ in members if u in local}
        members = [m for m in members if m[1] in ours]
        remote_events = {u: e for u, _, e in members if u not in local}
        for rows in _chunks(sorted(remote_events.items())):
            contents = _contents(conn, [e for _, e in rows])
            upsert_users(conn, [(u, *profile_of(contents.get(e, {}))) for u, e in rows],
                         remote=True)
        rules = conn.execute(
            select(cs.c.room_id, cs.c.type, cs.c.event_id)
            .where(cs.c.type.in_(["m.room.join_rules", "m.room.history_visibility"]),
                   cs.c.state_key == "", *where)).all()
        state: dict[str, dict[str, Mapping[str, Any]]] = {}
        for rows in _chunks([r for r in rules if r[0] in ours]):
            contents = _contents(conn, [e for _, _, e in rows])
            for room_id, type_, event_id in rows:
                state.setdefault(room_id, {})[type_] = contents.get(event_id, {})
        public = [room_id for room_id, found in state.items() if is_public(
            found.get("m.room.join_rules", {}).get("join_rule"),
            found.get("m.room.history_visibility", {}).get("history_visibility"))]
        for rows in _chunks(public):
            conn.execute(user_directory_public_rooms.insert(), [{"room_id": r} for r in rows])
        public_set = set(public)
        for rows in _chunks(members):
            conn.execute(user_directory_rooms.insert(),
                         [{"user_id": u, "room_id": r, "public": r in public_set}
                          for u, r, _ in rows])
        _drop_roomless_remote_users(conn, sorted(before))


# -- where the directory stands in the event stream ----------------------------------------

_CHANGES = ("m.room.member", "m.room.join_rules", "m.room.history_visibility")


def _stream_head(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(events.c.stream_ordering), 0)))
               .scalar_one())


def set_position(conn: Connection, position: int) -> None:
    """The directory holds every commit up to ``position`` (never moves back)."""
    current = conn.execute(select(user_directory_stream.c.stream_ordering)).scalar()
    if current is None:
        conn.execute(user_directory_stream.insert().values(lock=1, stream_ordering=position))
    elif position > current:
        conn.execute(update(user_directory_stream).values(stream_ordering=position))


def catch_up(conn: Connection) -> int:
    """Apply what commits made after the directory's position (those whose updates a stop
    or crash lost before they were applied): the rooms whose members, join rules or history
    visibility changed since are synced from their current state. Returns how many."""
    position = conn.execute(select(user_directory_stream.c.stream_ordering)).scalar()
    head = _stream_head(conn)
    if position is None:  # a new database: nothing was missed
        set_position(conn, head)
        return 0
    rooms = sorted(conn.execute(
        select(events.c.room_id).distinct()
        .where(events.c.stream_ordering > position, events.c.type.in_(_CHANGES),
               events.c.state_key.is_not(None))).scalars())
    sync_rooms(conn, rooms)
    set_position(conn, head)
    return len(rooms)


def _contents(conn: Connection, event_ids: list[str]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for event_id, raw in conn.execute(select(events.c.event_id, events.c.json)
                                      .where(events.c.event_id.in_(event_ids))):
        content = json.loads(raw).get("content")
        out[event_id] = content if isinstance(content, dict) else {}
    return out
