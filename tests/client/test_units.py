"""Pieces of the client without a network: sizes, body framing, progress rendering, the JSON object."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import pytest
from python_multipart import MultipartParser
from rich.console import Console

import client
from client.bench import GeneratedSource, parse_size
from client.progress import UploadView
from client.report import result_json
from client.sources import StdinSource
from client.upload import (
    Body,
    FileError,
    FileResult,
    FileSource,
    LocalFile,
    UploadResult,
    build_url,
    check_files,
    multipart_segments,
)


def test_public_names() -> None:
    assert {"upload", "UploadResult"} <= set(client.__all__)
    for name in client.__all__:
        assert hasattr(client, name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("4096", 4096),
        ("1k", 1024),
        ("1K", 1024),
        ("2KiB", 2048),
        ("1KB", 1000),
        ("3M", 3 * 1024**2),
        ("3MiB", 3 * 1024**2),
        ("3MB", 3_000_000),
        ("1G", 1024**3),
        ("1GiB", 1024**3),
        ("1GB", 10**9),
        ("1.5MiB", 1572864),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "1X", "-1", "1 TB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_build_url_encodes_query() -> None:
    url = build_url("http://r:1/", "/upload/x", [("tag", "a b&c"), ("n", "é")])
    assert url == "http://r:1/upload/x?tag=a+b%26c&n=%C3%A9"
    assert build_url("http://r:1", "/upload/x?a=1", [("b", "2")]) == "http://r:1/upload/x?a=1&b=2"


def test_check_files_errors(tmp_path: Path) -> None:
    with pytest.raises(FileError, match="no such file"):
        check_files([str(tmp_path / "nope")])
    with pytest.raises(FileError, match="is a directory"):
        check_files([str(tmp_path)])


async def _collect(body: Body) -> bytes:
    return b"".join([chunk async for chunk in body])


def test_multipart_body_length_and_parts(tmp_path: Path) -> None:
    """The precomputed Content-Length is exact and a real multipart parser finds every part intact."""
    paths = [tmp_path / 'we"ird\nname.bin', tmp_path / "b.txt"]
    paths[0].write_bytes(bytes(range(256)) * 9000)  # over one 1 MiB chunk
    paths[1].write_bytes(b"hello")
    sources = [FileSource(f) for f in check_files([str(p) for p in paths])]
    body = Body(multipart_segments([("file", s.file, s) for s in sources], [("k", "v")], "BOUNDARY"), "x")
    data = asyncio.run(_collect(body))
    assert len(data) == body.length == body.sent

    parts: list[bytearray] = []
    parser = MultipartParser(
        b"BOUNDARY",
        {"on_part_begin": lambda: parts.append(bytearray()), "on_part_data": lambda d, s, e: parts[-1].extend(d[s:e])},
    )
    parser.write(data)
    parser.finalize()
    assert [bytes(p) for p in parts] == [b"v", paths[0].read_bytes(), b"hello"]
    assert sources[0].sha256.hexdigest() == hashlib.sha256(paths[0].read_bytes()).hexdigest()
    # A quote or newline in a filename is percent-encoded, so it cannot end the header parameter early.
    assert b'filename="we%22ird%0Aname.bin"' in data


def test_generated_source_size() -> None:
    size = 2 * 1024 * 1024 + 5
    body = Body([GeneratedSource(size)], "application/octet-stream")
    assert len(asyncio.run(_collect(body))) == size == body.length


def test_result_json_shape() -> None:
    result = UploadResult(
        status=201,
        upload_id="abc",
        bytes_sent=2_000_000,
        seconds=0.5,
        files=[FileResult("./x.bin", 10, "f" * 64, sent=10, seconds=0.25)],
        response={"ok": True},
    )
    file = {"path": "./x.bin", "size": 10, "sha256": "f" * 64}
    per_file = {"bytes_sent": 10, "partial": False, "seconds": 0.25, "throughput_mbps": 0.0}
    assert result_json(result) == {
        "status": 201,
        "upload_id": "abc",
        "bytes_sent": 2_000_000,
        "seconds": 0.5,
        "throughput_mbps": 4.0,
        "files": [{**file, **per_file}],
        "sha256": {"./x.bin": "f" * 64},
        "response": {"ok": True},
        "attempts": 1,
    }


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_rendering(tmp_path: Path) -> None:
    """Rows per file and a total, percent and speed from the injected clock, markup in names shown literally."""
    paths = [tmp_path / "[red]evil.bin", tmp_path / "b.bin"]
    paths[0].write_bytes(b"\0" * 4_000_000)
    paths[1].write_bytes(b"\0" * 1_000_000)
    files = check_files([str(p) for p in paths])
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None, legacy_windows=False)
    clock = FakeClock()
    view = UploadView(console, events=True, get_time=clock, auto_refresh=False)
    tasks = view.add_files(files)
    observer = view.request(tasks)
    with view:
        for _ in range(2):
            clock.now += 1.0
            observer.file_sent(0, 1_000_000)
        observer.relay_received(1_500_000, 5_000_000)
        view.refresh()
        text = out.getvalue()
    assert "[red]evil.bin" in text  # escaped, not styled away
    assert "50%" in text  # 2 of 4 MB
    assert "40%" in text  # total: 2 of 5 MB
    assert "1.0 MB/s" in text
    assert "2.0/4.0 MB" in text
    assert "relay 1.5/5.0 MB" in text


def test_progress_marks_verified_parts(tmp_path: Path) -> None:
    path = tmp_path / "one.bin"
    path.write_bytes(b"x")
    out = io.StringIO()
    view = UploadView(Console(file=out, force_terminal=True, width=160, color_system=None), events=True,
                      get_time=FakeClock(), auto_refresh=False)  # fmt: skip
    observer = view.request(view.add_files(check_files([str(path)])))
    with view:
        observer.file_sent(0, 1)
        observer.part_verified(0, False)
        view.refresh()
    assert "sha256 MISMATCH" in out.getvalue()


def test_stdin_source_has_no_length_and_a_digest_once_read_to_the_end() -> None:
    data = bytes(range(256)) * 5000  # over one chunk
    source = StdinSource(LocalFile("-", None, "application/octet-stream"), stream=io.BufferedReader(io.BytesIO(data)))
    body = Body([source], "application/octet-stream")
    assert body.length is None  # sent chunked
    assert asyncio.run(_collect(body)) == data
    assert source.digest == hashlib.sha256(data).hexdigest() and body.stats[0].sent == len(data)


def test_a_partly_read_file_has_no_digest(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"z" * (3 * 1024 * 1024))
    source = FileSource(check_files([str(path)])[0])

    async def first_chunk_only() -> None:
        chunks = source.chunks()
        await anext(chunks)
        await chunks.aclose()

    asyncio.run(first_chunk_only())
    assert 0 < source.read < path.stat().st_size
    assert source.digest is None  # never the digest of a prefix presented as the file's
