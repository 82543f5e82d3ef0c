"""`DiskSpool`: resumable uploads on a local disk, written by one thread so the event loop never waits on it.

Layout: `<root>/<id>.data` (the bytes, appended at the end) and `<root>/<id>.json` (the info document,
replaced atomically: temporary file, fsync, rename, fsync of the directory). Temporary files start
with a dot, are never listed, and those a crash left behind are removed when the spool opens.

Why a writer thread. A `write()` to a file can block for milliseconds when the page cache is full and
the kernel throttles dirty pages, and `fsync` blocks until the disk has the data: both on the event
loop would stall every other upload. The design is relay/hashing.py's: one worker thread per spool,
one FIFO queue; the loop hands each chunk over (`SpoolWriter.write`) and does not wait for it, except
when more than MAX_QUEUED bytes are queued, and then it awaits (a future the worker resolves once the
queue is under half of that), never blocks. It awaits the worker only at `commit`/`abort`/`discard`,
where the fsync is. Because the queue is FIFO, a commit job runs after every write queued before it.
benchmarks/prototypes/spool_write.py measured this against aiofiles (one executor round trip per chunk):
see the figures in that file's docstring.

Durability (relay/spool/base.py, Rules 2 and 3): the durable offset is the data file's size after an
fsync. A writer opens at the offset the caller asserts and drops anything past it; bytes handed over
before an `abort` are written and kept; `discard` truncates back to where the writer started. A
`kill -9` in the middle of an append leaves a data file whose bytes are a prefix of what was handed
over (the kernel keeps what `write()` returned for); recovery reads its size (relay.core.resumable.recover).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import queue
import re
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from relay.spool.base import SpoolDataLost, SpoolError

__all__ = ["MAX_QUEUED", "READ_CHUNK", "DiskSpool", "DiskWriter"]

MAX_QUEUED = 4 * 1024 * 1024  # bytes handed over and not yet written, all uploads of the spool together
# Under the 1 MiB mmap threshold relay/tuning.py pins: a 1 MiB read buffer was mmapped and unmapped each time,
# 259,000 page faults per GiB forwarded from the spool (benchmarks/RESULTS.md, run 8); 1 MiB - 64 KiB: a few.
READ_CHUNK = 1024 * 1024 - 64 * 1024
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the relay's upload ids (relay/headers.py); never a path
T = TypeVar("T")


class _Worker:
    """The spool's writer thread: a FIFO of jobs, and backpressure the event loop can await."""

    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.queued = 0
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.thread = threading.Thread(target=self.run, name="relay-spool", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                job()  # jobs catch their own errors
            except BaseException:  # never let one job end the thread: every later call would hang
                continue

    def submit_write(self, job: Callable[[], None], size: int) -> None:
        with self.lock:
            self.queued += size
        self.jobs.put(job)

    def written(self, size: int) -> None:
        """Worker thread: `size` queued bytes are done; wake the loop's waiters once under half the cap."""
        with self.lock:
            self.queued -= size
            if self.queued > self.max_queued // 2 or not self.waiters:
                return
            waiters, self.waiters = self.waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # that loop is closed: nobody waits any more
                pass

    async def room(self) -> None:
        """Return at once while the queue is under MAX_QUEUED; otherwise wait, without blocking the loop."""
        with self.lock:
            if self.queued <= self.max_queued:
                return
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiters.append((asyncio.get_running_loop(), future))
        await future

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the worker, after every job queued before it, and await its result."""
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            # `fn` runs even when the awaiting task was cancelled meanwhile (it may close a descriptor or fsync
            # what an append handed over); its result then has nobody to go to.
            try:
                value = fn()
            except BaseException as exc:  # handed to the awaiting task
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    result.set_exception(exc)
                return
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                result.set_result(value)

        self.jobs.put(job)
        return await asyncio.wrap_future(result)

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _immutable(chunk: Any) -> bool:
    return type(chunk) is bytes or (type(chunk) is memoryview and type(chunk.obj) is bytes)


class DiskWriter:
    """The single writer of one upload's data file (relay/spool/base.py SpoolWriter)."""

    def __init__(self, worker: _Worker, fd: int, start: int) -> None:
        self._worker = worker
        self._fd = fd
        self._start = start
        self._handed = 0
        self._error: OSError | None = None  # set on the worker thread; later writes are skipped
        self._closed = False

    @property
    def start(self) -> int:
        return self._start

    @property
    def handed(self) -> int:
        return self._handed

    async def write(self, chunk: bytes) -> None:
        if self._closed:
            raise SpoolError("this spool writer is closed")
        if self._error is not None:
            raise SpoolError(f"spool write failed: {self._error}") from self._error
        if not chunk:
            return
        if not _immutable(chunk):
            chunk = bytes(chunk)  # the worker reads it later: a buffer that may change is copied first
        size = len(chunk)
        self._handed += size
        self._worker.submit_write(lambda: self._write_now(chunk, size), size)
        await self._worker.room()

    def _write_now(self, chunk: bytes, size: int) -> None:
        """Worker thread."""
        try:
            if self._error is None:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._error = exc
        finally:
            self._worker.written(size)

    async def commit(self, *, sync: bool = True) -> int:
        size = await self._finish(keep=True, sync=sync)
        if self._error is not None:
            raise SpoolError(f"spool write failed: {self._error}") from self._error
        return size

    async def abort(self) -> int:
        return await self._finish(keep=True)

    async def discard(self) -> int:
        return await self._finish(keep=False)

    async def _finish(self, *, keep: bool, sync: bool = True) -> int:
        if self._closed:
            raise SpoolError("this spool writer is closed")
        self._closed = True
        fd, start = self._fd, self._start

        def finish() -> int:
            try:
                if not keep:
                    os.ftruncate(fd, start)
                if sync:
                    os.fsync(fd)
                return os.fstat(fd).st_size
            finally:
                os.close(fd)

        return await self._worker.call(finish)


class DiskSpool:
    """The `Spool` on a local directory (relay/spool/base.py)."""

    def __init__(self, root: str | os.PathLike[str], *, max_queued: int = MAX_QUEUED) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(".*.json.tmp"):  # a crash during save_info; the old document stands
            leftover.unlink(missing_ok=True)
        self._temporaries = itertools.count(os.getpid() * 1_000_000)
        self._worker = _Worker(max_queued)

    def _path(self, upload_id: str, suffix: str) -> Path:
        if not _ID.fullmatch(upload_id):
            raise SpoolError(f"not an upload id: {upload_id!r}")
        return self.root / f"{upload_id}{suffix}"

    async def create(self, upload_id: str, info: bytes) -> None:
        data = self._path(upload_id, ".data")

        def create() -> None:
            os.close(os.open(data, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # FileExistsError if taken
            try:
                self._write_info(upload_id, info)
            except BaseException:
                data.unlink(missing_ok=True)  # no half-created upload keeps the id taken
                raise

        await asyncio.to_thread(create)

    async def writer(self, upload_id: str, offset: int) -> DiskWriter:
        path = self._path(upload_id, ".data")

        def open_at() -> int:
            fd = os.open(path, os.O_WRONLY)
            try:
                size = os.fstat(fd).st_size
                if size < offset:
                    raise SpoolDataLost(f"{upload_id}: {size} bytes stored, {offset} expected")
                if size > offset:
                    os.ftruncate(fd, offset)  # Rule 2: the append starts where the caller believes it ends
                os.lseek(fd, offset, os.SEEK_SET)
                return fd
            except BaseException:
                os.close(fd)
                raise

        try:
            fd = await self._worker.call(open_at)
        except FileNotFoundError as exc:
            raise SpoolError(f"unknown upload {upload_id!r}") from exc
        return DiskWriter(self._worker, fd, offset)

    async def offset(self, upload_id: str) -> int:
        path = self._path(upload_id, ".data")
        try:
            return (await asyncio.to_thread(os.stat, path)).st_size
        except FileNotFoundError as exc:
            raise SpoolError(f"unknown upload {upload_id!r}") from exc

    async def truncate(self, upload_id: str, size: int) -> None:
        path = self._path(upload_id, ".data")

        def truncate() -> None:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)

        await self._worker.call(truncate)

    async def read(self, upload_id: str, start: int = 0) -> AsyncIterator[bytes]:
        path = self._path(upload_id, ".data")
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise SpoolError(f"unknown upload {upload_id!r}") from exc
        try:
            position = start
            while chunk := await asyncio.to_thread(os.pread, fd, READ_CHUNK, position):
                position += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    def _write_info(self, upload_id: str, info: bytes) -> None:
        """Atomic and durable: a crash leaves the old document or the new one (Rule 4)."""
        final = self._path(upload_id, ".json")
        # Unique per call: two saves of one upload in flight must not write into one temporary file. Which
        # of them lands last is the caller's business (it records an upload's moves one at a time).
        temporary = self.root / f".{upload_id}.{next(self._temporaries)}.json.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(info)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, final)
        self._fsync_root()

    def _fsync_root(self) -> None:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # makes the rename (or unlink) itself durable
        finally:
            os.close(fd)

    async def save_info(self, upload_id: str, info: bytes) -> None:
        await asyncio.to_thread(self._write_info, upload_id, info)

    async def load_info(self, upload_id: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self._path(upload_id, ".json").read_bytes)
        except FileNotFoundError:
            return None

    async def delete(self, upload_id: str) -> None:
        await asyncio.to_thread(self._unlink, upload_id, (".data", ".json"))

    async def delete_data(self, upload_id: str) -> None:
        await asyncio.to_thread(self._unlink, upload_id, (".data",))

    async def sync(self, upload_id: str) -> None:
        path = self._path(upload_id, ".data")

        def fsync() -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        await asyncio.to_thread(fsync)

    def _unlink(self, upload_id: str, suffixes: tuple[str, ...]) -> None:
        for suffix in suffixes:
            self._path(upload_id, suffix).unlink(missing_ok=True)
        self._fsync_root()

    async def list(self) -> list[str]:
        def scan() -> list[str]:
            names = (entry.name for entry in os.scandir(self.root))
            return sorted(name[:-5] for name in names if name.endswith(".json") and _ID.fullmatch(name[:-5]))

        return await asyncio.to_thread(scan)

    async def free_bytes(self) -> int | None:
        stat = await asyncio.to_thread(os.statvfs, self.root)
        return stat.f_bavail * stat.f_frsize

    async def close(self) -> None:
        await asyncio.to_thread(self._worker.stop)
