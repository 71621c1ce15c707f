"""User-interactive authentication (https://spec.matrix.org/v1.19/client-server-api/#user-interactive-authentication-api).

A session is bound to the request that started it (method and path) and, for operations on an
existing account, to that account. Stages supported: ``m.login.dummy``,
``m.login.registration_token`` and ``m.login.password``.
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol

from core.clock import Clock
from core.errors import AuthRequired, BadJson, Forbidden, MatrixError, MissingParam
from storage.stores.auth_sessions import RegistrationTokenStore, UiAuthStore

DUMMY = "m.login.dummy"
PASSWORD = "m.login.password"
REGISTRATION_TOKEN = "m.login.registration_token"


class PasswordChecker(Protocol):
    async def check_password_for_uia(self, user_id: str, auth: dict[str, Any]) -> str:
        """Return the user ID the password was proved for, or raise ``Forbidden``."""


class UiAuthService:
    def __init__(self, store: UiAuthStore, registration_tokens: RegistrationTokenStore,
                 password_checker: PasswordChecker, clock: Clock, session_timeout_ms: int
                 ) -> None:
        self._store = store
        self._registration_tokens = registration_tokens
        self._clock = clock
        self._timeout_ms = session_timeout_ms
        self._password_checker = password_checker

    async def authenticate(
        self,
        flows: list[list[str]],
        auth: Any,
        *,
        method: str,
        uri: str,
        user_id: str | None = None,
    ) -> dict[str, Any]:
        """Run one round of UIA; returns the completed stages' results when a flow is done.

        Raises:
            AuthRequired: 401 with ``flows``, ``params``, ``session`` and ``completed``
                (and an ``errcode`` when the stage just tried failed).
        """
        now = self._clock.time_ms()
        if auth is not None and not isinstance(auth, dict):
            raise BadJson("'auth' must be an object")
        session_id = auth.get("session") if auth else None
        session = None
        if session_id is not None:
            if not isinstance(session_id, str):
                raise BadJson("'auth.session' must be a string")
            session = await self._store.get_session(session_id)
            if session is None or now - session.created_ts > self._timeout_ms:
                raise MatrixError("Unknown or expired session", status=400)
            if (session.method, session.uri) != (method, uri) or session.user_id != user_id:
                raise Forbidden("Requested operation has changed during the UI authentication "
                                "session.")
        else:
            session_id = secrets.token_urlsafe(24)
            await self._store.create_session(session_id, method=method, uri=uri,
                                             user_id=user_id, now=now)
        completed: dict[str, Any] = dict(session.completed) if session else {}

        error: MatrixError | None = None
        stage = auth.get("type") if auth else None
        if auth and stage is not None:
            if not any(stage in flow for flow in flows):
                error = MatrixError(f"Auth type {stage!r} is not offered", status=400)
            else:
                try:
                    completed[stage] = await self._check_stage(stage, auth, user_id, completed)
                    await self._store.mark_stage_completed(session_id, stage, completed[stage])
                except MatrixError as e:
                    error = e

        for flow in flows:
            if all(s in completed for s in flow):
                return completed
        params: dict[str, Any] = {}
        raise AuthRequired(
            {
                "flows": [{"stages": flow} for flow in flows],
                "params": params,
                "session": session_id,
                "completed": sorted(completed),
            },
            error=error,
        )

    async def finish(self, auth: Any) -> None:
        """Close the session once the operation it guarded has succeeded."""
        if isinstance(auth, dict) and isinstance(auth.get("session"), str):
            await self._store.delete_session(auth["session"])

    async def _check_stage(self, stage: str, auth: dict[str, Any], user_id: str | None,
                           completed: dict[str, Any]) -> Any:
        if stage == DUMMY:
            return True
        if stage == REGISTRATION_TOKEN:
            if REGISTRATION_TOKEN in completed:
                return completed[REGISTRATION_TOKEN]
            token = auth.get("token")
            if not isinstance(token, str) or not token:
                raise MissingParam("Missing registration token")
            if not await self._registration_tokens.reserve(token, self._clock.time_ms()):
                raise MatrixError("Invalid registration token", status=401,
                                  errcode="M_FORBIDDEN")
            return token
        if stage == PASSWORD:
            if user_id is None:
                raise MatrixError("Password authentication is not offered here", status=400)
            return await self._password_checker.check_password_for_uia(user_id, auth)
        raise MatrixError(f"Unknown auth type {stage!r}", status=400)
