"""`DiskWriter`: the single writer of one upload's data file on the disk spool, and the spool's writer thread that
does its writes, so the event loop never waits on the disk (relay/spool/disk.py opens the writers).

Why a writer thread. A `write()` to a file can block for milliseconds when the page cache is full and
the kernel throttles dirty pages, and `fsync` blocks until the disk has the data: both on the event
loop would stall every other upload. The design is relay/hashing.py's: one worker thread per spool,
one FIFO queue; the loop hands each chunk over (`SpoolWriter.write`) and does not wait for it, except
when more than MAX_QUEUED bytes are queued, and then it awaits (a future the worker resolves once the
queue is under half of that), never blocks. It awaits the worker only at `commit`/`abort`/`discard`,
where the fsync is. Because the queue is FIFO, a commit job runs after every write queued before it.
benchmarks/prototypes/spool_write.py measured this against aiofiles (one executor round trip per chunk):
see the figures in that file's docstring.

Fewer hand-overs. Every job wakes the thread and costs it two GIL hand-overs with the busy loop (a 1 GiB
cut-through took 16,000 context switches more than a plain upload). So while the worker is busy, a writer's
chunks gather on the loop into one job (BATCH), and the worker joins queued jobs of one writer into one
`writev` (MAX_WRITE); an idle worker gets each chunk at once, so a slow client's bytes never wait in memory.
Writes stay under 1 MiB: see BATCH.

Early writeback. An append that will be fsynced asks the kernel to start writing its bytes to the disk every
WRITEBACK bytes (sync_file_range, which does not wait), so the commit's fsync waits for the tail only: a
16 MiB append's wait for its 204 went from 13.6-17.8 ms to 6.3-8.8 ms. A cut-through append is not
(`DiskWriter.writeback`, set by relay/resumable/live.py Rule 5): it is fsynced only if its upstream fails,
and its file is deleted once delivered, mostly before the kernel would ever write it.

Spliced appends. A completing append on the zero-copy path (relay/resumable/spliced.py) is written by a thread
of its own that splices a pipe into the data file (`DiskWriter.splice_fd`, then `DiskWriter.spliced` with what
the file holds); the writer's commit, abort and discard then go on as for any append. That thread writes with
O_DIRECT (relay/spool/direct.py), past the page cache: a cut-through's bytes are read back only if its
upstream fails. The other appends still write through the page cache, since their bytes are read back soon (the
running sha256, the completing forward): measured with O_DIRECT too, 16 MiB appends answered sooner (204 wait
3.0-4.6 ms against 5.2-7.0) but the completing forward, reading the GiB back from the disk, took 3.0-3.3 s
against 0.56-0.75 s (benchmarks/prototypes/resumable_profile.py --appends, 4 interleaved reps).

Reserved blocks. An append that says how many bytes it brings (Content-Length) gets their disk blocks in one
fallocate(FALLOC_FL_KEEP_SIZE) before its first write (`reserve`): the file's size, which is the durable offset,
does not change, and each page written then finds its block already there instead of asking ext4's delayed
allocation for it (ext4_da_write_begin was 19 % of the relay's CPU in a one-append upload:
benchmarks/prototypes/resumable_profile.py). Blocks of a broken append past the end of the file stay with the
file until it is truncated or deleted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from relay.libc import libc_function
from relay.spool.base import SpoolError

__all__ = ["MAX_QUEUED", "DiskWriter"]

# Bytes handed over and not yet written, all uploads of the spool together. A cut-through waits for the spool
# past this (its bytes must be in the spool before the upload is recorded complete), so it is large enough to
# ride out the writer's stalls (page-cache allocation, dirty-page throttling): at 4 MiB a 1 GiB cut-through
# waited 14 to 30 times, 0.06 to 0.2 s in all; at 16 MiB 0 to 4 times, under 0.03 s (benchmarks/RESULTS.md run 9r).
MAX_QUEUED = 16 * 1024 * 1024
# While the worker is busy, a writer's chunks gather into one job of this size, and the worker joins queued jobs
# of one writer into one writev of at most MAX_WRITE: fewer wake-ups and GIL hand-overs per GiB. Under 1 MiB on
# purpose: on this kernel (6.18, ext4) writes of 1 MiB and more into the page cache now and then cost 4 to 8 times
# the system time of smaller ones (512 MiB in 1 MiB writes: 0.13 to 1.07 s; in 256 to 768 KiB writes: 0.11 to
# 0.16 s, benchmarks/RESULTS.md run 9r), the large page-cache folios they ask for.
BATCH = 512 * 1024
MAX_WRITE = 768 * 1024
IOV_MAX = 1024  # Linux's limit on the buffers of one writev
WRITEBACK = 4 * 1024 * 1024  # the kernel is asked to start writing every this many bytes (sync_file_range)
T = TypeVar("T")


class _Batch:
    """Chunks of one writer waiting to be written with one `writev` (the worker joins consecutive batches)."""

    __slots__ = ("chunks", "size", "writer")

    def __init__(self, writer: DiskWriter, chunks: list[bytes], size: int) -> None:
        self.writer = writer
        self.chunks = chunks
        self.size = size


_STOP = object()
Job = Callable[[], None] | _Batch | object


class _Worker:
    """The spool's writer thread: a FIFO of jobs, and backpressure the event loop can await."""

    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        self.jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.queued = 0  # read without the lock on the loop: an estimate is all `DiskWriter.write` needs
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.thread = threading.Thread(target=self.run, name="relay-spool", daemon=True)
        self.thread.start()

    def run(self) -> None:
        carried: Job | None = None
        while True:
            job = carried if carried is not None else self.jobs.get()
            carried = None
            if job is _STOP:
                return
            try:
                if isinstance(job, _Batch):
                    carried = self._write(job)
                elif callable(job):
                    job()  # jobs catch their own errors
            except BaseException:  # never let one job end the thread: every later call would hang
                continue

    def _write(self, batch: _Batch) -> Job | None:
        """Write `batch` and whatever batches of the same writer are queued right behind it, with one writev;
        return the next job when it is something else (it runs next: the FIFO order holds)."""
        chunks, size = batch.chunks, batch.size
        carried: Job | None = None
        while len(chunks) < IOV_MAX:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if not (isinstance(job, _Batch) and job.writer is batch.writer and size + job.size <= MAX_WRITE):
                carried = job
                break
            chunks += job.chunks
            size += job.size
        batch.writer.write_now(chunks, size)
        return carried

    def submit_write(self, batch: _Batch) -> None:
        with self.lock:
            self.queued += batch.size
        self.jobs.put(batch)

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
        if self.queued <= self.max_queued:  # the common case, without the lock
            return
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
        self.jobs.put(_STOP)
        self.thread.join()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _immutable(chunk: Any) -> bool:
    return type(chunk) is bytes or (type(chunk) is memoryview and type(chunk.obj) is bytes)


