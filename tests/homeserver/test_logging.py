"""Logging (DESIGN.md, ``logging.*``): one line per record whatever a request puts in it, text
or JSON, per-logger levels, a file; and the access log.

The end-to-end tests run ``ktchat run`` for real and read what it wrote.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.http_exceptions import BadStatusLine, LineTooLong
from aiohttp.web_protocol import RequestPayloadError

from homeserver.logsetup import (
    MAX_TRACEBACK_CHARS,
    BadRequestFilter,
    JsonFormatter,
    TextFormatter,
    escape_for_log,
)
from tests.helpers.federation import FedServer
from tests.helpers.processes import ktchat

# -- escaping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "escaped"), [
    ("/plain/path", "/plain/path"),
    ("caf\u00e9 \u2603", "caf\u00e9 \u2603"),
    ("a\nb", "a\\nb"),
    ("a\r\nb", "a\\r\\nb"),
    ("tab\there", "tab\\there"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("nul\x00", "nul\\x00"),
    ("del\x7f", "del\\x7f"),
    ("nel\x85", "nel\\x85"),
    ("line\u2028sep", "line\\u2028sep"),
    ("bidi\u202eevil", "bidi\\u202eevil"),
])
def test_escape_for_log(raw: str, escaped: str) -> None:
    assert escape_for_log(raw) == escaped
    assert escape_for_log(raw).isprintable()


def test_escape_for_log_quoted_escapes_quotes_and_backslashes() -> None:
    assert escape_for_log('say "hi"\\n', quoted=True) == 'say \\x22hi\\x22\\x5cn'
    # Unquoted, a backslash is left alone (Windows paths, regular expressions).
    assert escape_for_log("C:\\dir") == "C:\\dir"


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("some.module", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_text_formatter_keeps_each_record_on_one_line_but_the_traceback() -> None:
    formatter = TextFormatter("%(levelname)s %(name)s: %(message)s")
    line = formatter.format(_record("Bad request %s", "/x\nINFO ktchat.access: forged"))
    assert line == "WARNING some.module: Bad request /x\\nINFO ktchat.access: forged"

    text = formatter.format(_record("Failed on %s", "a\rb", exc=True))
    first, *rest = text.splitlines()
    assert first == "WARNING some.module: Failed on a\\rb"
    assert rest[0].startswith("Traceback")
    assert rest[-1] == "ValueError: boom"


def test_json_formatter_writes_one_object_per_line() -> None:
    formatter = JsonFormatter()
    line = formatter.format(_record("Bad request %s \u2028 %s", "/x\n{}", "caf\u00e9"))
    assert "\n" not in line and line.isascii()
    record = json.loads(line)
    assert record["level"] == "WARNING"
    assert record["logger"] == "some.module"
    assert record["message"] == "Bad request /x\n{} \u2028 caf\u00e9"
    assert "exception" not in record
    assert time.time() - _parse_time(record["time"]) < 60

    record = json.loads(formatter.format(_record("Failed", exc=True)))
    assert record["message"] == "Failed"
    assert record["exception"].startswith("Traceback")
    assert record["exception"].endswith("ValueError: boom")


def _deep(depth: int) -> None:
    if depth:
        _deep(depth - 1)
    raise RecursionError("maximum recursion depth exceeded")


def _alternating(depth: int) -> None:
    # Two functions calling each other (as json's decoder does): Python's traceback does not
    # fold the repetition into "[Previous line repeated N more times]".
    if depth:
        _alternating_other(depth - 1)
    raise RecursionError("maximum recursion depth exceeded")


def _alternating_other(depth: int) -> None:
    _alternating(depth)


@pytest.mark.parametrize("formatter", [TextFormatter("%(message)s"), JsonFormatter()])
def test_a_huge_traceback_keeps_its_start_and_end(formatter: logging.Formatter) -> None:
    try:
        _alternating(900)
    except RecursionError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("some.module", logging.ERROR, __file__, 1, "Unexpected error",
                               (), exc_info)
    full = logging.Formatter().formatException(exc_info)
    assert len(full) > 100_000
    text = formatter.format(record)
    if isinstance(formatter, JsonFormatter):
        text = json.loads(text)["exception"]
    else:
        message, text = text.split("\n", 1)
        assert message == "Unexpected error"
    assert len(text) <= MAX_TRACEBACK_CHARS + 200
    assert text.startswith("Traceback (most recent call last):")
    assert text.endswith("RecursionError: maximum recursion depth exceeded")
    assert re.search(r"\.\.\. \d+ lines \(\d+ characters\) of this traceback left out", text)

    # An ordinary traceback is whole.
    try:
        _deep(3)
    except RecursionError:
        exc_info = sys.exc_info()
    record.exc_info, record.exc_text = exc_info, None
    whole = logging.Formatter().formatException(exc_info)
    text = formatter.format(record)
    assert whole in (json.loads(text)["exception"] if isinstance(formatter, JsonFormatter)
                     else text)


def _aiohttp_record(msg: str, error: BaseException, *args: object) -> logging.LogRecord:
    try:
        raise error
    except BaseException:
        exc_info = sys.exc_info()
    return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, msg, args, exc_info)


@pytest.fixture
def server_logger_at_info() -> Iterator[None]:
    logger = logging.getLogger("aiohttp.server")
    old = logger.level
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(old)


@pytest.mark.usefixtures("server_logger_at_info")
def test_a_request_the_parser_refused_is_one_info_line() -> None:
    bad = _aiohttp_record("Error handling request from %s",
                          BadStatusLine("GET / HTTP/9.9"), "10.1.2.3")
    assert "\n" in str(bad.exc_info[1])  # type: ignore[index]
    assert BadRequestFilter().filter(bad)
    assert bad.levelno == logging.INFO and bad.levelname == "INFO"
    assert bad.exc_info is None
    line = TextFormatter("%(levelname)s %(name)s: %(message)s").format(bad)
    assert line.startswith("INFO aiohttp.server: Bad HTTP request from 10.1.2.3: 400, message: "
                           "Bad status line"), line
    assert "GET / HTTP/9.9" in line and "\n" not in line and "Traceback" not in line

    long_line = _aiohttp_record("Error handling request from %s",
                                LineTooLong("x" * 10_000, "8190"), "10.1.2.3")
    assert BadRequestFilter().filter(long_line)
    assert len(long_line.getMessage()) < 400


@pytest.mark.usefixtures("server_logger_at_info")
def test_a_genuine_server_error_keeps_its_traceback() -> None:
    for record in (_aiohttp_record("Error handling request from %s", KeyError("x"), "10.1.2.3"),
                   _aiohttp_record("Unhandled exception", RuntimeError("bug"))):
        message = record.getMessage()
        assert BadRequestFilter().filter(record)
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None and record.getMessage() == message


def test_a_refused_body_met_again_when_aiohttp_drains_it_is_not_logged_twice() -> None:
    record = _aiohttp_record("Unhandled exception", RequestPayloadError("bad gzip"))
    assert not BadRequestFilter().filter(record)


def test_bad_request_lines_follow_the_logger_level() -> None:
    logger = logging.getLogger("aiohttp.server")
    old = logger.level
    logger.setLevel(logging.WARNING)
    try:
        bad = _aiohttp_record("Error handling request from %s", BadStatusLine("x"), "10.1.2.3")
        assert not BadRequestFilter().filter(bad)
    finally:
        logger.setLevel(old)


def _parse_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


# -- a real server ----------------------------------------------------------------------------


def _server(tmp_path: Path, logging_config: dict[str, Any]) -> FedServer:
    return FedServer(tmp_path, "hs", config={"logging": logging_config})


def _get(server: FedServer, path: str, user_agent: str = "test-agent") -> int:
    request = urllib.request.Request(f"{server.client_url}{path}",
                                     headers={"User-Agent": user_agent})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return e.code


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _wait_for(check: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_a_request_cannot_forge_log_lines(tmp_path: Path) -> None:
    server = _server(tmp_path, {"level": "INFO"})
    server.start()
    try:
        forged = '2030-01-01 00:00:00,000 INFO ktchat.access: 10.9.9.9 "GET /admin" 200'
        path = "/_matrix/client/v3/nope%0A" + forged.replace(" ", "%20").replace('"', "%22")
        # (The HTTP parser refuses control characters in a header, not these line breaks.)
        user_agent = 'agent\t"evil"\u0085x\u2028y'.encode()
        answer = _raw_request(server.client_port, (
            f"GET {path}%0D%1B[2J HTTP/1.1\r\nHost: localhost\r\n".encode()
            + b"User-Agent: " + user_agent + b"\r\nConnection: close\r\n\r\n"))
        assert answer.startswith(b"HTTP/1.1 404"), answer[:200]
        log = _wait_for(lambda: "nope" in server.log() and server.log())
    finally:
        server.stop()
    lines = [line for line in log.splitlines() if "nope" in line]
    assert len(lines) == 1, log
    line = lines[0]
    assert "ktchat.access" in line
    assert "nope\\n2030-01-01 00:00:00,000 INFO" in line, line
    assert "\\r\\x1b[2J" in line, line
    assert line.endswith('"agent\\t\\x22evil\\x22\\x85x\\u2028y"'), line
    assert not any(line.startswith("2030-01-01") for line in log.splitlines()), log
    assert "\x1b" not in log


def test_access_log_line(tmp_path: Path) -> None:
    server = _server(tmp_path, {"level": "INFO"})
    server.start()
    try:
        assert _get(server, "/_matrix/client/versions?access_token=secret-token",
                    user_agent="Element/1.0") == 200
        log = _wait_for(lambda: "/versions" in server.log() and server.log())
    finally:
        server.stop()
    line = next(line for line in log.splitlines() if "/versions" in line)
    assert "ktchat.access" in line
    assert '127.0.0.1 "GET /_matrix/client/versions?access_token=%3Credacted%3E" 200' in line, \
        line
    assert line.endswith(' - "Element/1.0"'), line
    assert "secret-token" not in log


def test_json_format(tmp_path: Path) -> None:
    server = _server(tmp_path, {"level": "INFO", "format": "json"})
    server.start()
    try:
        assert _get(server, "/_matrix/client/versions%0A") == 404
        assert _get(server, "/_matrix/client/versions") == 200
        _wait_for(lambda: server.log().count("ktchat.access") >= 2)
    finally:
        assert server.stop() == 0
    lines = [line for line in server.log().splitlines()
             if line.strip() and not line.startswith("===== [harness]")]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records), records
    access = [r for r in records if r["logger"] == "ktchat.access"]
    assert len(access) == 2, records
    assert all(r["level"] == "INFO" for r in access)
    assert any("/_matrix/client/versions\\n" in r["message"] for r in access), access
    assert any(r["logger"] == "homeserver.app" and "Listening on" in r["message"]
               for r in records), records


def test_per_logger_levels(tmp_path: Path) -> None:
    server = _server(tmp_path, {"level": "INFO", "loggers": {"ktchat.access": "WARNING"}})
    server.start()
    try:
        assert _get(server, "/_matrix/client/versions") == 200
        time.sleep(0.3)
    finally:
        server.stop()
    log = server.log()
    assert "Listening on" in log  # other loggers keep the level
    assert "ktchat.access" not in log and "/versions" not in log, log


def test_debug_shows_persister_batches(tmp_path: Path) -> None:
    async def scenario(server: FedServer) -> None:
        alice = await server.register("alice")
        await alice.create_room(name="debugging")

    server = _server(tmp_path, {"level": "INFO",
                                "loggers": {"roomserver": "DEBUG"}})
    server.start()
    try:
        asyncio.run(scenario(server))
    finally:
        server.stop()
    log = server.log()
    batches = [line for line in log.splitlines() if "roomserver.writer" in line
               and "DEBUG" in line and "Committed" in line]
    assert batches, log
    assert "aiosqlite" not in log  # library chatter stays off at DEBUG of our loggers


def test_log_file(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "ktchat.log"
    log_file.parent.mkdir()
    server = _server(tmp_path, {"level": "INFO", "file": str(log_file),
                                "max_bytes": 2000, "backup_count": 2})
    server.start()
    try:
        for _ in range(40):
            assert _get(server, "/_matrix/client/versions") == 200
        _wait_for(lambda: log_file.exists() and "Listening on" in _all_files(log_file))
    finally:
        server.stop()
    text = _all_files(log_file)
    assert "Listening on" in text
    assert "/_matrix/client/versions" in text
    assert "/_matrix/client/versions" not in server.log()  # not on stderr too
    # Rotated at max_bytes, keeping backup_count old files.
    assert sorted(p.name for p in log_file.parent.iterdir()) == [
        "ktchat.log", "ktchat.log.1", "ktchat.log.2"]
    assert all(p.stat().st_size <= 2000 for p in log_file.parent.iterdir())


def _all_files(log_file: Path) -> str:
    return "".join(p.read_text() for p in sorted(log_file.parent.iterdir()))


def test_unusable_log_file_fails_cleanly(tmp_path: Path) -> None:
    server = _server(tmp_path, {"file": str(tmp_path / "no" / "such" / "dir" / "x.log")})
    result = ktchat("run", "-c", str(server.config_path), check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "logging.file" in result.stderr
