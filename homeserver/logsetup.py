"""Logging set-up (the ``logging`` config section) and the escaping that keeps one record on one
line.

Records go to stderr, or to a file rotated at ``max_bytes``, as text
(``TIME LEVEL LOGGER: MESSAGE``) or as one JSON object per line (for log collectors). Either
way nothing a request carries (a path with ``%0A``, a user agent with a line separator) can
split a record or forge another: the formatters escape every non-printable character of the
message; only a traceback keeps its own lines.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from homeserver.config import LoggingConfig

# Library chatter below WARNING helps nobody operating the server (unless asked for by name).
_QUIET_LIBRARIES = ("aiosqlite", "asyncio", "sqlalchemy.engine")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_for_log(text: str, *, quoted: bool = False) -> str:
    """``text`` with every non-printable character escaped (``\\n``, ``\\x1b``, ``\\u2028``):
    control characters, line and paragraph separators, bidirectional overrides and the like.
    The result is one line that looks like nothing but itself.

    Args:
        text: anything that came from outside (a path, a user agent, a remote error).
        quoted: the text goes between double quotes in the line: escape ``"`` and ``\\`` too
            (as ``\\x22`` and ``\\x5c``), so it cannot end its field early or fake an escape.
    """
    if text.isprintable() and not (quoted and ('"' in text or "\\" in text)):
        return text
    out = []
    for char in text:
        if char.isprintable() and not (quoted and char in '"\\'):
            out.append(char)
        else:
            out.append(_escape_char(char))
    return "".join(out)


class TextFormatter(logging.Formatter):
    """The standard formatter, with the message escaped (``escape_for_log``); a traceback
    that follows it keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_for_log(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    and ``exception`` (the traceback) or ``stack`` when the record has one. ASCII only, so
    no character of a message can break the line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True)


def setup_logging(config: LoggingConfig) -> None:
    """Send every record to stderr or ``config.file``, formatted as ``config.format``, at
    ``config.level`` and the per-logger levels of ``config.loggers``.

    Raises:
        OSError: the log file cannot be opened.
    """
    handler: logging.Handler
    if config.file is not None and config.max_bytes:
        handler = logging.handlers.RotatingFileHandler(
            config.file, maxBytes=config.max_bytes, backupCount=config.backup_count,
            encoding="utf-8")
    elif config.file is not None:
        # Never rotated here: reopened when something else (logrotate) moves it away.
        handler = logging.handlers.WatchedFileHandler(config.file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(config.level)
    quiet = max(logging.WARNING, logging.getLevelNamesMapping()[config.level])
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(quiet)
    for name, level in config.loggers:
        logging.getLogger(name).setLevel(level)
    # Python's warnings (deprecations and the like) become records too: one format per line.
    logging.captureWarnings(True)
