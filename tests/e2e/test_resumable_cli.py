"""`relay-upload --resumable` end to end: the CLI as a subprocess, a real relay on a spool, a real sink, real files.

Interruptions need an upload that is still running when they strike: the client goes through `Throttle`, a
TCP proxy in a thread that passes client bytes at a set rate (a slow line), so "kill it after the first
chunk" is a matter of waiting for the relay's offset, not of luck. Every upload is checked at the sink by
sha256, and a resumed one also by the bytes sent: nothing the relay already had is sent again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.testing import RunningServer, start_relay, start_sink

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


# --- helpers -------------------------------------------------------------------------------------------------


class Throttle:
    """A TCP proxy on a free port: client-to-server bytes at `rate` bytes/s (None: as fast as they come)."""

    def __init__(self, target_port: int, rate: float | None) -> None:
        self.target_port = target_port
        self.rate = rate
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="throttle")
        self._thread.start()
        assert self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        # Close everything here, in this thread: a loop, task or stream left to the garbage collector runs its
        # finalizer at some later moment in the main thread (seen to break pytest's assertion rewriting).
        server.close()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()  # the relay is down: the client sees its connection closed
            return
        await asyncio.gather(
            self._pump(reader, up_writer, throttled=True),
            self._pump(up_reader, writer, throttled=False),
            return_exceptions=True,
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, throttled: bool) -> None:
        try:
            while data := await reader.read(64 * 1024):
                writer.write(data)
                await writer.drain()
                if throttled and self.rate:
                    await asyncio.sleep(len(data) / self.rate)
        finally:
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def client_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "client", *args]


def run_client(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        client_command(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **env}
    )


def start_client(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        client_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def make_file(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        left = size
        while left:
            piece = os.urandom(min(left, 4 * MiB))
            handle.write(piece)
            left -= len(piece)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def stored_at_sink(received: Path, upload_id: str) -> list[Path]:
    return sorted(p for p in (received / upload_id).glob("*") if p.is_file())


def cache_entries(cache: Path) -> list[dict[str, Any]]:
    directory = cache / "relay-upload"
    if not directory.exists():
        return []
    return [json.loads(p.read_text()) for p in directory.glob("*.json")]


def wait_for(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def relay_offset(relay_url: str, upload_url: str) -> int:
    """The upload's offset in the relay's registry; not HEAD, which would end the client's append (one writer)."""
    upload_id = upload_url.rsplit("/", 1)[-1]
    try:
        response = httpx.get(f"{relay_url}/_relay/uploads/{upload_id}", timeout=5)
        return int(response.json()["offset"]) if response.status_code == 200 else -1
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return -1


def wait_for_offset(cache: Path, relay_url: str, at_least: int) -> str:
    """Wait for the client's upload to exist (its cache entry) and the relay to hold `at_least` bytes of it."""
    wait_for(lambda: len(cache_entries(cache)) == 1, what="the resume entry")
    upload_url = str(cache_entries(cache)[0]["upload_url"])
    wait_for(lambda: relay_offset(relay_url, upload_url) >= at_least, what=f"offset {at_least}")
    return upload_url


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture
def received(tmp_path: Path) -> Path:
    return tmp_path / "received"


@pytest.fixture
def sink(received: Path) -> Iterator[RunningServer]:
    server = start_sink(received)
    yield server
    server.stop()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def relay(sink: RunningServer, spool: Path) -> Iterator[RunningServer]:
    server = start_relay("--spool", str(spool), "--drain-timeout", "1", upstream=sink.url)
    yield server
    server.stop()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def env(cache: Path) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(cache)}


@pytest.fixture
def throttle(relay: RunningServer) -> Iterator[Throttle]:
    proxy = Throttle(relay.port, rate=8 * MiB)
    yield proxy
    proxy.stop()


def one_json(stdout: str) -> dict[str, Any]:
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    out: dict[str, Any] = json.loads(lines[0])
    return out


# --- tests ---------------------------------------------------------------------------------------------------


