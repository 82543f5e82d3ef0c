"""Start a real relay and a real sample upstream on free loopback ports, for tests.

Installed as a pytest plugin (entry point `upload_relay`), so a project that depends on the relay gets the
fixtures `relay_sink`, `relay_server` and the factories `start_sink` / `start_relay` in its own tests.

Each server is its own process (`python -m relay ...`, `python -m relay.sink ...`) started with `--port 0`;
the port is read from the "listening on http://..." (or https://) line the server prints. Output goes to a log
file, not a pipe, so a chatty server can never block on a full pipe; stopping the server removes the file and
keeps its text for `log()`. Servers are stopped by PID by the fixture that started them. `relay_server` spools
resumable uploads under the test's tmp_path.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["RunningServer", "relay_server", "relay_sink", "start_process", "start_relay", "start_sink"]

# "listening on http://127.0.0.1:8000", or https:// with --ssl-certfile, or an IPv6 literal in brackets.
_LISTENING = re.compile(r"listening on (https?://(?:[0-9.]+|\[[0-9A-Fa-f:.]+\]):(\d+))")


@dataclass
class RunningServer:
    """A server process we started: its base URL, port and log."""

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    log_path: Path
    args: list[str] = field(default_factory=list)
    # The log's text once stop() removed its file: tests often read the log after stopping the server.
    _kept_log: str | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if self._kept_log is not None:
            return self._kept_log
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop the process (SIGTERM, then SIGKILL after `timeout`); return its exit code.

        The log file is removed (no relay-test-*.log piles up in /tmp); `log()` still returns its text.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._kept_log is None:
            self._kept_log = _take(self.log_path)
        return self.proc.returncode


def _take(path: Path) -> str:
    """The text of `path`, which is then removed ("" if it is gone already)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    path.unlink(missing_ok=True)
    return text


def start_process(
    args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 20.0, cwd: str | Path | None = None
) -> RunningServer:
    """Run `args` and wait for its "listening on http(s)://HOST:PORT" line."""
    fd, log_name = tempfile.mkstemp(prefix="relay-test-", suffix=".log")
    log_path = Path(log_name)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            return RunningServer(proc, match.group(1), int(match.group(2)), log_path, list(args))
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    raise RuntimeError(f"{' '.join(args)} did not start (exit {proc.returncode}):\n{_take(log_path)}")


def start_sink(directory: str | Path | None = None, *extra: str, env: dict[str, str] | None = None) -> RunningServer:
    """The sample upstream on a free port; `directory=None` means `--discard`."""
    store = ["--discard"] if directory is None else ["--dir", str(directory)]
    return start_process([sys.executable, "-m", "relay.sink", "--port", "0", *store, *extra], env=env)


def start_relay(
    *extra: str, upstream: str | None = None, env: dict[str, str] | None = None, cwd: str | Path | None = None
) -> RunningServer:
    """relay-server on a free port, forwarding to `upstream` (or its embedded sink when None)."""
    target = [] if upstream is None else ["--upstream", upstream]
    return start_process([sys.executable, "-m", "relay", "--port", "0", *target, *extra], env=env, cwd=cwd)


@pytest.fixture
def relay_sink(tmp_path: Path) -> Iterator[RunningServer]:
    """A sample upstream storing under a temporary directory."""
    server = start_sink(tmp_path / "received")
    yield server
    server.stop()


@pytest.fixture
def relay_server(relay_sink: RunningServer, tmp_path: Path) -> Iterator[RunningServer]:
    """A relay with default settings, forwarding to `relay_sink`, its resumable uploads spooled under tmp_path.

    Not the default ./spool, in the directory pytest runs from: uploads would carry over from one test (and
    one session) to the next.
    """
    server = start_relay("--spool", str(tmp_path / "spool"), upstream=relay_sink.url)
    yield server
    server.stop()
