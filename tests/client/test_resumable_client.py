"""The resumable client as a library: its pieces one by one, then `upload_resumable` against a real relay.

Units: the in-order hasher, the resume store (atomic, best effort, keyed by destination and file), the two
protocols' headers, the backoff. Then real relay processes on a spool, with a sink storing under tmp: chunked
uploads byte-exact, a stale remembered URL (404 → a new upload from 0, said), an offset moved under the
client's feet (409 → HEAD and go on), a 429 at creation waited out, empty files in both protocols, progress
that follows the relay's offset, and the relay down (NetworkError with the partial result).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import json
import os
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from client.errors import ArgumentError, NetworkError
from client.progress import UploadView
from client.ranges import InOrderHasher, RangeSource, catch_up, hash_range
from client.report import answer_summary, result_json
from client.results import FileResult, ResumableInfo, UploadResult
from client.resumable import ResumableOptions, backoff, upload_resumable
from client.resumable_wire import IETF, TUS, Answer, Final, Gone, Retry, judge, metadata_header, repr_field
from client.resume_store import ResumeStore, StoredUpload, default_directory, fingerprint
from client.sources import check_files
from relay.testing import RunningServer, start_relay, start_sink

MiB = 1024 * 1024


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (pytest sees the fixtures through functools.wraps)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


# --- units ---------------------------------------------------------------------------------------------------


def test_in_order_hasher_takes_only_contiguous_bytes() -> None:
    data = os.urandom(1000)
    hasher = InOrderHasher()
    hasher.feed(0, data[:100])
    hasher.feed(300, data[300:400])  # ahead of where it stands: ignored
    hasher.feed(50, data[50:250])  # overlaps: only the new part counts
    hasher.feed(0, data[:10])  # behind: ignored
    assert hasher.position == 250
    hasher.feed(250, data[250:])
    assert hasher.hexdigest() == hashlib.sha256(data).hexdigest()


@sync
async def test_ranges_and_catch_up(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(3 * MiB + 17)
    path.write_bytes(data)
    hasher = InOrderHasher()
    pieces = [chunk async for chunk in RangeSource(str(path), MiB + 1, 2 * MiB + 5, hasher).chunks()]
    assert b"".join(pieces) == data[MiB + 1 : 2 * MiB + 5]
    assert max(len(p) for p in pieces) <= MiB  # read 1 MiB at a time
    assert hasher.position == 0  # it started mid-file: nothing in order yet
    assert await catch_up(str(path), len(data), hasher) == hashlib.sha256(data).hexdigest()
    assert await hash_range(str(path), 5, 100) == hashlib.sha256(data[5:100]).digest()


def test_resume_store_round_trip_and_best_effort(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 100)
    store = ResumeStore(tmp_path / "cache")
    key = fingerprint(str(path), "http://relay/upload/a")
    assert store.load(key) is None
    entry = StoredUpload("http://relay/resumable/1", "tus", str(path), "http://relay/upload/a", 100)
    store.save(key, entry)
    assert store.load(key) == entry
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [key.name]  # no temporary file left behind
    # Another destination, another mtime or other first bytes: another key.
    assert fingerprint(str(path), "http://relay/upload/b") != key
    os.utime(path, ns=(1, 1))
    assert fingerprint(str(path), "http://relay/upload/a") != key
    (tmp_path / "cache" / key.name).write_text("{not json")
    assert store.load(key) is None  # a broken entry is ignored, not an error
    store.remove(key)
    store.remove(key)
    assert list((tmp_path / "cache").iterdir()) == []


def test_cache_directory_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_directory() == tmp_path / "relay-upload"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_directory() == Path.home() / ".cache" / "relay-upload"


def test_protocol_headers() -> None:
    digest = hashlib.sha256(b"abc").digest()
    metadata = metadata_header("a b.txt", "text/plain", [("album", "2026 é")])
    pairs = dict(item.split(" ") for item in metadata.split(","))
    assert {k: base64.b64decode(v).decode() for k, v in pairs.items()} == {
        "filename": "a b.txt",
        "filetype": "text/plain",
        "album": "2026 é",
    }
    create = TUS.create(10, metadata, digest)
    assert create["Tus-Resumable"] == "1.0.0" and create["Upload-Length"] == "10"
    assert create["Repr-Digest"] == repr_field(digest) == f"sha-256=:{base64.b64encode(digest).decode()}:"
    append = TUS.append(4, 6, last=True, checksum=digest, repr_digest=None)
    assert append["Content-Type"] == "application/offset+octet-stream"
    assert append["Upload-Offset"] == "4" and append["Content-Length"] == "6"
    assert append["Upload-Checksum"] == "sha256 " + base64.b64encode(digest).decode()
    ietf = IETF.append(0, 6, last=False, checksum=digest, repr_digest=digest)
    assert ietf["Upload-Draft-Interop-Version"] == "8" and ietf["Upload-Complete"] == "?0"
    assert ietf["Content-Type"] == "application/partial-upload"
    assert "Upload-Checksum" not in ietf and "Repr-Digest" not in ietf  # the draft has no per-request checksum
    assert IETF.append(0, 6, last=True, checksum=None, repr_digest=digest)["Upload-Complete"] == "?1"
    assert IETF.create(0, "", None)["Upload-Complete"] == "?1"  # an empty file is complete at creation
    for bad in (("a,b", "1"), ("a b", "1"), ("filename", "x")):
        with pytest.raises(ArgumentError):
            metadata_header("f", "t", [bad])


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


# --- against a real relay --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def received(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("received")


@pytest.fixture(scope="module")
def sink(received: Path) -> Iterator[RunningServer]:
    server = start_sink(received)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def relay(sink: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_relay("--spool", str(tmp_path_factory.mktemp("spool")), upstream=sink.url)
    yield server
    server.stop()


class Recorder:
    """An observer that keeps what it was told, and may act when the relay's offset moves."""

    def __init__(self) -> None:
        self.sent = 0
        self.moves: list[int] = []
        self.on_move: Any = None

    def file_sent(self, index: int, nbytes: int) -> None:
        self.sent += nbytes

    def relay_received(self, nbytes: int, total: int | None) -> None:
        pass

    def part_verified(self, index: int, ok: bool) -> None:
        pass

    def moved_to(self, index: int, offset: int) -> None:
        self.moves.append(offset)
        if self.on_move is not None:
            self.on_move(offset)


