"""What a non-completing append costs on the disk spool, and what splicing it or lighter info writes would save
(issue 11 item 3, the 16 MiB appends target; brief H7).

Two measurements, each on this machine's disk (the directory given, default /tmp), CPU as the process's user +
system time (resource.getrusage), wall time for the fsyncs:

1. `body`: one 16 MiB append body from a TCP socket on loopback (a sender thread writes it in 64 KiB pieces, as
   benchmarks/resumable.py's sender does) into a data file, N times (a 1 GiB upload in 16 MiB appends):
   - `copy`: recv_into one 256 KiB buffer + write: what the relay does today, less uvicorn and the writer thread;
   - `splice`: socket -> pipe -> file with os.splice, nothing in user space (what a spliced append would do).
   Each ends with an fsync, as an append's 204 waits for.
2. `info`: the info document written after each append, as relay/spool/disk.py does (temporary file, fsync,
   rename, fsync of the directory) against the rename alone (no fsync: what a lighter write would be if recovery
   relied on the data file's size; relay.core.resumable.recover already does for a `receiving` upload).

    python benchmarks/prototypes/append_costs.py [--dir /tmp] [--appends 64] [--size 16MiB]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

MiB = 1 << 20
PIECE = 64 * 1024
READ = 256 * 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def _sender(sock: socket.socket, size: int) -> None:
    block = os.urandom(PIECE)
    left = size
    while left:
        piece = block[: min(left, PIECE)]
        sock.sendall(piece)
        left -= len(piece)


def _copy(conn: socket.socket, fd: int, size: int) -> None:
    buffer = bytearray(READ)
    view = memoryview(buffer)
    left = size
    while left:
        got = conn.recv_into(view, min(left, READ))
        if not got:
            raise EOFError
        done = 0
        while done < got:
            done += os.write(fd, view[done:got])
        left -= got


def _splice(conn: socket.socket, fd: int, size: int) -> None:
    read_end, write_end = os.pipe()
    try:
        left = size
        while left:
            moved = os.splice(conn.fileno(), write_end, min(left, MiB))
            if not moved:
                raise EOFError
            left -= moved
            while moved:
                moved -= os.splice(read_end, fd, moved)
    finally:
        os.close(read_end)
        os.close(write_end)


def bodies(
    root: Path, appends: int, size: int, receive: Callable[[socket.socket, int, int], None]
) -> tuple[float, float]:
    """CPU-s and wall-s of the receiving thread for `appends` bodies of `size` into one file, fsync after each."""
    server = socket.create_server(("127.0.0.1", 0))
    path = root / f"append-costs-{os.getpid()}.data"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    cpu = wall = 0.0
    try:
        for _ in range(appends):
            client = socket.create_connection(server.getsockname())
            conn, _ = server.accept()
            sender = threading.Thread(target=_sender, args=(client, size))
            began, began_cpu = time.perf_counter(), _cpu()
            sender.start()
            receive(conn, fd, size)
            os.fsync(fd)
            cpu += _cpu() - began_cpu
            wall += time.perf_counter() - began
            sender.join()
            client.close()
            conn.close()
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
        server.close()
    return cpu, wall


def info_writes(root: Path, count: int, durable: bool) -> list[float]:
    """Wall seconds of each info document write (a 600-byte document, as ResumableUpload.to_json is)."""
    document = b"{" + b'"x": 1, ' * 75 + b"}"
    final = root / "append-costs.json"
    times = []
    for n in range(count):
        temporary = root / f".append-costs.{n}.json.tmp"
        began = time.perf_counter()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, document)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, final)
        if durable:
            directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        times.append(time.perf_counter() - began)
    final.unlink(missing_ok=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--appends", type=int, default=64)
    parser.add_argument("--size", type=int, default=16 * MiB)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.dir)
    total = args.appends * args.size / (1 << 30)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.appends} x {args.size // MiB} MiB bodies into {root}")
    for rep in range(args.reps):
        for name, receive in (("copy", _copy), ("splice", _splice)):
            cpu, wall = bodies(root, args.appends, args.size, receive)
            print(f"  rep {rep + 1} body {name:7s} {cpu / total:.2f} CPU-s/GiB  {wall:.2f} s wall (fsync each)")
    for durable in (True, False):
        times = info_writes(root, args.appends * args.reps, durable)
        what = "fsync + rename + dir fsync" if durable else "rename only"
        print(
            f"  info {what:27s} median {statistics.median(times) * 1000:.2f} ms, "
            f"p90 {sorted(times)[int(len(times) * 0.9)] * 1000:.2f} ms, x{args.appends}: {sum(times) / args.reps:.3f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
