"""Server-side key backup (the spec's ``room_keys`` endpoints), as Synapse answers them.

A user keeps backup versions (``POST /room_keys/version``), each with an algorithm and
``auth_data`` the server does not interpret, and stores encrypted megolm session keys in the
current one: the highest version not deleted. Versions are decimal integers, never reused.
Keys may be read and deleted from any version not deleted, but only stored in the current
one (``403 M_WRONG_ROOM_KEYS_VERSION`` with ``current_version`` otherwise). When a session
is stored again, the better key is kept (``storage.stores.key_backup``). Every change to a
version's keys raises its etag; responses carry the etag and the version's count of keys.

Bodies are checked against the spec's schemas before anything is stored: a missing field or
one of the wrong type is ``400 M_BAD_JSON``, a malformed room ID or session ID
``400 M_INVALID_PARAM``.
"""

from __future__ import annotations

import re
from typing import Any

from core.errors import BadJson, InvalidParam, MatrixError, NotFound
from core.types import MAX_IDENTIFIER_BYTES, InvalidIdentifier, byte_length, check_room_id
from storage.stores.key_backup import (
    BackupVersion,
    KeyBackupStore,
    KeysChanged,
    NotCurrent,
    RoomKey,
)

# Versions are the decimal numbers we hand out; anything else names no version (Synapse: 404).
_VERSION = re.compile(r"[0-9]{1,18}")
MAX_ALGORITHM_BYTES = 255


class WrongRoomKeysVersion(MatrixError):
    status, errcode = 403, "M_WRONG_ROOM_KEYS_VERSION"


def _version(text: str) -> int | None:
    return int(text) if _VERSION.fullmatch(text) else None


def _algorithm(body: dict[str, Any]) -> str:
    algorithm = body.get("algorithm")
    if not isinstance(algorithm, str) or not algorithm:
        raise BadJson("'algorithm' must be a non-empty string")
    if byte_length(algorithm) > MAX_ALGORITHM_BYTES:
        raise BadJson(f"'algorithm' is longer than {MAX_ALGORITHM_BYTES} bytes")
    return algorithm


def _auth_data(body: dict[str, Any]) -> dict[str, Any]:
    auth_data = body.get("auth_data")
    if not isinstance(auth_data, dict):
        raise BadJson("'auth_data' must be an object")
    return auth_data


def _session_id(session_id: str) -> str:
    if not session_id or byte_length(session_id) > MAX_IDENTIFIER_BYTES:
        raise InvalidParam(f"A session ID must be 1 to {MAX_IDENTIFIER_BYTES} bytes long")
    return session_id


def _room_id(room_id: str) -> str:
    try:
        check_room_id(room_id)
    except InvalidIdentifier as e:
        raise InvalidParam(str(e)) from None
    return room_id


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _room_key(room_id: str, session_id: str, data: Any) -> RoomKey:
    """A session's key data (the spec's KeyBackupData)."""
    where = f"session {session_id[:64]!r} of room {room_id[:64]!r}"
    if not isinstance(data, dict):
        raise BadJson(f"The key data of {where} must be an object")
    for name in ("first_message_index", "forwarded_count"):
        if not _is_int(data.get(name)):
            raise BadJson(f"'{name}' must be an integer in the key data of {where}")
    if not isinstance(data.get("is_verified"), bool):
        raise BadJson(f"'is_verified' must be a boolean in the key data of {where}")
    if not isinstance(data.get("session_data"), dict):
        raise BadJson(f"'session_data' must be an object in the key data of {where}")
    return RoomKey(room_id, _session_id(session_id), data["first_message_index"],
                   data["forwarded_count"], data["is_verified"], data["session_data"])


def _room_keys(room_id: str, body: Any) -> list[RoomKey]:
    """A room's keys (the spec's RoomKeyBackup: ``{"sessions": {id: KeyBackupData}}``)."""
    if not isinstance(body, dict) or not isinstance(body.get("sessions"), dict):
        raise BadJson(f"'sessions' must be an object for room {room_id[:64]!r}")
    return [_room_key(room_id, session_id, data)
            for session_id, data in body["sessions"].items()]


def _changed(result: KeysChanged) -> dict[str, Any]:
    return {"etag": str(result.etag), "count": result.count}


def _key_data(key: RoomKey) -> dict[str, Any]:
    return {"first_message_index": key.first_message_index,
            "forwarded_count": key.forwarded_count, "is_verified": key.is_verified,
            "session_data": key.session_data}


