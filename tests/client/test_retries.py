"""relay-upload, issue 16 item 8: --token, and retries that honour 429 + Retry-After and early connection failures.

The 429 comes from a real relay started with --max-concurrent-uploads 1 while a raw socket holds one upload
open; the HTTP-date form of Retry-After from a scripted socket server (the relay only ever sends seconds).
"""

from __future__ import annotations

import email.utils
import json
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from client.retry import MAX_RETRY_AFTER, parse_retry_after
from relay.testing import RunningServer, start_relay
from tests.client.conftest import ROOT, run_client
from tests.client.test_cli import free_port, one_error_line
from tests.client.test_display import run_with_terminal_stderr

# -- --token ---------------------------------------------------------------------------------------------------------


def test_token_from_flag_and_environment(sink: RunningServer, files: list[Path]) -> None:
    guarded = start_relay("--token", "s3cret", upstream=sink.url)
    try:
        args = [str(files[1]), "--to", "/upload/tok", "--relay", guarded.url, "--json"]
        refused = run_client(*args)
        by_flag = run_client(*args, "--token", "s3cret")
        by_env = run_client(*args, env={"RELAY_TOKEN": "s3cret"})
    finally:
        guarded.stop()
    assert refused.returncode == 1 and "401" in one_error_line(refused.stderr)
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_env.returncode == 0, by_env.stderr
    assert json.loads(by_flag.stdout)["response"]["files"][0]["size"] == files[1].stat().st_size


# -- 429 from a real relay -------------------------------------------------------------------------------------------


def rejections(relay: RunningServer) -> float:
    metrics = httpx.get(f"{relay.url}/_relay/metrics").text
    for line in metrics.splitlines():
        if line.startswith("relay_rejections_total") and 'code="too_many_uploads"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.fixture
def one_slot(sink: RunningServer) -> Iterator[tuple[RunningServer, socket.socket]]:
    """A relay taking one upload at a time, and a socket holding that one upload open (3 of 10 bytes sent)."""
    relay = start_relay("--max-concurrent-uploads", "1", upstream=sink.url)
    holder = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    holder.sendall(b"POST /upload/held HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    wait_for(lambda: httpx.get(f"{relay.url}/_relay/health").json()["uploads_in_flight"] == 1)
    yield relay, holder
    holder.close()
    relay.stop()


def release(holder: socket.socket) -> bytes:
    holder.sendall(b"defghij")
    answer = holder.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return answer


def test_429_is_retried_after_retry_after(one_slot: tuple[RunningServer, socket.socket], files: list[Path]) -> None:
    relay, holder = one_slot
    command = [sys.executable, "-m", "client", str(files[1]), "--to", "/upload/late", "--relay", relay.url,
               "--retries", "3", "--json"]  # fmt: skip
    client = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: rejections(relay) >= 1)  # the first attempt got its 429
        release(holder)
        stdout, stderr = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, stderr
    out = json.loads(stdout)
    assert out["status"] == 200 and out["attempts"] >= 2
    assert out["response"]["files"][0]["size"] == files[1].stat().st_size


def test_429_without_retries_is_reported(one_slot: tuple[RunningServer, socket.socket], files: list[Path]) -> None:
    relay, _ = one_slot
    result = run_client(str(files[1]), "--to", "/upload/late", "--relay", relay.url, "--json")
    assert result.returncode == 1
    assert "HTTP 429 too_many_uploads" in one_error_line(result.stderr)
    out = json.loads(result.stdout)
    assert out["status"] == 429 and out["attempts"] == 1


# -- Retry-After as an HTTP-date, from a scripted server -------------------------------------------------------------


class Scripted(socketserver.ThreadingTCPServer):
    """Answers each request (read whole) with the next of `answers`, closing the connection after it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answers: list[bytes]) -> None:
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.answers = answers
        self.arrivals: list[float] = []  # wall-clock times, to compare with a Retry-After date
        self.retry_at = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ScriptedHandler(socketserver.StreamRequestHandler):
    server: Scripted

    def handle(self) -> None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.rfile.readline()
            if not line:
                return
            head += line
        self.server.arrivals.append(time.time())
        length = next(
            (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
        )
        if length:
            self.rfile.read(length)
        else:
            while self.rfile.readline() not in (b"0\r\n", b""):  # chunked: skip to the last chunk
                pass
        self.wfile.write(self.server.answers.pop(0))


def answer(status: str, extra: str = "") -> bytes:
    body = b'{"error": {"code": "too_many_uploads", "message": "busy"}}' if status.startswith("429") else b"{}"
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}"
    return head.encode() + b"Connection: close\r\n\r\n" + body


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    retry_at = int(time.time()) + 3  # whole seconds: an HTTP-date has no fraction
    when = email.utils.formatdate(retry_at, usegmt=True)
    server = Scripted([answer("429 Too Many Requests", f"Retry-After: {when}\r\n"), answer("200 OK")])
    server.retry_at = retry_at
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_retry_after_http_date(scripted: Scripted, files: list[Path]) -> None:
    result = run_client(str(files[1]), "--to", "/upload/x", "--relay", scripted.url, "--retries", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["attempts"] == 2
    first, second = scripted.arrivals
    assert first < scripted.retry_at <= second + 0.05  # not back before the date (a little clock slack)


def test_stdin_is_not_replayed_after_429(scripted: Scripted) -> None:
    command = [sys.executable, "-m", "client", "-", "--to", "/upload/x", "--relay", scripted.url, "--retries", "2"]
    result = subprocess.run(command, input=b"once", capture_output=True, timeout=30, cwd=ROOT)
    assert result.returncode == 1
    assert "429" in one_error_line(result.stderr.decode())
    assert len(scripted.arrivals) == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 1.0), ("", 1.0), ("3", 3.0), ("0", 0.0), ("86400", MAX_RETRY_AFTER), ("soon", 1.0), ("-5", 1.0)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_dates() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 5, usegmt=True), now=now) == 5.0
    assert parse_retry_after(email.utils.formatdate(now - 5, usegmt=True), now=now) == 0.0
    assert parse_retry_after(email.utils.formatdate(now + 7200, usegmt=True), now=now) == MAX_RETRY_AFTER


# -- a relay that starts late ------------------------------------------------------------------------------------


def test_connection_refused_is_retried_until_the_relay_is_up(sink: RunningServer, files: list[Path]) -> None:
    port = free_port()
    command = [sys.executable, "-m", "client", str(files[1]), "--to", "/upload/late", "--relay",
               f"http://127.0.0.1:{port}", "--retries", "8", "--json"]  # fmt: skip
    client = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    relay = start_relay("--port", str(port), upstream=sink.url)
    try:
        stdout, stderr = client.communicate(timeout=30)
    finally:
        relay.stop()
    assert client.returncode == 0, stderr
    assert json.loads(stdout)["attempts"] >= 2


def test_retry_is_announced_on_the_terminal(files: list[Path]) -> None:
    server = Scripted([answer("429 Too Many Requests", "Retry-After: 0\r\n"), answer("200 OK")])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code, screen, stdout = run_with_terminal_stderr(
            str(files[1]), "--to", "/upload/x", "--relay", server.url, "--retries", "1", columns=120, lines=20
        )
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, screen
    assert "HTTP 429 too_many_uploads: busy; retrying in 0.0 s" in screen
    assert " 200 " in stdout
