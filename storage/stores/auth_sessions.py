"""User-interactive auth sessions, registration tokens and shared-secret registration nonces."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, or_, select, update

from storage.engine import DatabaseEngine
from storage.schema import registration_nonces, registration_tokens, ui_auth_sessions

# The stage whose result is the registration token it reserved (homeserver.services.uia).
REGISTRATION_TOKEN_STAGE = "m.login.registration_token"


@dataclass(frozen=True, slots=True)
class UiAuthSession:
    session_id: str
    created_ts: int
    method: str
    uri: str
    user_id: str | None
    completed: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None


class UiAuthStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def create_session(self, session_id: str, *, method: str, uri: str,
                             user_id: str | None, now: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(ui_auth_sessions.insert().values(
                session_id=session_id, created_ts=now, method=method, uri=uri,
                user_id=user_id, completed="{}"))

    async def get_session(self, session_id: str) -> UiAuthSession | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(ui_auth_sessions)
                                      .where(ui_auth_sessions.c.session_id == session_id))).first()
        if row is None:
            return None
        return UiAuthSession(row.session_id, row.created_ts, row.method, row.uri, row.user_id,
                             json.loads(row.completed))

    async def mark_stage_completed(self, session_id: str, stage: str, result: Any) -> None:
        async with self._db.write() as conn:
            current = (await conn.execute(
                select(ui_auth_sessions.c.completed)
                .where(ui_auth_sessions.c.session_id == session_id))).scalar()
            completed = json.loads(current or "{}")
            completed[stage] = result
            await conn.execute(update(ui_auth_sessions)
                               .where(ui_auth_sessions.c.session_id == session_id)
                               .values(completed=json.dumps(completed)))

    async def delete_session(self, session_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(delete(ui_auth_sessions)
                               .where(ui_auth_sessions.c.session_id == session_id))

    async def delete_expired(self, older_than_ts: int) -> None:
        """Drop sessions started before ``older_than_ts``, giving back the registration-token
        uses they reserved but never completed."""
        expired = ui_auth_sessions.c.created_ts < older_than_ts
        async with self._db.write() as conn:
            rows = await conn.execute(select(ui_auth_sessions.c.completed).where(expired))
            released = [json.loads(r[0]).get(REGISTRATION_TOKEN_STAGE) for r in rows]
            t = registration_tokens.c
            for token in released:
                if isinstance(token, str):
                    await conn.execute(update(registration_tokens)
                                       .where(and_(t.token == token, t.pending > 0))
                                       .values(pending=t.pending - 1))
            await conn.execute(delete(ui_auth_sessions).where(expired))


class RegistrationTokenStore:
    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def create(self, token: str, *, uses_allowed: int | None, expiry_time: int | None
                     ) -> bool:
        async with self._db.write() as conn:
            exists = (await conn.execute(select(registration_tokens.c.token)
                                         .where(registration_tokens.c.token == token))).first()
            if exists:
                return False
            await conn.execute(registration_tokens.insert().values(
                token=token, uses_allowed=uses_allowed, pending=0, completed=0,
                expiry_time=expiry_time))
            return True

    async def get(self, token: str) -> RegistrationToken | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(registration_tokens)
                                      .where(registration_tokens.c.token == token))).first()
        return RegistrationToken(**row._mapping) if row is not None else None

    async def list(self) -> list[RegistrationToken]:
        async with self._db.read() as conn:
            rows = await conn.execute(select(registration_tokens)
                                      .order_by(registration_tokens.c.token))
            return [RegistrationToken(**r._mapping) for r in rows]

    async def delete(self, token: str) -> bool:
        async with self._db.write() as conn:
            result = await conn.execute(delete(registration_tokens)
                                        .where(registration_tokens.c.token == token))
            return bool(result.rowcount)

    async def reserve(self, token: str, now: int) -> bool:
        """Count a pending use if the token is valid now; False if it is not."""
        t = registration_tokens.c
        async with self._db.write() as conn:
            result = await conn.execute(
                update(registration_tokens)
                .where(and_(
                    t.token == token,
                    or_(t.expiry_time.is_(None), t.expiry_time > now),
                    or_(t.uses_allowed.is_(None), t.pending + t.completed < t.uses_allowed),
                ))
                .values(pending=t.pending + 1)
            )
            return bool(result.rowcount)

    async def complete(self, token: str) -> None:
        t = registration_tokens.c
        async with self._db.write() as conn:
            await conn.execute(update(registration_tokens).where(t.token == token)
                               .values(pending=t.pending - 1, completed=t.completed + 1))


class NonceStore:
    """Single-use nonces for shared-secret registration, shared by every worker."""

    def __init__(self, engine: DatabaseEngine) -> None:
        self._db = engine

    async def add(self, nonce: str, now: int) -> None:
        async with self._db.write() as conn:
            await conn.execute(registration_nonces.insert().values(nonce=nonce, created_ts=now))

    async def consume(self, nonce: str, not_before_ts: int) -> bool:
        """Delete the nonce; True only if it existed and was issued after ``not_before_ts``."""
        async with self._db.write() as conn:
            await conn.execute(delete(registration_nonces)
                               .where(registration_nonces.c.created_ts < not_before_ts))
            result = await conn.execute(delete(registration_nonces)
                                        .where(registration_nonces.c.nonce == nonce))
            return bool(result.rowcount)
