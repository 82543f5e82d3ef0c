"""relay-upload and Ctrl-C: exit 130 with one line, and with --json still exactly one JSON object per request.

The client runs as a subprocess and gets a real SIGINT once a silent server (it reads everything, answers
nothing) has received the bytes the test waits for: the client is then stuck waiting for an answer, or for
standard input that an idle producer does not write. For --resumable, a real relay forwards to the silent
server, so the upload exists (it has a URL) while its completing append waits for the upstream's answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.testing import RunningServer, start_relay
from tests.client.conftest import ROOT

MiB = 1024 * 1024


class Silent:
    """A TCP server that reads every byte it is sent and never answers; counts what it got."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received = 0
        self.lock = threading.Lock()
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.received += len(data)

    def close(self) -> None:
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def interrupt(client: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    client.send_signal(signal.SIGINT)
    try:
        stdout, stderr = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    return client.returncode, stdout.decode(), stderr.decode()


def start_client(*args: str, stdin: int | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "client", *args],
        cwd=ROOT,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def test_interrupt_while_standard_input_is_idle(silent: Silent) -> None:
    """The stdin reader thread must not hold the interpreter's stdin lock at exit (that was a fatal error, 134)."""
    read_end, write_end = os.pipe()
    try:
        client = start_client("-", "--to", "/upload/in", "--relay", silent.url, "--quiet", stdin=read_end)
        os.close(read_end)
        os.write(write_end, b"x" * 65536)  # then nothing more: the producer is idle, the pipe stays open
        wait_for(lambda: silent.received > 65536)
        code, _, stderr = interrupt(client)
    finally:
        os.close(write_end)
    assert "Fatal Python error" not in stderr, stderr
    assert code == 130, stderr
    assert stderr.splitlines() == ["relay-upload: error: interrupted"]


def test_interrupted_plain_upload_prints_its_json(silent: Silent, tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(100_000))
    client = start_client(str(path), "--to", "/upload/x", "--relay", silent.url, "--json")
    wait_for(lambda: silent.received > 100_000)
    code, stdout, stderr = interrupt(client)
    assert code == 130, stderr
    assert stderr.splitlines() == ["relay-upload: error: interrupted"]
    [line] = stdout.splitlines()
    out = json.loads(line)
    assert out["status"] is None and out["error"] == "interrupted"
    # The whole body went before the wait for an answer: the file's figures are known.
    assert out["sha256"] == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}
    assert out["bytes_sent"] > 100_000 and out["attempts"] == 1


@pytest.fixture
def stalled_relay(silent: Silent, tmp_path: Path) -> Iterator[RunningServer]:
    """A relay whose upstream never answers: a resumable upload's completing append waits forever."""
    relay = start_relay("--spool", str(tmp_path / "spool"), upstream=silent.url)
    yield relay
    relay.stop()


def test_interrupted_resumable_upload_prints_its_json(
    stalled_relay: RunningServer, silent: Silent, tmp_path: Path
) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(MiB))
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    client = start_client(str(path), "--to", "/upload/r/", "--relay", stalled_relay.url, "--resumable", "--json",
                          env=env)  # fmt: skip
    wait_for(lambda: silent.received >= MiB)  # the relay has it all and is forwarding it
    code, stdout, stderr = interrupt(client)
    assert code == 130, stderr
    [hint] = stderr.splitlines()
    assert hint.startswith("relay-upload: error: interrupted; the upload can be resumed"), stderr
    [line] = stdout.splitlines()
    out = json.loads(line)
    assert out["status"] is None and out["error"] == "interrupted" and out["resumable"] is True
    assert isinstance(out["upload_url"], str) and out["upload_url"].startswith(stalled_relay.url)
    assert out["resumed_from"] == 0 and out["attempts"] == 1 and out["bytes_sent"] == MiB
