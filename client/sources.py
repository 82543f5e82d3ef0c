"""What a request body is made of: files on disk, standard input, and the multipart framing around them.

Theory of operation:

* A body is a list of *segments*: literal bytes (multipart framing) and sources (a file, standard input, or
  generated data for the benchmark). When every source's size is known, the body goes out with an explicit
  Content-Length; standard input has no size, so a body holding it goes out chunked.
* Files are read 1 MiB at a time in a worker thread and hashed there too (sha256 releases the GIL on large
  buffers), so the event loop never waits on the disk. httpx pulls the next chunk only after the previous one
  was written: memory stays at a few chunks whatever the file size.
* The body counts, per source, the bytes handed to the connection and when the first and the last of them
  went: that is what the per-file seconds and MB/s are made of, and what tells a partial file from a whole one.
* A file can be read again for a retry; standard input only until its first byte was read.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Protocol, TypeVar

from client.errors import FileError

__all__ = [
    "CHUNK_SIZE",
    "STDIN",
    "Body",
    "FileSource",
    "LocalFile",
    "Source",
    "SourceStats",
    "StdinSource",
    "check_files",
    "multipart_segments",
    "new_boundary",
]

CHUNK_SIZE = 1024 * 1024
STDIN = "-"


@dataclass(frozen=True)
class LocalFile:
    """A file to send. `path` is kept exactly as given (or as found under a directory); `size` is None for stdin."""

    path: str
    size: int | None
    content_type: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path) or self.path

    @property
    def is_stdin(self) -> bool:
        return self.path == STDIN


def check_files(paths: Sequence[str], *, recursive: bool = False) -> list[LocalFile]:
    """Stat and open each path once, so a bad one fails before anything is sent; expand directories."""
    files: list[LocalFile] = []
    for path in paths:
        if path == STDIN:
            files.append(LocalFile(STDIN, None, "application/octet-stream"))
        elif os.path.isdir(path):
            if not recursive:
                raise FileError(f"{path}: is a directory (add --recursive to upload the files under it)")
            files += _directory_files(path)
        else:
            files.append(_check_file(path))
    return files


def _directory_files(directory: str) -> list[LocalFile]:
    """Regular files under `directory`, in a stable order; symlinked directories are not followed (no loops)."""
    found = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        found += [_check_file(os.path.join(root, name)) for name in sorted(names) if _is_regular(root, name)]
    if not found:
        raise FileError(f"{directory}: no files under this directory")
    return found


def _is_regular(root: str, name: str) -> bool:
    # Sockets and FIFOs in a tree have no size to announce: skip them rather than fail the whole directory.
    return os.path.isfile(os.path.join(root, name))


def _check_file(path: str) -> LocalFile:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileError(f"{path}: no such file") from None
    except OSError as exc:
        raise FileError(f"{path}: {exc.strerror or exc}") from None
    if not os.path.isfile(path):
        # A pipe or device has no size we could announce in Content-Length (stdin is given as "-").
        raise FileError(f"{path}: not a regular file (give a pipe as '-' on stdin)")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise FileError(f"{path}: {exc.strerror or exc}") from None
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return LocalFile(path, st.st_size, content_type)


class Source(Protocol):
    """A stream of bytes for the body; `size` None means unknown until the end (the body goes chunked)."""

    @property
    def size(self) -> int | None: ...

    def chunks(self) -> AsyncIterator[bytes]: ...


# One reader thread for every file of the process: reads of one file stay in order, and the 1 MiB read
# buffers stay in one thread's malloc arena.
T = TypeVar("T")
_READER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-upload-read")


async def _in_reader(function: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_READER, function, *args)


class _Hashed:
    """Bytes read so far and their sha256; the digest is the file's only once the whole file was read."""

    def __init__(self, size: int | None) -> None:
        self.declared = size
        self.read = 0
        self.eof = False
        self.sha256 = hashlib.sha256()

    def took(self, data: bytes) -> bytes:
        self.sha256.update(data)
        self.read += len(data)
        return data

    @property
    def size(self) -> int | None:
        return self.declared

    @property
    def digest(self) -> str | None:
        """The sha256 of the whole source, or None when only part of it was read (never a partial digest)."""
        whole = self.eof if self.declared is None else self.read == self.declared
        return self.sha256.hexdigest() if whole else None


class FileSource(_Hashed):
    """One file, read and hashed in the reader thread, exactly `size` bytes."""

    def __init__(self, file: LocalFile) -> None:
        super().__init__(file.size)
        self.file = file

    def _read(self, handle: IO[bytes], want: int) -> bytes:
        return self.took(handle.read(want))

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            handle = await _in_reader(open, self.file.path, "rb")
        except OSError as exc:
            raise FileError(f"{self.file.path}: {exc.strerror or exc}") from None
        # Read one chunk ahead: the disk read and the hash of chunk n+1 overlap the socket write of chunk n.
        # At most two chunks are in memory at once.
        left = self.declared or 0
        pending: asyncio.Task[bytes] | None = None
        try:
            while left > 0:
                if pending is None:
                    pending = asyncio.ensure_future(_in_reader(self._read, handle, min(CHUNK_SIZE, left)))
                data = await pending
                pending = None
                if not data:
                    # Content-Length is already on the wire: a shrunk file cannot be sent correctly.
                    raise FileError(f"{self.file.path}: file shrank while being sent")
                left -= len(data)
                if left > 0:
                    pending = asyncio.ensure_future(_in_reader(self._read, handle, min(CHUNK_SIZE, left)))
                yield data
        finally:
            if pending is not None:
                # Let the read in flight finish before closing the file under it.
                await asyncio.gather(pending, return_exceptions=True)
            await _in_reader(handle.close)


