"""The upstream leg (relay/upstream.py) against upstreams that answer in every shape HTTP/1.1 allows.

Real relay processes, real test upstreams (tests/e2e/upstreams.py), real sockets.
"""

from __future__ import annotations

import time

import httpx
import pytest

from relay.testing import start_relay


def error_of(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


@pytest.mark.parametrize(
    ("shape", "status", "body"),
    [
        ("chunked", 200, b"hello world"),
        ("eof", 200, b"hello world, until close"),
        ("continue", 200, b"hello world"),
        ("204", 204, b""),
        ("keepalive", 200, b"hello world"),
    ],
)
def test_every_response_shape_is_relayed_and_the_connection_reused(test_upstream, shape, status, body) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("shapes")
    relay = start_relay(upstream=upstream.url)
    try:
        with httpx.Client(timeout=10) as client:
            # Three in a row: a connection kept alive after this shape must parse the next answer cleanly.
            answers = [client.post(f"{relay.url}/upload/{shape}", content=b"x" * (n * 100_000)) for n in (1, 3, 0)]
            chunked = client.post(f"{relay.url}/upload/{shape}", content=iter([b"a" * 70_000, b"b" * 5]))
    finally:
        relay.stop()
    for response in [*answers, chunked]:
        assert (response.status_code, response.content) == (status, body)
        assert response.headers["x-upload-id"]


def test_an_early_refusal_is_relayed_as_the_upstreams_answer(test_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("early-413")
    relay = start_relay(upstream=upstream.url)
    total = 32 * 1024 * 1024
    try:
        response = httpx.post(f"{relay.url}/upload/big", content=b"z" * total, timeout=20)
        record = httpx.get(f"{relay.url}/_relay/uploads/{response.headers['x-upload-id']}").json()
    finally:
        relay.stop()
    # httpcore used to see only the broken write and answer 502; the upstream's own verdict is what counts.
    assert response.status_code == 413
    assert response.json() == {"upstream": "too large"}
    assert response.headers["connection"] == "close"
    assert record["state"] == "completed" and record["upstream_status"] == 413
    assert record["bytes"] < total  # the relay stopped reading the body it no longer had a use for


def test_an_upstream_that_stops_reading_the_body_is_504(test_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("stall")  # reads the request head, then nothing: the relay's writes back up
    relay = start_relay("--upstream-timeout", "1", upstream=upstream.url)
    try:
        started = time.monotonic()
        response = httpx.post(f"{relay.url}/upload/x", content=b"z" * (64 * 1024 * 1024), timeout=30)
        elapsed = time.monotonic() - started
        record = httpx.get(f"{relay.url}/_relay/uploads/{response.headers['x-upload-id']}").json()
    finally:
        relay.stop()
    assert response.status_code == 504 and error_of(response) == "upstream_timeout"
    assert "sending the request body" in response.json()["error"]["message"]
    assert record["state"] == "failed"
    assert elapsed < 15
