"""Soak: many uploads with mixed outcomes against ONE relay process; RSS and open file descriptors, start vs end.

    python benchmarks/soak.py                          # 10,000 small + 100 large uploads (a few minutes)
    python benchmarks/soak.py --small 1000 --large 10  # a quick look
    python benchmarks/soak.py --json                   # one JSON object on stdout

It starts `relay-sink --discard` and one `relay-server` (both on loopback, free ports, via relay.testing), then:
  1. warm-up: 200 small successful uploads (imports, pools and caches settle), then the START sample;
  2. the soak, from `--concurrency` client threads, with outcomes mixed by index:
       small (1 B .. --small-size):  16/20 succeed (raw with Content-Length, raw chunked, multipart),
                                      1/20 declared Content-Length over --max-body-size (413 from the headers),
                                      1/20 a multipart file over --max-file-size, chunked (413 mid-stream),
                                      2/20 the client disconnects mid-body (raw socket, half the declared body);
       large (--large-size each):     8/10 succeed (Content-Length or chunked),
                                      1/10 chunked past --max-body-size (413 mid-stream),
                                      1/10 the client disconnects halfway;
  3. the client connections are closed, the relay gets --settle seconds, then the END sample.
--checkpoints samples are also taken during the soak (with client keep-alive connections still open), to tell a
plateau (the registry filling up to its 1,000 finished uploads, allocator arenas) from a leak (steady growth).
A sample is the relay's VmRSS (/proc/PID/status) and len(os.listdir(/proc/PID/fd)), plus relay_uploads_in_flight
from its metrics. The report gives START, END and the drift (END - START); BOOT (right after start-up) is shown too.
Bounded: --max-seconds stops submitting new uploads (the report says so). Stops what it started, by PID.
Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.testing import RunningServer, start_relay, start_sink

KIB, MIB = 1024, 1024 * 1024
BOUNDARY = "soak-boundary-3f9c"


def sample(server: RunningServer) -> dict[str, float]:
    status = Path(f"/proc/{server.pid}/status").read_text()
    rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{server.pid}/fd"))
    metrics = httpx.get(f"{server.url}/_relay/metrics", timeout=10).text
    in_flight = next(
        (float(line.split()[1]) for line in metrics.splitlines() if line.startswith("relay_uploads_in_flight ")),
        float("nan"),
    )
    return {"rss_mib": round(rss_kib / 1024, 1), "fds": fds, "in_flight": in_flight}


def multipart(data: bytes, filename: str = "f.bin") -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def pieces(data: bytes, size: int = 256 * KIB) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class Soak:
    def __init__(self, relay: RunningServer, args: argparse.Namespace) -> None:
        self.relay = relay
        self.args = args
        self.local = threading.local()
        self.clients: list[httpx.Client] = []
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.bytes_sent = 0
        self.large_body = random.Random(1).randbytes(args.large_size)
        self.deadline = float("inf")
        self.skipped = 0

    def client(self) -> httpx.Client:
        client = getattr(self.local, "client", None)
        if client is None:
            client = httpx.Client(base_url=self.relay.url, timeout=60)
            self.local.client = client
            with self.lock:
                self.clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()

    def note(self, kind: str, expected: int, got: int | None, sent: int) -> None:
        with self.lock:
            self.bytes_sent += sent
            if got == expected:
                self.outcomes[kind] += 1
            else:
                self.unexpected[f"{kind}: expected {expected}, got {got}"] += 1

    # -- the kinds of upload -----------------------------------------------------------------------------

    def success(self, kind: str, content: bytes | Iterator[bytes], size: int, content_type: str) -> None:
        response = self.client().post(f"/upload/soak/{kind}", content=content, headers={"content-type": content_type})
        ok = response.status_code == 200 and response.json().get("bytes") == size
        self.note(kind, 200, 200 if ok else response.status_code, size)

    def declared_too_large(self) -> None:
        head = (
            b"POST /upload/soak/declared HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n"
            b"Expect: 100-continue\r\n\r\n" % (self.args.max_body_size + 1)
        )
        status = None
        with socket.create_connection(("127.0.0.1", self.relay.port), timeout=30) as sock:
            sock.sendall(head)
            answer = sock.recv(4096)
            if answer.startswith(b"HTTP/1.1 "):
                status = int(answer[9:12])
        self.note("413-declared", 413, status, 0)

    def chunked_over(self, kind: str, content: Iterator[bytes], content_type: str, size: int) -> None:
        try:
            response = self.client().post(
                f"/upload/soak/{kind}", content=content, headers={"content-type": content_type}
            )
            status: int | None = response.status_code
        except httpx.TransportError:  # the relay closed after its 413 while we were still writing
            status = None
        self.note(kind, 413, status, size)

    def disconnect(self, kind: str, declared: int, send: int) -> None:
        with socket.create_connection(("127.0.0.1", self.relay.port), timeout=30) as sock:
            sock.sendall(b"POST /upload/soak/cut HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % declared)
            view = memoryview(self.large_body)[:send]
            sent = 0
            while sent < send:
                sent += sock.send(view[sent : min(send, sent + 256 * KIB)])
        self.note(kind, 0, 0, send)

    # -- the mix ---------------------------------------------------------------------------------------------

    def small(self, index: int) -> None:
        if time.monotonic() > self.deadline:
            with self.lock:
                self.skipped += 1
            return
        rng = random.Random(index)
        size = rng.randint(1, self.args.small_size)
        data = rng.randbytes(size)
        slot = index % 20
        if slot < 6:
            self.success("small-raw-length", data, size, "application/octet-stream")
        elif slot < 11:
            self.success("small-raw-chunked", pieces(data, 4 * KIB), size, "application/octet-stream")
        elif slot < 16:
            body = multipart(data)
            self.success("small-multipart", body, len(body), f"multipart/form-data; boundary={BOUNDARY}")
        elif slot == 16:
            self.declared_too_large()
        elif slot == 17:
            body = multipart(rng.randbytes(self.args.max_file_size + 1))
            self.chunked_over(
                "413-file-chunked", pieces(body, 16 * KIB), f"multipart/form-data; boundary={BOUNDARY}", len(body)
            )
        else:
            self.disconnect("small-disconnect", declared=2 * size + 2, send=size)

    def large(self, index: int) -> None:
        if time.monotonic() > self.deadline:
            with self.lock:
                self.skipped += 1
            return
        data = self.large_body
        slot = index % 10
        if slot < 4:
            self.success("large-raw-length", data, len(data), "application/octet-stream")
        elif slot < 8:
            self.success("large-raw-chunked", pieces(data), len(data), "application/octet-stream")
        elif slot == 8:
            over = self.args.max_body_size + MIB
            self.chunked_over(
                "413-large-chunked",
                (data[: 256 * KIB] for _ in range(over // (256 * KIB))),
                "application/octet-stream",
                over,
            )
        else:
            self.disconnect("large-disconnect", declared=len(data), send=len(data) // 2)


def parse_size(text: str) -> int:
    units = {"k": KIB, "kib": KIB, "m": MIB, "mib": MIB, "g": 1024 * MIB, "gib": 1024 * MIB}
    lower = text.strip().lower()
    for unit in sorted(units, key=len, reverse=True):
        if lower.endswith(unit):
            return int(float(lower[: -len(unit)]) * units[unit])
    return int(lower)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000, help="small uploads (default 10,000)")
    parser.add_argument("--large", type=int, default=100, help="large uploads (default 100)")
    parser.add_argument("--small-size", type=parse_size, default=16 * KIB, help="largest small body (16KiB)")
    parser.add_argument("--large-size", type=parse_size, default=8 * MIB, help="size of a large body (8MiB)")
    parser.add_argument("--max-body-size", type=parse_size, default=16 * MIB, help="relay --max-body-size (16MiB)")
    parser.add_argument("--max-file-size", type=parse_size, default=64 * KIB, help="relay --max-file-size (64KiB)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (8)")
    parser.add_argument("--max-seconds", type=float, default=480, help="stop submitting after this long (480)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between the last upload and END (3)")
    parser.add_argument("--checkpoints", type=int, default=4, help="RSS/fd samples during the soak (4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    if args.large_size >= args.max_body_size:
        parser.error("--large-size must be under --max-body-size (large successes must pass)")

    sink = start_sink(None)
    relay = None
    try:
        relay = start_relay(
            "--max-body-size", str(args.max_body_size), "--max-file-size", str(args.max_file_size), upstream=sink.url
        )
        boot = sample(relay)
        soak = Soak(relay, args)
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(lambda i: soak.success("warmup", b"w" * 100, 100, "application/octet-stream"), range(200)))
        start = sample(relay)
        began = time.monotonic()
        soak.deadline = began + args.max_seconds
        small_order = list(range(args.small))
        large_order = list(range(args.large))
        # Interleave: one large upload every len(small)/len(large) small ones, so both run for the whole soak.
        jobs: list[tuple[str, int]] = []
        every = max(1, args.small // max(1, args.large))
        for i in small_order:
            jobs.append(("small", i))
            if i % every == 0 and large_order:
                jobs.append(("large", large_order.pop(0)))
        jobs.extend(("large", i) for i in large_order)
        checkpoints: list[dict[str, float]] = []
        batch = max(1, -(-len(jobs) // max(1, args.checkpoints)))
        with ThreadPoolExecutor(args.concurrency) as pool:
            for first in range(0, len(jobs), batch):
                for future in [pool.submit(getattr(soak, kind), index) for kind, index in jobs[first : first + batch]]:
                    future.result()
                checkpoints.append({"uploads": min(len(jobs), first + batch), **sample(relay)})
        seconds = time.monotonic() - began
        soak.close_clients()
        time.sleep(args.settle)
        end = sample(relay)
    finally:
        if relay is not None:
            relay.stop()
        sink.stop()

    report = {
        "small": args.small,
        "large": args.large,
        "large_size": args.large_size,
        "concurrency": args.concurrency,
        "seconds": round(seconds, 1),
        "skipped_at_deadline": soak.skipped,
        "bytes_sent": soak.bytes_sent,
        "outcomes": dict(sorted(soak.outcomes.items())),
        "unexpected": dict(soak.unexpected),
        "boot": boot,
        "start": start,
        "checkpoints": checkpoints,
        "end": end,
        "drift": {"rss_mib": round(end["rss_mib"] - start["rss_mib"], 1), "fds": end["fds"] - start["fds"]},
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"soak: {args.small} small + {args.large} large uploads, {args.concurrency} clients, "
            f"{report['seconds']} s, {soak.bytes_sent / 1e6:.0f} MB sent"
            + (f" ({soak.skipped} skipped at the --max-seconds bound)" if soak.skipped else "")
        )
        for kind, count in report["outcomes"].items():
            print(f"  {kind:22} {count}")
        for what, count in report["unexpected"].items():
            print(f"  UNEXPECTED {what}: {count}")
        rows = [("boot", boot), ("start", start)]
        rows += [(f"@{c['uploads']:.0f}", c) for c in checkpoints] + [("end", end)]
        for name, s in rows:
            print(f"  {name:7}  RSS {s['rss_mib']:7.1f} MiB   fds {s['fds']:4.0f}   in flight {s['in_flight']:.0f}")
        print(f"  drift  RSS {report['drift']['rss_mib']:+.1f} MiB   fds {report['drift']['fds']:+d}")
    return 1 if soak.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
