"""What the admin API reads about rooms: pages of rooms with what the room list shows (name,
alias, member counts, settings) computed from the current state in one query per page, one
room in full, its joined members, and the rooms shared with another server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, true

from storage.dialect import json_text
from storage.engine import DatabaseEngine
from storage.schema import current_state, devices, events, room_forgotten, rooms

# The orderings the admin API offers (Synapse's names; "alphabetical" and "size" are the
# deprecated spellings of "name" and "joined_members").
ROOM_ORDERINGS = ("alphabetical", "size", "name", "canonical_alias", "joined_members",
                  "joined_local_members", "version", "creator", "encryption", "federatable",
                  "public", "join_rules", "guest_access", "history_visibility", "state_events")

# (column, state event type, path in the event) of what comes from the current state.
_STATE_FIELDS = (
    ("name", "m.room.name", ("content", "name")),
    ("canonical_alias", "m.room.canonical_alias", ("content", "alias")),
    ("join_rules", "m.room.join_rules", ("content", "join_rule")),
    ("guest_access", "m.room.guest_access", ("content", "guest_access")),
    ("history_visibility", "m.room.history_visibility", ("content", "history_visibility")),
    ("encryption", "m.room.encryption", ("content", "algorithm")),
    ("room_type", "m.room.create", ("content", "type")),
    ("federate", "m.room.create", ("content", "m.federate")),
)
_DETAIL_FIELDS = (
    ("topic", "m.room.topic", ("content", "topic")),
    ("avatar", "m.room.avatar", ("content", "url")),
)


@dataclass(frozen=True, slots=True)
class RoomFilter:
    search_term: str | None = None  # part of the name, canonical alias or room ID
    public: bool | None = None
    empty: bool | None = None  # rooms nobody is joined to (True) or not (False)


def _is_true(value: Any) -> bool:
    return value in (True, 1, "1", "true")


class AdminRoomStore:
    def __init__(self, engine: DatabaseEngine, server_name: str) -> None:
        self._db = engine
        self._local_suffix = ":" + server_name

    def _state_value(self, event_type: str, path: tuple[str, ...]) -> Any:
        event_json = (select(events.c.json)
                      .select_from(current_state.join(
                          events, events.c.event_id == current_state.c.event_id))
                      .where(current_state.c.room_id == rooms.c.room_id,
                             current_state.c.type == event_type,
                             current_state.c.state_key == "")
                      .scalar_subquery())
        return json_text(self._db.is_sqlite, event_json, *path)

    def _members(self, *, local: bool) -> Any:
        cs = current_state
        where = [cs.c.room_id == rooms.c.room_id, cs.c.type == "m.room.member",
                 cs.c.membership == "join"]
        if local:
            where.append(cs.c.state_key.endswith(self._local_suffix, autoescape=True))
        return select(func.count()).select_from(cs).where(*where).scalar_subquery()

    def _rooms_query(self, *, detail: bool = False) -> Any:
        """One row per room with every column the room list shows."""
        fields = _STATE_FIELDS + (_DETAIL_FIELDS if detail else ())
        state_events = (select(func.count()).select_from(current_state)
                        .where(current_state.c.room_id == rooms.c.room_id).scalar_subquery())
        return select(
            rooms.c.room_id, rooms.c.room_version.label("version"), rooms.c.creator,
            rooms.c.is_public.label("public"),
            self._members(local=False).label("joined_members"),
            self._members(local=True).label("joined_local_members"),
            state_events.label("state_events"),
            *(self._state_value(t, path).label(name) for name, t, path in fields),
        ).subquery("room_list")

    async def page(self, f: RoomFilter, *, offset: int, limit: int, order_by: str,
                   backwards: bool) -> tuple[list[dict[str, Any]], int]:
        """A page of rooms and how many match in all, in one query."""
        listed = self._rooms_query()
        c = listed.c
        where: list[ColumnElement[bool]] = []
        if f.search_term:
            part = f.search_term.lower()
            where.append(or_(func.lower(c.name).contains(part, autoescape=True),
                             func.lower(c.canonical_alias).contains(part, autoescape=True),
                             func.lower(c.room_id).contains(part, autoescape=True)))
        if f.public is not None:
            where.append(c.public.is_(f.public))
        if f.empty is not None:
            where.append(c.joined_members == 0 if f.empty else c.joined_members > 0)
        column = {"alphabetical": c.name, "size": c.joined_members,
                  "federatable": c.federate}.get(order_by)
        if column is None:
            column = getattr(c, order_by)
        # As Synapse: rooms without a name (or alias...) come last either way.
        order = [column.is_(None), column.desc() if backwards else column.asc()]
        if order_by in ("joined_members", "size", "joined_local_members", "state_events"):
            # Synapse lists the biggest rooms first unless asked the other way.
            order = [column.asc() if backwards else column.desc()]
        query = (select(listed, func.count().over().label("total"))
                 .where(and_(true(), *where)).order_by(*order, c.room_id.asc())
                 .offset(offset).limit(limit))
        async with self._db.read() as conn:
            rows = (await conn.execute(query)).all()
            if rows:
                total = int(rows[0].total)
            else:
                total = int((await conn.execute(select(func.count()).select_from(listed)
                                                .where(and_(true(), *where)))).scalar_one())
        return [self._room(r) for r in rows], total

    def _room(self, row: Any) -> dict[str, Any]:
        room = dict(row._mapping)
        room.pop("total", None)
        federate = room.pop("federate")
        room["federatable"] = federate is None or _is_true(federate)
        room["public"] = bool(room["public"])
        for name in ("joined_members", "joined_local_members", "state_events"):
            room[name] = int(room[name])
        return room

    async def get(self, room_id: str) -> dict[str, Any] | None:
        """One room with what the room list shows, its topic and avatar, and whether every
        local user who was in it forgot it."""
        listed = self._rooms_query(detail=True)
        async with self._db.read() as conn:
            row = (await conn.execute(select(listed).where(listed.c.room_id == room_id))
                   ).first()
            if row is None:
                return None
            room = self._room(row)
            local_members = (await conn.execute(
                select(func.count()).select_from(current_state).where(
                    current_state.c.room_id == room_id,
                    current_state.c.type == "m.room.member",
                    current_state.c.state_key.endswith(self._local_suffix, autoescape=True),
                    current_state.c.membership.in_(("join", "invite", "knock"))))).scalar_one()
            forgot = (await conn.execute(select(func.count()).select_from(room_forgotten)
                                         .where(room_forgotten.c.room_id == room_id))
                      ).scalar_one()
        room["forgotten"] = int(local_members) == 0 and int(forgot) > 0
        return room

    async def joined_members(self, room_id: str) -> list[str]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(current_state.c.state_key).where(
                current_state.c.room_id == room_id, current_state.c.type == "m.room.member",
                current_state.c.membership == "join").order_by(current_state.c.state_key))
            return [r[0] for r in rows]

    async def count_local_devices(self, user_ids: list[str]) -> int:
        if not user_ids:
            return 0
        async with self._db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(devices).where(
                devices.c.user_id.in_(user_ids)))).scalar_one())