def _write_all(fd: int, chunks: list[bytes]) -> None:
    """`writev` until every byte of `chunks` is written (a write may be short)."""
    views: list[Any] = chunks
    while views:
        done = os.writev(fd, views)
        while views and done >= len(views[0]):
            done -= len(views[0])
            views = views[1:]
        if done:
            views = [memoryview(views[0])[done:], *views[1:]]


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """Linux's sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE): start writing those dirty pages to
    the disk and return at once. None where there is no such call."""
    function = libc_function("sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
    if function is None:
        return None
    sync_file_range_write = 2

    def start_writeback(fd: int, offset: int, count: int) -> None:
        function(fd, offset, count, sync_file_range_write)  # a failure only leaves the work to the fsync

    return start_writeback


_start_writeback = _load_sync_file_range()


def _load_fallocate() -> Callable[[int, int, int], None] | None:
    """Linux's fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, count): give the file its disk blocks now, its size
    unchanged. None where there is no such call."""
    function = libc_function("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])
    if function is None:
        return None
    keep_size = 1

    def reserve(fd: int, offset: int, count: int) -> None:
        function(fd, keep_size, offset, count)  # a failure (no space, no support) leaves it to the writes

    return reserve


_fallocate = _load_fallocate()


class DiskWriter:
    """The single writer of one upload's data file (relay/spool/base.py SpoolWriter)."""

    def __init__(self, worker: _Worker, fd: int, start: int, path: Path | None = None) -> None:
        self.path = path  # the data file (a spliced cut-through reads the spooled bytes from it, sendfile)
        self._worker = worker
        self._fd = fd
        self._start = start
        self._handed = 0
        self._batch: list[bytes] = []  # handed over, not yet queued for the worker (see `write`)
        self._batched = 0
        self._error: OSError | None = None  # set on the worker thread; later writes are skipped
        self._closed = False
        self._position = start  # worker thread: where the next write lands
        self._flushed = start  # worker thread: writeback was started up to here
        # Start writing to the disk while the bytes arrive, so that the commit's fsync has little left to wait
        # for. False for an append that may never be fsynced (relay/resumable/live.py Rule 5).
        self.writeback = True
        self._reserve = 0  # bytes to give disk blocks to before the first write (`reserve`)

    def reserve(self, count: int) -> None:
        """The append will bring `count` bytes: its blocks are allocated in one call before its first write
        (`reserve_now`, off the loop), the file's size unchanged (see "Reserved blocks" above)."""
        self._reserve = count

    def reserve_now(self) -> None:
        """Worker or splice thread: allocate what `reserve` asked for, once."""
        count, self._reserve = self._reserve, 0
        if count > 0 and _fallocate is not None:
            _fallocate(self._fd, self._position, count)

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
        self._batch.append(chunk)
        self._batched += size
        # While the worker is busy, chunks gather here into one job (one wake-up, one writev); an idle worker
        # gets each chunk at once, so a slow client's bytes never wait on the loop.
        if self._batched >= BATCH or not self._worker.queued:
            self._submit()
        await self._worker.room()

    def _submit(self) -> None:
        if self._batch:
            self._worker.submit_write(_Batch(self, self._batch, self._batched))
            self._batch, self._batched = [], 0

    def write_now(self, chunks: list[bytes], size: int) -> None:
        """Worker thread."""
        try:
            if self._error is None:
                if self._reserve:
                    self.reserve_now()
                _write_all(self._fd, chunks)
                self._position += size
                if not self.writeback:
                    self._flushed = self._position
                elif _start_writeback is not None and self._position - self._flushed >= WRITEBACK:
                    _start_writeback(self._fd, self._flushed, self._position - self._flushed)
                    self._flushed = self._position
        except OSError as exc:
            self._error = exc
        finally:
            self._worker.written(size)

    def splice_fd(self) -> int:
        """The data file's descriptor, positioned where this writer appends, for a thread that splices a pipe
        into it (relay/resumable/spliced.py); only before any chunk was handed over, so the worker's writes and
        the thread's never interleave. `spliced` is called once that thread has ended."""
        if self._closed or self._handed or self._error is not None:
            raise SpoolError("this spool writer cannot take a splice now")
        return self._fd

    def spliced(self, error: OSError | None) -> int:
        """The splice thread has ended (with `error`, if it failed): what the file holds past `start` counts as
        handed over and written; later writes, commit and abort go on from there. Returns that count."""
        written = os.fstat(self._fd).st_size - self._start
        self._position = self._flushed = self._start + written
        self._handed = written
        if error is not None and self._error is None:
            self._error = error
        return written

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
        self._submit()  # before the finish job: the queue is FIFO
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
