"""A running sha256 per resumable upload, hashed from the spool's data file in the background after each append.

Theory of operation
-------------------
With the default `--digest sha256` the relay reports the file's sha256 once the upstream has it. For an upload
sent in many appends, the completing append used to hash every spooled byte again while it forwarded them: about
0.9 s per GiB on the request the client waits for (benchmarks/RESULTS.md, run 11: the 16 MiB appends row). Here,
once an append has ended, a thread reads its bytes back from the data file (the page cache: they were just
written) and hashes them, while the client sends the next append. The completing forward starts from that hash
and hashes only what is new. Hashing inside the spool's writer thread was measured first and lost: each append's
204 then waited for its hash (benchmarks/RESULTS.md, run 12).

The hash lives in this process's memory only (hashlib objects cannot be saved), so it is a shortcut, never a
source of truth: whenever it might not cover exactly the spool's first bytes, the forward hashes the spool itself.

Rules:
1. Once an append's end is saved at `offset` (`appended`), the data file's first `offset` bytes are final: a later
   writer only adds bytes past them, and a refused or broken append's bytes past the saved offset are cut before
   anything else is written there (relay/spool/base.py, Rules 2-3). So a job hashes [hashed so far, offset) from
   the file. The jobs run on one thread, in order: an upload's ranges follow each other, and no answer waits.
2. An upload this relay holds no hash for (after a restart, or after appends on another relay) gets one from byte
   0 at its next append's end: the background catches up on the whole prefix.
3. `take(id, spooled)` gives the completing forward the hash of exactly the first `spooled` bytes, once its jobs
   are done, wrapped as `PrefixHashed`: fed the whole file again (the copying forward reads the spool), it drops
   those bytes and hashes only the rest; a spliced forward asks `rest_hash()` and never reads the prefix at all.
   A hash that ends elsewhere, or whose read failed, gives None: the forward hashes the spool as before.
4. Bounded: at most MAX_UPLOADS hashes are kept (the oldest go first; a dropped one costs a re-hash) and a job
   reads READ_SIZE bytes at a time.
5. A hash belongs to one upload, not to its id: the table is keyed by the id and the upload's creation time, so
   an upload that reuses the id of one that expired, was terminated or was delivered (X-Upload-ID) never
   continues the old file's hash. The entries of uploads that ended just age out (Rule 4).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.hashing import continue_hash, direct_hash

if TYPE_CHECKING:
    from relay.core.resumable import ResumableUpload

__all__ = ["MAX_UPLOADS", "PrefixHashed", "RunningHashes"]

MAX_UPLOADS = 4096
READ_SIZE = 1024 * 1024 - 64 * 1024  # under glibc's pinned mmap threshold (relay/spool/disk.py READ_CHUNK)
log = logging.getLogger("relay.resumable")


class _Running:
    """One upload's hash: what it will cover once its queued jobs are done, and the last of them."""

    __slots__ = ("broken", "digest", "done", "target")

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.target = 0  # bytes covered once `done` has resolved
        self.done: concurrent.futures.Future[None] | None = None
        self.broken = False  # a read failed: this hash is no use


class RunningHashes:
    """(upload id, creation time) -> its running sha256, for uploads whose completing forward may come here."""

    def __init__(self, enabled: bool, path_of: Callable[[str], Path] | None) -> None:
        self.enabled = enabled and path_of is not None  # `--digest none`, or a spool without local files
        self._path_of = path_of
        self._table: OrderedDict[tuple[str, float], _Running] = OrderedDict()

    def appended(self, upload: ResumableUpload) -> None:
        """Rules 1-2: the upload's first `offset` bytes are final; hash what the hash does not cover yet."""
        if not self.enabled or self._path_of is None:
            return
        upload_id, offset = upload.id, upload.offset
        key = (upload_id, upload.created_at)  # Rule 5
        running = self._table.pop(key, None)
        if running is None or running.broken or running.target > offset:  # > : never, unless the spool shrank
            running = _Running()
        self._table[key] = running
        while len(self._table) > MAX_UPLOADS:  # Rule 4
            self._table.popitem(last=False)
        if offset > running.target:
            running.done = _worker().submit(running, self._path_of(upload_id), running.target, offset)
            running.target = offset

    async def take(self, upload: ResumableUpload, spooled: int) -> PrefixHashed | None:
        """Rule 3: the completing forward's head start, or None."""
        upload_id = upload.id
        running = self._table.pop((upload_id, upload.created_at), None)
        if running is None or not spooled or running.target != spooled:
            return None
        if running.done is not None:
            await asyncio.wrap_future(running.done)
        if running.broken:
            return None
        log.debug("resumable %s: sha256 of the %d spooled bytes carried over from its appends", upload_id, spooled)
        return PrefixHashed(continue_hash(running.digest), spooled)  # the rest hashed off the loop


def _hash_range(running: _Running, path: Path, start: int, end: int) -> None:
    """The hash thread: [start, end) of the data file into the upload's hash (the GIL released while hashing)."""
    if running.broken:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            position = start
            while position < end:
                chunk = os.pread(fd, min(READ_SIZE, end - position), position)
                if not chunk:
                    raise OSError(f"{path} holds fewer than {end} bytes")
                running.digest.update(chunk)
                position += len(chunk)
        finally:
            os.close(fd)
    except OSError as exc:  # deleted, truncated: the forward will hash the spool itself, or nothing is forwarded
        running.broken = True
        log.debug("running sha256 of %s dropped: %s", path.name, exc)


class _Worker:
    """One daemon thread for the relay's hash jobs, in order (a thread reading a file must not hold the exit)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[None], tuple[Any, ...]]] = queue.SimpleQueue()
        threading.Thread(target=self.run, name="relay-filehash", daemon=True).start()

    def submit(self, running: _Running, path: Path, start: int, end: int) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.jobs.put((future, (running, path, start, end)))
        return future

    def run(self) -> None:
        while True:
            future, args = self.jobs.get()
            try:
                _hash_range(*args)
            finally:
                future.set_result(None)


_the_worker: _Worker | None = None
_worker_lock = threading.Lock()


def _worker() -> _Worker:
    global _the_worker
    with _worker_lock:
        if _the_worker is None:
            _the_worker = _Worker()
        return _the_worker


class PrefixHashed:
    """A sha256 that already holds a file's first `skip` bytes: `update` ignores them when fed again."""

    def __init__(self, digest: Any, skip: int) -> None:
        self._digest = digest
        self._skip = skip

    def update(self, data: bytes | memoryview, /) -> None:
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            if dropped == len(data):
                return
            data = memoryview(data)[dropped:]
        self._digest.update(data)

    def rest_hash(self) -> Any:
        """For a thread that hashes the rest itself (relay/resumable/spliced.py): the prefix will not be fed, and
        the hashlib object to update is returned."""
        self._skip = 0
        self._digest = direct_hash(self._digest)
        return self._digest

    def hexdigest(self) -> str:
        return str(self._digest.hexdigest())
