"""Uploads with a webhook receiver that sleeps: are they slowed? Prints the ratios.

    python benchmarks/webhooks_slow_receiver.py                   # 100 concurrent 1 MiB uploads, 3 rounds
    python benchmarks/webhooks_slow_receiver.py --uploads 20 --size 64k --rounds 1   # a quick look

It starts `relay-sink --discard`, then, interleaved round by round (A B A B ...):
  A. `relay-server` without webhooks;
  B. `relay-server --webhook URL` whose receiver (a small asyncio server in this process) sleeps
     `--receiver-sleep` seconds (default 5) before it answers each delivery.
In each round `--uploads` uploads of `--size` bytes run at once (httpx.AsyncClient), and it records the wall
time of the whole batch and each upload's latency. The report gives, per setup, the median batch time and
p50/p95 upload latency, and the ratios B/A (1.00 = not slowed). It also says how many deliveries B's receiver
had been asked for by the end (the relay sends at most 16 at once; the rest wait in its outbox), which shows the
receiver really was slow while the uploads ran. Servers are on loopback, free ports, stopped by PID; each
relay's spool is a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from relay.settings import parse_size
from relay.testing import RunningServer, start_relay, start_sink

SECRET = "whsec_YmVuY2htYXJrIHNlY3JldCBieXRlcyAxMjM0NTY3OA=="


class SleepyReceiver:
    """Answers every POST with 200 after `sleep` seconds; counts the requests it was sent."""

    def __init__(self, sleep: float) -> None:
        self.sleep = sleep
        self.requests = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._closing = asyncio.Event()  # set at stop: handlers still asleep answer at once and end
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> str:
        server = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        self._thread.start()
        self.port = server.result(10)
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _serve(self) -> int:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            self.requests += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.sleep)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        async def finish_all() -> None:
            self._closing.set()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(finish_all(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def batch(relay: RunningServer, uploads: int, size: int) -> tuple[float, list[float]]:
    """`uploads` uploads at once; (wall seconds for all, each upload's latency)."""
    body = b"w" * size
    limits = httpx.Limits(max_connections=uploads, max_keepalive_connections=uploads)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(n: int) -> float:
            started = time.monotonic()
            response = await client.post(f"{relay.url}/upload/bench/{n}", content=body)
            if response.status_code != 200:
                raise RuntimeError(f"upload {n}: HTTP {response.status_code} {response.text[:200]}")
            return time.monotonic() - started

        started = time.monotonic()
        latencies = await asyncio.gather(*(one(n) for n in range(uploads)))
        return time.monotonic() - started, list(latencies)


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=100, help="uploads at once (default 100)")
    parser.add_argument("--size", default="1MiB", help="bytes per upload (default 1MiB)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per setup (default 3)")
    parser.add_argument("--receiver-sleep", type=float, default=5.0, help="seconds the receiver sleeps (default 5)")
    args = parser.parse_args()
    size = parse_size(args.size)

    receiver = SleepyReceiver(args.receiver_sleep)
    hook_url = receiver.start()
    sink = start_sink(None)
    spools = [tempfile.TemporaryDirectory(prefix="relay-bench-spool-") for _ in range(2)]
    plain = start_relay("--spool", spools[0].name, upstream=sink.url)
    hooked = start_relay(
        "--spool", spools[1].name, "--webhook", hook_url, "--webhook-secret", SECRET, upstream=sink.url
    )
    results: dict[str, list[tuple[float, list[float]]]] = {"A": [], "B": []}
    try:
        for setup in (plain, hooked):  # warm-up: imports, pools
            asyncio.run(batch(setup, 4, size))
        for _ in range(args.rounds):
            results["A"].append(asyncio.run(batch(plain, args.uploads, size)))
            results["B"].append(asyncio.run(batch(hooked, args.uploads, size)))
        asked = receiver.requests
        outbox = len(list(Path(spools[1].name, "webhooks").glob("msg_*.json")))
    finally:
        hooked.stop()
        plain.stop()
        sink.stop()
        receiver.stop()
        for spool in spools:
            spool.cleanup()

    def summary(runs: list[tuple[float, list[float]]]) -> tuple[float, float, float]:
        latencies = [latency for _, batch_latencies in runs for latency in batch_latencies]
        return statistics.median(wall for wall, _ in runs), statistics.median(latencies), p95(latencies)

    a, b = summary(results["A"]), summary(results["B"])
    sleep = args.receiver_sleep
    print(f"{args.uploads} concurrent uploads of {size} bytes, {args.rounds} rounds, receiver sleeps {sleep:g} s")
    print(f"{'':34s} {'batch (median)':>15s} {'p50 upload':>11s} {'p95 upload':>11s}")
    print(f"{'A relay, no webhooks':34s} {a[0]:14.3f}s {a[1]:10.3f}s {a[2]:10.3f}s")
    print(f"{'B relay, --webhook (sleepy)':34s} {b[0]:14.3f}s {b[1]:10.3f}s {b[2]:10.3f}s")
    print(f"{'ratio B/A (1.00 = not slowed)':34s} {b[0] / a[0]:15.2f} {b[1] / a[1]:11.2f} {b[2] / a[2]:11.2f}")
    print(f"receiver asked for {asked} deliveries by the end; {outbox} outbox entries written")


if __name__ == "__main__":
    main()
