"""relay-upload and Ctrl-C: exit 130 with one line, and with --json still exactly one JSON object per request.

The client runs as a subprocess and gets a real SIGINT once a silent server (it reads everything, answers
nothing) has received the bytes the test waits for: the client is then stuck waiting for an answer, or for
standard input that an idle producer does not write. For --resumable, a real relay forwards to the silent
server, so the upload exists (it has a URL) while its completing append waits for the upstream's answer.
Ctrl-C in the wait before a retry: a server answering 429 (Retry-After: 60), and in-process, a refused
connection whose task is cancelled after its second retry decision. Ctrl-C while --digest hashes: a sparse
4 GiB file, and /proc/PID/io of the exited (not yet reaped) client says how much of it was read.
"""

from __future__ import annotations

import asyncio
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

from client.results import UploadResult
from client.retry import RetryDecision
from client.upload import upload_async
from relay.testing import RunningServer, start_relay
from tests.client.conftest import ROOT
from tests.client.test_cli import free_port

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


# -- Ctrl-C while waiting to retry -----------------------------------------------------------------------------------


class TooMany:
    """Answers every request (read whole) 429 with Retry-After: 60 and Connection: close; keeps each X-Upload-ID.

    `closed` counts the connections the client closed after reading the answer: from then on it waits to retry.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.ids: list[str] = []
        self.closed = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        length = int(fields[b"Content-Length"])
        while len(body) < length:
            body += conn.recv(65536)
        self.ids.append(fields[b"X-Upload-ID"].decode())
        answer = b'{"error": {"code": "too_many_uploads", "message": "busy"}}'
        top = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 60\r\nConnection: close\r\n"
        conn.sendall(top + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)
        while conn.recv(65536):  # until the client closes its end: it has read the answer
            pass
        self.closed += 1

    def close(self) -> None:
        self.sock.close()


def test_interrupt_while_waiting_to_retry_reports_the_attempt(tmp_path: Path) -> None:
    """Ctrl-C in the wait before a retry: the object says what the attempt sent, not "never started" (attempts 0)."""
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(100_000))
    server = TooMany()
    try:
        client = start_client(str(path), "--to", "/upload/x", "--relay", server.url, "--json", "--retries", "5")
        wait_for(lambda: server.closed >= 1)  # the 429 was read: the client waits 60 s to retry
        code, stdout, stderr = interrupt(client)
    finally:
        server.close()
    assert code == 130, stderr
    assert stderr.splitlines() == ["relay-upload: error: interrupted"]
    [line] = stdout.splitlines()
    out = json.loads(line)
    assert out["status"] is None and out["error"] == "interrupted"
    assert out["attempts"] == 1 and out["upload_id"] == server.ids[0]
    assert out["bytes_sent"] > 100_000  # the framing and the whole file went
    assert out["sha256"] == {str(path): hashlib.sha256(path.read_bytes()).hexdigest()}


def test_cancel_while_waiting_to_retry_a_refused_connection(tmp_path: Path) -> None:
    """Nothing listens: each attempt fails to connect; cancelled in the wait after the second, it reports two."""
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 1000)
    heard: list[UploadResult] = []

    async def go() -> None:
        retries = 0
        task = asyncio.current_task()
        assert task is not None

        def on_retry(decision: RetryDecision) -> None:
            nonlocal retries
            retries += 1
            if retries == 2:
                asyncio.get_running_loop().call_soon(task.cancel)  # lands in the wait that follows

        await upload_async([str(path)], "/upload/x", relay=f"http://127.0.0.1:{free_port()}", retries=5,
                           upload_id="refused-id", on_retry=on_retry, interrupted=heard.append)  # fmt: skip

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(go())
    [result] = heard
    assert result.status is None and result.error == "interrupted"
    assert result.attempts == 2 and result.upload_id == "refused-id" and result.bytes_sent == 0
    assert [(f.path, f.size, f.sent) for f in result.files] == [(str(path), 1000, 0)]


# -- Ctrl-C while --digest hashes the files --------------------------------------------------------------------------


def bytes_read(pid: int) -> int:
    """What process `pid` has read so far, files and sockets (`rchar` of /proc/PID/io); a zombie keeps it."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def file_position(pid: int, path: Path) -> int:
    """Where process `pid` stands in `path`, if it has it open (else 0)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == str(path):
                return int(Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text().split()[1])
        except OSError:  # closed meanwhile
            continue
    return 0


def wait_for_exit(client: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until the client has exited, without reaping it: /proc/PID/io still holds its counts."""
    deadline = time.monotonic() + timeout
    while os.waitid(os.P_PID, client.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        assert time.monotonic() < deadline, "the client did not exit"
        time.sleep(0.02)


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/PID/io")
def test_interrupt_while_hashing_for_digest(silent: Silent, tmp_path: Path) -> None:
    """Ctrl-C while --digest reads a multipart upload's file: the hashing stops, the rest of the file is not read.

    The hashing thread used to run to the end of the file (and the exit waited for it). The file is sparse, 4 GiB
    of zeros that cost no disk: read at about 1 GB/s, the whole of it takes seconds after the Ctrl-C.
    """
    path = tmp_path / "big.bin"
    size = 4 * 1024 * MiB
    with open(path, "wb") as handle:
        handle.truncate(size)
    client = start_client(str(path), "--to", "/upload/x", "--relay", silent.url, "--json", "--digest")
    try:
        wait_for(lambda: file_position(client.pid, path) > 0)  # hashing
        client.send_signal(signal.SIGINT)
        wait_for_exit(client)
        read = bytes_read(client.pid)
    finally:
        code, stdout, stderr = interrupt(client)  # reaps it (the second SIGINT finds it gone)
    assert code == 130, stderr
    assert stderr.splitlines() == ["relay-upload: error: interrupted"]
    assert read < size // 2, f"read {read:,} of {size:,} bytes after Ctrl-C"
    out = json.loads(stdout)
    assert out["status"] is None and out["error"] == "interrupted" and out["attempts"] == 0
    assert silent.received == 0  # nothing was sent: the digest goes in the headers


def test_digest_of_a_file_deleted_while_hashing_is_one_line(silent: Silent, tmp_path: Path) -> None:
    """The second file of a multipart --digest upload disappears while the first is hashed: exit 2, no traceback."""
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    with open(first, "wb") as handle:
        handle.truncate(2 * 1024 * MiB)  # sparse: seconds of hashing, no disk
    second.write_bytes(b"y" * 10)
    client = start_client(str(first), str(second), "--to", "/upload/x", "--relay", silent.url, "--digest")
    try:
        wait_for(lambda: file_position(client.pid, first) > 0)  # hashing the first file
        second.unlink()
        stdout, stderr = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 2, stderr
    assert stderr.decode().splitlines() == [f"relay-upload: error: {second}: No such file or directory"]
    assert silent.received == 0
