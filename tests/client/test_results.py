"""relay-upload, issue 16 items 9 and 11: honest results (partial files, per-file timings, JSON for every request,
what --events verified) and bench traffic that the sample upstream does not store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.testing import RunningServer, start_relay
from tests.client.conftest import StandIn, run_client, sha256_of
from tests.client.test_cli import one_error_line

BIG = 80 * 1024 * 1024  # over the 64 MiB the relay drains after an early refusal, so the cut is mid-file


@pytest.fixture
def small_relay(sink: RunningServer) -> Iterator[RunningServer]:
    relay = start_relay("--max-body-size", "1KiB", upstream=sink.url)
    yield relay
    relay.stop()


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "big.iso"
    with path.open("wb") as handle:
        handle.truncate(BIG)  # sparse: no disk, and reads are fast
    return path


def test_413_json_has_real_size_bytes_sent_and_no_partial_digest(small_relay: RunningServer, big_file: Path) -> None:
    result = run_client(str(big_file), "--raw", "--to", "/upload/big", "--relay", small_relay.url, "--json")
    assert result.returncode == 1
    assert "413 body_too_large" in one_error_line(result.stderr)
    out = json.loads(result.stdout)
    assert out["status"] == 413
    [file] = out["files"]
    assert file["size"] == BIG
    assert 0 < file["bytes_sent"] == out["bytes_sent"] < BIG
    assert file["partial"] is True
    assert file["sha256"] is None and out["sha256"] == {str(big_file): None}
    assert "413" in out["error"]


def test_413_summary_shows_size_sent_and_partial(small_relay: RunningServer, big_file: Path) -> None:
    result = run_client(str(big_file), "--raw", "--to", "/upload/big", "--relay", small_relay.url)
    assert result.returncode == 1
    [line] = result.stdout.splitlines()
    assert line.startswith(f"{big_file}  {BIG:,} bytes  sent ")
    assert "sha256 (partial)" in line and "413" in line
    assert hashlib.sha256(b"\0" * BIG).hexdigest()[:12] not in line


def test_413_before_the_body_keeps_the_whole_file_digest(small_relay: RunningServer, files: list[Path]) -> None:
    """A file the relay drained whole: it was all sent and all read, so its digest is the file's own."""
    result = run_client(str(files[0]), "--raw", "--to", "/upload/big", "--relay", small_relay.url, "--json")
    out = json.loads(result.stdout)
    assert out["status"] == 413
    [file] = out["files"]
    assert file["bytes_sent"] == file["size"] and file["sha256"] == sha256_of(files[0]) and not file["partial"]


def test_per_file_seconds_and_rates(relay: RunningServer, files: list[Path], tmp_path: Path) -> None:
    second = tmp_path / "second.bin"
    second.write_bytes(b"\1" * (6 * 1024 * 1024))
    given = [str(files[0]), str(second), str(files[1])]
    result = run_client(*given, "--to", "/upload/timing", "--relay", relay.url, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    entries = out["files"]
    assert [e["bytes_sent"] for e in entries] == [e["size"] for e in entries]
    for entry in entries:
        assert 0 <= entry["seconds"] <= out["seconds"]
    # Each file's own time and rate, not the request's repeated.
    assert len({e["seconds"] for e in entries}) == 3
    assert sum(e["seconds"] for e in entries) <= out["seconds"]
    assert entries[1]["throughput_mbps"] == pytest.approx(
        entries[1]["bytes_sent"] / entries[1]["seconds"] / 1e6, rel=0.01
    )
    summary = run_client(*given, "--to", "/upload/timing", "--relay", relay.url)
    seconds = [line.split("  ")[3] for line in summary.stdout.splitlines()]
    assert len(seconds) == 3 and all(s.endswith(" s") for s in seconds)


def test_events_json_has_the_relays_view(relay: RunningServer, files: list[Path]) -> None:
    given = [str(files[0]), str(files[1])]
    result = run_client(*given, "--events", "--to", "/upload/ev", "--relay", relay.url, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["relay_bytes"] == out["bytes_sent"]
    for entry, path in zip(out["files"], files, strict=False):
        assert entry["relay"] == {"size": path.stat().st_size, "sha256": sha256_of(path), "match": True}


def test_events_json_mismatch(stand_in: StandIn, files: list[Path]) -> None:
    stand_in.wrong_sha256 = True
    result = run_client(str(files[1]), "--raw", "--events", "--to", "/upload/x", "--relay", stand_in.url, "--json")
    assert result.returncode == 1
    out = json.loads(result.stdout)
    assert out["files"][0]["relay"] == {"size": 1000, "sha256": "0" * 64, "match": False}
    assert "sha256 mismatch" in out["error"]


def test_each_prints_an_object_for_every_failed_request(relay: RunningServer, files: list[Path]) -> None:
    unrouted = run_client(str(files[1]), str(files[2]), "--each", "--to", "/nowhere", "--relay", relay.url, "--json")
    assert unrouted.returncode == 1
    lines = [json.loads(line) for line in unrouted.stdout.splitlines()]
    assert [line["status"] for line in lines] == [404, 404]
    assert all("the relay routes /upload/" in line["error"] for line in lines)


# -- bench -----------------------------------------------------------------------------------------------------------


def test_bench_asks_the_sink_to_discard(stand_in: StandIn) -> None:
    result = run_client("bench", "--relay", stand_in.url, "--size", "64KiB", "--runs", "2", "--direct", stand_in.url)
    assert result.returncode == 0, result.stderr
    assert len(stand_in.requests) == 4
    assert all(request["headers"].get("x-relay-sink-discard") == "1" for request in stand_in.requests)


def test_bench_against_the_default_setup_stores_nothing(tmp_path: Path) -> None:
    relay = start_relay(cwd=tmp_path)  # the embedded sample upstream, storing in ./received
    try:
        result = run_client("bench", "--relay", relay.url, "--size", "256KiB", "--runs", "2", "--multipart", "--json")
    finally:
        relay.stop()
    assert result.returncode == 0, result.stderr
    stored = [p for p in (tmp_path / "received").rglob("*") if p.is_file()] if (tmp_path / "received").exists() else []
    assert stored == []
