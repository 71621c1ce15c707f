"""The one Matrix error type and its subclasses.

Only ``homeserver.http.middleware`` serializes these; route code raises them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Codes(StrEnum):
    UNKNOWN = "M_UNKNOWN"
    UNRECOGNIZED = "M_UNRECOGNIZED"
    FORBIDDEN = "M_FORBIDDEN"
    NOT_FOUND = "M_NOT_FOUND"
    NOT_JSON = "M_NOT_JSON"
    BAD_JSON = "M_BAD_JSON"
    INVALID_PARAM = "M_INVALID_PARAM"
    MISSING_PARAM = "M_MISSING_PARAM"
    TOO_LARGE = "M_TOO_LARGE"
    LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
    MISSING_TOKEN = "M_MISSING_TOKEN"
    UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
    USER_IN_USE = "M_USER_IN_USE"
    INVALID_USERNAME = "M_INVALID_USERNAME"
    USER_DEACTIVATED = "M_USER_DEACTIVATED"
    EXCLUSIVE = "M_EXCLUSIVE"
    WEAK_PASSWORD = "M_WEAK_PASSWORD"
    UNAUTHORIZED = "M_UNAUTHORIZED"


class MatrixError(Exception):
    """An error with a Matrix ``errcode`` and an HTTP status.

    Args:
        message: human-readable text for the ``error`` field; never internals.
        status: overrides the class's HTTP status.
        **extra: further top-level keys of the error body (e.g. ``retry_after_ms``).
    """

    status: int = 500
    errcode: str = Codes.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        errcode: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if errcode is not None:
            self.errcode = errcode
        self.headers = headers or {}
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"errcode": str(self.errcode), "error": self.message, **self.extra}


class BadRequest(MatrixError):
    status, errcode = 400, Codes.UNKNOWN


class NotJson(MatrixError):
    status, errcode = 400, Codes.NOT_JSON


class BadJson(MatrixError):
    status, errcode = 400, Codes.BAD_JSON


class InvalidParam(MatrixError):
    status, errcode = 400, Codes.INVALID_PARAM


class MissingParam(MatrixError):
    status, errcode = 400, Codes.MISSING_PARAM


class Forbidden(MatrixError):
    status, errcode = 403, Codes.FORBIDDEN


class NotFound(MatrixError):
    status, errcode = 404, Codes.NOT_FOUND


class Unrecognized(MatrixError):
    status, errcode = 404, Codes.UNRECOGNIZED


class TooLarge(MatrixError):
    status, errcode = 413, Codes.TOO_LARGE


class UserInUse(MatrixError):
    status, errcode = 400, Codes.USER_IN_USE


class InvalidUsername(MatrixError):
    status, errcode = 400, Codes.INVALID_USERNAME


class UserDeactivated(MatrixError):
    status, errcode = 403, Codes.USER_DEACTIVATED


class MissingToken(MatrixError):
    status, errcode = 401, Codes.MISSING_TOKEN


class UnknownToken(MatrixError):
    """401 M_UNKNOWN_TOKEN; ``soft_logout`` tells the client it may refresh."""

    status, errcode = 401, Codes.UNKNOWN_TOKEN

    def __init__(self, message: str = "Unknown access token", *, soft_logout: bool = False) -> None:
        super().__init__(message, soft_logout=soft_logout)


class LimitExceeded(MatrixError):
    status, errcode = 429, Codes.LIMIT_EXCEEDED

    def __init__(self, retry_after_ms: int) -> None:
        retry_after_s = max(1, -(-retry_after_ms // 1000))
        super().__init__(
            "Too many requests",
            retry_after_ms=retry_after_ms,
            headers={"Retry-After": str(retry_after_s)},
        )


class AuthRequired(MatrixError):
    """401 carrying a user-interactive auth state (flows, params, session, completed)."""

    status, errcode = 401, Codes.UNAUTHORIZED

    def __init__(self, uia_body: dict[str, Any], *, error: MatrixError | None = None) -> None:
        super().__init__(error.message if error else "Additional authentication required")
        self.uia_body = uia_body
        self.error = error

    def to_json(self) -> dict[str, Any]:
        body = dict(self.uia_body)
        if self.error is not None:
            body["errcode"] = str(self.error.errcode)
            body["error"] = self.error.message
        return body
