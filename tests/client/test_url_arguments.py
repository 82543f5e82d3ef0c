"""relay-upload: a malformed URL anywhere is one line on stderr, never a traceback (CONTRACT.md, relay-upload).

A URL given on the command line (`--relay`, `--to`, bench's `--relay`, `--direct` and `--to`) that httpx cannot
parse, that has no host, or whose port is not 1-65535 is a usage error: exit 2, one line. A relay whose creation
answer carries such a `Location` is a protocol error: exit 1, one line. Each case runs the installed
`relay-upload` console script, as a user would. So does the upload id that --events puts in its URL.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.client.conftest import ROOT
from tests.client.test_cli import free_port, one_error_line

RELAY_UPLOAD = str(Path(sys.executable).parent / "relay-upload")


def relay_upload(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """The real console script; the resume store goes under `cache`, not the user's home."""
    return subprocess.run(
        [RELAY_UPLOAD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
    )


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    path = tmp_path / "h.txt"
    path.write_bytes(b"hello\n")
    return path


def assert_usage_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)  # also: no "Traceback"
    for needle in needles:
        assert needle in line, line
    assert result.stdout == ""


# -- the upload command ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        # The reviewer's three cases.
        (["--to", "/upload/x", "--relay", "http://[::1"], ["--relay", "http://[::1"]),
        (["--to", "/upload/x", "--relay", "http://127.0.0.1:99999"], ["--relay", "99999"]),
        (["--to", "http://[::1/upload/x"], ["--to", "http://[::1/upload/x"]),
        # Their neighbours: a port out of range in --to, port 0, a port that is not a number, no host at all.
        (["--to", "http://127.0.0.1:99999/upload/x"], ["--to", "99999"]),
        (["--to", "/upload/x", "--relay", "http://127.0.0.1:0"], ["--relay", "port 0"]),
        (["--to", "/upload/x", "--relay", "http://127.0.0.1:abc"], ["--relay", "abc"]),
        (["--to", "/upload/x", "--relay", "http://"], ["--relay", "no host"]),
        (["--to", "http://:8000/upload/x"], ["--to", "no host"]),
        (["--to", "/upload/x", "--relay", "http://300.1.1.1:8000"], ["--relay", "300.1.1.1"]),
        # A path httpx refuses (a control character) is the --to's fault, not the network's.
        (["--to", "/upload/\x01x"], ["--to"]),
        # Every mode resolves the same way: resumable, events, a URL --to next to a --relay.
        (["--to", "/upload/x", "--relay", "http://[::1", "--resumable"], ["--relay"]),
        (["--to", "/upload/x", "--relay", "http://127.0.0.1:99999", "--events"], ["--relay"]),
        (["--to", "http://[::1/upload/x", "--relay", "http://127.0.0.1:8000"], ["--to"]),
        # --events puts the upload id in its URL (/_relay/uploads/{id}/events): a user's id must be a valid one.
        (["--to", "/upload/x", "--events", "--header", "X-Upload-ID: a\x01b"], ["X-Upload-ID"]),
        (["--to", "/upload/x", "--events", "--header", "X-Upload-ID: a/../b"], ["X-Upload-ID"]),
    ],
)
def test_malformed_url_is_a_usage_error(small_file: Path, tmp_path: Path, args: list[str], needles: list[str]) -> None:
    assert_usage_error(relay_upload(str(small_file), *args, cache=tmp_path / "cache"), *needles)


def test_bracketed_ipv6_relay_is_still_a_url(small_file: Path, tmp_path: Path) -> None:
    # Well formed, only nobody listens there: the network's failure (3), not the arguments' (2).
    url = f"http://[::1]:{free_port()}"
    result = relay_upload(str(small_file), "--to", "/upload/x", "--relay", url, "--quiet", cache=tmp_path / "c")
    assert result.returncode == 3, result.stderr
    assert url in one_error_line(result.stderr)


# -- bench ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--relay", "http://[::1"], ["--relay"]),
        (["--relay", "http://127.0.0.1:99999"], ["--relay", "99999"]),
        (["--direct", "http://127.0.0.1:99999"], ["--direct", "99999"]),
        (["--direct", "http://[::1"], ["--direct"]),
        (["--direct", "ftp://127.0.0.1:8001"], ["--direct", "http://"]),
        (["--to", "http://127.0.0.1:8000/upload/bench"], ["--to", "path"]),
    ],
)
def test_bench_malformed_url_is_a_usage_error(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    result = relay_upload("bench", "--size", "1k", "--runs", "1", *args, cache=tmp_path / "cache")
    assert_usage_error(result, *needles)


# -- a relay answering a malformed Location -------------------------------------------------------------------------


def serve_location(location: str) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """A stand-in relay on a real socket: every creation is 201 with `location`; anything else is a 500."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(201)
            self.send_header("Tus-Resumable", "1.0.0")
            self.send_header("Upload-Offset", "0")
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self) -> None:
            self.send_error(500)

        def do_PATCH(self) -> None:
            self.send_error(500)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def location_relay(request: pytest.FixtureRequest) -> Iterator[str]:
    server, thread = serve_location(request.param)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.parametrize(
    "location_relay",
    ["http://[::1/resumable/abc", "http://127.0.0.1:99999/resumable/abc", "//:0/resumable/abc", "ftp://h/r/abc"],
    indirect=True,
)
def test_malformed_location_is_one_line_exit_1(small_file: Path, tmp_path: Path, location_relay: str) -> None:
    cache = tmp_path / "cache"
    args = [str(small_file), "--resumable", "--to", "/upload/x", "--relay", location_relay, "--retries", "1"]
    result = relay_upload(*args, "--quiet", cache=cache)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert "Location" in line, line
    # Nothing remembered: a URL the client cannot use must not be resumed by the next run.
    assert not (cache / "relay-upload").exists() or not any((cache / "relay-upload").iterdir())


def test_unusable_remembered_url_is_ignored(small_file: Path, tmp_path: Path) -> None:
    """A resume-store entry naming an unusable URL (hand-edited, or from an older client) is only a hint."""
    import json

    from client.resume_store import ResumeStore, StoredUpload, fingerprint

    with socket.socket() as probe:  # a relay that is not there: the run must reach the network, exit 3
        probe.bind(("127.0.0.1", 0))
        relay = f"http://127.0.0.1:{probe.getsockname()[1]}"
    cache = tmp_path / "cache"
    destination = f"{relay}/upload/x"
    key = fingerprint(str(small_file), destination)
    store = ResumeStore(cache / "relay-upload")
    store.save(key, StoredUpload("http://[::1/resumable/abc", "tus", str(small_file), destination, 6))
    assert json.loads((cache / "relay-upload" / key.name).read_text())["upload_url"].startswith("http://[::1")
    result = relay_upload(
        str(small_file), "--resumable", "--to", "/upload/x", "--relay", relay, "--retries", "0", "--quiet", cache=cache
    )
    assert result.returncode == 3, result.stderr
    assert "cannot connect" in one_error_line(result.stderr)
