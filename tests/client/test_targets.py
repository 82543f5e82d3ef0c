"""relay-upload, issue 16 items 1, 7 and 12: --version, where a request goes, what it reads, and the hints.

Every CLI behaviour runs through the real command (a subprocess) against a real relay and sink.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import client.version as version_module
from client.errors import ArgumentError
from client.target import resolve_target
from relay.testing import RunningServer
from tests.client.conftest import ROOT, StandIn, run_client, sha256_of
from tests.client.test_cli import free_port, one_error_line


def run_with_stdin(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "client", *args], input=data, capture_output=True, timeout=60, cwd=ROOT
    )


# -- --version ------------------------------------------------------------------------------------------------------


def test_version_prints_the_distribution_version() -> None:
    result = run_client("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"relay-upload {metadata.version('upload-relay')}\n"


def test_version_falls_back_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version_module.metadata, "version", missing)
    assert version_module.version() == version_module.FALLBACK_VERSION


# -- --to as a URL ---------------------------------------------------------------------------------------------------


def test_to_url_sets_the_relay(relay: RunningServer, files: list[Path]) -> None:
    result = run_client(str(files[1]), "--to", f"{relay.url}/upload/by-url?tag=a", "--query", "n=1", "--json")
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)["response"]
    assert response["path"] == "/upload/by-url"
    assert response["query"] == {"tag": "a", "n": "1"}


def test_to_url_agreeing_with_relay_is_fine(relay: RunningServer, files: list[Path]) -> None:
    result = run_client(str(files[1]), "--to", f"{relay.url}/upload/same", "--relay", relay.url + "/", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["response"]["path"] == "/upload/same"


def test_to_url_conflicting_with_relay_is_a_usage_error(files: list[Path]) -> None:
    result = run_client(str(files[1]), "--to", "http://127.0.0.1:1/upload/x", "--relay", "http://127.0.0.1:2")
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "--relay" in line and "http://127.0.0.1:1/upload/x" in line
    assert result.stdout == ""


def test_resolve_target_cases() -> None:
    assert resolve_target("/upload/x", None) == ("http://127.0.0.1:8000", "/upload/x")
    assert resolve_target("HTTP://h:1/upload/x?q=1", None) == ("http://h:1", "/upload/x?q=1")
    assert resolve_target("http://h:1", None) == ("http://h:1", "/")
    # A relay mounted under a path prefix: the URL starts with the relay's URL, the rest is the path.
    assert resolve_target("https://h/relay/upload/x", "https://h/relay") == ("https://h/relay", "/upload/x")
    with pytest.raises(ArgumentError):
        resolve_target("http://h:1/upload/x", "http://h:2")
    with pytest.raises(ArgumentError):
        resolve_target("/upload/x", "ftp://h")
    for other in ("ftp://x/upload/a", "file:///etc/passwd", "ws://h/upload/a"):  # URLs, not paths: exit 2
        with pytest.raises(ArgumentError, match="--to must be a path"):
            resolve_target(other, None)
    assert resolve_target("upload/x:y//z", None) == ("http://127.0.0.1:8000", "upload/x:y//z")  # still a path


# -- the 404 hint ----------------------------------------------------------------------------------------------------


def test_missing_trailing_slash_gets_a_hint(relay: RunningServer, files: list[Path]) -> None:
    result = run_client(str(files[1]), "--to", "/upload", "--relay", relay.url, "--json")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "HTTP 404 not_found" in line
    assert "the relay routes /upload/: did you mean --to /upload/ ?" in line
    assert json.loads(result.stdout)["status"] == 404


def test_unrouted_path_lists_the_routes(relay: RunningServer, files: list[Path]) -> None:
    result = run_client(str(files[1]), "--to", f"{relay.url}/Upload/x")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "the relay routes /upload/ (case-sensitive): did you mean --to /upload/x ?" in line
    other = run_client(str(files[1]), "--to", f"{relay.url}/files/x")
    assert one_error_line(other.stderr).endswith("the relay routes /upload/")


# -- standard input ----------------------------------------------------------------------------------------------


def test_stdin_goes_chunked(stand_in: StandIn) -> None:
    data = os.urandom(2 * 1024 * 1024 + 11)
    result = run_with_stdin("-", "--to", "/upload/stdin.bin", "--relay", stand_in.url, "--json", data=data)
    assert result.returncode == 0, result.stderr
    [seen] = stand_in.requests
    assert seen["headers"].get("transfer-encoding") == "chunked"
    assert "content-length" not in seen["headers"]
    assert seen["bytes"] == len(data) and seen["sha256"] == hashlib.sha256(data).hexdigest()
    out = json.loads(result.stdout)
    assert out["files"][0]["path"] == "-"
    assert out["files"][0]["size"] == len(data) == out["bytes_sent"]
    assert out["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_stdin_through_the_relay(relay: RunningServer) -> None:
    data = os.urandom(300_000)
    result = run_with_stdin("-", "--to", "/upload/piped.bin", "--relay", relay.url, "--json", data=data)
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)["response"]["files"]
    assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()


def test_stdin_is_sent_alone(files: list[Path]) -> None:
    result = run_with_stdin("-", str(files[1]), "--to", "/upload/x", data=b"x")
    assert result.returncode == 2
    assert "standard input" in one_error_line(result.stderr.decode())


# -- directories -------------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "2026" / "may").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a" * 10)
    (root / "2026" / "b.bin").write_bytes(os.urandom(2000))
    (root / "2026" / "may" / "c.bin").write_bytes(os.urandom(1_500_000))
    os.mkfifo(root / "a-fifo")  # not a regular file: skipped, not fatal
    return root


def test_directory_without_recursive_is_a_usage_error(tree: Path) -> None:
    result = run_client(str(tree), "--to", "/upload/x")
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert str(tree) in line and "--recursive" in line


def test_directory_recursive_each(relay: RunningServer, tree: Path) -> None:
    result = run_client(str(tree), "--recursive", "--each", "-j", "2", "--to", "/upload/dir", "--relay", relay.url,
                        "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected = [tree / "a.txt", tree / "2026" / "b.bin", tree / "2026" / "may" / "c.bin"]
    assert sorted(line["files"][0]["path"] for line in lines) == sorted(str(p) for p in expected)
    for line in lines:
        path = Path(line["files"][0]["path"])
        assert line["response"]["files"][0]["sha256"] == sha256_of(path)


def test_directory_recursive_multipart(relay: RunningServer, tree: Path) -> None:
    result = run_client(str(tree), "-r", "--to", "/upload/dir", "--relay", relay.url, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [f["filename"] for f in out["response"]["files"]] == ["a.txt", "b.bin", "c.bin"]


# -- a relay that is not running ---------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--events"]], ids=["upload", "events"])
def test_relay_down_names_the_url_and_relay_server(files: list[Path], extra: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_client(str(files[1]), "--to", "/upload/x", "--relay", url, "--json", *extra)
    assert result.returncode == 3
    line = one_error_line(result.stderr)
    assert f"cannot connect to the relay at {url}" in line and "relay-server" in line
    # --json prints an object for the failed request too.
    out = json.loads(result.stdout)
    assert out["status"] is None and out["bytes_sent"] == 0 and "relay-server" in out["error"]
    assert out["files"][0]["size"] == files[1].stat().st_size and out["files"][0]["sha256"] is None
