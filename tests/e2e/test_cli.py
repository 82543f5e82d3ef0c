"""relay-server's command line end to end: bad values, flag/env/config precedence, routes, the embedded sink."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.testing import RunningServer, start_process, start_relay, start_sink
from tests.conftest import sha256, start_test_upstream, tricky_bytes

RELAY = [sys.executable, "-m", "relay"]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run relay-server to completion; a bad value must make it exit at once (the timeout says it did not)."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}
    return subprocess.run(
        [*RELAY, *args], capture_output=True, text=True, timeout=20, env={**clean, **(env or {})}, cwd=cwd
    )


def accepts(server: RunningServer, length: int) -> bool:
    """Whether the relay takes a body of `length` declared bytes: 100 Continue (yes) or 413 (no), from headers."""
    head = (
        f"POST /upload/probe HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)
        answer = sock.recv(65536)
        if answer.startswith(b"HTTP/1.1 100"):
            return True
        while not complete_response(answer) and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b'"body_too_large"' in answer, answer
    return False


def complete_response(data: bytes) -> bool:
    """Headers and a Content-Length body are all in (the relay may linger before it closes the connection)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return bool(sep) and match is not None and len(body) >= int(match.group(1))


def limit_is(server: RunningServer, limit: int) -> bool:
    return accepts(server, limit) and not accepts(server, limit + 1)


@pytest.fixture(scope="module")
def sink() -> Iterator[RunningServer]:
    server = start_sink(None)
    yield server
    server.stop()


# -- bad values ----------------------------------------------------------------------------------------------


BAD_CONFIGS = {
    "invalid.toml": "[server\nport = 1",
    "unknown-key.toml": '[server]\nmax_body = "1k"\n',
    "bad-size.toml": '[server]\nmax_body_size = "12XB"\n',
    "route-no-prefix.toml": '[[routes]]\nupstream = "http://127.0.0.1:9"\n',
    "route-bad-upstream.toml": '[[routes]]\nprefix = "/a/"\nupstream = "ftp://x"\n',
    "route-bad-size.toml": '[[routes]]\nprefix = "/a/"\nmax_body_size = "lots"\n',
    "route-unknown-key.toml": '[[routes]]\nprefix = "/a/"\nlimit = 1\n',
}


@pytest.mark.parametrize(
    "args",
    [
        ["--max-body-size", "12XB"],
        ["--max-file-size", "-5"],
        ["--port", "-1"],
        ["--port", "70000"],
        ["--upstream", "ftp://x"],
        ["--upstream", "not a url"],
        ["--no-such-flag"],
        ["--digest", "md5"],
        ["--max-files", "-1"],
        ["--upstream-timeout", "0"],
        ["--upstream-connect-timeout", "abc"],
        ["--max-concurrent-uploads", "many"],
        ["--route", "upload/"],
        ["--route", "/_relay/x/"],
        ["--config", "/nonexistent/relay.toml"],
        ["--config", "{tmp}"],
        *[["--config", "{tmp}/" + name] for name in BAD_CONFIGS],
    ],
    ids=lambda args: " ".join(args),
)
def test_bad_values_exit_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    for name, text in BAD_CONFIGS.items():
        (tmp_path / name).write_text(text)
    result = run_cli("--port", "0", "--upstream", "http://127.0.0.1:9", *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, result
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("relay-server: error:")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("variable", "value"), [("RELAY_MAX_BODY_SIZE", "12XB"), ("RELAY_PORT", "x"), ("RELAY_DIGEST", "md5")]
)
def test_bad_environment_values_exit_2_with_one_line(variable: str, value: str) -> None:
    result = run_cli("--upstream", "http://127.0.0.1:9", env={variable: value})
    assert result.returncode == 2, result
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr


