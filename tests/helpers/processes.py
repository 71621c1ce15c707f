"""Running real ``ktchat`` processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(
            [*KTCHAT, "run", "-c", str(config)], stdout=self._log, stderr=subprocess.STDOUT,
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
