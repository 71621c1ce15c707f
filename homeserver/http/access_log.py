"""One log line per request, without tokens or passwords, that a request cannot split.

Bodies are never logged. Query parameters that carry credentials are masked, and the requester
(set on the request by the auth helper) is logged instead of its token. What the client sent
(path, user agent) is escaped (``escape_for_log``): a ``%0A`` in a path cannot start a second,
real-looking line.

    127.0.0.1 "GET /_matrix/client/v3/sync?since=s1" 200 3.2ms @alice:example.org "Element/1.11"
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from multidict import MultiDict

from homeserver.http.client_ip import client_ip
from homeserver.logsetup import escape_for_log

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
        user_agent = request.headers.get("User-Agent", "-")
        self.logger.info(
            '%s "%s %s" %d %.1fms %s "%s"',
            escape_for_log(client_ip(request) or "-"),
            escape_for_log(request.method, quoted=True),
            escape_for_log(redacted_path(request), quoted=True), response.status,
            time * 1000, escape_for_log(user), escape_for_log(user_agent, quoted=True),
        )
