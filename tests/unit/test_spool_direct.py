"""relay/spool/direct.py on a real file: appended bytes land byte-exact at any start offset and in any piece sizes,
the file's size is exactly what was appended, the bytes went past the page cache, a failed write leaves a prefix
and nothing after it, and the buffers are reused.

The files live under the test's tmp_path: O_DIRECT needs a file system that takes it (ext4 here and in CI); where
it does not, `open_appender` says None and the tests that need it skip.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from relay.spool import direct

MiB = 1024 * 1024


def _open(path: Path, existing: bytes = b"") -> tuple[int, direct.DirectAppender]:
    path.write_bytes(existing)
    fd = os.open(path, os.O_WRONLY)
    os.lseek(fd, len(existing), os.SEEK_SET)
    appender = direct.open_appender(path, fd)
    if appender is None:
        os.close(fd)
        pytest.skip("this file system refuses O_DIRECT")
    return fd, appender


def _file_system(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()


def _append(fd: int, appender: direct.DirectAppender, data: bytes, sizes: list[int]) -> None:
    """`data` in pieces of `sizes` (the rest last), then `finish`; the ordinary descriptor closed either way."""
    try:
        for piece in _pieces(data, sizes):
            appender.write(piece)
        appender.finish()
    finally:
        os.close(fd)


def _pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    out, at = [], 0
    for size in sizes:
        out.append(data[at : at + size])
        at += size
    out.append(data[at:])
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(min_value=0, max_value=3 * direct.ALIGN + 5),
    size=st.integers(min_value=0, max_value=2 * direct.BLOCK + 3 * direct.ALIGN + 7),
    sizes=st.lists(st.integers(min_value=1, max_value=direct.BLOCK + 17), max_size=6),
)
def test_any_start_and_pieces_land_byte_exact(tmp_path: Path, start: int, size: int, sizes: list[int]) -> None:
    existing, data = os.urandom(start), os.urandom(size)
    path = tmp_path / "up.data"
    fd, appender = _open(path, existing)
    try:
        for piece in _pieces(data, sizes):
            appender.write(piece)
        assert appender.finish() == start + size
        assert os.lseek(fd, 0, os.SEEK_CUR) == start + size  # the ordinary descriptor is left at the end
    finally:
        os.close(fd)
    assert path.read_bytes() == existing + data


def test_fill_from_a_pipe(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 1234)
    path = tmp_path / "up.data"
    fd, appender = _open(path, b"x" * 100)
    read_fd, write_fd = os.pipe()
    try:
        feeder = threading.Thread(target=lambda: (os.write(write_fd, data), os.close(write_fd)), daemon=True)
        feeder.start()
        got = 0
        while count := appender.fill_from(read_fd):
            got += count
        feeder.join()
        assert got == len(data) and appender.finish() == 100 + len(data)
    finally:
        os.close(fd)
        os.close(read_fd)
    assert path.read_bytes() == b"x" * 100 + data


@pytest.fixture
def always_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block direct, however far behind the disk is: for the tests of what a direct write does when it fails
    (a test writes faster than any disk, so its blocks would otherwise go through the page cache)."""
    monkeypatch.setattr(direct.DirectAppender, "_disk_behind", lambda self: False)


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux's fincore")
def test_the_bytes_go_past_the_page_cache(tmp_path: Path) -> None:
    """fincore counts the file's pages in the page cache: the head's and the tail's, and the blocks a busy disk
    made go through the page cache (`cached`; the writer is paced, 1 MiB per 5 ms, so those are few): not 16 MiB."""
    if _file_system(tmp_path) == "tmpfs":
        pytest.skip("tmpfs is the page cache: its O_DIRECT writes land there too")
    path = tmp_path / "up.data"
    fd, appender = _open(path, b"h" * 10)
    try:
        for _ in range(16):
            appender.write(os.urandom(MiB))
            time.sleep(0.005)
        appender.finish()
    finally:
        os.close(fd)
    cached = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], capture_output=True, text=True, check=True
    )
    assert appender.cached <= 8 * MiB
    assert int(cached.stdout.strip()) <= 2 * direct.ALIGN + appender.cached


