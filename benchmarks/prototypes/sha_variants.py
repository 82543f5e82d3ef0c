"""Levers on the hashed splice (relay/pipehash.py, relay/zerocopy.py) swapped into relay-server, for
benchmarks/prototypes/sha_ab.py (issue 15, the round after run 11).

    python benchmarks/prototypes/sha_variants.py VARIANT[,VARIANT...] [relay-server flags...]

Variants:
- `base`: the relay as it is.
- `read1m`: the hash thread reads up to 1 MiB (a whole pipe B) per read into its one reused buffer, not 256 KiB:
  fewer reads and GIL take-backs when it is behind.
- `teebig`: the pump tees pipe A into B only once A holds TEE_MIN bytes (env, default 512 KiB), the client had
  nothing more this round, or the body is all in: fewer, larger tees, drains and hash-thread reads.
- `pipe4m`: pipes A and B of 4 MiB (over /proc/sys/fs/pipe-max-size: only root may; how much bigger pipes would
  give, not something an unprivileged relay can have).
- `readonly`: the hash thread reads pipe B as usual but does not hash (the digest is wrong): what the copy out of
  pipe B and the hand-offs cost without sha256 itself.
- `count`: the relay as it is, logging per spliced body (stderr) its rounds, waits (what woke them), tees (and
  those refused with EAGAIN), splices in and out.
- `readNk` (read64k, read128k...): the hash thread reads up to N KiB per read.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def install_teebig(zerocopy: Any) -> None:
    tee_min = int(os.environ.get("TEE_MIN", str(512 * 1024)))
    original_fill = zerocopy._Pump._fill
    original_tee = zerocopy._Pump._tee

    def fill(self: Any) -> bool:
        moved: bool = original_fill(self)
        self.filled = moved
        return moved

    def tee(self: Any) -> bool:
        if self.left and self.in_pipe < tee_min and getattr(self, "filled", False):
            return False  # more is coming this round: tee it all at once
        moved: bool = original_tee(self)
        return moved

    zerocopy._Pump._fill = fill
    zerocopy._Pump._tee = tee


def install_count(zerocopy: Any) -> None:
    import collections

    pump = zerocopy._Pump
    originals = {name: getattr(pump, name) for name in ("_fill", "_tee", "_drain", "_wait", "close")}

    def counts(self: Any) -> collections.Counter[str]:
        if not hasattr(self, "counts"):
            self.counts = collections.Counter()
        c: collections.Counter[str] = self.counts
        return c

    def fill(self: Any) -> bool:
        counts(self)["rounds"] += 1
        moved: bool = originals["_fill"](self)
        counts(self)["splice in" if moved else "splice in: nothing"] += 1
        return moved

    def drain(self: Any) -> bool:
        moved: bool = originals["_drain"](self)
        if moved:
            counts(self)["splice out"] += 1
        return moved

    def tee(self: Any) -> bool:
        if self.hashing is None or self.ready or not self.in_pipe:
            return False
        moved: bool = originals["_tee"](self)
        counts(self)["tee" if moved else "tee EAGAIN"] += 1
        return moved

    async def wait(self: Any, attach: Any, moved: bool) -> None:
        counts(self)["yield (moved)" if moved else "wait"] += 1
        await originals["_wait"](self, attach, moved)

    def close(self: Any) -> None:
        if getattr(self, "counts", None):
            print(f"pump counts {dict(self.counts)}", file=sys.stderr, flush=True)
            self.counts = None
        originals["close"](self)

    pump._fill, pump._drain, pump._tee, pump._wait, pump.close = fill, drain, tee, wait, close


def install_readonly(pipehash: Any) -> None:
    def hash_pipe(read_fd: int, digest: Any, first: bytes) -> int:
        buffer = bytearray(pipehash.READ_SIZE)
        total = len(first)
        try:
            while True:
                got = os.readv(read_fd, [buffer])
                if not got:
                    return total
                total += got
        finally:
            os.close(read_fd)
            pipehash.release()

    pipehash._hash_pipe = hash_pipe


def main() -> int:
    variants = sys.argv.pop(1).split(",")
    import relay.pipehash as pipehash
    import relay.zerocopy as zerocopy

    for variant in variants:
        if variant == "base":
            pass
        elif variant == "read1m":
            pipehash.READ_SIZE = 1024 * 1024
        elif variant == "teebig":
            install_teebig(zerocopy)
        elif variant == "count":
            install_count(zerocopy)
        elif variant == "readonly":
            install_readonly(pipehash)
        elif variant.startswith("read") and variant[4:-1].isdigit() and variant.endswith("k"):
            pipehash.READ_SIZE = int(variant[4:-1]) * 1024
        elif variant == "pipe4m":
            zerocopy.PIPE_SIZE = 4 * 1024 * 1024
        else:
            raise SystemExit(f"unknown variant {variant}")
    from relay.cli import main as relay_main

    sys.argv[0] = "relay-server"
    relay_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
