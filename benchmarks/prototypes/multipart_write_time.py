"""relay-server that times every `MultipartReader.write` on the loop thread, for an in-situ A/B of the reader.

    python benchmarks/prototypes/multipart_write_time.py VARIANT OUT.json relay-server flags...

VARIANT is the reader's pass over part data (Rule 7 in relay/core/multipart.py):

- `find`: the reader as it is (one forward `bytes.find` of the delimiter per chunk);
- `rfind`: the same pass, a reverse search first saying whether the chunk holds a delimiter at all (CPython's
  `rfind` is about twice as fast as `find` over bytes already in cache: multipart_scan.py, `rfind`);
- `previous`: no pass, python-multipart's parser sees every byte (the reader before Rule 7).

The micro-benchmark (multipart_scan.py) cannot say how warm a socket read's bytes are in the cache when the reader
scans them; this measures it where it happens. On SIGUSR1 and at exit writes {"variant", "writes", "bytes",
"thread_cpu_ns"} to OUT.json: the CPU time of the calling thread inside `write()` (time.thread_time_ns around each
call). Run 2026-12-03 (load 4-6), one relay per variant with `--digest none` on benchmarks/upstream.py, 8
interleaved 1 GiB `curl -F file=@data_1073741824.bin` each:

    for v in find rfind previous; do python benchmarks/prototypes/multipart_write_time.py $v /tmp/$v.json \
        --host 127.0.0.1 --port $PORT_v --upstream http://127.0.0.1:$UP --digest none --max-body-size 0 & done
    # curl -F each relay in turn, 8 times; kill -USR1 each relay

    find 0.150, rfind 0.156, previous 0.197 CPU-s/GiB inside write() (reads of 236-247 KB on average)
"""

from __future__ import annotations

import atexit
import json
import signal
import sys
import time


def main() -> None:
    variant = sys.argv.pop(1)
    out = sys.argv.pop(1)
    from relay.core.multipart import MultipartReader

    if variant == "previous":

        def parser_sees_all(self: MultipartReader, chunk: bytes) -> bytes:
            return chunk

        MultipartReader._pass_data = parser_sees_all  # type: ignore[method-assign]
    elif variant == "rfind":
        forward_only = MultipartReader._pass_data

        def reverse_first(self: MultipartReader, chunk: bytes) -> bytes:
            if chunk.rfind(self._delimiter) >= 0:
                return forward_only(self, chunk)
            size = len(chunk)
            reach = self._reach
            cr = chunk.rfind(b"\r", size - reach if size > reach else 0)
            if cr < 0 or not self._delimiter.startswith(chunk[cr:]):
                self._on_part_data(memoryview(chunk))
                return b""
            if cr:
                self._on_part_data(memoryview(chunk)[:cr])
            return chunk[cr:]

        MultipartReader._pass_data = reverse_first  # type: ignore[method-assign]
    elif variant != "find":
        raise SystemExit(f"unknown variant {variant!r}")

    totals = {"writes": 0, "bytes": 0, "thread_cpu_ns": 0}
    write = MultipartReader.write
    clock = time.thread_time_ns

    def timed_write(self: MultipartReader, chunk: bytes) -> None:
        start = clock()
        try:
            write(self, chunk)
        finally:
            totals["thread_cpu_ns"] += clock() - start
            totals["writes"] += 1
            totals["bytes"] += len(chunk)

    MultipartReader.write = timed_write  # type: ignore[method-assign]

    def dump() -> None:
        with open(out, "w") as f:
            json.dump({"variant": variant, **totals}, f)

    atexit.register(dump)
    signal.signal(signal.SIGUSR1, lambda signum, frame: dump())
    from relay.cli import main as relay_main

    sys.argv[0] = "relay-server"
    relay_main()


if __name__ == "__main__":
    main()
