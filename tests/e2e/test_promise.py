"""The relay's promise, as a matrix: failure kind x raw/multipart x Content-Length/chunked.

For every failure the upstream must either get the complete, byte-exact body or see the request aborted:
the sample upstream keeps no file and no temp file, and the relay's registry says `failed` or `rejected` with
the error code. A successful control row in the same matrix shows the harness can see a stored upload.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.testing import RunningServer, start_relay, start_sink
from tests.conftest import start_test_upstream

BOUNDARY = "promise-boundary-5f1c"
SIZE = 3 * 1024 * 1024
HALF = 1536 * 1024


def make_body(kind: str, *, truncated: bool = False) -> tuple[bytes, str, bytes]:
    """(body, content type, the file's own bytes)."""
    data = random.Random(SIZE).randbytes(SIZE)
    if kind == "raw":
        return data, "application/octet-stream", data
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="promise.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = b"" if truncated else f"\r\n--{BOUNDARY}--\r\n".encode()
    return head + data + tail, f"multipart/form-data; boundary={BOUNDARY}", data


def framed(body: bytes, framing: str) -> Iterator[bytes]:
    for start in range(0, len(body), 256 * 1024):
        piece = body[start : start + 256 * 1024]
        yield piece if framing == "content-length" else b"%x\r\n%s\r\n" % (len(piece), piece)
    if framing == "chunked":
        yield b"0\r\n\r\n"


def open_request(relay: RunningServer, body: bytes, content_type: str, framing: str, upload_id: str) -> socket.socket:
    length = f"Content-Length: {len(body)}" if framing == "content-length" else "Transfer-Encoding: chunked"
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=15)
    head = (
        f"POST /upload/promise/{upload_id} HTTP/1.1\r\nHost: relay\r\nX-Upload-ID: {upload_id}\r\n"
        f"Content-Type: {content_type}\r\n{length}\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def send_until(sock: socket.socket, body: bytes, framing: str, limit: int | None) -> None:
    """Send the framed body, or only its first `limit` bytes; a relay that refused early may reset us."""
    sent = 0
    try:
        for piece in framed(body, framing):
            if limit is not None and sent >= limit:
                return
            sock.sendall(piece)
            sent += len(piece)
    except OSError:
        pass


def read_response(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, rest = out.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)  # fmt: skip
                if length is not None and len(rest) >= length:
                    break
    except OSError:
        pass
    return out


def leftovers(store: Path) -> list[Path]:
    return [path for path in store.rglob("*") if path.is_file()] if store.exists() else []


def record(relay: RunningServer, upload_id: str) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 5
    while True:
        found = httpx.get(f"{relay.url}/_relay/uploads/{upload_id}", timeout=5).json()
        if found.get("state") != "receiving" or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# kind -> (relay flags, applies to raw?, expected code, expected state)
KINDS = {
    "success": ([], True, None, "completed"),
    "body-limit": (["--max-body-size", "1MiB"], True, "body_too_large", None),
    "file-limit": (["--max-file-size", "1MiB"], False, "file_too_large", "failed"),
    "malformed": ([], False, "malformed_multipart", "failed"),
    "client-gone": ([], True, "client_disconnected", "failed"),
    "client-idle": (["--client-idle-timeout", "1"], True, "client_timeout", "failed"),
    "upstream-gone": ([], True, "upstream_failed", "failed"),
    "drain": (["--drain-timeout", "1"], True, "shutting_down", "failed"),
}


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("body_kind", ["raw", "multipart"])
@pytest.mark.parametrize("failure", list(KINDS))
def test_upstream_gets_everything_or_an_abort(tmp_path: Path, failure: str, body_kind: str, framing: str) -> None:
    flags, applies_to_raw, code, state = KINDS[failure]
    if body_kind == "raw" and not applies_to_raw:
        pytest.skip("file parts and multipart framing only exist in multipart bodies")
    store = tmp_path / "received"
    upstream = start_test_upstream("close-mid-body") if failure == "upstream-gone" else start_sink(store)
    relay = start_relay(*flags, upstream=upstream.url)
    upload_id = f"{failure}-{body_kind}-{framing}"
    body, content_type, data = make_body(body_kind, truncated=failure == "malformed")
    try:
        sock = open_request(relay, body, content_type, framing, upload_id)
        with sock:
            if failure in ("client-gone", "client-idle", "drain"):
                send_until(sock, body, framing, HALF)
                if failure == "client-gone":
                    time.sleep(0.2)
                    sock.close()
                elif failure == "drain":
                    time.sleep(0.3)
                    relay.proc.send_signal(signal.SIGTERM)
                    assert relay.proc.wait(15) == 0
                answer = read_response(sock) if failure == "client-idle" else b""
            else:
                send_until(sock, body, framing, None)
                answer = read_response(sock)
        time.sleep(0.3)  # let the upstream notice an abort and clean up
        if failure == "drain":
            assert "shutting_down" in relay.log()
            seen = None
        else:
            seen = record(relay, upload_id)
    finally:
        relay.stop()
        upstream.stop()

    if failure == "success":
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        answer_json = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert answer_json["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
        (stored,) = leftovers(store)
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        assert seen is not None and seen["state"] == "completed"
        return
    if failure == "client-idle" or failure not in ("client-gone", "drain"):
        assert b'"' + code.encode() + b'"' in answer, answer[:300]
    assert leftovers(store) == [], "the upstream kept something of a failed upload"
    if seen is not None:
        expected_state = state or ("rejected" if framing == "content-length" else "failed")
        assert (seen["state"], seen["error"]["code"]) == (expected_state, code), seen
