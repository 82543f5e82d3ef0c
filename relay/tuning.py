"""Process tuning measured to matter for the body path: glibc's malloc thresholds and uvicorn's body buffer.

Both are applied once at start-up, by relay-server and by relay-sink (docs/design.md, "What the measurements
decided"): without the first, glibc trims and re-faults the ~256 KiB chunk buffers; without the second, uvicorn
copies every body chunk twice.

The first has a price, paid back by `release_when_idle`: with the trim threshold pinned at 64 MiB, heap that a
burst filled stays resident after it (the disk spool's queue of a 16 MiB tus append: +13 to 15 MiB for the rest
of the process's life, benchmarks/prototypes/rss_rows.py). relay-server runs that job beside the servers: once no
upload is in flight and RSS has grown by RELEASE_ABOVE since the last release, `malloc_trim(0)` hands the free
pages of every arena back. Uploads keep reusing their buffers; only the first one after an idle release re-faults
what it needs.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable
from functools import cache
from typing import Any

import uvicorn
from uvicorn.protocols.http import httptools_impl

__all__ = ["NOCOPY_UVICORN", "install_nocopy_body", "malloc_trim", "release_when_idle", "rss_bytes", "tune_malloc"]

RELEASE_EVERY = 1.0  # seconds between looks: a wake-up a second, a /proc read, nothing else while nothing changed
# RSS growth since the last release that is worth a malloc_trim. A 1 GiB upload leaves 0 to 1.6 MiB (--digest none)
# or ~3 MiB (sha256, chunked or multipart: the hash queue's chunks); 16 MiB tus appends 13 to 15 MiB. What a release
# costs is the next upload re-faulting what it needs: +500 to 750 page faults/GiB on the sha256 chunked and multipart
# rows of benchmarks/run.py, ~3,000 on the 16 MiB appends, no measurable CPU.
RELEASE_ABOVE = 2 * 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def tune_malloc() -> bool:
    """Pin glibc's mmap and trim thresholds so ~256 KiB body chunks are reused, not returned to the kernel.

    Without this, glibc trims the heap after each freed chunk and page-faults it back in: about 218,000
    faults and a third of the relay's CPU per GiB (../shared/bench/RESULTS.md, finding 3). Both thresholds
    must be set; either alone is slower than neither.
    """
    libc = _libc()
    if libc is None:
        return False
    try:
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1024 * 1024)) and bool(
            libc.mallopt(m_trim_threshold, 64 * 1024 * 1024)
        )
    except AttributeError:
        return False


def malloc_trim() -> bool:
    """glibc's malloc_trim(0): free pages of every arena (the heap's middle included) back to the kernel; False
    where there is no such call (not glibc)."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    trim(0)
    return True


def rss_bytes() -> int:
    """This process's resident set size (/proc/self/statm); 0 where there is none."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


async def release_when_idle(
    busy: Callable[[], bool],
    *,
    every: float = RELEASE_EVERY,
    above: int = RELEASE_ABOVE,
    rss: Callable[[], int] = rss_bytes,
    trim: Callable[[], bool] = malloc_trim,
) -> None:
    """Until cancelled: every `every` seconds, when `busy()` is false (no upload in flight) and RSS is `above`
    bytes over its floor (what it was after the last release, or at start, or lower since), trim.

    Never while an upload runs: its buffers stay where tune_malloc wants them. What a trim could not give back
    (live objects, not free heap) becomes the new floor, so it is not trimmed for again every second. Returns at
    once where there is nothing to read or to call (no /proc, not glibc).
    """
    floor = rss()
    if not floor:
        return
    while True:
        await asyncio.sleep(every)
        if busy():
            continue
        now = rss()
        if now - floor < above:
            floor = min(floor, now)
            continue
        if not trim():
            return
        floor = rss()


class _ChunkList:
    """Enough of a bytearray for uvicorn's request cycle: `+=` keeps the piece, len() totals, bytes() joins."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def __iadd__(self, data: bytes) -> _ChunkList:
        self.parts.append(data)
        self.size += len(data)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        if len(self.parts) == 1 and type(self.parts[0]) is bytes:
            return self.parts[0]  # the usual case: uvicorn pauses reading past 64 KiB, so one piece waits
        return b"".join(self.parts)


class _NoCopyCycle(httptools_impl.RequestResponseCycle):
    @property
    def body(self) -> Any:
        return self._body

    @body.setter
    def body(self, value: Any) -> None:  # uvicorn assigns a fresh bytearray() after each receive()
        self._body = _ChunkList() if isinstance(value, bytearray) and not value else value


# Versions whose RequestResponseCycle.body use this was checked against (0.55 changed nothing of it: the
# diff of httptools_impl.py is the header value's trailing whitespace and the task context). pyproject.toml
# keeps uvicorn below the next minor version, and constraints.txt pins the one CI tests.
NOCOPY_UVICORN = ("0.54.", "0.55.")


def install_nocopy_body() -> bool:
    """Stop uvicorn copying every body chunk twice (`body += piece`, then `bytes(body)` in receive()).

    Measured with benchmarks/run.py: -0.17 relay CPU-s/GiB. It swaps a uvicorn internal, so it is applied only
    to the uvicorn versions it was checked against; elsewhere uvicorn keeps its copies. Every byte-exact e2e
    test runs through it.
    """
    if not uvicorn.__version__.startswith(NOCOPY_UVICORN):
        return False
    httptools_impl.RequestResponseCycle = _NoCopyCycle  # type: ignore[misc]
    return True
