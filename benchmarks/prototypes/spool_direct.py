"""Writing 1 GiB from a pipe into a spool file: splice into the page cache against O_DIRECT from reused buffers.

The question behind relay/spool/direct.py: a cut-through append's bytes arrive in a pipe (pipe S,
relay/resumable/spliced.py) and must land in the data file. Variants, interleaved, each rep a fresh file on the
given directory's file system, the pipe fed by `cat` from a file in the page cache:

  - `splice`: splice(2) pipe -> file, the page cache (what the relay did);
  - `direct1M`: readv into one 1 MiB mmap'd buffer, then pwrite with O_DIRECT, one after the other;
  - `thr1x1M` / `thr2x1M` / `thr2x4M`: the same with an I/O thread (writers x block size) writing while the
    reader fills the next buffer (relay/spool/direct.py is `thr1x1M`: one writer keeps the writes in file order).

Printed per variant and rep: wall seconds and this process's CPU seconds (both threads), with `--sync` an
fdatasync at the end. Figures on the session's machine (2 vCPU VM, ext4 on virtio, 2026-12-03; 1 GiB):

    splice     wall 0.70-2.21 s, CPU 0.65-2.04 s  (the spread: page-cache pages new to the guest, see direct.py)
    direct1M   wall 0.87-1.31 s, CPU 0.32-0.78 s
    thr1x1M    wall 0.47-0.58 s, CPU 0.35-0.36 s  (one rep 1.84 / 1.43)
    thr2x4M    wall 0.49-0.74 s, CPU 0.41-0.64 s
    with --sync: splice 1.19-2.15 s wall, direct1M 0.83-0.91 s

    .venv/bin/python benchmarks/prototypes/spool_direct.py --file /tmp/relay-bench/data_1073741824.bin \
        --dir /work/spooltest [--sync] [--reps 4]
"""

from __future__ import annotations

import argparse
import fcntl
import mmap
import os
import queue
import resource
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

PIPE = 1 << 20


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def feed(source: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["cat", str(source)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE)
    return proc


def splice_buffered(source: Path, path: Path, sync: bool) -> None:
    proc = feed(source)
    assert proc.stdout is not None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    while os.splice(proc.stdout.fileno(), fd, PIPE):
        pass
    if sync:
        os.fdatasync(fd)
    os.close(fd)
    proc.wait()


def direct(source: Path, path: Path, sync: bool, block: int = 1 << 20) -> None:
    proc = feed(source)
    assert proc.stdout is not None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    view = memoryview(mmap.mmap(-1, block))
    offset = fill = 0
    while count := os.readv(proc.stdout.fileno(), [view[fill:]]):
        fill += count
        if fill == block:
            os.pwrite(fd, view, offset)
            offset, fill = offset + block, 0
    if fill:
        os.pwrite(fd, view[:fill], offset)  # the test file's size is a multiple of the block
    if sync:
        os.fdatasync(fd)
    os.close(fd)
    proc.wait()


def threaded(source: Path, path: Path, sync: bool, block: int = 1 << 20, writers: int = 1, buffers: int = 3) -> None:
    proc = feed(source)
    assert proc.stdout is not None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
    work: queue.SimpleQueue[tuple[mmap.mmap, int, int] | None] = queue.SimpleQueue()
    for _ in range(buffers):
        free.put(mmap.mmap(-1, block))

    def writer() -> None:
        while (item := work.get()) is not None:
            buffer, size, at = item
            os.pwrite(fd, memoryview(buffer)[:size], at)
            free.put(buffer)

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for thread in threads:
        thread.start()
    offset = 0
    while True:
        buffer = free.get()
        view, fill = memoryview(buffer), 0
        while fill < block and (count := os.readv(proc.stdout.fileno(), [view[fill:]])):
            fill += count
        if fill:
            work.put((buffer, fill, offset))
            offset += fill
        if fill < block:
            break
    for _ in threads:
        work.put(None)
    for thread in threads:
        thread.join()
    if sync:
        os.fdatasync(fd)
    os.close(fd)
    proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--dir", type=Path, default=Path("/work/spooltest"))
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--reps", type=int, default=4)
    a = parser.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    variants: dict[str, Callable[[Path, Path, bool], None]] = {
        "splice": splice_buffered,
        "direct1M": direct,
        "thr1x1M": threaded,
        "thr2x1M": lambda s, p, y: threaded(s, p, y, writers=2, buffers=4),
        "thr2x4M": lambda s, p, y: threaded(s, p, y, block=4 << 20, writers=2, buffers=4),
    }
    for rep in range(a.reps):
        for name, run in variants.items():
            path = a.dir / f"{name}.data"
            c0, t0 = cpu(), time.perf_counter()
            run(a.file, path, a.sync)
            wall, used = time.perf_counter() - t0, cpu() - c0
            path.unlink()
            print(f"rep {rep} {name:9s} wall {wall:.2f} s, CPU {used:.2f} s", flush=True)


if __name__ == "__main__":
    main()
