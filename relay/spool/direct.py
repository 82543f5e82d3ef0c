"""Direct writes (O_DIRECT) of appended bytes into a spool's data file, past the page cache.

Theory of operation
-------------------
Why. A cut-through append (relay/resumable/spliced.py) writes the whole file into the spool while it streams it
upstream, and the file is deleted as soon as the upstream has it: the page cache buys it nothing, and filling it
costs a copy into pages the kernel must first find. On a virtual machine that hands freed memory back to its
host, those pages are new to the guest each time, and that copy was 42 % of the relay's CPU in a 1 GiB
one-append upload (`perf record`, benchmarks/prototypes/resumable_profile.py; the relay spent 1.2 to 2.3 CPU-s
against 0.5 for the plain upload, varying with the host). Here the bytes are read into a few buffers of the
relay's own, reused, and go from them to the disk by DMA: the one copy left is out of the pipe (0.16 CPU-s/GiB).

How. `DirectAppender` appends at the data file's end through two descriptors of it: the caller's (ordinary,
the page cache) and one opened with O_DIRECT. O_DIRECT needs the file offset, the length and the buffer's
address aligned (ALIGN, the page size: a multiple of every logical block size Linux uses). So:
  1. the head: the bytes up to the first aligned offset go through the ordinary descriptor. Only this page may
     also be in the page cache (the previous append's tail, or a reader of it); the direct writes never touch
     it, so they never race the page cache (no stale page can hide what they wrote);
  2. the body: whole buffers of BLOCK bytes, filled by the caller (`write`, `fill_from` a pipe) and written by
     the appender's I/O thread, one at a time and in file order, while the caller fills the next one;
  3. the tail: at `finish`, the last partial buffer: its aligned part direct, the rest (under ALIGN bytes)
     through the ordinary descriptor. The file's size is then exactly what was appended (the durable offset,
     relay/spool/base.py), and the ordinary descriptor's position is left at the end.

A disk slower than the client. The caller never waits on the disk for long: when another block is queued behind
the one the I/O thread takes, or the caller is waiting for a free buffer, that block goes through the page cache
(the appender's ordinary descriptor, at its place, still one write at a time in order), so the upload runs at the
client's pace and the kernel writes those pages back later; a block goes direct only when the disk keeps up.
Measured (benchmarks/prototypes/resumable_profile.py, 1 GiB, one append, --digest none, 5 reps, a disk writing
650 MB/s under a loopback path of 2 GB/s): 2.01-2.52 s -> 0.88-1.02 s, the plain upload 0.5 s. The earlier rule
("every other buffer queued behind this one") could not hold with DEPTH buffers, one of them in the caller's
hands, so nearly every block waited for the disk.

Durability. One write at a time, in order: the file's size only ever grows over bytes already written, so a
`kill -9` leaves a prefix of what was appended (relay/spool/disk.py "Durability"), as with the page cache. The
caller's fsync then has only the tail and the file's size to write. A failed write stops the appender: nothing
after it is written (no hole), and `finish` raises it.

Buffers. mmap'd (page-aligned), DEPTH per appender, from a pool the process keeps (at most POOL): a new mapping
costs a page fault on every first touch, the very cost this module avoids. At most MAX_ACTIVE appenders are open
at once (DEPTH MiB of memory each, not page cache): the cut-throughs past that splice into the page cache as
before, so 32 resumable uploads at once cost 24 MiB of buffers, not 96.

Where O_DIRECT is refused (older tmpfs says EINVAL at open), `open_appender` returns None and the caller writes
through the page cache as before; where a direct write is refused (a device wanting a larger alignment), that
block and all later ones go through the page cache, in order (`_write_block`).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import queue
import threading
from collections.abc import Callable

__all__ = ["ALIGN", "BLOCK", "DirectAppender", "open_appender"]

ALIGN = max(4096, mmap.PAGESIZE)
BLOCK = 1024 * 1024  # 4 MiB measured the same (spool_direct.py; in the relay, resumable_profile.py: 1.22x vs 1.21x)
DEPTH = 3  # one being written, one being filled, one spare: the caller rarely waits for the disk
POOL = 8  # buffers kept for the next appender (about three appends in flight)
MAX_ACTIVE = 8  # appenders at once (DEPTH MiB each): past that, a cut-through splices into the page cache

_pool: list[mmap.mmap] = []
_pool_lock = threading.Lock()
_STOP = None
_refused = False  # a direct write was refused with EINVAL (an alignment this module does not know): no more
_active = 0  # appenders open now (MAX_ACTIVE)


def _take_buffer() -> mmap.mmap:
    with _pool_lock:
        if _pool:
            return _pool.pop()
    return mmap.mmap(-1, BLOCK)


def _give_back(buffer: mmap.mmap) -> None:
    with _pool_lock:
        if len(_pool) < POOL:
            _pool.append(buffer)
            return
    try:
        buffer.close()
    except BufferError:
        pass  # a view of it lives on (an error's traceback): it is unmapped when the last one goes


def _write_all_at(fd: int, view: memoryview, offset: int) -> None:
    """All of `view` at `offset` through `fd`, however short each write; a write of nothing is an error."""
    done = 0
    while done < len(view):
        count = os.pwrite(fd, view[done:], offset + done)
        if count <= 0:
            raise OSError(errno.EIO, "the spool's data file took no bytes")
        done += count


def open_appender(path: str | os.PathLike[str], fd: int) -> DirectAppender | None:
    """An appender at the end of the data file `path`, whose ordinary descriptor is `fd` (positioned at the
    end); None where the file system refuses O_DIRECT."""
    global _active
    flag = getattr(os, "O_DIRECT", 0)
    if not flag or _refused:
        return None
    with _pool_lock:
        if _active >= MAX_ACTIVE:
            return None
        _active += 1
    try:
        direct_fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | flag)
    except OSError:
        _leave()
        return None
    try:
        return DirectAppender(fd, direct_fd, os.lseek(fd, 0, os.SEEK_CUR))
    except BaseException:
        os.close(direct_fd)
        _leave()
        raise


def _leave() -> None:
    global _active
    with _pool_lock:
        _active -= 1


class DirectAppender:
    """Appends at `position` (the file's end) of the file open as `fd` and `direct_fd`; used by one thread."""

    def __init__(self, fd: int, direct_fd: int, position: int) -> None:
        self.fd = fd
        self.direct_fd = direct_fd
        self.position = position  # where the next appended byte lands
        self.head = -position % ALIGN  # bytes still to write through `fd` before the first aligned offset
        self.error: OSError | None = None  # the I/O thread's, raised by the caller's next call
        self.fallback = False  # the file system refused a direct write: the page cache from then on
        self.cached = 0  # bytes of whole blocks written through the page cache (a slow disk, or `fallback`)
        self.free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self.jobs: queue.SimpleQueue[tuple[mmap.mmap, int, int] | None] = queue.SimpleQueue()
        for _ in range(DEPTH):
            self.free.put(_take_buffer())
        self.buffer: mmap.mmap | None = None  # being filled
        self.filled = 0
        self.closed = False
        self.waiting = False  # the caller waits for a free buffer (set by it, read by the I/O thread)
        self.thread = threading.Thread(target=self._run, name="relay-spool-direct", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is _STOP:
                return
            buffer, size, offset = job
            try:
                if self.error is None:
                    # Another block is queued behind this one, or the caller waits for a buffer: the disk is behind
                    # the client. This block goes to the page cache instead (in order all the same).
                    with memoryview(buffer)[:size] as view:
                        self._write_block(view, offset, direct=not self._disk_behind())
            except BaseException as exc:  # the thread must go on: a caller may wait for a free buffer
                # Kept without its traceback: the frames it holds hold views of the buffers (closing them fails).
                error = exc if isinstance(exc, OSError) else OSError(errno.EIO, f"spool write failed: {exc!r}")
                self.error = error.with_traceback(None)
            finally:
                self.free.put(buffer)

    def _disk_behind(self) -> bool:
        """I/O thread: another block is queued behind the one in hand, or the caller waits for a free buffer."""
        return self.waiting or self.jobs.qsize() > 0

    def _write_block(self, view: memoryview, offset: int, *, direct: bool = True) -> None:
        """I/O thread: the block at `offset`, with O_DIRECT when `direct`. EINVAL says this file system wants
        another alignment than ALIGN: the block goes through the ordinary descriptor (same bytes, same place,
        still in order), and so does everything after it, here and in every later appender of this process
        (`open_appender` says None)."""
        global _refused
        if direct and not self.fallback:
            try:
                done = os.pwrite(self.direct_fd, view, offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.fallback = _refused = True
            else:
                if done < len(view):  # a short write (POSIX allows it): the rest at its place, never a hole
                    _write_all_at(self.fd, view[done:], offset + done)
                return
        self.cached += len(view)
        _write_all_at(self.fd, view, offset)

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self.closed:
            raise ValueError("this appender is finished")

    def _current(self) -> memoryview:
        if self.buffer is None:
            self.waiting = self.free.empty()  # the disk is behind: the I/O thread's next block goes to the page cache
            self.buffer = self.free.get()
            self.waiting = False
            self.filled = 0
            self._check()
        return memoryview(self.buffer)

    def _submit(self) -> None:
        assert self.buffer is not None
        self.jobs.put((self.buffer, self.filled, self.position))
        self.position += self.filled
        self.buffer, self.filled = None, 0

    def _write_head(self, data: memoryview) -> memoryview:
        count = min(self.head, len(data))
        _write_all_at(self.fd, data[:count], self.position)
        self.position += count
        self.head -= count
        return data[count:]

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data` (copied: the caller may reuse it)."""
        self._check()
        view = memoryview(data).cast("B")
        if self.head:
            view = self._write_head(view)
        while view:
            target = self._current()
            count = min(BLOCK - self.filled, len(view))
            target[self.filled : self.filled + count] = view[:count]
            self.filled += count
            view = view[count:]
            if self.filled == BLOCK:
                self._submit()

    def fill_from(self, read_fd: int, seen: Callable[[memoryview], object] | None = None) -> int:
        """Append what one read of the pipe (or socket) `read_fd` gives; 0 at its end. Blocks until it gives.
        `seen` gets those bytes (a hash), in the buffer itself: no copy, and before the buffer can be reused."""
        self._check()
        if self.head:
            data = os.read(read_fd, self.head)
            self.write(data)
            if seen is not None and data:
                seen(memoryview(data))
            return len(data)
        target = self._current()
        start = self.filled
        count = os.readv(read_fd, [target[start:]])
        self.filled += count
        if seen is not None and count:
            with target[start : start + count] as fresh:
                seen(fresh)
        if self.filled == BLOCK:
            self._submit()
        return count

    def finish(self) -> int:
        """Write what is left, wait for every write, release the buffers; returns the file's new end. Raises the
        first write error (nothing after it was written). The ordinary descriptor is left at the end."""
        if self.closed:
            return self.position
        try:
            if self.buffer is not None and self.error is None:
                buffer, filled = self.buffer, self.filled
                whole = filled - filled % ALIGN
                self.filled = whole
                tail = bytes(memoryview(buffer)[whole:filled])
                if whole:
                    self._submit()
                else:
                    self.free.put(buffer)
                    self.buffer = None
                self._drain()
                if self.error is None and tail:
                    self.head = len(tail)  # through `fd`, like a head
                    self._write_head(memoryview(tail))
        finally:
            self.close()
        if self.error is not None:
            raise self.error
        os.lseek(self.fd, self.position, os.SEEK_SET)
        return self.position

    def _drain(self) -> None:
        self.jobs.put(_STOP)
        self.thread.join()

    def close(self) -> None:
        """Stop the I/O thread (after the writes queued), close the O_DIRECT descriptor, pool the buffers."""
        if self.closed:
            return
        self.closed = True
        if self.thread.is_alive():
            self._drain()
        if self.buffer is not None:
            self.free.put(self.buffer)
            self.buffer = None
        with contextlib.suppress(OSError):
            os.close(self.direct_fd)
        _leave()
        while True:
            try:
                _give_back(self.free.get_nowait())
            except queue.Empty:
                return
