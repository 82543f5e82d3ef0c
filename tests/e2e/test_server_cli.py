"""relay-server's command line through the real command: --version, the resumable settings, errors that say
where a bad value came from (config file, table, key; environment variable), start-up checks, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from relay.testing import RunningServer, start_relay, start_sink

RELAY = [sys.executable, "-m", "relay"]
UPSTREAM = ["--upstream", "http://127.0.0.1:9"]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run relay-server to completion; a bad value must make it exit at once (the timeout says it did not)."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RELAY_")}
    return subprocess.run(
        [*RELAY, *args], capture_output=True, text=True, timeout=20, env={**clean, **(env or {})}, cwd=cwd
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("relay-server: error:"), result.stderr
    return result.stderr


# -- resumable settings (flags, environment, config) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--resumable-prefix", "resumable/"], "start and end with '/'"),
        (["--resumable-prefix", "/resumable"], "start and end with '/'"),
        (["--resumable-prefix", "/upload/tus/"], "overlaps /upload/"),
        (["--resumable-prefix", "/"], "overlaps"),
        (["--resumable-prefix", "/_relay/tus/"], "overlaps /_relay/"),
        (["--route", "/resumable/x/"], "overlaps /resumable/x/"),
        (["--resumable-expiry", "0"], "resumable-expiry"),
        (["--resumable-expiry", "soon"], "resumable-expiry"),
        (["--resumable-max-incomplete", "0"], "resumable-max-incomplete"),
        (["--spool", ""], "--spool"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_bad_resumable_settings(args: list[str], words: str) -> None:
    assert words in one_line_error(run_cli("--port", "0", *UPSTREAM, *args))


@pytest.mark.parametrize(
    ("route", "words"),
    [
        ('resumable = "yes"', "resumable: not true or false: 'yes'"),
        ('resumable_forward = "tar"', "resumable_forward: must be 'multipart' or 'raw', not 'tar'"),
        ('resumable_field = ""', "resumable_field: not a non-empty string: ''"),
        ('max_files = "x"', "max_files: not a whole number: 'x'"),
        ("max_files = -1", "max_files: must not be negative: -1"),
        ('max_file_size = "lots"', "max_file_size: not a size: 'lots'"),
        ('methods = "POST"', "methods: not a list of method names: 'POST'"),
        ('upstream = "ftp://x"', "upstream must be an http:// or https:// URL"),
    ],
)
def test_route_errors_name_the_file_the_table_and_the_key(tmp_path: Path, route: str, words: str) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(f'[[routes]]\nprefix = "/a/"\n\n[[routes]]\nprefix = "/upload/"\n{route}\n')
    error = one_line_error(run_cli("--port", "0", "--config", str(config)))
    assert f"{config}: [[routes]] #2 (/upload/): {words}" in error, error


def test_a_bad_environment_value_names_the_variable() -> None:
    error = one_line_error(run_cli("--port", "0", *UPSTREAM, env={"RELAY_MAX_BODY_SIZE": "12XB"}))
    assert "RELAY_MAX_BODY_SIZE" in error and "--max-body-size" not in error, error
    error = one_line_error(run_cli("--port", "0", *UPSTREAM, env={"RELAY_RESUMABLE_MAX_INCOMPLETE": "0"}))
    assert "RELAY_RESUMABLE_MAX_INCOMPLETE" in error, error


def test_a_bad_server_value_in_the_config_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('[server]\nmax_body_size = "12XB"\nresumable_expiry = 5\n')
    error = one_line_error(run_cli("--port", "0", *UPSTREAM, "--config", str(config)))
    assert f"{config}: [server] max_body_size" in error, error


def test_good_resumable_settings_start(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(
        '[server]\nresumable_prefix = "/tus/"\nresumable_expiry = 60\n'
        '[[routes]]\nprefix = "/a/"\nresumable = false\nresumable_forward = "raw"\nresumable_field = "data"\n'
        'max_files = "3"\n'
    )
    relay = start_relay(
        "--config", str(config), "--spool", str(tmp_path / "spool"), "--resumable-max-incomplete", "5", upstream=None
    )
    assert relay.stop() == 0


# -- --version -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("module", "prog"), [("relay", "relay-server"), ("relay.sink", "relay-sink")])
def test_version(module: str, prog: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=20, env=os.environ
    )
    assert result.returncode == 0 and result.stderr == "", result
    assert result.stdout == f"{prog} {metadata.version('upload-relay')}\n"


def test_relay_version_is_not_read_from_the_environment() -> None:
    result = run_cli("--port", "0", "--store", "/proc/nope", env={"RELAY_VERSION": "1"})
    assert "--store /proc/nope" in one_line_error(result)


# -- start-up checks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["/proc/nope", "/dev/null/x"])
def test_a_store_that_cannot_be_created_is_one_line(store: str) -> None:
    error = one_line_error(run_cli("--port", "0", "--store", store))
    assert f"--store {store}: cannot create or write there" in error, error


def test_a_store_is_not_checked_when_every_route_has_an_upstream() -> None:
    relay = start_relay("--store", "/proc/nope", upstream="http://127.0.0.1:9")
    assert relay.stop() == 0


# -- signals ---------------------------------------------------------------------------------------------------


def upload_in_flight(relay: RunningServer) -> socket.socket:
    """A raw upload that has sent its head and part of its body, and waits."""
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
    sock.sendall(b"POST /upload/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"a" * 5000)
    deadline = time.monotonic() + 5
    while '"state":"receiving"' not in httpx.get(f"{relay.url}/_relay/uploads", timeout=5).text.replace(" ", ""):
        assert time.monotonic() < deadline, "the upload never started"
        time.sleep(0.05)
    return sock


@pytest.mark.parametrize("embedded", [False, True], ids=["upstream", "embedded"])
def test_a_second_ctrl_c_during_the_drain_quits_at_once_without_a_traceback(tmp_path: Path, embedded: bool) -> None:
    sink = None if embedded else start_sink(None)
    relay = start_relay("--drain-timeout", "60", "--store", str(tmp_path), upstream=sink.url if sink else None)
    try:
        with upload_in_flight(relay):
            relay.proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            assert relay.proc.poll() is None  # the first Ctrl-C drains: the upload may still finish
            started = time.monotonic()
            relay.proc.send_signal(signal.SIGINT)
            code = relay.proc.wait(10)
            elapsed = time.monotonic() - started
    finally:
        relay.stop()
        if sink is not None:
            sink.stop()
    assert code == 130 and elapsed < 3, (code, elapsed, relay.log())
    assert "Traceback" not in relay.log() and "CancelledError" not in relay.log(), relay.log()


def test_the_drain_timeout_cancels_without_a_traceback() -> None:
    sink = start_sink(None)
    relay = start_relay("--drain-timeout", "0.5", upstream=sink.url)
    try:
        with upload_in_flight(relay):
            relay.proc.send_signal(signal.SIGINT)
            code = relay.proc.wait(10)
    finally:
        relay.stop()
        sink.stop()
    assert code == 0, relay.log()
    assert "Traceback" not in relay.log() and "Exception in ASGI application" not in relay.log(), relay.log()


def test_help_lists_the_environment_variables() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for variable in ("RELAY_MAX_BODY_SIZE", "RELAY_SSL_CERTFILE", "RELAY_LOG_FORMAT", "RELAY_RESUMABLE_PREFIX"):
        assert variable in result.stdout, result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--upstream-timeout", "nan"],
        ["--header-timeout", "nan"],
        ["--drain-timeout", "nan"],
        ["--client-idle-timeout", "nan"],
        ["--client-min-rate-grace", "nan"],
        ["--resumable-expiry", "nan"],
        ["--upstream-timeout", "inf"],
    ],
    ids=" ".join,
)
def test_a_number_that_is_not_finite_is_one_line(args: list[str]) -> None:
    """NaN passed the `<= 0` checks and click's FloatRange: the relay started, then every upload was a 500 (the
    upstream timeout), every connection hung (the header timeout) or SIGTERM printed a traceback (the drain)."""
    assert "finite number" in one_line_error(run_cli("--port", "0", *UPSTREAM, *args))


def test_a_number_that_is_not_finite_in_the_environment_or_the_config_file(tmp_path: Path) -> None:
    assert "finite number" in one_line_error(run_cli("--port", "0", *UPSTREAM, env={"RELAY_UPSTREAM_TIMEOUT": "nan"}))
    config = tmp_path / "relay.toml"
    config.write_text("[server]\nupstream_timeout = nan\n")
    assert "finite number" in one_line_error(run_cli("--port", "0", *UPSTREAM, "--config", str(config)))


@pytest.mark.parametrize("url", ["http://x:99999", "http://x:abc", "http://[::1", "http://:80", "http://x:0"])
def test_a_malformed_upstream_url_is_one_line(url: str) -> None:
    """These passed the old pattern and failed at start-up: exit 3 and four log lines."""
    assert "upstream must be" in one_line_error(run_cli("--port", "0", "--upstream", url))


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/x", "http://h:abc/x", "http://[::1/x"])
def test_a_malformed_webhook_url_is_one_line(url: str) -> None:
    """A port out of range passed and every delivery then failed, retried for hours."""
    assert "webhook URL" in one_line_error(run_cli("--port", "0", *UPSTREAM, "--webhook", url, "--webhook-secret", "s"))