class StdinSource(_Hashed):
    """Standard input as it arrives, size unknown. Read once: it cannot be replayed after its first byte.

    A daemon thread reads, because a read blocked on a terminal or an idle pipe must not keep the process
    alive at exit (the shared reader pool's threads are joined at exit). It reads the file descriptor with
    os.read, not the stream's read1: a daemon thread blocked inside a BufferedReader holds its lock, and the
    interpreter's exit (after Ctrl-C) then dies on that lock ("Fatal Python error: _enter_buffered_busy",
    exit 134). Nothing reads standard input before this source, so no bytes wait in the stream's buffer.
    A stream without a descriptor (a test's BytesIO) is read with read1. At most two chunks wait in memory.
    """

    def __init__(self, file: LocalFile, stream: IO[bytes] | None = None) -> None:
        super().__init__(None)
        self.file = file
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.used = False
        self._read = _raw_reader(self.stream)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self.used:
            raise FileError("standard input was already read: it cannot be sent twice")
        self.used = True
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | OSError] = asyncio.Queue()
        room = threading.Semaphore(2)
        threading.Thread(target=self._pump, args=(loop, queue, room), daemon=True, name="relay-upload-stdin").start()
        while True:
            item = await queue.get()
            room.release()
            if isinstance(item, OSError):
                raise FileError(f"standard input: {item.strerror or item}")
            if not item:
                self.eof = True
                return
            yield self.took(item)

    def _pump(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | OSError], room: Any) -> None:
        item: bytes | OSError = b""
        while True:
            room.acquire()
            try:
                # Whatever the pipe has now (up to a chunk), so a slow producer's bytes go out as they come.
                item = self._read(CHUNK_SIZE)
            except OSError as exc:
                item = exc
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:
                return  # the loop is gone: nobody is waiting for these bytes any more
            if not isinstance(item, bytes) or not item:
                return


def _raw_reader(stream: IO[bytes]) -> Callable[[int], bytes]:
    """read(n) for `stream`: os.read on its descriptor (no lock held while blocked), else its read1."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return getattr(stream, "read1", stream.read)
    return lambda size: os.read(fd, size)


@dataclass
class SourceStats:
    """What one source put on the wire: bytes, and the times of its first and last chunk."""

    sent: int = 0
    first_at: float | None = None
    last_at: float | None = None

    @property
    def seconds(self) -> float:
        if self.first_at is None or self.last_at is None:
            return 0.0
        return self.last_at - self.first_at


class SentObserver(Protocol):
    def file_sent(self, index: int, nbytes: int) -> None: ...


class Body:
    """A request body, iterated once: counts bytes per source. `length` None: the body goes out chunked."""

    def __init__(self, segments: list[bytes | Source], content_type: str, observer: SentObserver | None = None):
        self.segments = segments
        self.content_type = content_type
        sizes = [len(s) if isinstance(s, bytes) else s.size for s in segments]
        self.length: int | None = None if None in sizes else sum(size or 0 for size in sizes)
        self.observer = observer
        self.sent = 0
        self.first_byte_at: float | None = None
        self.stats = [SourceStats() for s in segments if not isinstance(s, bytes)]

    @property
    def started(self) -> bool:
        return self.first_byte_at is not None

    def _mark(self, nbytes: int) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        self.sent += nbytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        index = 0
        for segment in self.segments:
            if isinstance(segment, bytes):
                if segment:  # an empty chunk would read as end-of-body to some writers
                    self._mark(len(segment))
                    yield segment
                continue
            stats = self.stats[index]
            async for chunk in segment.chunks():
                if not chunk:
                    continue
                self._mark(len(chunk))
                stats.first_at = stats.first_at or time.perf_counter()
                stats.sent += len(chunk)
                if self.observer is not None:
                    self.observer.file_sent(index, len(chunk))
                yield chunk
                # httpx asks for the next chunk only once this one was written: now it has left.
                stats.last_at = time.perf_counter()
            index += 1


def _form_quote(value: str) -> str:
    # HTML5 form encoding, as browsers and httpx do: a quote or CR/LF must not end the header parameter.
    out = value.replace("\\", "\\\\").replace('"', "%22")
    return "".join(f"%{ord(c):02X}" if ord(c) < 0x20 and c != "\x1b" else c for c in out)


def multipart_segments(
    sources: Sequence[tuple[str, LocalFile | str, Source]],
    form: Sequence[tuple[str, str]],
    boundary: str,
) -> list[bytes | Source]:
    """Form fields first, then one part per (field, file or filename, source), then the closing boundary."""
    segments: list[bytes | Source] = []
    for name, value in form:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{_form_quote(name)}"\r\n\r\n'
        segments.append(head.encode() + value.encode() + b"\r\n")
    for field_name, file, source in sources:
        filename = file.name if isinstance(file, LocalFile) else file
        content_type = file.content_type if isinstance(file, LocalFile) else "application/octet-stream"
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{_form_quote(field_name)}"; filename="{_form_quote(filename)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        segments += [head.encode(), source, b"\r\n"]
    segments.append(f"--{boundary}--\r\n".encode())
    return segments


def new_boundary() -> str:
    return secrets.token_hex(16)
