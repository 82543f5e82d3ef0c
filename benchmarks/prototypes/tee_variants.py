"""Variants of the hashed splice (relay/pipehash.py) swapped into relay-server for one benchmark run (issue 15, run 10).

    python benchmarks/prototypes/tee_variants.py VARIANT[,VARIANT...] relay-server flags...

Variants:
- `read1m`: the hash thread reads up to 1 MiB at a time (a whole pipe B) instead of 256 KiB.
- `read64k`: 64 KiB reads.
- `pydll`: tee(2) called through ctypes.PyDLL, the GIL kept over the call (CDLL releases and takes it back).
- `inline`: no hash thread: the loop thread reads pipe B (non-blocking) right after each tee and hashes it itself
  (no GIL hand-over between threads; the hash no longer overlaps the loop's work).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any


def install_inline(pipehash: Any, zerocopy: Any) -> None:
    import asyncio
    import os

    jobs: dict[int, tuple[int, Any, list[int]]] = {}  # future id -> (B's read end, hash, [bytes hashed])
    buffer = bytearray(1024 * 1024)
    view = memoryview(buffer)

    def start(read_fd: int, digest: Any, first: bytes) -> asyncio.Future[int]:
        os.set_blocking(read_fd, False)
        digest.update(first)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        jobs[id(future)] = (read_fd, digest, [len(first)])
        return future

    def read_all(future: Any) -> None:
        read_fd, digest, count = jobs[id(future)]
        while True:
            try:
                got = os.readv(read_fd, [buffer])
            except BlockingIOError:
                return
            if not got:
                return
            digest.update(view[:got])
            count[0] += got

    original_tee = zerocopy._Pump._tee

    def tee(self: Any) -> bool:
        moved: bool = original_tee(self)
        if moved:
            read_all(self.hashing)
        return moved

    def close(self: Any) -> None:
        future = self.hashing
        if future is not None and id(future) in jobs:
            read_fd, _, count = jobs.pop(id(future))
            os.close(read_fd)
            pipehash.release()
            if not future.done():
                future.set_result(count[0])
        original_close(self)

    original_close = zerocopy._Pump.close

    async def finish_hash(self: Any) -> None:
        if self.hashing is None:
            return
        read_all(self.hashing)
        _, _, count = jobs[id(self.hashing)]
        if count[0] != self.body.length:
            raise RuntimeError(f"hashed {count[0]} of {self.body.length}")

    pipehash.start = start
    zerocopy._Pump._tee = tee
    zerocopy._Pump.close = close
    zerocopy._Pump._finish_hash = finish_hash


def main() -> int:
    variants = sys.argv.pop(1).split(",")
    import relay.pipehash as pipehash
    import relay.zerocopy as zerocopy

    for variant in variants:
        if variant == "read1m":
            pipehash.READ_SIZE = 1024 * 1024
        elif variant == "read64k":
            pipehash.READ_SIZE = 64 * 1024
        elif variant == "pydll":
            name = ctypes.util.find_library("c")
            assert name
            function = ctypes.PyDLL(name, use_errno=True).tee
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
            function.restype = ctypes.c_ssize_t
            pipehash._tee = function
        elif variant == "inline":
            install_inline(pipehash, zerocopy)
        else:
            raise SystemExit(f"unknown variant {variant}")
    from relay.cli import main as relay_main

    sys.argv[0] = "relay-server"
    return relay_main()


if __name__ == "__main__":
    sys.exit(main())