def test_tens_of_mib_in_4mib_chunks(
    relay: RunningServer, received: Path, tmp_path: Path, cache: Path, env: dict[str, str]
) -> None:
    path = make_file(tmp_path / "forty.bin", 40 * MiB + 123)
    result = run_client(
        str(path), "--resumable", "--chunk-size", "4MiB", "--to", "/upload/big", "--relay", relay.url, "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = one_json(result.stdout)
    assert out["status"] == 204 and out["upstream_status"] == 200
    assert out["resumable"] is True and out["protocol"] == "tus"
    assert out["upload_url"] == f"{relay.url}/resumable/{out['upload_id']}"
    assert out["resumed_from"] == 0
    assert out["attempts"] == 11  # ten whole 4 MiB appends and the 123-byte tail
    assert out["bytes_sent"] == path.stat().st_size
    digest = sha256_of(path)
    assert out["sha256"] == {str(path): digest} and out["relay_sha256"] == digest
    [stored] = stored_at_sink(received, out["upload_id"])
    assert stored.name == "forty.bin" and sha256_of(stored) == digest
    assert cache_entries(cache) == []  # removed once the upload completed


def test_ietf_protocol_with_digest_and_form(
    relay: RunningServer, received: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    path = make_file(tmp_path / "draft.bin", 12 * MiB + 5)
    args = ["--protocol", "ietf", "--chunk-size", "5MiB", "--digest", "--form", "album=2026"]
    result = run_client(
        str(path), "--resumable", *args, "--to", "/upload/d?x=1", "--relay", relay.url, "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    out = one_json(result.stdout)
    assert out["protocol"] == "ietf" and out["attempts"] == 3
    # IETF: the upstream's own status and body come back.
    assert out["status"] == 200 and out["response"]["query"] == {"x": "1"}
    assert out["response"]["fields"] == {"album": "2026"}
    [entry] = out["response"]["files"]
    assert entry["filename"] == "draft.bin" and entry["sha256"] == sha256_of(path)
    [stored] = stored_at_sink(received, out["upload_id"])
    assert sha256_of(stored) == sha256_of(path)


def test_each_file_its_own_upload_with_jobs(relay: RunningServer, tmp_path: Path, env: dict[str, str]) -> None:
    paths = [make_file(tmp_path / f"f{i}.bin", size) for i, size in enumerate((3 * MiB, 10, 0))]
    given = [str(p) for p in paths]
    result = run_client(
        *given, "--resumable", "-j", "2", "--to", "/upload/each", "--relay", relay.url, "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["files"][0]["path"] for line in lines] == given
    assert len({line["upload_id"] for line in lines}) == 3
    for line, path in zip(lines, paths, strict=True):
        assert line["sha256"][str(path)] == line["relay_sha256"] == sha256_of(path)


def test_sigkill_then_run_again_resumes(
    relay: RunningServer, throttle: Throttle, received: Path, tmp_path: Path, cache: Path, env: dict[str, str]
) -> None:
    path = make_file(tmp_path / "killed.bin", 40 * MiB)
    args = [str(path), "--resumable", "--chunk-size", "4MiB", "--to", "/upload/k", "--relay", throttle.url, "--json"]
    proc = start_client(*args, env=env)
    try:
        wait_for_offset(cache, relay.url, 4 * MiB)
    finally:
        proc.kill()
        proc.communicate()
    [entry] = cache_entries(cache)  # the upload is remembered for the next run
    throttle.rate = None
    result = run_client(*args, env=env)
    assert result.returncode == 0, result.stderr
    out = one_json(result.stdout)
    assert out["upload_url"] == entry["upload_url"]
    assert 4 * MiB <= out["resumed_from"] < path.stat().st_size
    # Nothing the relay already held was sent again.
    assert out["bytes_sent"] == path.stat().st_size - out["resumed_from"]
    [stored] = stored_at_sink(received, out["upload_id"])
    assert sha256_of(stored) == sha256_of(path) == out["relay_sha256"]
    assert cache_entries(cache) == []


def test_ctrl_c_leaves_it_resumable(
    relay: RunningServer, throttle: Throttle, received: Path, tmp_path: Path, cache: Path, env: dict[str, str]
) -> None:
    path = make_file(tmp_path / "interrupted.bin", 24 * MiB)
    args = [str(path), "--resumable", "--to", "/upload/c", "--relay", throttle.url, "--json"]
    proc = start_client(*args, env=env)
    wait_for_offset(cache, relay.url, 2 * MiB)  # one append with the whole file: it is cut mid-way
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    interrupted = one_json(stdout)  # --json still prints the request's object (status null, error interrupted)
    assert interrupted["status"] is None and interrupted["error"] == "interrupted"
    assert interrupted["resumable"] is True and interrupted["upload_url"]
    assert "Traceback" not in stderr
    [line] = stderr.splitlines()
    assert line.startswith("relay-upload: error: interrupted; the upload can be resumed: run the same command again:")
    assert line.endswith(" ".join(["relay-upload", *args]))
    throttle.rate = None
    result = run_client(*args, env=env)
    assert result.returncode == 0, result.stderr
    out = one_json(result.stdout)
    assert out["resumed_from"] >= 2 * MiB
    [stored] = stored_at_sink(received, out["upload_id"])
    assert sha256_of(stored) == sha256_of(path)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_relay_restart_mid_upload_is_retried_through(
    stop_signal: int,
    sink: RunningServer,
    relay: RunningServer,
    throttle: Throttle,
    spool: Path,
    received: Path,
    tmp_path: Path,
    cache: Path,
    env: dict[str, str],
) -> None:
    path = make_file(tmp_path / "restart.bin", 32 * MiB)
    args = [str(path), "--resumable", "--to", "/upload/r", "--relay", throttle.url, "--json"]
    proc = start_client(*args, env=env)
    restarted = None
    try:
        wait_for_offset(cache, relay.url, 4 * MiB)
        relay.stop(stop_signal)  # SIGTERM: the drain gives up on the append in flight after 1 s
        restarted = start_relay(
            "--spool", str(spool), "--port", str(relay.port), "--drain-timeout", "1", upstream=sink.url
        )
        throttle.rate = 32 * MiB
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        if restarted is not None:
            restarted.stop()
    assert proc.returncode == 0, stderr
    out = one_json(stdout)
    assert out["attempts"] >= 2 and out["resumed_from"] == 0
    # The relay kept what the broken append delivered: the bytes sent exceed the file by less than a file.
    assert path.stat().st_size < out["bytes_sent"] < 2 * path.stat().st_size
    [stored] = stored_at_sink(received, out["upload_id"])
    assert sha256_of(stored) == sha256_of(path) == out["relay_sha256"]


def test_upstream_down_at_completion_is_forwarded_again(
    tmp_path: Path, spool: Path, received: Path, env: dict[str, str]
) -> None:
    sink = start_sink(received)
    relay = start_relay("--spool", str(spool), upstream=sink.url)
    try:
        sink.stop()
        path = make_file(tmp_path / "later.bin", 2 * MiB)
        proc = start_client(str(path), "--resumable", "--to", "/upload/u", "--relay", relay.url, "--json", env=env)
        time.sleep(2.0)  # the completing append got 502 at least once; the file waits in the spool
        sink = start_sink(received, "--port", str(sink.port))
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        relay.stop()
        sink.stop()
    assert proc.returncode == 0, stderr
    out = one_json(stdout)
    assert out["bytes_sent"] == path.stat().st_size  # the retry was an empty PATCH: the bytes went once
    assert out["attempts"] >= 2
    [stored] = stored_at_sink(received, out["upload_id"])
    assert sha256_of(stored) == sha256_of(path)


def test_usage_and_network_errors_are_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    path = make_file(tmp_path / "x.bin", 10)
    cases = [
        (["--chunk-size", "1MiB"], 2, "--chunk-size and --protocol go with --resumable"),
        (["--resumable", "--chunk-size", "0"], 2, "--chunk-size must be more than 0 bytes"),
        (["--resumable", "--raw"], 2, "--raw and --field do not go with --resumable"),
        (["--resumable", "--protocol", "h3"], 2, "--protocol"),
        (["--resumable", "--retries", "1", "--relay", "http://127.0.0.1:9"], 3, "cannot connect to the relay"),
    ]
    for extra, code, words in cases:
        result = run_client(str(path), "--to", "/upload/x", *extra, env=env)
        assert result.returncode == code, (extra, result.stderr)
        [line] = result.stderr.splitlines()
        assert line.startswith("relay-upload: error: ") and words in line, line


def _peak_rss_kib(proc: subprocess.Popen[str]) -> int:
    peak = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            break
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
        time.sleep(0.05)
    return peak


@pytest.mark.slow
def test_constant_memory_for_a_1gib_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "sparse.bin"
    with path.open("wb") as handle:
        handle.truncate(1024 * MiB)
    sink = start_sink(None)  # --discard: hashes and counts, stores nothing
    relay = start_relay("--spool", str(tmp_path / "spool"), upstream=sink.url)
    try:
        args = [str(path), "--resumable", "--chunk-size", "256MiB", "--to", "/upload/m", "--relay", relay.url]
        proc = start_client(*args, "--json", env=env)
        peak_kib = _peak_rss_kib(proc)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        relay.stop()
        sink.stop()
    assert proc.returncode == 0, stderr
    out = one_json(stdout)
    assert out["relay_sha256"] == out["sha256"][str(path)]
    print(f"client peak RSS for 1 GiB: {peak_kib / 1024:.1f} MiB")
    assert 0 < peak_kib < 100 * 1024


def test_plain_raw_upload_with_digest(relay: RunningServer, tmp_path: Path, env: dict[str, str]) -> None:
    """The plain half of --digest: Repr-Digest of the file, read once before sending; the relay checks it."""
    path = make_file(tmp_path / "plain.bin", 3 * MiB)
    result = run_client(str(path), "--raw", "--digest", "--to", "/upload/p", "--relay", relay.url, "--json", env=env)
    assert result.returncode == 0, result.stderr
    out = one_json(result.stdout)
    expected = "sha-256=:" + base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode() + ":"
    assert ["repr-digest", expected] in out["response"]["headers"]  # what the sink saw


def test_plain_multipart_upload_with_digest(relay: RunningServer, tmp_path: Path, env: dict[str, str]) -> None:
    """--digest on a multipart body: Repr-Digest of the framed body (boundary chosen first); the relay checks it
    and delivers, and answers with its own Repr-Digest of what it received."""
    paths = [make_file(tmp_path / "a.bin", 2 * MiB), make_file(tmp_path / "b.txt", 1000)]
    args = [*map(str, paths), "--digest", "--form", "album=2026", "--to", "/upload/m", "--relay", relay.url, "--json"]
    result = run_client(*args, env=env)
    assert result.returncode == 0, result.stderr
    out = one_json(result.stdout)
    assert out["status"] == 200
    sent = dict(out["response"]["headers"])["repr-digest"]
    assert sent.startswith("sha-256=:")
    assert [f["sha256"] for f in out["response"]["files"]] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in paths
    ]


def test_upload_the_relay_lost_starts_anew(
    sink: RunningServer,
    relay: RunningServer,
    throttle: Throttle,
    received: Path,
    tmp_path: Path,
    cache: Path,
    env: dict[str, str],
) -> None:
    """A remembered upload that the relay no longer knows (404: here a relay on a fresh spool) starts from 0."""
    path = make_file(tmp_path / "lost.bin", 16 * MiB)
    args = [str(path), "--resumable", "--chunk-size", "2MiB", "--to", "/upload/l", "--relay", throttle.url, "--json"]
    proc = start_client(*args, env=env)
    try:
        wait_for_offset(cache, relay.url, 2 * MiB)
    finally:
        proc.kill()
        proc.communicate()
    [entry] = cache_entries(cache)
    relay.stop(signal.SIGKILL)
    fresh = start_relay("--spool", str(tmp_path / "fresh-spool"), "--port", str(relay.port), upstream=sink.url)
    try:
        throttle.rate = None
        result = run_client(*args, env=env)
    finally:
        fresh.stop()
    assert result.returncode == 0, result.stderr
    out = one_json(result.stdout)
    assert out["upload_url"] != entry["upload_url"] and out["resumed_from"] == 0
    assert out["bytes_sent"] == path.stat().st_size
    [stored] = stored_at_sink(received, out["upload_id"])
    assert sha256_of(stored) == sha256_of(path)
    assert cache_entries(cache) == []
