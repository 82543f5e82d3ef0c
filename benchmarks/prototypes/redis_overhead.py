"""What `--redis` costs a relay: CPU-s per GiB of large uploads, and the p50/p99 of 1 KiB uploads.

    python benchmarks/prototypes/redis_overhead.py [--size 512MiB] [--runs 3] [--small 2000]

Starts a throwaway redis-server (free loopback port, nothing saved), one relay-sink --discard, and three relays
on it: plain, with --redis, and with --redis and a cap (every upload then takes a lease first). The runs are
interleaved (plain, redis, capped, plain, ...) so a busy machine hurts all alike. Large uploads go from a
raw-socket sender with Content-Length (little client CPU); the relay's CPU is utime+stime from /proc/PID/stat.
Small uploads go one after another on one keep-alive connection.
Targets (issue 12): CPU within 5 %, p50 added <= 1.5 ms. Linux only.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relay.settings import parse_size
from relay.testing import RunningServer, start_relay, start_sink

CLK = os.sysconf("SC_CLK_TCK")
BLOCK = b"\xa5" * (1024 * 1024)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    sys.exit("redis-server did not start")


def send_large(relay: RunningServer, size: int) -> None:
    with socket.create_connection(("127.0.0.1", relay.port)) as sock:
        head = f"PUT /upload/bench HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode())
        left = size
        while left:
            piece = BLOCK if left >= len(BLOCK) else BLOCK[:left]
            sock.sendall(piece)
            left -= len(piece)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def large_run(relay: RunningServer, size: int) -> float:
    """CPU-s per GiB for one upload of `size` bytes."""
    before = cpu_seconds(relay.pid)
    send_large(relay, size)
    time.sleep(0.2)  # the relay's last flush and bookkeeping count too
    return (cpu_seconds(relay.pid) - before) / (size / 1024**3)


def small_run(relay: RunningServer, count: int) -> list[float]:
    """Seconds per 1 KiB upload, on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", relay.port)
    body = b"k" * 1024
    out = []
    try:
        for _ in range(count):
            began = time.perf_counter()
            conn.request("POST", "/upload/small", body=body)
            response = conn.getresponse()
            response.read()
            out.append(time.perf_counter() - began)
            assert response.status == 200
    finally:
        conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="512MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small", type=int, default=2000)
    options = parser.parse_args()
    size = parse_size(options.size)
    with tempfile.TemporaryDirectory() as tmp:
        redis_proc, url = start_redis(tmp)
        sink = start_sink(None)
        flags = ("--digest", "none", "--max-body-size", "0")
        relays = {
            "plain": start_relay(*flags, upstream=sink.url),
            "redis": start_relay(*flags, "--redis", url, upstream=sink.url),
            # A cap makes every upload take a lease: one awaited EVALSHA before its body.
            "capped": start_relay(*flags, "--redis", url, "--max-concurrent-uploads", "10000", upstream=sink.url),
        }
        cpu: dict[str, list[float]] = {name: [] for name in relays}
        small: dict[str, list[float]] = {name: [] for name in relays}
        try:
            for relay in relays.values():  # warm-up
                small_run(relay, 50)
                send_large(relay, 16 * 1024 * 1024)
            for _ in range(options.runs):
                for name, relay in relays.items():
                    cpu[name].append(large_run(relay, size))
                    small[name] += small_run(relay, options.small // options.runs)
        finally:
            for relay in relays.values():
                relay.stop()
            sink.stop()
            redis_proc.terminate()
            redis_proc.wait()
    report(cpu, small, size, options.runs)


def report(cpu: dict[str, list[float]], small: dict[str, list[float]], size: int, runs: int) -> None:
    print(f"{runs} interleaved runs; large uploads of {size / 1024**2:.0f} MiB, 1 KiB uploads on keep-alive")
    for name in cpu:
        p50 = statistics.median(small[name]) * 1000
        p99 = statistics.quantiles(small[name], n=100)[98] * 1000
        print(f"  {name:>6}: {statistics.median(cpu[name]):.3f} CPU-s/GiB   1 KiB p50 {p50:.3f} ms  p99 {p99:.3f} ms")
    for name in [name for name in cpu if name != "plain"]:
        ratio = statistics.median(cpu[name]) / statistics.median(cpu["plain"])
        added = (statistics.median(small[name]) - statistics.median(small["plain"])) * 1000
        print(f"  {name} vs plain: CPU x{ratio:.3f} ({(ratio - 1) * 100:+.1f} %), p50 added {added:+.3f} ms")


if __name__ == "__main__":
    main()
