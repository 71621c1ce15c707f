"""Third-party identifiers (email addresses, phone numbers).

This server sends no email or SMS and talks to no identity server, and it advertises
``m.3pid_changes: false``: it answers as Synapse does with ``enable_3pid_changes: false`` and
no email or SMS configured. Users have no 3PIDs; adding one is refused with a Matrix error;
deleting or unbinding one (there is none) succeeds with ``no-support``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from aiohttp import web
from pydantic import Field

from client_api._routing import ClientRoutes
from client_api.auth import require_requester
from client_api.models import Body, parse_body
from core.errors import BadRequest, Forbidden, MatrixError
from homeserver.http.json import json_response, read_json_object

routes = ClientRoutes()

_CHANGES_DISABLED = "3PID changes are disabled on this server"


class _RequestTokenBody(Body):
    client_secret: str = Field(min_length=1, max_length=255)
    send_attempt: int
    next_link: str | None = None
    id_server: str | None = None
    id_access_token: str | None = None


class _MsisdnTokenBody(_RequestTokenBody):
    country: str
    phone_number: str


class _ThreepidBody(Body):
    medium: Literal["email", "msisdn"]
    address: str
    id_server: str | None = None


class _AddBody(Body):
    auth: dict[str, Any] | None = None
    client_secret: str = Field(min_length=1, max_length=255)
    sid: str


class _BindBody(Body):
    client_secret: str = Field(min_length=1, max_length=255)
    id_access_token: str
    id_server: str
    sid: str


def _changes_disabled() -> MatrixError:
    return MatrixError(_CHANGES_DISABLED, status=400, errcode="M_FORBIDDEN")


def _medium_not_supported(text: str) -> MatrixError:
    return MatrixError(text, status=400, errcode="M_THREEPID_MEDIUM_NOT_SUPPORTED")


@routes.get("/account/3pid")
async def get_threepids(request: web.Request) -> web.Response:
    """GET /_matrix/client/v3/account/3pid"""
    await require_requester(request)
    return json_response({"threepids": []})


@routes.post("/account/3pid")
async def post_threepid(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/account/3pid (deprecated)"""
    await require_requester(request)
    await read_json_object(request)
    raise _changes_disabled()


@routes.post("/account/3pid/add")
async def post_threepid_add(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/account/3pid/add"""
    await require_requester(request)
    parse_body(_AddBody, await read_json_object(request))
    raise _changes_disabled()


@routes.post("/account/3pid/bind")
async def post_threepid_bind(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/account/3pid/bind: binding at an identity server, which this
    server does not talk to."""
    await require_requester(request)
    parse_body(_BindBody, await read_json_object(request))
    raise Forbidden("Binding third-party identifiers at an identity server is not supported "
                    "on this server")


@routes.post("/account/3pid/delete")
async def post_threepid_delete(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/account/3pid/delete"""
    await require_requester(request)
    parse_body(_ThreepidBody, await read_json_object(request))
    raise _changes_disabled()


@routes.post("/account/3pid/unbind")
async def post_threepid_unbind(request: web.Request) -> web.Response:
    """POST /_matrix/client/v3/account/3pid/unbind: nothing was ever bound from here."""
    await require_requester(request)
    parse_body(_ThreepidBody, await read_json_object(request))
    return json_response({"id_server_unbind_result": "no-support"})


# The requestToken endpoints: no email or SMS is ever sent from here. A phone number's
# body is checked first (as Synapse does), an email's is not.
_REQUEST_TOKEN_REFUSALS: tuple[tuple[str, bool, Callable[[], MatrixError]], ...] = (
    ("/account/3pid/email/requestToken", False, _changes_disabled),
    ("/account/3pid/msisdn/requestToken", True, lambda: _medium_not_supported(
        "Adding phone numbers to user account is not supported by this homeserver")),
    ("/register/email/requestToken", False,
     lambda: BadRequest("Email-based registration has been disabled on this server")),
    ("/register/msisdn/requestToken", True,
     lambda: BadRequest("Registration by phone number is not supported on this homeserver")),
    ("/account/password/email/requestToken", False,
     lambda: BadRequest("Email-based password resets have been disabled on this server")),
    ("/account/password/msisdn/requestToken", True,
     lambda: BadRequest("Password resets by phone number are not supported on this server")),
)


def _refuse_token_requests(path: str, msisdn: bool, error: Callable[[], MatrixError]) -> None:
    async def request_token(request: web.Request) -> web.Response:
        if msisdn:
            parse_body(_MsisdnTokenBody, await read_json_object(request))
        raise error()

    request_token.__doc__ = f"POST /_matrix/client/v3{path}"
    routes.post(path)(request_token)


for _path, _msisdn, _error in _REQUEST_TOKEN_REFUSALS:
    _refuse_token_requests(_path, _msisdn, _error)
