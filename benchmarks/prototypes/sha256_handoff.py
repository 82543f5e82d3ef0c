"""Prototypes of the sha256 hand-off (issue 15), swapped into relay-server for one benchmark run.

    python benchmarks/prototypes/sha256_handoff.py VARIANT relay-server flags...

VARIANT:
  inline    hashlib on the loop thread, every chunk (no hand-off at all)
  batched   the worker thread gets lists of chunks of at least BATCH bytes (env BATCH, default 1 MiB); no lock or
            condition per chunk: the loop and the worker each own one byte counter, the lock is taken only when the
            loop must wait (the queue over MAX_QUEUED, or a digest)
  joined    as batched, but the worker joins each batch into one buffer first (one copy, one GIL release per batch
            instead of one per chunk)
  nolock    as batched with BATCH=0: one queue item per chunk, no condition per chunk
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
from typing import Any

BATCH = int(os.environ.get("BATCH", str(1024 * 1024)))
JOIN = False
OFFLOAD_MIN = 64 * 1024
MAX_QUEUED = 2 * 1024 * 1024


class _Worker:
    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[BatchedSha256, list[Any], int]] = queue.SimpleQueue()
        self.submitted = 0  # written by the loop thread only
        self.done = 0  # written by the worker only
        self.waiting = False
        self.lock = threading.Lock()
        self.cond = threading.Condition()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while True:
            owner, batch, size = self.jobs.get()
            update = owner._hash.update
            try:
                if JOIN and len(batch) > 1:
                    update(b"".join(batch))
                else:
                    for data in batch:
                        update(data)
            except Exception as exc:
                owner._error = exc
            owner._done += size
            self.done += size  # written by this thread only
            if self.waiting:
                with self.cond:
                    self.cond.notify_all()

    def submit(self, owner: BatchedSha256, batch: list[Any], size: int) -> None:
        # Several threads may submit (each hash is used by one thread at a time): `submitted` under the lock.
        with self.lock:
            if self.submitted - self.done > MAX_QUEUED:
                self.wait(lambda: self.submitted - self.done <= MAX_QUEUED)
            self.submitted += size
        owner._submitted += size
        self.jobs.put((owner, batch, size))

    def wait(self, ready: Any) -> None:
        with self.cond:
            self.waiting = True
            try:
                while not ready():
                    self.cond.wait(0.05)
            finally:
                self.waiting = False


_worker: _Worker | None = None


class BatchedSha256:
    __slots__ = ("_batch", "_batch_size", "_done", "_error", "_hash", "_submitted", "_worker")

    def __init__(self, name: str = "sha256") -> None:
        global _worker
        self._hash = hashlib.sha256() if name == "sha256" else hashlib.new(name)
        self._batch: list[Any] = []
        self._batch_size = 0
        self._submitted = 0
        self._done = 0
        self._error: Exception | None = None
        if _worker is None:
            _worker = _Worker()
        self._worker = _worker

    def update(self, data: Any) -> None:
        n = len(data)
        if n < OFFLOAD_MIN and not self._batch_size and self._submitted == self._done:
            self._hash.update(data)
            return
        if type(data) is not bytes and not (type(data) is memoryview and type(data.obj) is bytes):
            data = bytes(data)
        self._batch.append(data)
        self._batch_size += n
        if self._batch_size >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._batch_size:
            batch, size = self._batch, self._batch_size
            self._batch, self._batch_size = [], 0
            self._worker.submit(self, batch, size)

    def hexdigest(self) -> str:
        self._flush()
        if self._submitted != self._done:
            self._worker.wait(lambda: self._submitted == self._done)
        if self._error is not None:
            raise self._error
        return self._hash.hexdigest()


def main() -> int:
    variant = sys.argv.pop(1)
    global BATCH, JOIN
    import relay.proxy_admission

    if variant == "inline":
        relay.proxy_admission.HASHER = hashlib.sha256
        relay.proxy_admission.new_hash = hashlib.new  # type: ignore[assignment]
    else:
        if variant == "nolock":
            BATCH = 0
        JOIN = variant == "joined"
        relay.proxy_admission.HASHER = BatchedSha256
        relay.proxy_admission.new_hash = BatchedSha256  # type: ignore[assignment]
    from relay.cli import main as relay_main

    sys.argv[0] = "relay-server"
    return relay_main()


if __name__ == "__main__":
    sys.exit(main())
