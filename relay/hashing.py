"""sha256 on a worker thread, pipelined: the event loop hands chunks over and never waits per chunk.

Why. sha256 costs about 0.86 CPU-s per GiB here (SHA-NI, 256 KiB updates), as much as all the rest of
the relay's data path. hashlib releases the GIL while it hashes more than 2 KiB, so a second thread can
hash while the loop moves bytes: the two overlap on two cores.

Why not `await loop.run_in_executor(...)` per chunk. That was measured and lost (280 vs 391 MB/s): each
chunk then costs a future, a loop wake-up and a GIL handoff, and the loop waits for the hash before it
forwards the chunk. Here the loop only enqueues (`update`), and waits only when it needs a digest
(`hexdigest`, at the end of a part), by which time the worker has usually caught up: the wait is for
the last chunk or two.

Rules:
- One worker thread for the process, one FIFO queue: the updates of one hash are applied in order.
- Small updates (under OFFLOAD_MIN bytes) are hashed inline when nothing of that hash is queued: a
  hand-over would cost more than the hash, and a form full of small fields stays on the loop.
- At most MAX_QUEUED bytes wait in the queue; past that `update` blocks until the worker is down to
  LOW_WATER, so memory stays bounded when hashing is the bottleneck. 16 MiB measured 71 MiB peak RSS for
  the relay (target 64); 2 MiB measured 55.5 MiB at the same throughput.
- Wake-ups are few: the worker wakes a waiting thread only when the queue crosses LOW_WATER or a hash's
  last queued bytes are done. Waking the loop after every chunk (as until issue 15) put the loop and the
  worker in lockstep once the worker fell behind, one wake-up each way per chunk: py-spy found 14 % of the
  loop thread's samples in that wait (benchmarks/RESULTS.md, run 9).
- The chunks are immutable `bytes` (or memoryviews of them) owned by the relay until forwarded; the
  worker only reads them.
- A spliced body never reaches `update`: its bytes stay in the kernel and a thread of relay/pipehash.py hashes a
  tee'd copy of them into the hashlib object `direct()` hands out.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["OffloadedSha256", "continue_hash", "direct_hash", "new_hash", "sha256_factory"]

OFFLOAD_MIN = 64 * 1024
MAX_QUEUED = 2 * 1024 * 1024
LOW_WATER = MAX_QUEUED // 2


class _Worker:
    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[OffloadedSha256, Any]] = queue.SimpleQueue()
        self.queued = 0  # bytes enqueued and not yet hashed, all hashes together
        self.waiters = 0  # threads in progress.wait(); the worker notifies only when there are some
        self.lock = threading.Lock()
        self.progress = threading.Condition(self.lock)
        self.thread = threading.Thread(target=self.run, name="relay-sha256", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while True:
            owner, data = self.jobs.get()
            try:
                owner._hash.update(data)  # the GIL is released in here
            except Exception as exc:  # kept for hexdigest(); the worker must outlive any one hash
                owner._error = exc
            size = len(data)
            with self.lock:
                self.queued -= size
                owner._pending -= size
                if self.waiters and (self.queued <= LOW_WATER or not owner._pending):
                    self.progress.notify_all()

    def submit(self, owner: OffloadedSha256, data: Any) -> None:
        size = len(data)
        with self.lock:
            if self.queued > MAX_QUEUED:
                self._wait(lambda: self.queued <= LOW_WATER)
            self.queued += size
            owner._pending += size
        self.jobs.put((owner, data))

    def wait_for(self, owner: OffloadedSha256) -> None:
        with self.lock:
            self._wait(lambda: not owner._pending)

    def _wait(self, ready: Callable[[], bool]) -> None:
        """Wait (the lock held) until `ready()`; the worker's notify comes at LOW_WATER or a hash's end."""
        self.waiters += 1
        try:
            while not ready():
                self.progress.wait()
        finally:
            self.waiters -= 1


_worker: _Worker | None = None
_worker_lock = threading.Lock()


def _get_worker() -> _Worker:
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = _Worker()
        return _worker


class OffloadedSha256:
    """The `update` / `hexdigest` part of a hashlib object, with large updates hashed on the worker.

    sha256 unless `name` says another hashlib algorithm (RFC 9530 digests may ask for sha512)."""

    __slots__ = ("_error", "_hash", "_pending", "_worker")

    def __init__(self, name: str = "sha256", *, seed: Any = None) -> None:
        if seed is not None:  # a hashlib object to go on from (continue_hash)
            self._hash = seed
        else:
            self._hash = hashlib.sha256() if name == "sha256" else hashlib.new(name)
        self._pending = 0  # bytes of this hash still queued; changed under the worker's lock
        self._error: Exception | None = None
        self._worker = _get_worker()

    def update(self, data: Any) -> None:
        if len(data) < OFFLOAD_MIN and not self._pending:
            self._hash.update(data)
            return
        if not _immutable(data):
            data = bytes(data)  # the worker reads it later: a buffer that may change is copied first
        self._worker.submit(self, data)

    def direct(self) -> Any:
        """The hashlib object itself, every queued update applied: for a caller that updates it from a thread of its
        own (relay/pipehash.py) and calls nothing else of this object until that thread is done."""
        if self._pending:
            self._worker.wait_for(self)
        return self._hash

    def hexdigest(self) -> str:
        if self._pending:
            self._worker.wait_for(self)
        if self._error is not None:
            raise self._error
        return str(self._hash.hexdigest())


def _immutable(data: Any) -> bool:
    """Bytes, or a contiguous view of bytes: safe to read later from another thread, and hashable as is."""
    return type(data) is bytes or (type(data) is memoryview and type(data.obj) is bytes and data.c_contiguous)


def direct_hash(digest: Any) -> Any:
    """The hashlib object behind a hash `sha256_factory()` or `new_hash()` made (see OffloadedSha256.direct)."""
    return digest.direct() if isinstance(digest, OffloadedSha256) else digest


def sha256_factory() -> Any:
    """What the inspector should build its hashes with: offloaded when a second CPU is there to use."""
    return OffloadedSha256 if len(os.sched_getaffinity(0)) > 1 else hashlib.sha256


def continue_hash(digest: Any) -> Any:
    """A hash that goes on from the hashlib object `digest` (what it has hashed stays), offloaded like
    `sha256_factory()`'s: a resumable upload's running sha256 (relay/resumable/filehash.py)."""
    return OffloadedSha256(seed=digest) if len(os.sched_getaffinity(0)) > 1 else digest


def new_hash(name: str) -> Any:
    """A hash of the hashlib algorithm `name`, offloaded like `sha256_factory()`'s (RFC 9530 digests)."""
    return OffloadedSha256(name) if len(os.sched_getaffinity(0)) > 1 else hashlib.new(name)