def make(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


async def send(
    path: Path,
    relay: RunningServer,
    tmp_path: Path,
    observer: Recorder | None = None,
    notes: list[str] | None = None,
    **options: Any,
) -> UploadResult:
    [file] = check_files([str(path)])
    settings = ResumableOptions(
        relay=relay.url, url=f"{relay.url}/upload/lib", store=ResumeStore(tmp_path / "cache"), **options
    )
    async with httpx.AsyncClient() as client:
        note = notes.append if notes is not None else None
        return await upload_resumable(file, settings, client=client, observer=observer, note=note)


def check_at_sink(received: Path, result: UploadResult, path: Path) -> None:
    assert result.ok, result
    assert result.upload_id is not None
    [stored] = list((received / result.upload_id).iterdir())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest
    assert result.files[0].sha256 == result.files[0].relay_sha256 == digest


@pytest.mark.parametrize("protocol", ["tus", "ietf"])
@sync
async def test_chunked_upload_progress_follows_the_offset(
    relay: RunningServer, received: Path, tmp_path: Path, protocol: str
) -> None:
    path = make(tmp_path, "chunked.bin", 9 * MiB + 3)
    recorder = Recorder()
    result = await send(path, relay, tmp_path, recorder, protocol=protocol, chunk_size=2 * MiB, digest=True)
    check_at_sink(received, result, path)
    assert result.attempts == 5 and result.bytes_sent == recorder.sent == path.stat().st_size
    assert recorder.moves == [0, 2 * MiB, 4 * MiB, 6 * MiB, 8 * MiB, path.stat().st_size]
    assert result.resumable is not None and result.resumable.resumed_from == 0
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("protocol", ["tus", "ietf"])
@sync
async def test_empty_file(relay: RunningServer, received: Path, tmp_path: Path, protocol: str) -> None:
    path = make(tmp_path, "empty.bin", 0)
    result = await send(path, relay, tmp_path, protocol=protocol)
    check_at_sink(received, result, path)
    assert result.attempts == 0  # complete at creation: no append carried bytes


@sync
async def test_stale_remembered_url_starts_anew(relay: RunningServer, received: Path, tmp_path: Path) -> None:
    path = make(tmp_path, "stale.bin", MiB)
    store = ResumeStore(tmp_path / "cache")
    key = fingerprint(str(path), f"{relay.url}/upload/lib")
    gone = f"{relay.url}/resumable/no-such-upload"
    store.save(key, StoredUpload(gone, "tus", str(path), f"{relay.url}/upload/lib", MiB))
    notes: list[str] = []
    result = await send(path, relay, tmp_path, notes=notes)
    check_at_sink(received, result, path)
    assert notes == [f"the relay no longer knows {gone}; starting a new upload from 0"]
    assert result.resumable is not None and result.resumable.resumed_from == 0


@sync
async def test_offset_moved_elsewhere_is_a_head_and_go_on(relay: RunningServer, received: Path, tmp_path: Path) -> None:
    """A 409 (someone else appended) makes the client ask HEAD and carry on from the relay's offset."""
    path = make(tmp_path, "raced.bin", 6 * MiB)
    data = path.read_bytes()
    recorder = Recorder()
    urls: list[str] = []

    def append_behind_its_back(offset: int) -> None:
        if offset == 2 * MiB and not urls:
            [entry] = [json.loads(p.read_text()) for p in (tmp_path / "cache").iterdir()]
            urls.append(entry["upload_url"])
            headers = {
                "Tus-Resumable": "1.0.0",
                "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": str(offset),
            }
            response = httpx.patch(entry["upload_url"], headers=headers, content=data[offset : offset + MiB])
            assert response.status_code == 204

    recorder.on_move = append_behind_its_back
    notes: list[str] = []
    result = await send(path, relay, tmp_path, recorder, notes=notes, chunk_size=2 * MiB)
    check_at_sink(received, result, path)
    assert any("offset mismatch" in note for note in notes)
    assert 3 * MiB in recorder.moves  # where HEAD found the relay


@sync
async def test_too_many_incomplete_uploads_is_waited_out(tmp_path: Path, sink: RunningServer, received: Path) -> None:
    relay = start_relay("--spool", str(tmp_path / "spool"), "--resumable-max-incomplete", "1", upstream=sink.url)
    try:
        blocker = httpx.post(f"{relay.url}/upload/block", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"})
        assert blocker.status_code == 201
        blocker_url = httpx.URL(relay.url).join(blocker.headers["location"])

        def note(text: str) -> None:
            notes.append(text)
            httpx.delete(blocker_url, headers={"Tus-Resumable": "1.0.0"})  # make room for the retry

        notes: list[str] = []
        path = make(tmp_path, "waited.bin", 1000)
        [file] = check_files([str(path)])
        settings = ResumableOptions(relay=relay.url, url=f"{relay.url}/upload/w", store=ResumeStore(tmp_path / "c"))
        async with httpx.AsyncClient() as client:
            result = await upload_resumable(file, settings, client=client, note=note)
    finally:
        relay.stop()
    check_at_sink(received, result, path)
    assert len(notes) == 1 and "429" in notes[0]


@sync
async def test_relay_down_raises_with_the_partial_result(tmp_path: Path) -> None:
    path = make(tmp_path, "nowhere.bin", 10)
    [file] = check_files([str(path)])
    settings = ResumableOptions(
        relay="http://127.0.0.1:9", url="http://127.0.0.1:9/upload/x", retries=1, store=ResumeStore(tmp_path / "c")
    )
    async with httpx.AsyncClient() as client:
        with pytest.raises(NetworkError) as caught:
            await upload_resumable(file, settings, client=client)
    assert "cannot connect to the relay at http://127.0.0.1:9" in str(caught.value)
    result = caught.value.result
    assert result is not None and result.status is None and result.resumable is not None
    assert result.files[0].complete is False and not result.files[0].partial  # nothing went anywhere


def test_standard_input_is_refused() -> None:
    [stdin] = check_files(["-"])
    settings = ResumableOptions(relay="http://127.0.0.1:9", url="http://127.0.0.1:9/upload/x")

    async def refused() -> None:
        async with httpx.AsyncClient() as client:
            await upload_resumable(stdin, settings, client=client)

    with pytest.raises(ArgumentError):
        asyncio.run(refused())


def test_progress_starts_at_the_resumed_offset_and_follows_rewinds() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120, height=40)
    view = UploadView(console, auto_refresh=False)
    files = check_files([__file__]) * 2
    tasks = view.add_files(files)
    size = files[0].size or 0
    observer = view.request(tasks[:1])
    observer.moved_to(0, size // 2)  # resumed: the bar starts half full, without a burst of speed
    task = view.progress.tasks[0]
    assert task.completed == size // 2 and task.speed is None
    observer.file_sent(0, 10)
    assert view.progress.tasks[0].completed == size // 2 + 10
    observer.moved_to(0, size // 4)  # a broken append: back to what the relay holds
    assert view.progress.tasks[0].completed == size // 4
    assert view.total_task is not None and view.progress.tasks[2].completed == size // 4


def test_summary_of_a_resumable_result() -> None:
    file = FileResult("a.bin", 100, "ab" * 32, 60, 1.0, relay_sha256="ab" * 32, match=True, complete=True)
    info = ResumableInfo("tus", "http://r/resumable/1", resumed_from=40, upstream_status=200)
    result = UploadResult(204, "1", 60, 1.0, [file], {"upstream_status": 200}, resumable=info, attempts=2)
    out = result_json(result)
    assert out["resumable"] is True and out["upload_url"] == "http://r/resumable/1"
    assert (out["resumed_from"], out["attempts"], out["upstream_status"]) == (40, 2, 200)
    assert out["files"][0]["partial"] is False  # the whole file is on the relay, 40 bytes of it from before
    assert answer_summary(result, 0) == "upstream 200; resumed at 40; relay sha256 ok"


@pytest.mark.parametrize(
    ("status", "headers", "upload_url", "verdict"),
    [
        (429, {"retry-after": "3"}, False, Retry),
        (409, {}, True, Retry),
        (460, {}, True, Retry),
        (502, {}, True, Retry),
        (503, {}, False, Retry),
        (404, {}, True, Gone),
        (410, {}, True, Gone),
        (404, {}, False, Final),  # at creation: a path the relay does not route
        (500, {"x-upstream-status": "500"}, True, Final),  # the upstream's own verdict: sending again repeats it
        (507, {}, False, Final),
        (413, {}, False, Final),
        (401, {}, True, Final),
    ],
)
def test_what_an_answer_means(status: int, headers: dict[str, str], upload_url: bool, verdict: type) -> None:
    with pytest.raises(verdict) as caught:
        judge(Answer(status, httpx.Headers(headers), None), upload_url=upload_url)
    if status == 429:
        assert caught.value.delay == 3.0


@sync
async def test_delivered_upload_whose_answer_was_lost(relay: RunningServer, received: Path, tmp_path: Path) -> None:
    """A run killed after the last byte went: the next one finds the full offset and asks for the answer again."""
    path = make(tmp_path, "delivered.bin", 100_000)
    destination = f"{relay.url}/upload/lib"
    created = httpx.post(destination, headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(100_000)})
    upload_url = str(httpx.URL(destination).join(created.headers["location"]))
    headers = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    assert httpx.patch(upload_url, headers=headers, content=path.read_bytes()).status_code == 204
    store = ResumeStore(tmp_path / "cache")
    store.save(fingerprint(str(path), destination), StoredUpload(upload_url, "tus", str(path), destination, 100_000))
    result = await send(path, relay, tmp_path)
    assert result.ok and result.status == 204 and result.bytes_sent == 0 and result.attempts == 1
    assert result.resumable is not None and result.resumable.resumed_from == 100_000
    assert result.files[0].sha256 == result.files[0].relay_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert list((tmp_path / "cache").iterdir()) == []
