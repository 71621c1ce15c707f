"""Room metadata outside the event graph: aliases, the public room directory, forgetting,
cleared history, blocked rooms."""

from __future__ import annotations

from sqlalchemy import and_, delete, select, update

from storage.dialect import insert
from storage.engine import DatabaseEngine
from storage.schema import blocked_rooms, history_cleared, room_aliases, room_forgotten, rooms


class RoomStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def create_alias(self, alias: str, room_id: str, creator: str) -> bool:
        """False if the alias is taken."""
        async with self._db.write() as conn:
            result = await conn.execute(
                insert(self._db.is_sqlite, room_aliases)
                .values(alias=alias, room_id=room_id, creator=creator)
                .on_conflict_do_nothing(index_elements=["alias"]))
            return bool(result.rowcount)

    async def get_alias(self, alias: str) -> tuple[str, str] | None:
        """``(room_id, creator)`` of an alias."""
        async with self._db.read() as conn:
            row = (await conn.execute(select(room_aliases.c.room_id, room_aliases.c.creator)
                                      .where(room_aliases.c.alias == alias))).first()
        return (row.room_id, row.creator) if row is not None else None

    async def delete_alias(self, alias: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(delete(room_aliases)
                                        .where(room_aliases.c.alias == alias))
            return bool(result.rowcount)

    async def aliases_for_room(self, room_id: str) -> list[str]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(room_aliases.c.alias)
                                      .where(room_aliases.c.room_id == room_id)
                                      .order_by(room_aliases.c.alias))
            return [r[0] for r in rows]

    async def set_public(self, room_id: str, public: bool) -> None:
        async with self._db.write() as conn:
            await conn.execute(update(rooms).where(rooms.c.room_id == room_id)
                               .values(is_public=public))

    async def is_public(self, room_id: str) -> bool | None:
        async with self._db.read() as conn:
            return (await conn.execute(select(rooms.c.is_public)
                                       .where(rooms.c.room_id == room_id))).scalar()

    async def public_room_ids(self) -> list[str]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(rooms.c.room_id).where(rooms.c.is_public)
                                      .order_by(rooms.c.created_ts))
            return [r[0] for r in rows]

    async def forget(self, user_id: str, room_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(insert(self._db.is_sqlite, room_forgotten)
                               .values(user_id=user_id, room_id=room_id)
                               .on_conflict_do_nothing())

    async def unforget(self, user_id: str, room_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(delete(room_forgotten).where(and_(
                room_forgotten.c.user_id == user_id, room_forgotten.c.room_id == room_id)))

    async def forgotten_rooms(self, user_id: str) -> set[str]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(room_forgotten.c.room_id)
                                      .where(room_forgotten.c.user_id == user_id))
            return {r[0] for r in rows}

    async def clear_history(self, user_id: str, room_id: str, event_id: str,
                            position: tuple[int, int], ts: int) -> None:
        """Hide the room's events up to ``position`` (depth, stream) from the user."""
        values = dict(event_id=event_id, depth=position[0], stream_ordering=position[1], ts=ts)
        async with self._db.write() as conn:
            await conn.execute(insert(self._db.is_sqlite, history_cleared)
                               .values(user_id=user_id, room_id=room_id, **values)
                               .on_conflict_do_update(index_elements=["user_id", "room_id"],
                                                      set_=values))

    async def cleared_history(self, user_id: str) -> dict[str, tuple[int, int]]:
        """Room -> the (depth, stream) position up to which the user cleared it."""
        async with self._db.read() as conn:
            rows = await conn.execute(select(history_cleared.c.room_id, history_cleared.c.depth,
                                             history_cleared.c.stream_ordering)
                                      .where(history_cleared.c.user_id == user_id))
            return {r.room_id: (int(r.depth), int(r.stream_ordering)) for r in rows}

    async def block(self, room_id: str, by: str, ts: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(insert(self._db.is_sqlite, blocked_rooms)
                               .values(room_id=room_id, user_id=by, ts=ts)
                               .on_conflict_do_nothing())

    async def unblock(self, room_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(delete(blocked_rooms).where(blocked_rooms.c.room_id == room_id))

    async def blocked_by(self, room_id: str) -> str | None:
        """The admin who blocked the room, if it is blocked."""
        async with self._db.read() as conn:
            return (await conn.execute(select(blocked_rooms.c.user_id)
                                       .where(blocked_rooms.c.room_id == room_id))).scalar()
