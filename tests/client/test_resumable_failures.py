"""relay-upload --resumable when things go wrong for good: one line (and the JSON object), never a traceback.

Real relays on a spool under tmp: one whose upstream cannot be reached (502 until the retries are spent), one
allowing a single incomplete upload (429 at creation), and a working one for the file that disappears or
shrinks mid-upload and for a remembered URL that is not an upload. The resume store's entries are hints: a
corrupted one (wrong types, nesting deep enough to break the JSON parser) is ignored.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.errors import ArgumentError, FileError
from client.events import describe_http_error
from client.resumable import ResumableOptions, upload_resumable
from client.resumable_wire import metadata_header
from client.resume_store import ResumeStore, StoredUpload, fingerprint
from client.sources import check_files
from relay.testing import RunningServer, start_relay, start_sink
from tests.client.conftest import run_client
from tests.client.test_cli import one_error_line

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_sink(tmp_path_factory.mktemp("received"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def relay(sink: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_relay("--spool", str(tmp_path_factory.mktemp("spool")), upstream=sink.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dead_end(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A relay whose upstream refuses every connection: the completing append gets 502 upstream_unavailable."""
    server = start_relay("--spool", str(tmp_path_factory.mktemp("spool")), upstream="http://127.0.0.1:1")
    yield server
    server.stop()


