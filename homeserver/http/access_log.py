"""One log line per request, without tokens or passwords.

Bodies are never logged. Query parameters that carry credentials are masked, and the requester
(set on the request by the auth helper) is logged instead of its token.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from multidict import MultiDict

SECRET_QUERY_PARAMS = frozenset({"access_token", "token", "refresh_token", "password",
                                 "loginToken", "sid", "client_secret"})
REQUESTER_LOG_KEY: web.RequestKey[str] = web.RequestKey("requester_user_id", str)


def redacted_path(request: web.BaseRequest) -> str:
    url = request.rel_url
    if not url.query:
        return url.path
    query = MultiDict(
        (k, "<redacted>" if k in SECRET_QUERY_PARAMS else v) for k, v in url.query.items()
    )
    return str(url.with_query(query))


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        user = request.get(REQUESTER_LOG_KEY, "-")
        self.logger.info(
            '%s "%s %s" %d %.1fms %s',
            request.remote, request.method, redacted_path(request), response.status,
            time * 1000, user,
        )
