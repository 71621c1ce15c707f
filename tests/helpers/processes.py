"""Running real ``ktchat`` processes for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

KTCHAT = [sys.executable, "-m", "homeserver"]
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ktchat(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KTCHAT, *args], capture_output=True, text=True, timeout=timeout,
                          check=check, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_port(port: int, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


class ServerProcess:
    """``ktchat run -c CONFIG`` as a child process, its stderr captured to a file."""

    def __init__(self, config: Path, log: Path, worker: str | None = None) -> None:
        self.config = config
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(
            [*KTCHAT, "run", "-c", str(config), *(["--worker", worker] if worker else [])],
            stdout=self._log, stderr=subprocess.STDOUT,
            text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def end_process(proc: subprocess.Popen[str], sig: signal.Signals, timeout: float) -> int:
    """Send ``sig`` (if still running), wait up to ``timeout``, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class HarnessProcess:
    """What ``FedServer`` and ``SynapseServer`` share: one server process at a time, its
    output appended to ``output_path`` between banners, ended by a signal. A subclass sets
    ``label``, ``server_name`` and ``output_path`` and implements ``start``."""

    label: str
    server_name: str
    output_path: Path

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.exit_codes: list[int] = []
        self._output: Any = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float | None = None) -> None:
        """Start the server and return once it answers (each has its own default timeout)."""
        raise NotImplementedError

    def _spawn(self, args: list[str], cwd: Path) -> subprocess.Popen[str]:
        assert not self.running, f"{self.label} is already running"
        if self._output is None:
            self._output = open(self.output_path, "a")  # closed in _end
        self._output.write(f"===== [harness] start {self.label} ({self.server_name}) at "
                           f"{time.strftime('%H:%M:%S')} =====\n")
        self._output.flush()
        self.proc = subprocess.Popen(args, stdout=self._output, stderr=subprocess.STDOUT,
                                     text=True, cwd=cwd,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self.proc

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, wait for a clean exit; returns the exit status (SIGKILL after ``timeout``)."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int:
        """SIGKILL: no shutdown at all, as a crash or power cut of the process."""
        return self._end(signal.SIGKILL, 10)

    def restart(self) -> int:
        code = self.stop()
        self.start()
        return code

    def _flush_output(self) -> None:
        if self._output is not None:
            self._output.flush()

    def _end(self, sig: signal.Signals, timeout: float) -> int:
        if self.proc is None:
            return 0
        code = end_process(self.proc, sig, timeout)
        self.exit_codes.append(code)
        self.proc = None
        if self._output is not None:
            self._output.write(f"===== [harness] {self.label} ended by {sig.name}: exit "
                               f"status {code} =====\n")
            self._output.close()
            self._output = None
        return code


def proxy_binary(kind: str) -> str:
    """Debian's nginx or haproxy. Skipped where it is not installed (a developer's machine),
    a failure under CI, whose set-up (``.ci/run``) installs both."""
    binary = shutil.which(kind, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{kind} is not installed (.ci/run installs it)")
        pytest.skip(f"{kind} is not installed")
    return binary