def test_config_with_a_server_key_that_is_not_a_table(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("server = 5\n")
    result = run_cli("--port", "0", "--config", str(config))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr


# -- precedence: flags > environment > config file > defaults ----------------------------------------------------


def test_flag_beats_environment(sink: RunningServer) -> None:
    relay = start_relay("--max-body-size", "1000", upstream=sink.url, env={"RELAY_MAX_BODY_SIZE": "2KB"})
    try:
        assert limit_is(relay, 1000)
    finally:
        relay.stop()


def test_environment_beats_config_file_and_config_file_beats_defaults(sink: RunningServer, tmp_path: Path) -> None:
    """RELAY_MAX_BODY_SIZE applies over the config file's value; the config file's over the 10 GiB default."""
    config = tmp_path / "relay.toml"
    config.write_text('[server]\nmax_body_size = "3KB"\n')
    with_env = start_relay("--config", str(config), upstream=sink.url, env={"RELAY_MAX_BODY_SIZE": "2KiB"})
    config_only = start_relay("--config", str(config), upstream=sink.url)
    defaults = start_relay(upstream=sink.url)
    try:
        assert limit_is(with_env, 2048)
        assert limit_is(config_only, 3000)
        assert limit_is(defaults, 10 * 1024**3)
    finally:
        for server in (with_env, config_only, defaults):
            server.stop()


def test_config_file_from_the_environment(sink: RunningServer, tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('[server]\nmax_body_size = "1KiB"\n')
    relay = start_relay(upstream=sink.url, env={"RELAY_CONFIG": str(config)})
    try:
        assert limit_is(relay, 1024)
    finally:
        relay.stop()


# -- routes from the config file -------------------------------------------------------------------------------


def test_config_routes_to_two_upstreams_with_their_own_limits(sink: RunningServer, tmp_path: Path) -> None:
    recorder = start_test_upstream("recorder")
    config = tmp_path / "relay.toml"
    config.write_text(
        '[server]\nmax_body_size = "2KiB"\n'
        f'[[routes]]\nprefix = "/a/"\nupstream = "{sink.url}"\nmax_body_size = "1KiB"\n'
        f'[[routes]]\nprefix = "/b/"\nupstream = "{recorder.url}"\nmethods = ["PUT"]\nmax_body_size = "8KiB"\n'
    )
    relay = start_process([*RELAY, "--port", "0", "--config", str(config)])
    try:
        to_sink = httpx.post(f"{relay.url}/a/x.bin", content=b"s" * 1024)
        over_a = httpx.post(f"{relay.url}/a/x.bin", content=b"s" * 1025)
        to_recorder = httpx.put(f"{relay.url}/b/y", content=b"r" * 8192)
        over_b = httpx.put(f"{relay.url}/b/y", content=b"r" * 8193)
        wrong_method = httpx.post(f"{relay.url}/b/y", content=b"r")
        outside = [httpx.post(f"{relay.url}{path}", content=b"x") for path in ("/c/x", "/upload/x", "/a", "/")]
        health = httpx.get(f"{relay.url}/_relay/health").json()
    finally:
        relay.stop()
        recorder.stop()
    assert to_sink.status_code == 200 and to_sink.json()["bytes"] == 1024 and to_sink.json()["path"] == "/a/x.bin"
    assert over_a.status_code == 413 and over_a.json()["error"]["code"] == "body_too_large"
    assert to_recorder.status_code == 200 and "seen" in to_recorder.json()
    assert over_b.status_code == 413
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert [response.status_code for response in outside] == [404, 404, 404, 404]
    assert all(response.json()["error"]["code"] == "not_found" for response in outside)
    assert sorted((route["prefix"], route["upstream"]) for route in health["routes"]) == [
        ("/a/", sink.url),
        ("/b/", recorder.url),
    ]


# -- the embedded sample upstream, signals --------------------------------------------------------------------------


def relay_server_command() -> list[str]:
    script = Path(sys.executable).parent / "relay-server"
    return [str(script)] if script.exists() else RELAY


def test_embedded_sink_stores_under_store(tmp_path: Path) -> None:
    relay = start_process([*relay_server_command(), "--port", "0", "--store", "mystore"], cwd=tmp_path)
    data = tricky_bytes(300_000, seed=21)
    try:
        response = httpx.post(
            f"{relay.url}/upload/emb",
            files={"file": ("photo.bin", data)},
            data={"k": "v"},
            headers={"x-upload-id": "embedded-1"},
            timeout=20,
        )
    finally:
        code = relay.stop()
    assert response.status_code == 200, response.text
    assert response.json()["files"][0]["sha256"] == sha256(data)
    stored = [path for path in (tmp_path / "mystore").rglob("*") if path.is_file() and ".tmp" not in path.parts]
    assert [path.name for path in stored] == ["photo.bin"]
    assert hashlib.sha256(stored[0].read_bytes()).hexdigest() == sha256(data)
    assert code == 0


def test_sigterm_exits_0_promptly_even_with_event_followers(sink: RunningServer) -> None:
    relay = start_relay(upstream=sink.url)
    assert httpx.get(f"{relay.url}/_relay/health").status_code == 200
    followers = [
        httpx.stream("GET", f"{relay.url}{path}", timeout=30)
        for path in ("/_relay/events", "/_relay/uploads/never/events")
    ]
    try:
        for follower in followers:
            assert follower.__enter__().status_code == 200
        started = time.monotonic()
        code = relay.stop(signal.SIGTERM, timeout=8)
        elapsed = time.monotonic() - started
    finally:
        for follower in followers:
            with contextlib.suppress(httpx.HTTPError):
                follower.__exit__(None, None, None)
    assert code == 0 and elapsed < 5, (code, elapsed)
    assert "Traceback" not in relay.log()