class KeyBackupService:
    def __init__(self, store: KeyBackupStore) -> None:
        self._store = store

    async def create_version(self, user_id: str, body: dict[str, Any]) -> str:
        """A new backup version, which becomes the current one; its number."""
        algorithm, auth_data = _algorithm(body), _auth_data(body)
        return str(await self._store.create_version(user_id, algorithm, auth_data))

    async def _existing(self, user_id: str, version: str | None) -> BackupVersion:
        number = None if version is None else _version(version)
        found = None if version is not None and number is None else \
            await self._store.get_version(user_id, number)
        if found is None:
            raise NotFound("Unknown backup version")
        return found

    async def get_version(self, user_id: str, version: str | None) -> dict[str, Any]:
        """A version's algorithm, auth_data, etag and count (the current one if None)."""
        try:
            found = await self._existing(user_id, version)
        except NotFound:
            raise NotFound("No backup found") from None
        return {"algorithm": found.algorithm, "auth_data": found.auth_data,
                "count": found.count, "etag": str(found.etag), "version": str(found.version)}

    async def update_version(self, user_id: str, version: str, body: dict[str, Any]) -> None:
        """Replace a version's ``auth_data``; its algorithm cannot change.

        Raises:
            InvalidParam: ``version`` in the body is not the one in the path, or the
                algorithm is not the version's.
            NotFound: there is no such version.
        """
        if "version" in body and body["version"] != version:
            raise InvalidParam("Version in body does not match")
        algorithm, auth_data = _algorithm(body), _auth_data(body)
        found = await self._existing(user_id, version)
        if found.algorithm != algorithm:
            raise InvalidParam("Algorithm does not match")
        if not await self._store.update_auth_data(user_id, found.version, auth_data):
            raise NotFound("Unknown backup version")

    async def delete_version(self, user_id: str, version: str) -> None:
        """Delete a version and its keys (a version deleted before: done already)."""
        number = _version(version)
        if number is None or not await self._store.delete_version(user_id, number):
            raise NotFound("Unknown backup version")

    async def put_keys(self, user_id: str, version: str, room_id: str | None,
                       session_id: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """Store keys in the current version: all rooms' (``{"rooms": ...}``), one room's
        (``{"sessions": ...}``) or one session's (its key data), as the path says."""
        if session_id is not None:
            assert room_id is not None
            keys = [_room_key(_room_id(room_id), session_id, body)]
        elif room_id is not None:
            keys = _room_keys(_room_id(room_id), body)
        else:
            rooms = body.get("rooms")
            if not isinstance(rooms, dict):
                raise BadJson("'rooms' must be an object")
            keys = [key for rid, room in rooms.items() for key in _room_keys(_room_id(rid), room)]
        number = _version(version)
        result = None if number is None else await self._store.put_keys(user_id, number, keys)
        if result is None:
            raise NotFound("Unknown backup version")
        if isinstance(result, NotCurrent):
            raise WrongRoomKeysVersion("Wrong room_keys version",
                                       current_version=str(result.current_version))
        return _changed(result)

    async def get_keys(self, user_id: str, version: str, room_id: str | None,
                       session_id: str | None) -> dict[str, Any]:
        """The keys of a version: of every room (``{"rooms": ...}``), of one room
        (``{"sessions": ...}``, empty when none) or of one session (its key data; 404 when
        it is not stored)."""
        number = _version(version)
        keys = None if number is None else \
            await self._store.get_keys(user_id, number, room_id, session_id)
        if keys is None:
            raise NotFound("Unknown backup version")
        if session_id is not None:
            if not keys:
                raise NotFound("No room_keys found")
            return _key_data(keys[0])
        rooms: dict[str, dict[str, Any]] = {}
        for key in keys:
            rooms.setdefault(key.room_id, {})[key.session_id] = _key_data(key)
        if room_id is not None:
            return {"sessions": rooms.get(room_id, {})}
        return {"rooms": {rid: {"sessions": sessions} for rid, sessions in rooms.items()}}

    async def delete_keys(self, user_id: str, version: str, room_id: str | None,
                          session_id: str | None) -> dict[str, Any]:
        """Delete the keys of a version (of every room, one room or one session)."""
        number = _version(version)
        result = None if number is None else \
            await self._store.delete_keys(user_id, number, room_id, session_id)
        if result is None:
            raise NotFound("Unknown backup version")
        return _changed(result)