@pytest.mark.usefixtures("always_direct")
def test_a_failed_write_leaves_a_prefix_and_nothing_after(tmp_path: Path) -> None:
    """The O_DIRECT descriptor is swapped for a read-only one: the first direct write fails; the head went
    through the ordinary descriptor, and nothing after the failure is written (no tail past a hole)."""
    path = tmp_path / "up.data"
    fd, appender = _open(path, b"a" * 10)
    os.close(appender.direct_fd)
    appender.direct_fd = os.open(path, os.O_RDONLY)
    try:
        appender.write(os.urandom(direct.BLOCK + direct.ALIGN + 5))
        with pytest.raises(OSError):
            appender.write(b"more")  # the error surfaces on a later call ...
            appender.finish()  # ... or, at the latest, here
        appender.close()
    finally:
        os.close(fd)
    assert path.stat().st_size == direct.ALIGN  # the old 10 bytes and the head up to the first aligned offset


@pytest.mark.usefixtures("always_direct")
def test_a_refused_direct_write_goes_through_the_page_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real EINVAL: the appender is told its position is aligned when it is not, so its first direct write is
    misaligned. That block and the rest go through the ordinary descriptor, byte-exact, and later appenders of
    the process are not opened (`_refused`)."""
    if _file_system(tmp_path) == "tmpfs":
        pytest.skip("tmpfs takes O_DIRECT writes at any alignment")
    monkeypatch.setattr(direct, "_refused", False)
    path = tmp_path / "up.data"
    existing, data = b"e" * 100, os.urandom(2 * direct.BLOCK + 333)
    fd, appender = _open(path, existing)
    appender.head = 0  # the lie
    try:
        appender.write(data)
        assert appender.finish() == 100 + len(data)
    finally:
        os.close(fd)
    assert appender.fallback and direct._refused
    assert path.read_bytes() == existing + data
    other = os.open(path, os.O_WRONLY)
    try:
        assert direct.open_appender(path, other) is None
    finally:
        os.close(other)


def test_a_slow_disk_falls_back_to_the_page_cache_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Direct writes made slow (20 ms each): the I/O thread falls behind, writes the blocks it finds queued
    through the page cache, and the file is byte-exact all the same; the caller never waited for the disk
    more than one slow write at a time."""
    real_pwrite = os.pwrite
    path = tmp_path / "up.data"
    fd, appender = _open(path, b"")
    direct_fd = appender.direct_fd

    def slow_pwrite(target: int, data: Any, offset: int) -> int:
        if target == direct_fd:
            time.sleep(0.02)
        return real_pwrite(target, data, offset)

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    data = os.urandom(12 * direct.BLOCK + 99)
    _append(fd, appender, data, [direct.BLOCK // 3] * 40)
    assert 0 < appender.cached < len(data)
    assert path.read_bytes() == data


@pytest.mark.usefixtures("always_direct")
def test_a_short_direct_write_leaves_no_hole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """POSIX lets a write take fewer bytes than asked: the rest goes at its place (through the page cache), the
    next block after it; never zeros in the middle with the right size."""
    real_pwrite = os.pwrite
    path = tmp_path / "up.data"
    fd, appender = _open(path, b"")
    direct_fd, shortened = appender.direct_fd, []

    def short_once(target: int, data: Any, offset: int) -> int:
        if target == direct_fd and not shortened:
            shortened.append(offset)
            return real_pwrite(target, memoryview(data)[: len(data) - 8192], offset)
        return real_pwrite(target, data, offset)

    monkeypatch.setattr(os, "pwrite", short_once)
    data = os.urandom(3 * direct.BLOCK + 100)
    _append(fd, appender, data, [direct.BLOCK // 2] * 6)
    assert shortened and path.read_bytes() == data


@pytest.mark.usefixtures("always_direct")
def test_a_write_error_is_raised_even_with_the_pool_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC on a direct write while the pool is full: `finish` raises that OSError (not a BufferError from
    unmapping a buffer some traceback still views), and the file holds what was written before it."""
    real_pwrite = os.pwrite
    path = tmp_path / "up.data"
    fd, appender = _open(path, b"")
    direct_fd, calls = appender.direct_fd, []

    def full_disk(target: int, data: Any, offset: int) -> int:
        if target == direct_fd:
            calls.append(offset)
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(target, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk)
    # Full once this appender has its buffers (other appenders gave theirs back): its own are unmapped at close.
    monkeypatch.setattr(direct, "_pool", [mmap.mmap(-1, 4096) for _ in range(direct.POOL)])
    data = os.urandom(4 * direct.BLOCK)
    try:
        with pytest.raises(OSError) as raised:
            for piece in _pieces(data, [direct.BLOCK // 2] * 8):
                appender.write(piece)
            appender.finish()
        assert raised.value.errno == errno.ENOSPC
        appender.close()
    finally:
        os.close(fd)
    held = path.read_bytes()  # whole blocks up to the failed one (some through the page cache: the disk was
    assert 0 < len(held) < len(data) and len(held) % direct.BLOCK == 0  # "behind"), nothing after it
    assert held == data[: len(held)]


def test_at_most_max_active_appenders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each appender holds DEPTH MiB: past MAX_ACTIVE at once, None (the caller splices into the page cache);
    one closing makes room for the next."""
    monkeypatch.setattr(direct, "MAX_ACTIVE", 3)
    opened = [_open(tmp_path / f"{n}.data") for n in range(3)]
    path = tmp_path / "over.data"
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    try:
        assert direct.open_appender(path, fd) is None
        first_fd, first = opened.pop(0)
        first.finish()
        os.close(first_fd)
        again = direct.open_appender(path, fd)
        assert again is not None
        again.finish()
    finally:
        os.close(fd)
        for other_fd, appender in opened:
            appender.close()
            os.close(other_fd)
    assert direct._active == 0


def test_buffers_are_reused(tmp_path: Path) -> None:
    """A new mapping costs a page fault per page on first touch (the cost the module avoids): the next appender
    takes the buffers the last one gave back."""
    direct._pool.clear()
    first_fd, first = _open(tmp_path / "a.data")
    first.write(os.urandom(10))
    first.finish()
    os.close(first_fd)
    pooled = {id(buffer) for buffer in direct._pool}
    assert len(pooled) == direct.DEPTH
    second_fd, second = _open(tmp_path / "b.data")
    try:
        second.write(os.urandom(10))
        assert id(second.buffer) in pooled
        second.finish()
    finally:
        os.close(second_fd)


def test_no_appender_without_o_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A platform without O_DIRECT (or a file system refusing it at open): None, and the caller writes through the
    page cache (tests/unit/test_resumable_spliced.py runs that path too)."""
    path = tmp_path / "up.data"
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    try:
        monkeypatch.delattr(os, "O_DIRECT")
        assert direct.open_appender(path, fd) is None
        monkeypatch.undo()
        assert direct.open_appender(tmp_path / "missing.data", fd) is None
    finally:
        os.close(fd)


def test_a_client_faster_than_the_disk_goes_through_the_page_cache(tmp_path: Path) -> None:
    """Written as fast as memory allows, blocks find others queued behind them (or the caller waiting for a buffer)
    and go through the page cache: the upload runs at the client's pace. Before, a block went there only when every
    other buffer was queued behind it, which DEPTH buffers (one in the caller's hands) never allowed: one append of
    1 GiB took 2.0-2.5 s on a disk writing 650 MB/s against 0.9-1.0 s now."""
    path = tmp_path / "up.data"
    data = os.urandom(16 * direct.BLOCK)
    fd, appender = _open(path, b"")
    try:
        for piece in _pieces(data, [direct.BLOCK] * 16):
            appender.write(piece)
        assert appender.finish() == len(data)
    finally:
        os.close(fd)
    assert appender.cached >= len(data) // 2  # measured: 16 of 16 blocks now, 2 of 16 under the old rule
    assert path.read_bytes() == data
