"""Byte ranges of a file on disk for resumable appends, and the file's sha256 computed in order across them.

Theory of operation:

* An append sends `[start, end)` of the file. `RangeSource` reads it 1 MiB at a time in the client's one
  reader thread (client/sources.py), one chunk ahead of the socket, so memory stays at two chunks whatever
  the file or chunk size, and the event loop never waits on the disk.
* The file's sha256 (reported, and compared with the relay's X-Upload-Sha256) must be computed over the bytes
  in order, but appends may start anywhere: a resumed run starts at the relay's offset, a broken append is
  resent from wherever the relay got to. `InOrderHasher` takes only the bytes that continue exactly where it
  stands and ignores the rest; `catch_up` reads from disk whatever it still lacks at the end. An upload sent
  in one go from offset 0 is thus hashed on the way, without a second read.
* `--digest` needs digests before the bytes go (headers precede the body): `hash_range` is that extra read.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import IO

from client.errors import FileError
from client.sources import CHUNK_SIZE, _in_reader

__all__ = ["InOrderHasher", "RangeSource", "catch_up", "hash_range"]


class InOrderHasher:
    """sha256 of a file fed in pieces that may overlap, repeat or skip ahead; only contiguous bytes count."""

    def __init__(self, start: int = 0) -> None:
        self.position = start
        self._sha256 = hashlib.sha256()

    def feed(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if offset <= self.position < end:
            self._sha256.update(memoryview(data)[self.position - offset :])
            self.position = end

    def digest(self) -> bytes:
        return self._sha256.digest()

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


def _open(path: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise FileError(f"{path}: {exc.strerror or exc}") from None


def _read_at(handle: IO[bytes], offset: int, want: int, hasher: InOrderHasher | None) -> bytes:
    handle.seek(offset)
    data = handle.read(want)
    if hasher is not None:
        hasher.feed(offset, data)  # in the reader thread: sha256 releases the GIL on large buffers
    return data


async def _chunks(path: str, start: int, end: int, hasher: InOrderHasher | None) -> AsyncIterator[bytes]:
    handle = await _in_reader(_open, path)
    position = start
    pending: asyncio.Future[bytes] | None = None
    try:
        while position < end:
            if pending is None:
                pending = asyncio.ensure_future(
                    _in_reader(_read_at, handle, position, min(CHUNK_SIZE, end - position), hasher)
                )
            data = await pending
            pending = None
            if not data:
                # Content-Length is already on the wire: a shrunk file cannot be sent correctly.
                raise FileError(f"{path}: file shrank while being sent")
            position += len(data)
            if position < end:  # read one chunk ahead: the disk read overlaps the socket write
                pending = asyncio.ensure_future(
                    _in_reader(_read_at, handle, position, min(CHUNK_SIZE, end - position), hasher)
                )
            yield data
    finally:
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)  # never close the file under a read
        await _in_reader(handle.close)


class RangeSource:
    """`[start, end)` of a file as a body source (client.sources.Source), hashed in order on the way."""

    def __init__(self, path: str, start: int, end: int, hasher: InOrderHasher | None = None) -> None:
        self.path = path
        self.start = start
        self.end = end
        self.hasher = hasher

    @property
    def size(self) -> int:
        return self.end - self.start

    def chunks(self) -> AsyncIterator[bytes]:
        return _chunks(self.path, self.start, self.end, self.hasher)


async def hash_range(path: str, start: int, end: int) -> bytes:
    """The sha256 digest (raw bytes) of `[start, end)` of the file, read in the reader thread."""
    hasher = InOrderHasher(start)
    async for _ in _chunks(path, start, end, hasher):
        pass
    return hasher.digest()


async def catch_up(path: str, size: int, hasher: InOrderHasher) -> str:
    """Read what `hasher` has not seen yet, up to `size`, and return the file's sha256 (hex)."""
    if hasher.position < size:
        async for _ in _chunks(path, hasher.position, size, hasher):
            pass
    return hasher.hexdigest()
