"""Logging set-up: one line per record on stderr, level from config."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter below WARNING helps nobody operating the server.
    for noisy in ("aiosqlite", "asyncio", "sqlalchemy.engine"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
