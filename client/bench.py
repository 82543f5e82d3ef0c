"""`relay-upload bench`: throughput through the relay, optionally against the upstream directly.

Runs are interleaved (relay, direct, relay, direct, ...) so a machine that slows down over time hurts both
sides alike. The body is generated: one random 1 MiB buffer repeated, so the disk and the generator stay out
of the measurement.

Every request carries `X-Relay-Sink-Discard: 1`. The sample upstream (relay-sink, and the one relay-server
embeds by default) then counts and hashes the body but stores nothing: without it, three runs of 256 MiB
left 768 MB in ./received. Any other upstream ignores the header (the relay forwards it like any other).
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from client.errors import HttpError
from client.events import describe_http_error
from client.sources import CHUNK_SIZE, Body, multipart_segments, new_boundary
from client.target import DEFAULT_RELAY, build_url
from client.upload import DEFAULT_TIMEOUT, send_body

__all__ = ["DEFAULT_BENCH_PATH", "DISCARD_HEADER", "BenchResult", "GeneratedSource", "Stats", "parse_size", "run_bench"]

DEFAULT_BENCH_PATH = "/upload/bench"
# Asks the sample upstream to count and hash but not store (see the module docstring).
DISCARD_HEADER = ("X-Relay-Sink-Discard", "1")

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str) -> int:
    """`10MiB`, `10M`, `10k` are binary, `10MB` decimal, a bare number is bytes (as the contract says)."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 512k, 10MiB, 1GB, 1048576)")
    return int(float(match.group(1)) * _UNITS[unit])


class GeneratedSource:
    """`size` bytes cut from one pre-generated random buffer."""

    _buffer = b""

    def __init__(self, size: int) -> None:
        self.size = size
        if not GeneratedSource._buffer:
            GeneratedSource._buffer = os.urandom(CHUNK_SIZE)

    async def chunks(self) -> AsyncIterator[bytes]:
        buffer, left = self._buffer, self.size
        while left >= len(buffer):
            left -= len(buffer)
            yield buffer
        if left:
            yield buffer[:left]


@dataclass
class Stats:
    median_mbps: float
    min_mbps: float
    max_mbps: float

    @classmethod
    def of(cls, rates: list[float]) -> Stats:
        return cls(round(statistics.median(rates), 3), round(min(rates), 3), round(max(rates), 3))


@dataclass
class BenchResult:
    size: int
    runs: int
    relay: Stats
    direct: Stats | None

    @property
    def ratio(self) -> float | None:
        if self.direct is None or self.direct.median_mbps == 0:
            return None
        return round(self.relay.median_mbps / self.direct.median_mbps, 3)

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "runs": self.runs,
            "relay": vars(self.relay),
            "direct": vars(self.direct) if self.direct else None,
            "ratio": self.ratio,
        }


def _body(size: int, multipart: bool) -> Body:
    source = GeneratedSource(size)
    if not multipart:
        return Body([source], "application/octet-stream")
    boundary = new_boundary()
    segments = multipart_segments([("file", "bench.bin", source)], [], boundary)
    return Body(segments, f"multipart/form-data; boundary={boundary}")


@dataclass
class _Target:
    url: str
    relay: str | None  # the relay's base URL, for "is relay-server running?"; None for the direct upstream
    headers: dict[str, str]


async def _one_run(client: httpx.AsyncClient, target: _Target, size: int, multipart: bool, concurrency: int) -> float:
    """One run: `concurrency` uploads at once; aggregate payload MB/s over the wall time."""
    started = time.perf_counter()
    url = target.url
    sends = [
        send_body(client, "POST", url, _body(size, multipart), target.headers, relay=target.relay)
        for _ in range(concurrency)
    ]
    for sent in await asyncio.gather(*sends):
        if not 200 <= sent.status < 300:
            raise HttpError(f"{url}: {describe_http_error(sent.status, sent.response)}")
    elapsed = time.perf_counter() - started
    return size * concurrency / elapsed / 1e6


async def run_bench(
    *,
    size: int,
    relay: str = DEFAULT_RELAY,
    to: str = DEFAULT_BENCH_PATH,
    runs: int = 3,
    multipart: bool = False,
    concurrency: int = 1,
    direct: str | None = None,
    token: str | None = None,
) -> BenchResult:
    """Interleave `runs` relay runs with as many direct runs (when `direct` is given)."""
    headers = dict([DISCARD_HEADER])
    relay_target = _Target(build_url(relay, to, []), relay, headers)
    if token:
        relay_target.headers = {**headers, "Authorization": f"Bearer {token}"}
    direct_target = _Target(build_url(direct, to, []), None, headers) if direct else None
    relay_rates: list[float] = []
    direct_rates: list[float] = []
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, limits=limits) as client:
        for _ in range(runs):
            relay_rates.append(await _one_run(client, relay_target, size, multipart, concurrency))
            if direct_target is not None:
                direct_rates.append(await _one_run(client, direct_target, size, multipart, concurrency))
    return BenchResult(size, runs, Stats.of(relay_rates), Stats.of(direct_rates) if direct_rates else None)