def make(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def cache_env(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CACHE_HOME": str(tmp_path / "xdg")}


def json_lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


# --- retries spent on an HTTP answer ------------------------------------------------------------------------------


def test_retries_spent_on_a_5xx_end_with_the_answer(dead_end: RunningServer, tmp_path: Path) -> None:
    path = make(tmp_path, "f.bin", 1000)
    args = [str(path), "--to", "/upload/dead/", "--relay", dead_end.url, "--resumable", "--retries", "0"]
    result = run_client(*args, "--json", env=cache_env(tmp_path))
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert "HTTP 502 upstream_unavailable" in line and "gave up after 0 retries" in line
    [out] = json_lines(result.stdout)
    assert out["status"] == 502 and out["resumable"] is True
    assert isinstance(out["upload_url"], str) and out["upload_url"].startswith(dead_end.url)
    assert out["resumed_from"] == 0 and out["attempts"] == 1
    # The upload stays resumable: its URL is still remembered for the next run.
    assert len(list((tmp_path / "xdg" / "relay-upload").iterdir())) == 1
    plain = run_client(*args, env=cache_env(tmp_path))  # without --json: the same one line, no traceback
    assert plain.returncode == 1 and "HTTP 502" in one_error_line(plain.stderr)


def test_retries_spent_with_two_jobs_report_both(dead_end: RunningServer, tmp_path: Path) -> None:
    first, second = make(tmp_path, "a.bin", 100), make(tmp_path, "b.bin", 200)
    result = run_client(
        str(first), str(second), "--to", "/upload/dead/", "--relay", dead_end.url, "--resumable",
        "--retries", "0", "-j", "2", "--json", env=cache_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert [out["status"] for out in json_lines(result.stdout)] == [502, 502]
    assert len(result.stderr.splitlines()) == 2


def test_retries_spent_on_a_429_end_with_the_answer(sink: RunningServer, tmp_path: Path) -> None:
    relay = start_relay("--spool", str(tmp_path / "spool"), "--resumable-max-incomplete", "1", upstream=sink.url)
    try:
        blocker = httpx.post(f"{relay.url}/upload/block", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"})
        assert blocker.status_code == 201
        path = make(tmp_path, "f.bin", 1000)
        result = run_client(
            str(path), "--to", "/upload/w/", "--relay", relay.url, "--resumable", "--retries", "0", "--json",
            env=cache_env(tmp_path),
        )  # fmt: skip
    finally:
        relay.stop()
    assert result.returncode == 1, result.stderr
    assert "HTTP 429" in one_error_line(result.stderr)
    [out] = json_lines(result.stdout)
    assert out["status"] == 429 and out["upload_url"] is None


# --- --form keys tus metadata cannot carry ------------------------------------------------------------------------


def test_non_ascii_form_key_is_a_usage_error(tmp_path: Path) -> None:
    path = make(tmp_path, "f.bin", 10)
    result = run_client(str(path), "--to", "/upload/x", "--relay", "http://127.0.0.1:9", "--resumable",
                        "--form", "clé=1")  # fmt: skip
    assert result.returncode == 2
    assert "--form 'clé'" in one_error_line(result.stderr)
    for key in ("clé", "日本", "a\x7fb", "a\tb"):
        with pytest.raises(ArgumentError):
            metadata_header("f", "t", [(key, "1")])
    metadata_header("f", "t", [("a-b_c.d~!", "é")])  # ASCII punctuation is fine; values are base64


# --- the resume store: a hint, never an error ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[" * 200_000,  # deep enough to make the JSON parser recurse out
        "[1, 2]",
        "null",
        '{"upload_url": 5, "protocol": "tus", "path": "f", "destination": "d", "size": 1}',
        '{"upload_url": "http://r/u", "protocol": ["tus"], "path": "f", "destination": "d", "size": 1}',
        '{"upload_url": "http://r/u", "protocol": "tus", "path": "f", "destination": "d", "size": "1"}',
        '{"upload_url": "http://r/u", "protocol": "tus", "path": "f", "destination": "d", "size": true}',
        '{"upload_url": "http://r/u", "protocol": "tus", "path": "f", "destination": "d", "size": -1}',
        '{"upload_url": "http://r/u", "protocol": "tus", "path": null, "destination": "d", "size": 1}',
    ],
)
def test_a_corrupted_entry_is_ignored(tmp_path: Path, text: str) -> None:
    path = make(tmp_path, "f.bin", 1)
    store = ResumeStore(tmp_path / "cache")
    key = fingerprint(str(path), "http://relay/upload/a")
    store.save(key, StoredUpload("http://relay/resumable/1", "tus", str(path), "http://relay/upload/a", 1))
    (tmp_path / "cache" / key.name).write_text(text)
    assert store.load(key) is None


def test_a_corrupted_entry_does_not_stop_the_upload(relay: RunningServer, tmp_path: Path) -> None:
    path = make(tmp_path, "f.bin", 1000)
    destination = f"{relay.url}/upload/corrupt/"
    store = ResumeStore(tmp_path / "xdg" / "relay-upload")
    key = fingerprint(str(path), destination)
    store.save(key, StoredUpload("http://relay/resumable/1", "tus", str(path), destination, 1000))
    entry = {"upload_url": 5, "protocol": "tus", "path": str(path), "destination": destination, "size": 1000}
    (store.directory / key.name).write_text(json.dumps(entry))  # the right protocol and size, a number for a URL
    result = run_client(str(path), "--to", "/upload/corrupt/", "--relay", relay.url, "--resumable", "--json",
                        env=cache_env(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json_lines(result.stdout)[0]["status"] == 204


# --- a file that changes under the upload -------------------------------------------------------------------------


class Mover:
    """An observer that does something to the file when the relay's offset first reaches `at`."""

    def __init__(self, at: int, act: object) -> None:
        self.at, self.act, self.done = at, act, False

    def file_sent(self, index: int, nbytes: int) -> None:
        pass

    def relay_received(self, nbytes: int, total: int | None) -> None:
        pass

    def part_verified(self, index: int, ok: bool) -> None:
        pass

    def moved_to(self, index: int, offset: int) -> None:
        if offset == self.at and not self.done:
            self.done = True
            self.act()  # type: ignore[operator]


@pytest.mark.parametrize("change", ["deleted", "shrunk"])
def test_file_error_mid_upload_keeps_the_partial_result(relay: RunningServer, tmp_path: Path, change: str) -> None:
    path = make(tmp_path, "moving.bin", 4 * MiB)
    [file] = check_files([str(path)])
    cache = tmp_path / "cache"
    settings = ResumableOptions(
        relay=relay.url, url=f"{relay.url}/upload/moving/", chunk_size=MiB, store=ResumeStore(cache)
    )

    def act() -> None:
        if change == "deleted":
            path.unlink()
        else:
            os.truncate(path, MiB + MiB // 2)

    async def go() -> None:
        async with httpx.AsyncClient() as client:
            await upload_resumable(file, settings, client=client, observer=Mover(MiB, act))  # type: ignore[arg-type]

    with pytest.raises(FileError) as caught:
        asyncio.run(go())
    result = caught.value.result
    assert result is not None and result.status is None and result.resumable is not None
    assert result.resumable.upload_url is not None and result.resumable.upload_url.startswith(relay.url)
    assert result.resumable.resumed_from == 0
    assert result.bytes_sent >= MiB and result.attempts == 2
    assert result.error is not None and "moving.bin" in result.error
    assert result.files[0].partial and not result.files[0].complete
    assert not cache.exists() or list(cache.iterdir()) == []  # the entry named a file that is no more


# --- a remembered URL that is not an upload -----------------------------------------------------------------------


def test_remembered_url_refused_by_head_starts_anew(relay: RunningServer, tmp_path: Path) -> None:
    path = make(tmp_path, "f.bin", 1000)
    destination = f"{relay.url}/upload/lib/"
    store = ResumeStore(tmp_path / "cache")
    key = fingerprint(str(path), destination)
    not_an_upload = f"{relay.url}/upload/lib/x"  # HEAD there: 405 with no body
    store.save(key, StoredUpload(not_an_upload, "tus", str(path), destination, 1000))
    [file] = check_files([str(path)])
    settings = ResumableOptions(relay=relay.url, url=destination, store=store)
    warnings: list[str] = []

    async def go() -> None:
        async with httpx.AsyncClient() as client:
            result = await upload_resumable(file, settings, client=client, warn=warnings.append)
        assert result.ok, result
        assert result.resumable is not None and result.resumable.upload_url != not_an_upload

    asyncio.run(go())
    [warning] = warnings
    assert not_an_upload in warning and "HTTP 405 Method Not Allowed" in warning and "new upload" in warning
    assert list((tmp_path / "cache").iterdir()) == []


def test_remembered_url_without_credentials_is_kept(sink: RunningServer, tmp_path: Path) -> None:
    """A 401 to HEAD is this run's missing token, not a wrong URL: the entry stays for a run that has it."""
    guarded = start_relay("--spool", str(tmp_path / "spool"), "--token", "s3cret", upstream=sink.url)
    try:
        path = make(tmp_path, "f.bin", 1000)
        destination = f"{guarded.url}/upload/tok/"
        store = ResumeStore(tmp_path / "xdg" / "relay-upload")
        key = fingerprint(str(path), destination)
        store.save(key, StoredUpload(f"{guarded.url}/resumable/abc", "tus", str(path), destination, 1000))
        args = [str(path), "--to", "/upload/tok/", "--relay", guarded.url, "--resumable", "--json"]
        result = run_client(*args, env=cache_env(tmp_path))
    finally:
        guarded.stop()
    assert result.returncode == 1 and "HTTP 401" in one_error_line(result.stderr)
    assert json_lines(result.stdout)[0]["status"] == 401
    assert store.load(key) is not None


def test_an_empty_error_answer_is_described_by_its_reason() -> None:
    assert describe_http_error(405, None) == "HTTP 405 Method Not Allowed"
    assert describe_http_error(599, None) == "HTTP 599"
    assert describe_http_error(400, {"a": 1}) == 'HTTP 400: {"a": 1}'
