"""The blocking side of the spliced cut-through (relay/resumable/spliced.py): the threads that write pipe S into
the spool's data file and hash the body, each on a daemon thread of its own, so the loop never waits on a disk.

Theory of operation
-------------------
`spool_thread` moves pipe S into the data file until S ends, and returns the bytes it wrote. Two ways (Rule 7):
  - direct (`spool_direct`), where the file system takes O_DIRECT: S is read into relay/spool/direct.py's
    reused buffers, which go to the disk past the page cache. Reading lets S gather first (`Gather`): every read
    wakes the thread and hands the GIL over twice. Since the bytes pass through the relay's memory anyway, a
    hashed body is hashed right there (Rule 8), from the buffer: no pipe B, no second thread reading a copy;
  - otherwise, splice(2) from S into the file (the kernel copies into the page cache; nothing passes through
    Python), and the hash thread reads its own tee'd copy, pipe B (`hash_file_then_pipe`, relay/pipehash.py).
Either hash first takes in the bytes of earlier appends (`resume_hash`): a PrefixHashed already holds them
(relay/resumable/filehash.py), otherwise they are read back from the data file.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import select
import termios
import time
from collections.abc import Callable

from relay import pipehash
from relay.pipehash import RawHash
from relay.resumable.filehash import PrefixHashed
from relay.spool import direct
from relay.zerocopy import PIPE_SIZE

__all__ = ["DIRECT", "hash_file_then_pipe", "resume_hash", "spool_thread"]

DIRECT = True  # Rule 7; tests and prototypes switch it off
LOW_WATER = 512 * 1024  # pipe S bytes worth a read (half the pipe) ...
GATHER_TRIES, GATHER_PAUSE = 4, 0.0005  # ... or what came in 2 ms (a slow client waits 2 ms at most)
READ_SIZE = 1024 * 1024 - 64 * 1024  # under glibc's pinned mmap threshold (relay/spool/disk.py READ_CHUNK)

# What the direct spool thread hashes: the body's hash, the data file, and the spooled bytes before this append.
Hashing = tuple[RawHash, str, int]


def spool_thread(
    read_fd: int,
    file_fd: int,
    first: bytes,
    reserve: Callable[[], None],
    appender: direct.DirectAppender | None,
    hashing: Hashing | None = None,
) -> int:
    """Pipe S (after `first`, the bytes the server had read) into the data file at its position until S ends;
    returns the bytes written (Rule 3). `reserve` first gives the append its disk blocks (relay/spool/disk_writer.py,
    "Reserved blocks"). With `appender`, direct writes (and the hash, `hashing`); without, the splice."""
    try:
        if appender is not None:
            return spool_direct(appender, read_fd, first, reserve, hashing)
        reserve()
        total = 0
        view = memoryview(first)
        while view:
            done = os.write(file_fd, view)
            view = view[done:]
            total += done
        while True:
            moved = os.splice(read_fd, file_fd, PIPE_SIZE, flags=getattr(os, "SPLICE_F_MOVE", 1))
            if not moved:
                return total
            total += moved
    finally:
        os.close(read_fd)


class Gather:
    """Let pipe S gather LOW_WATER bytes (or wait GATHER_TRIES pauses) before the next read. Reading each tee as
    it came (about 4,000 reads per GiB) took time from the loop that moves the bytes (A/B, 1 GiB one append,
    9 interleaved reps: 1.29x -> 1.17x a plain upload's time, median). Made once per spool thread: `wait` runs
    before every read."""

    def __init__(self, read_fd: int) -> None:
        self.read_fd = read_fd
        self.count = array.array("i", [0])
        self.ended = select.poll()
        self.ended.register(read_fd, select.POLLIN)

    def wait(self) -> None:
        for _ in range(GATHER_TRIES):
            fcntl.ioctl(self.read_fd, termios.FIONREAD, self.count, True)
            if self.count[0] >= LOW_WATER:
                return
            if any(event & select.POLLHUP for _, event in self.ended.poll(0)):
                return  # pipe S is closed: nothing more will come, and the last byte waits for this thread (Rule 2)
            time.sleep(GATHER_PAUSE)


def spool_direct(
    appender: direct.DirectAppender,
    read_fd: int,
    first: bytes,
    reserve: Callable[[], None],
    hashing: Hashing | None,
) -> int:
    """Rule 7: pipe S through the appender's buffers, hashed there (Rule 8); what was read is written even when
    a read or the hash fails. The appender is finished (its thread, its descriptor, its buffers) in every case."""
    start = appender.position
    try:
        reserve()
        update = resume_hash(*hashing).update if hashing is not None else None
        appender.write(first)
        if update is not None and first:
            update(first)
        gather = Gather(read_fd)
        while True:
            gather.wait()
            if not appender.fill_from(read_fd, update):
                break
    finally:
        end = appender.finish()
    return end - start


def resume_hash(digest: RawHash, path: str, spooled: int) -> RawHash:
    """The hash to feed this append's bytes into: the spooled bytes are in it already (a PrefixHashed, the
    appends hashed them), or are read back from the data file first."""
    if isinstance(digest, PrefixHashed):
        return digest.rest_hash()  # type: ignore[no-any-return]
    if not spooled:
        return digest
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        done = 0
        while done < spooled:
            chunk = os.pread(fd, min(spooled - done, READ_SIZE), done)
            if not chunk:
                raise OSError(errno.EIO, "the spool's data file is shorter than its upload")
            digest.update(chunk)
            done += len(chunk)
    finally:
        os.close(fd)
    return digest


def hash_file_then_pipe(path: str, spooled: int, read_fd: int, digest: RawHash, first: bytes) -> int:
    """A hash thread (relay/pipehash.py's pool, its reservation): the spooled bytes, then pipe B; the count."""
    try:
        digest = resume_hash(digest, path, spooled)
    except BaseException:
        os.close(read_fd)
        pipehash.release()
        raise
    return spooled + pipehash._hash_pipe(read_fd, digest, first)
