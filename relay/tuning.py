"""Process tuning measured to matter for the body path: glibc's malloc thresholds and uvicorn's body buffer.

Both are applied once at start-up, by relay-server and by relay-sink (docs/design.md, "What the measurements
decided"): without the first, glibc trims and re-faults the ~256 KiB chunk buffers; without the second, uvicorn
copies every body chunk twice.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

import uvicorn
from uvicorn.protocols.http import httptools_impl

__all__ = ["NOCOPY_UVICORN", "install_nocopy_body", "tune_malloc"]


def tune_malloc() -> bool:
    """Pin glibc's mmap and trim thresholds so ~256 KiB body chunks are reused, not returned to the kernel.

    Without this, glibc trims the heap after each freed chunk and page-faults it back in: about 218,000
    faults and a third of the relay's CPU per GiB (../shared/bench/RESULTS.md, finding 3). Both thresholds
    must be set; either alone is slower than neither.
    """
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1024 * 1024)) and bool(
            libc.mallopt(m_trim_threshold, 64 * 1024 * 1024)
        )
    except (OSError, AttributeError):
        return False


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
