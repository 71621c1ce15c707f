"""TURN credentials for VoIP calls (``GET /voip/turnServer``), as Synapse hands them out."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from core.clock import Clock
from homeserver.config import TurnConfig


class TurnService:
    def __init__(self, config: TurnConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock

    def credentials(self, user_id: str) -> dict[str, Any]:
        """``{username, password, uris, ttl}`` for ``user_id``, or ``{}`` when no TURN server
        is configured (Synapse answers the same).

        With a shared secret: coturn's REST API scheme, username ``EXPIRY_SECONDS:USER_ID``
        and password base64(HMAC-SHA1(secret, username)); else the static credentials.
        """
        config = self._config
        if not config.uris:
            return {}
        if config.shared_secret is not None:
            expiry = (self._clock.time_ms() + config.user_lifetime_ms) // 1000
            username = f"{expiry}:{user_id}"
            mac = hmac.new(config.shared_secret.encode(), username.encode(), hashlib.sha1)
            password = base64.b64encode(mac.digest()).decode("ascii")
        elif config.username is not None and config.password is not None:
            username, password = config.username, config.password
        else:
            return {}
        return {"username": username, "password": password, "uris": list(config.uris),
                "ttl": config.user_lifetime_ms // 1000}
