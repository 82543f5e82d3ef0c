"""The cost of sha256 alone: a one-line hashlib loop over a file's bytes in the relay's chunk sizes.

    python benchmarks/prototypes/sha256_alone.py /tmp/relay-bench/data_1073741824.bin [chunk sizes...]

Reads the whole file into memory first (not timed), then hashes it in chunks of each size and prints the CPU-seconds
per GiB (process time: the loop's own thread). This is the floor the relay's default (sha256) figure is held against
(issue 15: <= the `--digest none` figure + this + 0.15).
"""

from __future__ import annotations

import hashlib
import sys
import time

GIB = 1024**3


def main() -> None:
    path = sys.argv[1]
    sizes = [int(s) for s in sys.argv[2:]] or [64 * 1024, 236 * 1024, 256 * 1024, 1024 * 1024]
    with open(path, "rb") as f:
        data = f.read()
    view = memoryview(data)
    for size in sizes:
        chunks = [view[i : i + size] for i in range(0, len(data), size)]
        best = None
        for _ in range(3):
            h = hashlib.sha256()
            start = time.process_time()
            for chunk in chunks:
                h.update(chunk)
            spent = (time.process_time() - start) * GIB / len(data)
            best = spent if best is None else min(best, spent)
        print(f"chunk {size // 1024} KiB: sha256 alone {best:.3f} CPU-s/GiB (best of 3)")


if __name__ == "__main__":
    main()
