"""Prototype (issue 15): relay/hashing.py's worker with a low-water mark, swapped into relay-server.

    python benchmarks/prototypes/sha256_lowwater.py relay-server flags...

py-spy on relay-sha256 (1 GiB raw, loaded machine) put 14 % of the loop thread's samples in `_Worker.submit ->
Condition.wait`: once the hash thread falls behind, the queue sits at MAX_QUEUED and the loop and the worker go
in lockstep, one wake-up each way per chunk. Here a loop over MAX_QUEUED waits until the queue is down to
LOW_WATER (half), and the worker wakes waiters only when it crosses that mark or finishes a hash's last bytes:
one wake-up per ~1 MiB instead of one per chunk.
"""

from __future__ import annotations

import sys
from typing import Any

from relay import hashing

LOW_WATER = hashing.MAX_QUEUED // 2


class LowWaterWorker(hashing._Worker):
    def __init__(self) -> None:
        self.waiters = 0
        super().__init__()

    def run(self) -> None:
        while True:
            owner, data = self.jobs.get()
            try:
                owner._hash.update(data)
            except Exception as exc:
                owner._error = exc
            size = len(data)
            with self.lock:
                self.queued -= size
                owner._pending -= size
                if self.waiters and (self.queued <= LOW_WATER or not owner._pending):
                    self.progress.notify_all()

    def submit(self, owner: Any, data: Any) -> None:
        size = len(data)
        with self.lock:
            if self.queued > hashing.MAX_QUEUED:
                self.waiters += 1
                while self.queued > LOW_WATER:
                    self.progress.wait()
                self.waiters -= 1
            self.queued += size
            owner._pending += size
        self.jobs.put((owner, data))

    def wait_for(self, owner: Any) -> None:
        with self.lock:
            self.waiters += 1
            while owner._pending:
                self.progress.wait()
            self.waiters -= 1


def main() -> int:
    hashing._worker = LowWaterWorker()
    from relay.cli import main as relay_main

    sys.argv[0] = "relay-server"
    return relay_main()


if __name__ == "__main__":
    sys.exit(main())
