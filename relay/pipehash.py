"""sha256 of a spliced body: the kernel duplicates the pipe (tee(2)), a thread hashes the copy.

Theory of operation
-------------------
A body the relay must hash can still go socket to socket (relay/zerocopy.py): the pump splices the client's bytes
into pipe A, `tee`s pipe A into pipe B (the pages are shared, not copied), splices pipe A to the upstream, and a
thread reads pipe B with blocking reads into one reused buffer and updates the hash. Both the read and the hash
release the GIL, so the loop thread never touches a body byte and never waits for the hash but at the very end.

Rules:
1. `tee` duplicates from the head of pipe A without consuming it, so the pump tees only when every byte it has
   tee'd is gone upstream (relay/zerocopy.py counts them): no byte is hashed twice or skipped, and the upstream
   is never sent a byte the hash has not been given.
2. Flow control is pipe B's size: when the hash thread lags, B fills, `tee` fails with EAGAIN and the pump waits
   for B to be writable. The upstream waits with it.
3. The thread owns B's read end and closes it when it leaves. It leaves at end of file, which comes when the pump
   closes B's write end: at the end of the body, or on any error (it then hashes at most a pipe-full for nothing).
   A thread that dies closes B's read end, so the pump's next `tee` fails with EPIPE and the pump raises the
   thread's error.
4. The hash object is the thread's alone from `start` until its future is done: the pump awaits that future
   before the body counts as whole, so the digest is read after the last update.
5. At most MAX_THREADS bodies are hashed this way at once: the pump `reserve`s a thread before it takes the
   client's socket and takes the copying path when none is left. Each body gets a thread of its own (about 0.1 ms
   to start, against a body of 1 MiB or more): a pooled job queued behind others would leave its pipe full and its
   body stalled behind other uploads' clients. The threads are daemons: one blocked on a pipe that a dying loop
   never closed cannot hold the process's exit (a ThreadPoolExecutor's workers are joined at exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Callable
from functools import partial
from typing import Protocol

from relay.libc import libc_function

__all__ = ["MAX_THREADS", "RawHash", "in_thread", "in_use", "release", "reserve", "start", "tee", "tee_supported"]

MAX_THREADS = 16
READ_SIZE = 256 * 1024  # one read takes what the pipe holds, up to this; under glibc's pinned mmap threshold


class RawHash(Protocol):
    """A hashlib object: updated from the hash thread only."""

    def update(self, data: bytes | memoryview, /) -> None: ...


def _load_tee() -> Callable[[int, int, int, int], int] | None:
    """libc's tee(2): Python's os module has splice but not tee."""
    function: Callable[[int, int, int, int], int] | None = libc_function(
        "tee", [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint], ctypes.c_ssize_t
    )
    return function


_tee = _load_tee()


def tee_supported() -> bool:
    return _tee is not None


def tee(fd_in: int, fd_out: int, count: int, flags: int) -> int:
    """Duplicate up to `count` bytes from the head of pipe `fd_in` into pipe `fd_out`; like os.splice, errors are
    raised as OSError (BlockingIOError for EAGAIN) and EINTR is retried."""
    assert _tee is not None
    while True:
        moved = _tee(fd_in, fd_out, count, flags)
        if moved >= 0:
            return moved
        code = ctypes.get_errno()
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))


_reserved = 0  # hash threads promised (reserve) and not yet given back (by their job's end, or release)
_lock = threading.Lock()  # the loop thread reserves, hash threads give back
_buffers: list[bytearray] = []  # read buffers of the threads that left, for the next ones (list ops are atomic)


def reserve() -> bool:
    """Promise a hash thread to the next `start`; False when MAX_THREADS bodies are already being hashed."""
    global _reserved
    with _lock:
        if _reserved >= MAX_THREADS:
            return False
        _reserved += 1
        return True


def in_use() -> int:
    """Hash threads reserved or running (a failed body's thread runs on until it has read pipe B to its end)."""
    return _reserved


def release() -> None:
    """Give back a reservation that `start` did not use; a started job gives its own back as it ends."""
    global _reserved
    with _lock:
        _reserved -= 1


def start(read_fd: int, digest: RawHash, first: bytes) -> asyncio.Future[int]:
    """Hash `first`, then everything read from `read_fd` until end of file, on a thread of its own (reserved). The
    future is done once the thread has left (it closes `read_fd`), with the number of bytes hashed."""
    try:
        return in_thread(partial(_hash_pipe, read_fd, digest, first), "relay-pipehash")
    except BaseException:
        os.close(read_fd)  # the reservation stays the caller's to give back
        raise


def in_thread(job: Callable[[], int], name: str) -> asyncio.Future[int]:
    """Run `job` on a daemon thread of its own: never queued behind another body's thread while its pipe fills,
    and never joined at exit (a thread blocked on a pipe must not hold the exit). The future settles on the loop
    with what `job` returns or raises (relay/resumable/spliced.py runs its spool and hash threads with it too)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()

    def settle(value: int | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value or 0)

    def run() -> None:
        try:
            value = job()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, None, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def _hash_pipe(read_fd: int, digest: RawHash, first: bytes) -> int:
    """The hash thread: returns the bytes hashed. Reads block; both the read and the update release the GIL."""
    buffer = _take_buffer()
    view = memoryview(buffer)
    try:
        if first:
            digest.update(first)
        total = len(first)
        while True:
            got = os.readv(read_fd, [buffer])
            if not got:
                return total
            digest.update(view[:got])
            total += got
    finally:
        view.release()
        os.close(read_fd)
        _buffers.append(buffer)
        release()  # here, not in a callback on the loop: the thread is free only now


def _take_buffer() -> bytearray:
    try:
        return _buffers.pop()
    except IndexError:
        return bytearray(READ_SIZE)
