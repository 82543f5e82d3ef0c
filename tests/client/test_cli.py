"""relay-upload end to end: the CLI as a subprocess against a real relay and sink (or the stand-in relay)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from client.upload import NetworkError, upload
from relay.testing import RunningServer, start_relay, start_sink
from tests.client.conftest import StandIn, run_client, sha256_of


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("relay-upload: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_help_has_examples() -> None:
    result = run_client("--help")
    assert result.returncode == 0
    assert "Examples:" in result.stdout and "--to" in result.stdout
    bench = run_client("bench", "--help")
    assert bench.returncode == 0 and "--size" in bench.stdout


def test_multipart_json_matches_upstream(relay: RunningServer, files: list[Path]) -> None:
    given = [str(p) for p in files]
    result = run_client(*given, "--to", "/upload/multi", "--relay", relay.url, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = json.loads(result.stdout)
    assert out["status"] == 200
    assert out["upload_id"]
    assert [f["path"] for f in out["files"]] == given
    assert out["sha256"] == {str(p): sha256_of(p) for p in files}
    received = out["response"]["files"]
    assert [(f["field"], f["filename"], f["size"], f["sha256"]) for f in received] == [
        ("file", p.name, p.stat().st_size, sha256_of(p)) for p in files
    ]
    # bytes_sent counts the multipart framing too, exactly what upstream received.
    assert out["bytes_sent"] == out["response"]["bytes"] > sum(p.stat().st_size for p in files)
    assert out["throughput_mbps"] > 0 and out["seconds"] > 0


def test_raw_put(relay: RunningServer, files: list[Path]) -> None:
    path = files[0]
    result = run_client(str(path), "--raw", "--method", "PUT", "--to", "/upload/raw", "--relay", relay.url, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["bytes_sent"] == path.stat().st_size == out["response"]["bytes"]
    [entry] = out["response"]["files"]
    assert entry["field"] is None
    assert entry["sha256"] == sha256_of(path) == out["sha256"][str(path)]


def test_each_concurrent(relay: RunningServer, files: list[Path]) -> None:
    given = [str(p) for p in files]
    result = run_client(*given, "--each", "-j", "2", "--to", "/upload/each", "--relay", relay.url, "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["files"][0]["path"] for line in lines] == given
    assert len({line["upload_id"] for line in lines}) == 3
    for line, path in zip(lines, files, strict=True):
        [entry] = line["response"]["files"]
        assert entry["sha256"] == sha256_of(path)


def test_form_query_and_field(relay: RunningServer, files: list[Path]) -> None:
    args = ["--form", "album=2026", "--form", "note=a b=c", "--query", "tag=x y&z", "--query", "n=1", "--field", "doc"]
    result = run_client(str(files[1]), *args, "--to", "/upload/form", "--relay", relay.url, "--json")
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)["response"]
    assert response["fields"] == {"album": "2026", "note": "a b=c"}
    assert response["query"] == {"tag": "x y&z", "n": "1"}
    assert response["files"][0]["field"] == "doc"


def test_human_summary(relay: RunningServer, files: list[Path]) -> None:
    result = run_client(str(files[1]), "--to", "/upload/human", "--relay", relay.url)
    assert result.returncode == 0, result.stderr
    assert sha256_of(files[1])[:12] in result.stdout
    assert "200" in result.stdout and "sha256 matches" in result.stdout


def test_events_through_relay(relay: RunningServer, files: list[Path]) -> None:
    result = run_client(str(files[0]), str(files[1]), "--events", "--to", "/upload/ev", "--relay", relay.url, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == 200


def test_events_mismatch_names_the_file(stand_in: StandIn, files: list[Path]) -> None:
    stand_in.wrong_sha256 = True
    path = str(files[0])
    result = run_client(path, "--raw", "--events", "--to", "/upload/x", "--relay", stand_in.url, "--json")
    assert result.returncode == 1
    assert path in one_error_line(result.stderr) and "sha256" in result.stderr
    assert json.loads(result.stdout)["status"] == 200
    # The client chose the id and sent it, so it could subscribe first.
    assert stand_in.requests[0]["headers"]["x-upload-id"]


def test_events_sends_admin_token_only_to_events(stand_in: StandIn, files: list[Path]) -> None:
    result = run_client(str(files[1]), "--raw", "--events", "--to", "/upload/x", "--relay", stand_in.url,
                        "--header", "X-Extra: 1", env={"RELAY_ADMIN_TOKEN": "s3cret"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    headers = stand_in.requests[0]["headers"]
    assert headers["x-extra"] == "1" and "authorization" not in headers


def test_library_upload(stand_in: StandIn, files: list[Path]) -> None:
    result = upload([files[1]], "/upload/lib", relay=stand_in.url, raw=True, events=True)
    assert result.ok and result.status == 200
    assert result.files[0].sha256 == sha256_of(files[1])
    assert result.relay_parts and result.relay_parts[0]["sha256"] == sha256_of(files[1])


def test_413_prints_json_and_exits_1(sink: RunningServer, files: list[Path]) -> None:
    small = start_relay("--max-body-size", "1KiB", upstream=sink.url)
    try:
        result = run_client(str(files[0]), "--to", "/upload/big", "--relay", small.url, "--json")
    finally:
        small.stop()
    assert result.returncode == 1
    out = json.loads(result.stdout)
    assert out["status"] == 413
    assert out["response"]["error"]["code"] == "body_too_large"
    assert "body_too_large" in one_error_line(result.stderr)


def test_relay_down_exits_3(files: list[Path]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_client(str(files[1]), "--to", "/upload/x", "--relay", url, "--retries", "1")
    assert result.returncode == 3
    assert "connection" in one_error_line(result.stderr)


def test_library_retries_then_raises(files: list[Path]) -> None:
    with pytest.raises(NetworkError):
        upload([files[1]], "/upload/x", relay=f"http://127.0.0.1:{free_port()}", retries=2)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["missing.bin", "--to", "/upload/x"], "missing.bin: no such file"),
        ([".", "--to", "/upload/x"], "is a directory"),
        (["README-nope", "pyproject.toml", "--to", "/upload/x"], "no such file"),
        (["pyproject.toml"], "--to"),
        (["pyproject.toml", "pyproject.toml", "--raw", "--to", "/upload/x"], "--raw"),
        (["pyproject.toml", "--to", "/upload/x", "--form", "novalue"], "--form"),
        (["pyproject.toml", "--to", "/upload/x", "--header", "NoColon"], "--header"),
        (["pyproject.toml", "--to", "/upload/x", "--method", "GET"], "--method"),
        (["pyproject.toml", "--to", "/upload/x", "--bogus"], "--bogus"),
        (["pyproject.toml", "--to", "/upload/x", "--relay", "ftp://x"], "--relay"),
        (["bench"], "--size"),
        (["bench", "--size", "12XB"], "not a size"),
        ([], "FILE"),
    ],
)
def test_usage_errors_exit_2(args: list[str], needle: str) -> None:
    result = run_client(*args)
    assert result.returncode == 2, result.stderr
    assert needle in one_error_line(result.stderr)
    assert result.stdout == ""


def test_bench_json(relay: RunningServer, sink: RunningServer) -> None:
    result = run_client(
        "bench", "--relay", relay.url, "--size", "256k", "--runs", "2", "--direct", sink.url, "--concurrency", "2",
        "--multipart", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["size"] == 256 * 1024 and out["runs"] == 2
    for side in ("relay", "direct"):
        stats = out[side]
        assert stats["min_mbps"] <= stats["median_mbps"] <= stats["max_mbps"]
    assert out["ratio"] > 0


def test_bench_without_direct(relay: RunningServer) -> None:
    result = run_client("bench", "--relay", relay.url, "--size", "64KiB", "--runs", "1", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["direct"] is None and out["ratio"] is None


def test_user_headers_cannot_break_framing(stand_in: StandIn, files: list[Path]) -> None:
    path = files[1]
    result = run_client(str(path), "--raw", "--to", "/upload/x", "--relay", stand_in.url, "--header",
                        "content-type: text/x-mine", "--header", "content-length: 5", "--header", "X-Upload-ID: my-id",
                        "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    headers = stand_in.requests[0]["headers"]
    assert headers["content-type"] == "text/x-mine"
    assert headers["content-length"] == str(path.stat().st_size)
    assert stand_in.requests[0]["names"].count("content-length") == 1
    assert stand_in.requests[0]["names"].count("content-type") == 1
    assert json.loads(result.stdout)["upload_id"] == "my-id"


@pytest.mark.slow
def test_memory_stays_flat(tmp_path: Path) -> None:
    """512 MiB through the discarding sink, multipart: the client's peak RSS stays far below the body size."""
    big = tmp_path / "sparse.bin"
    with big.open("wb") as handle:
        handle.truncate(512 * 1024 * 1024)
    # ru_maxrss from our own wait4 would include pytest's memory: Linux folds the parent's high-water mark
    # into the child's at vfork + exec. A small launcher process in between gives the client's own figure.
    launcher = (
        "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(done.returncode)"
    )
    sink = start_sink(None)
    try:
        command = [sys.executable, "-m", "client", str(big), "--to", "/upload/mem", "--relay", sink.url, "--json"]
        result = subprocess.run([sys.executable, "-c", launcher, *command], capture_output=True, timeout=120)
    finally:
        sink.stop()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["response"]["files"][0]["size"] == 512 * 1024 * 1024
    peak_kib = int(result.stderr.decode().strip().splitlines()[-1])
    assert peak_kib < 100 * 1024, peak_kib


def test_events_with_admin_token(sink: RunningServer, files: list[Path]) -> None:
    guarded = start_relay("--admin-token", "t0ken", upstream=sink.url)
    try:
        args = [str(files[1]), "--events", "--to", "/upload/ev", "--relay", guarded.url, "--json"]
        refused = run_client(*args)
        allowed = run_client(*args, env={"RELAY_ADMIN_TOKEN": "t0ken"})
    finally:
        guarded.stop()
    assert refused.returncode == 1
    assert "401" in one_error_line(refused.stderr)
    # Failed requests print an object too: no status, nothing sent, and the error.
    out = json.loads(refused.stdout)
    assert out["status"] is None and out["bytes_sent"] == 0 and "401" in out["error"]
    assert allowed.returncode == 0, allowed.stderr
