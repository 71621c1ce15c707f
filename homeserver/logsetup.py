"""Logging set-up (the ``logging`` config section) and the escaping that keeps one record on one
line.

Records go to stderr, or to a file rotated at ``max_bytes``, as text
(``TIME LEVEL LOGGER: MESSAGE``) or as one JSON object per line (for log collectors). Either
way nothing a request carries (a path with ``%0A``, a user agent with a line separator) can
split a record or forge another: the formatters escape every non-printable character of the
message; only a traceback keeps its own lines, and one longer than ``MAX_TRACEBACK_CHARS``
(a deep recursion) keeps its start and its end.

A request that aiohttp's parser refuses (a malformed request line or header) is the client's
mistake, not the server's: it is one INFO line (:class:`BadRequestFilter`), not aiohttp's
ERROR with a traceback, while a genuine failure inside the server keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

if TYPE_CHECKING:
    from homeserver.config import LoggingConfig

# Library chatter below WARNING helps nobody operating the server (unless asked for by name).
_QUIET_LIBRARIES = ("aiosqlite", "asyncio", "sqlalchemy.engine")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# aiohttp's web server logs what it could not handle here (web_protocol.py).
AIOHTTP_SERVER_LOGGER = "aiohttp.server"
# A traceback beyond this is cut in its middle: its start and its end tell what happened, and
# a recursion 1000 frames deep (150 KB) tells nothing more.
MAX_TRACEBACK_CHARS = 20_000
_TRACEBACK_HEAD_CHARS = 5_000
_MAX_REASON_CHARS = 300

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


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


def shorten_traceback(text: str) -> str:
    """``text`` (a formatted traceback), cut in its middle when longer than
    ``MAX_TRACEBACK_CHARS``, at line boundaries, saying how much was left out."""
    if len(text) <= MAX_TRACEBACK_CHARS:
        return text
    head_end = text.rfind("\n", 0, _TRACEBACK_HEAD_CHARS) + 1 or _TRACEBACK_HEAD_CHARS
    tail_start = len(text) - (MAX_TRACEBACK_CHARS - _TRACEBACK_HEAD_CHARS)
    tail_start = text.find("\n", tail_start) + 1 or tail_start
    left_out = text[head_end:tail_start]
    return (f"{text[:head_end]}  ... {left_out.count(chr(10))} lines "
            f"({len(left_out)} characters) of this traceback left out ...\n{text[tail_start:]}")


class TextFormatter(logging.Formatter):
    """The standard formatter, with the message escaped (``escape_for_log``); a traceback
    that follows it keeps its lines (and is shortened: ``shorten_traceback``)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_for_log(super().formatMessage(record))

    def formatException(self, ei: _ExcInfo | tuple[None, None, None]) -> str:
        return shorten_traceback(super().formatException(ei))


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

    def formatException(self, ei: _ExcInfo | tuple[None, None, None]) -> str:
        return shorten_traceback(super().formatException(ei))


class BadRequestFilter(logging.Filter):
    """On aiohttp's server logger: a request its parser refused (malformed request line,
    header, chunked encoding; aiohttp answers it 400 and logs an ERROR with a traceback)
    becomes one INFO line, ``Bad HTTP request from ADDRESS: REASON``, and is dropped when INFO
    is not wanted there.

    A body that proved malformed as it was read (``RequestPayloadError``: bad compression) was
    refused and logged where it was read (``homeserver.http.request_body``); aiohttp meets the
    error again as it drains the rest of that body before closing the connection, and logs it
    as an "Unhandled exception": that record is dropped. Every other record (an unexpected
    failure) passes unchanged, traceback and all."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, RequestPayloadError):
            return False
        if not isinstance(error, HttpProcessingError):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.INFO):
            return False
        # aiohttp's message is "Error handling request from %s" (the client's address).
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        reason = " ".join(str(error).split())
        if len(reason) > _MAX_REASON_CHARS:
            reason = reason[:_MAX_REASON_CHARS] + "..."
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "Bad HTTP request from %s: %s", (remote, reason)
        record.exc_info, record.exc_text = None, None
        return True


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
    server_logger = logging.getLogger(AIOHTTP_SERVER_LOGGER)
    for old_filter in server_logger.filters[:]:
        if isinstance(old_filter, BadRequestFilter):
            server_logger.removeFilter(old_filter)
    server_logger.addFilter(BadRequestFilter())
    # Python's warnings (deprecations and the like) become records too: one format per line.
    logging.captureWarnings(True)
