"""The upstream's pace against the relay's timeouts (issue 10, defects 1, 2 and 7).

- A large response to a client that reads at its own pace, pausing, arrives whole: bytes that came in while
  the relay waited for its client are taken before it waits for more, and that wait is never the upstream's.
- An upstream that reads the body slowly but steadily never times out, whatever the kernel's send buffer
  holds (on loopback it is several MiB and wakes a writer only seconds apart at 1 MiB/s).
- An upstream's `Keep-Alive: timeout=N` retires a pooled connection before the upstream closes it.

Real relay processes, real test upstreams (tests/e2e/upstreams.py), real sockets.
"""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest

from relay.testing import start_relay
from relay.upstream_connection import KEEPALIVE_EXPIRY, keepalive_expiry
from tests.e2e.upstreams import RESPONSE_CHUNKED_SIZE, RESPONSE_CL_SIZE, SLOW_READ_RATE, response_bytes


@pytest.mark.parametrize(("shape", "size"), [("big-cl", RESPONSE_CL_SIZE), ("big-chunked", RESPONSE_CHUNKED_SIZE)])
def test_a_large_response_reaches_a_client_that_pauses(test_upstream, shape: str, size: int) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("big-response")
    relay = start_relay("--upstream-timeout", "2", upstream=upstream.url)
    digest, received = hashlib.sha256(), 0
    try:
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", f"{relay.url}/upload/{shape}", content=b"ask") as response,
        ):
            assert response.status_code == 200
            for n, chunk in enumerate(response.iter_raw(256 * 1024)):
                digest.update(chunk)
                received += len(chunk)
                if n in (2, 40):
                    time.sleep(0.5)  # the client reads at its own pace; the relay's buffers fill meanwhile
                elif n % 8 == 0:
                    time.sleep(0.01)
        log = relay.log()
    finally:
        relay.stop()
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(response_bytes(size)).hexdigest()
    assert "Exception in ASGI application" not in log
    assert "upstream_timeout" not in log


def test_a_slow_but_steady_upstream_never_times_out(test_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("slow-reader")
    relay = start_relay("--upstream-timeout", "2", "--digest", "none", upstream=upstream.url)
    body = response_bytes(12 * SLOW_READ_RATE)  # 12 s at the upstream's 1 MiB/s, against a 2 s idle timeout
    try:
        response = httpx.post(f"{relay.url}/upload/slow", content=body, timeout=60)
    finally:
        relay.stop()
    assert response.status_code == 200, response.text
    assert response.json() == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def test_an_upstream_that_stops_reading_still_times_out(test_upstream) -> None:  # type: ignore[no-untyped-def]
    # The other side of the measure above: no byte taken for the idle timeout is still a 504.
    upstream = test_upstream("stall")
    relay = start_relay("--upstream-timeout", "1", "--digest", "none", upstream=upstream.url)
    started = time.monotonic()
    try:
        response = httpx.post(f"{relay.url}/upload/stall", content=b"x" * (64 * 1024 * 1024), timeout=60)
    finally:
        relay.stop()
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 20


def test_keep_alive_timeout_retires_a_pooled_connection_before_the_upstream_closes_it(test_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("keepalive-timeout")  # says `Keep-Alive: timeout=2`, closes idle ones at 2 s
    relay = start_relay(upstream=upstream.url)
    try:
        with httpx.Client(timeout=10) as client:
            first = client.post(f"{relay.url}/upload/a", content=b"1")
            time.sleep(0.3)
            soon = client.post(f"{relay.url}/upload/a", content=b"2")  # well inside timeout=2 - 1: reused
            time.sleep(1.4)
            later = client.post(f"{relay.url}/upload/a", content=b"3")  # 1.4 s idle: past 2 - 1, a new one
    finally:
        relay.stop()
    assert [r.status_code for r in (first, soon, later)] == [200, 200, 200]
    assert [r.headers["x-connection"] for r in (first, soon, later)] == ["1", "1", "2"]


@pytest.mark.parametrize(
    ("value", "expiry"),
    [
        (b"timeout=5, max=100", 4.0),
        (b"timeout=2", 1.0),
        (b"timeout=1", 0.0),
        (b"max=0", 0.0),
        (b"timeout=60", KEEPALIVE_EXPIRY),
        (b'timeout="3"', 2.0),
        (b"timeout=x, max=", KEEPALIVE_EXPIRY),
        (b"", KEEPALIVE_EXPIRY),
    ],
)
def test_keepalive_expiry_reads_the_header(value: bytes, expiry: float) -> None:
    assert keepalive_expiry([(b"Keep-Alive", value)]) == expiry
    assert keepalive_expiry([(b"Content-Length", b"3")]) == KEEPALIVE_EXPIRY
