"""Logs people can use (issue 16 item 3), through real relay processes: one access line per request (uploads,
admin calls, 404s, refusals), --log-format json, --log-level, the start-up lines printed once, and each route
listed with its own upstream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.testing import RunningServer, start_relay, start_sink

FIELDS = {"client", "method", "path", "status", "bytes", "seconds", "upload_id", "user_agent"}


@pytest.fixture(scope="module")
def sink() -> Iterator[RunningServer]:
    server = start_sink(None)
    yield server
    server.stop()


def access_lines(relay: RunningServer, count: int) -> list[str]:
    """The access lines of the relay's log, waiting (briefly) for `count` of them."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in relay.log().splitlines() if "relay.access" in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_one_text_line_per_request(sink: RunningServer) -> None:
    relay = start_relay("--max-body-size", "100", upstream=sink.url)
    try:
        agent = {"user-agent": 'tester/1.0 "quoted"'}
        upload = httpx.post(f"{relay.url}/upload/a/b?x=1", content=b"hello", headers=agent, timeout=5)
        httpx.post(f"{relay.url}/upload/big", content=b"x" * 500, timeout=5)
        httpx.get(f"{relay.url}/_relay/health", timeout=5)
        httpx.get(f"{relay.url}/nowhere/%0aforged", timeout=5)
        lines = access_lines(relay, 4)
    finally:
        relay.stop()
    assert len(lines) == 4, lines
    upload_id = upload.headers["x-upload-id"]
    assert " POST /upload/a/b?x=1 200 bytes=5 seconds=" in lines[0]
    assert f"upload_id={upload_id} " in lines[0] and 'ua="tester/1.0 \\"quoted\\"' in lines[0], lines[0]
    assert "127.0.0.1:" in lines[0]
    assert " POST /upload/big 413 " in lines[1] and "upload_id=" in lines[1] and "upload_id=-" not in lines[1]
    assert " GET /_relay/health 200 bytes=0 " in lines[2] and "upload_id=- " in lines[2]
    assert " GET /nowhere/%0aforged 404 " in lines[3]
    assert "upload " + upload_id not in relay.log()  # the old per-upload line is gone: one line per request


def test_json_lines(sink: RunningServer) -> None:
    relay = start_relay("--log-format", "json", upstream=sink.url)
    try:
        response = httpx.post(f"{relay.url}/upload/j", content=b"x" * 1000, headers={"user-agent": "j/1"}, timeout=5)
        access_lines(relay, 1)
    finally:
        relay.stop()
    records = []
    for line in relay.log().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))  # every log line is one JSON object
        else:
            assert "listening on" in line or line.startswith("relay-server: relaying"), line
    access = [record for record in records if record.get("logger") == "relay.access"]
    assert len(access) == 1
    record = access[0]
    assert FIELDS <= set(record) and {"ts", "level"} <= set(record)
    assert record["level"] == "info" and record["status"] == 200 and record["bytes"] == 1000
    assert record["method"] == "POST" and record["path"] == "/upload/j" and record["user_agent"] == "j/1"
    assert record["upload_id"] == response.headers["x-upload-id"] and record["seconds"] >= 0
    assert all({"ts", "level"} <= set(other) for other in records)


def test_log_level_warning_drops_access_lines(sink: RunningServer) -> None:
    relay = start_relay("--log-level", "warning", upstream=sink.url)
    try:
        httpx.post(f"{relay.url}/upload/q", content=b"quiet", timeout=5)
    finally:
        relay.stop()
    assert "relay.access" not in relay.log() and " INFO " not in relay.log(), relay.log()


def test_start_up_lines_once_and_each_route_with_its_upstream(sink: RunningServer, tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(f'[[routes]]\nprefix = "/a/"\n\n[[routes]]\nprefix = "/b/"\nupstream = "{sink.url}"\n')
    relay = start_relay("--config", str(config), "--store", str(tmp_path / "store"), upstream=None)
    try:
        time.sleep(0.3)
    finally:
        relay.stop()
    log = relay.log()
    for line in ("Started server process", "Application startup complete", "Finished server process"):
        assert log.count(line) == 1, log
    routes = [line for line in log.splitlines() if "relaying" in line]
    assert len(routes) == 2, log
    assert routes[0].startswith("relay-server: relaying /a/ to http://127.0.0.1:")
    assert "(embedded sample upstream, storing in" in routes[0]
    assert routes[1] == f"relay-server: relaying /b/ to {sink.url}"


def test_a_spliced_body_is_counted(sink: RunningServer) -> None:
    """`--digest none` and a raw body of 1 MiB or more: spliced socket to socket (relay/zerocopy.py), never through
    `receive()`; its access line still counts every body byte."""
    relay = start_relay("--digest", "none", upstream=sink.url)
    try:
        body = b"s" * (3 * 1024 * 1024 + 7)
        answer = httpx.post(f"{relay.url}/upload/spliced", content=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers.get("connection") == "close"  # it was spliced (the parser never saw the body)
        lines = access_lines(relay, 1)
    finally:
        relay.stop()
    assert f" POST /upload/spliced 200 bytes={len(body)} " in lines[0], lines
