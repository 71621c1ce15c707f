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

from sqlalchemy import Connection, and_, bindparam, delete, exists, select

from storage.dialect import insert
from storage.schema import (
    current_state,
    events,
    profiles,
    user_directory,
    user_directory_public_rooms,
    user_directory_rooms,
    user_directory_search,
    users,
)
from storage.search_text import tokens

MAX_TOKENS_PER_USER = 64
MAX_NAME_CHARS = 256
MAX_AVATAR_CHARS = 1000
_CHUNK = 500

UserRow = tuple[str, str | None, str | None]
"""``(user_id, display_name, avatar_url)``"""


def user_tokens(user_id: str, display_name: str | None) -> list[str]:
    """The distinct tokens a user is found by: their display name's, then their user ID's."""
    found = dict.fromkeys(tokens(display_name or "") + tokens(user_id))
    return list(found)[:MAX_TOKENS_PER_USER]


def profile_of(content: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The display name and avatar URL of a member event's content (wrong types ignored,
    text cut short)."""
    name = content.get("displayname")
    avatar = content.get("avatar_url")
    return (name[:MAX_NAME_CHARS] if isinstance(name, str) and name else None,
            avatar[:MAX_AVATAR_CHARS] if isinstance(avatar, str) and avatar else None)


def is_public(join_rule: Any, history_visibility: Any) -> bool:
    """Public for the directory, as Synapse's ``is_room_world_readable_or_publicly_joinable``:
    anyone can join it or read its history."""
    return bool(join_rule == "public" or history_visibility == "world_readable")


def _chunks(items: Sequence[Any]) -> Iterable[list[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield list(items[i:i + _CHUNK])


def upsert_users(conn: Connection, rows: Sequence[UserRow]) -> None:
    """Add or update users (the last row of a user wins), with their tokens."""
    latest = {user_id: (user_id, name, avatar) for user_id, name, avatar in rows}
    if not latest:
        return
    remove_users(conn, list(latest))
    conn.execute(user_directory.insert(), [
        {"user_id": u, "display_name": n, "avatar_url": a,
         "search_text": " ".join(user_tokens(u, n))} for u, n, a in latest.values()])
    conn.execute(user_directory_search.insert(), [
        {"token": token, "user_id": u} for u, n, _ in latest.values()
        for token in user_tokens(u, n)])


def remove_users(conn: Connection, user_ids: Sequence[str]) -> None:
    for chunk in _chunks(user_ids):
        conn.execute(delete(user_directory_search)
                     .where(user_directory_search.c.user_id.in_(chunk)))
        conn.execute(delete(user_directory).where(user_directory.c.user_id.in_(chunk)))


def apply_room_changes(conn: Connection, memberships: Mapping[tuple[str, str], bool],
                       remote_profiles: Sequence[UserRow],
                       public: Mapping[str, bool], rooms_gone: Collection[str] = ()) -> None:
    """Apply what commits changed: ``memberships`` ``(user, room) -> joined``, the profiles of
    other servers' users from their new member events, rooms that became public or not, and
    ``rooms_gone``, rooms this server left (their members are forgotten). Other servers'
    users joined to no room here any more leave the directory."""
    joined = [{"u": u, "r": r} for (u, r), is_joined in memberships.items() if is_joined]
    left = [{"u": u, "r": r} for (u, r), is_joined in memberships.items() if not is_joined]
    if left:
        conn.execute(delete(user_directory_rooms).where(
            user_directory_rooms.c.user_id == bindparam("u"),
            user_directory_rooms.c.room_id == bindparam("r")), left)
    if joined:
        conn.execute(insert(conn.dialect.name == "sqlite", user_directory_rooms)
                     .values(user_id=bindparam("u"), room_id=bindparam("r"))
                     .on_conflict_do_nothing(index_elements=["user_id", "room_id"]), joined)
    for room_id, is_room_public in public.items():
        conn.execute(delete(user_directory_public_rooms)
                     .where(user_directory_public_rooms.c.room_id == room_id))
        if is_room_public:
            conn.execute(user_directory_public_rooms.insert().values(room_id=room_id))
    upsert_users(conn, remote_profiles)
    left_users = {row["u"] for row in left}
    for room_id in rooms_gone:
        left_users.update(conn.execute(select(user_directory_rooms.c.user_id).where(
            user_directory_rooms.c.room_id == room_id)).scalars())
        conn.execute(delete(user_directory_rooms)
                     .where(user_directory_rooms.c.room_id == room_id))
        conn.execute(delete(user_directory_public_rooms)
                     .where(user_directory_public_rooms.c.room_id == room_id))
    _drop_roomless_remote_users(conn, sorted(left_users))


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
    profiles, memberships and public rooms from rooms' current state, other servers' joined
    users from their member events. Replaces whatever the tables held."""
    for table in (user_directory_search, user_directory, user_directory_rooms,
                  user_directory_public_rooms):
        conn.execute(delete(table))
    local = conn.execute(
        select(users.c.user_id, profiles.c.displayname, profiles.c.avatar_url)
        .select_from(users.outerjoin(profiles, profiles.c.user_id == users.c.user_id))
        .where(users.c.deactivated.is_(False))).all()
    for chunk in _chunks(local):
        upsert_users(conn, [(u, (n or None) and n[:MAX_NAME_CHARS],
                             (a or None) and a[:MAX_AVATAR_CHARS]) for u, n, a in chunk])
    members = conn.execute(
        select(current_state.c.state_key, current_state.c.room_id, current_state.c.event_id)
        .where(current_state.c.type == "m.room.member",
               current_state.c.membership == "join")).all()
    for chunk in _chunks(members):
        conn.execute(user_directory_rooms.insert(),
                     [{"user_id": u, "room_id": r} for u, r, _ in chunk])
    known = {u for u, _, _ in local}
    remote_events = {u: e for u, _, e in members if u not in known}
    for chunk in _chunks(sorted(remote_events.items())):
        contents = _contents(conn, [e for _, e in chunk])
        upsert_users(conn, [(u, *profile_of(contents.get(e, {}))) for u, e in chunk])
    rules = conn.execute(
        select(current_state.c.room_id, current_state.c.type, current_state.c.event_id)
        .where(and_(current_state.c.type.in_(["m.room.join_rules",
                                              "m.room.history_visibility"]),
                    current_state.c.state_key == ""))).all()
    state: dict[str, dict[str, Mapping[str, Any]]] = {}
    for chunk in _chunks(rules):
        contents = _contents(conn, [e for _, _, e in chunk])
        for room_id, type_, event_id in chunk:
            state.setdefault(room_id, {})[type_] = contents.get(event_id, {})
    public = [room_id for room_id, found in state.items() if is_public(
        found.get("m.room.join_rules", {}).get("join_rule"),
        found.get("m.room.history_visibility", {}).get("history_visibility"))]
    for chunk in _chunks(public):
        conn.execute(user_directory_public_rooms.insert(), [{"room_id": r} for r in chunk])


def _contents(conn: Connection, event_ids: list[str]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for event_id, raw in conn.execute(select(events.c.event_id, events.c.json)
                                      .where(events.c.event_id.in_(event_ids))):
        content = json.loads(raw).get("content")
        out[event_id] = content if isinstance(content, dict) else {}
    return out
