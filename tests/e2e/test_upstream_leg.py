"""The upstream leg (relay/upstream.py) against upstreams that answer in every shape HTTP/1.1 allows.

Real relay processes, real test upstreams (tests/e2e/upstreams.py), real sockets.
"""

from __future__ import annotations

import base64
import socket
import time

import httpx
import pytest

from relay.testing import start_relay
from tests.e2e.test_hardening import read_all_until_json


def error_of(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


@pytest.mark.parametrize(
    ("shape", "status", "body", "reused"),
    [
        ("chunked", 200, b"hello world", True),
        ("continue", 200, b"hello world", True),
        ("204", 204, b"", True),
        ("keepalive", 200, b"hello world", True),
        ("processing", 200, b"hello world", True),  # 1.6 s of 102s against a 1 s idle timeout
        ("eof", 200, b"hello world, until close", False),
        ("gzip", 200, b"hello world, until close", False),  # any coding but chunked: until close, undecoded
    ],
)
def test_every_response_shape_is_relayed_and_the_connection_reused_when_it_may_be(  # type: ignore[no-untyped-def]
    test_upstream, shape, status, body, reused
) -> None:
    upstream = test_upstream("shapes")
    relay = start_relay("--upstream-timeout", "1", upstream=upstream.url)
    try:
        with httpx.Client(timeout=10) as client:
            # In a row: a connection kept alive after this shape must parse the next answer cleanly.
            answers = [client.post(f"{relay.url}/upload/{shape}", content=b"x" * (n * 100_000)) for n in (1, 3, 0)]
            answers.append(client.post(f"{relay.url}/upload/{shape}", content=iter([b"a" * 70_000, b"b" * 5])))
    finally:
        relay.stop()
    for response in answers:
        assert (response.status_code, response.content) == (status, body)
        assert response.headers["x-upload-id"]
    connections = [int(response.headers["x-connection"]) for response in answers]
    assert connections == ([1, 1, 1, 1] if reused else [1, 2, 3, 4])


def test_credentials_in_the_upstream_url_become_basic_auth(test_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("recorder")
    relay = start_relay(upstream=upstream.url.replace("http://", "http://us%3Aer:p%40ss@"))
    try:
        seen = httpx.post(
            f"{relay.url}/upload/a", content=b"abc", headers={"authorization": "Bearer the-clients-own"}
        ).json()
    finally:
        relay.stop()
    assert seen["authorization"] == ["Basic " + base64.b64encode(b"us:er:p@ss").decode()]


def test_an_unsolicited_second_answer_is_never_relayed(test_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("double")
    relay = start_relay(upstream=upstream.url)
    try:
        with httpx.Client(timeout=10) as client:
            first = client.post(f"{relay.url}/upload/a", content=b"abc")
            second = client.post(f"{relay.url}/upload/b", content=b"def")
    finally:
        relay.stop()
    assert (first.status_code, first.content) == (200, b"ok")
    assert (second.status_code, second.content) == (200, b"ok")  # a new connection: the old one was dropped


def test_an_upstream_gone_before_an_empty_body_ends_is_502(test_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("close-at-once")
    relay = start_relay(upstream=upstream.url)
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
            sock.sendall(b"POST /upload/empty HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            time.sleep(0.5)  # the upstream connection is gone by now
            sock.sendall(b"0\r\n\r\n")
            answer = read_all_until_json(sock)
    finally:
        relay.stop()
    assert answer.startswith(b"HTTP/1.1 502") and b'"upstream_failed"' in answer, answer[:300]
    assert "Traceback" not in relay.log()


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


def test_an_upstream_that_answers_and_resets_gets_a_contract_answer(test_upstream) -> None:  # type: ignore[no-untyped-def]
    # It closes with the body unread, so the kernel resets the connection. Whether the relay reads the 413
    # before its next write meets the reset is a race (for nginx too): either answer is fine, a 500 is not.
    upstream = test_upstream("early-413-rude")
    relay = start_relay(upstream=upstream.url)
    try:
        responses = [httpx.post(f"{relay.url}/upload/big", content=b"z" * (8 << 20), timeout=20) for _ in range(3)]
        records = [httpx.get(f"{relay.url}/_relay/uploads/{r.headers['x-upload-id']}").json() for r in responses]
    finally:
        relay.stop()
    for response, record in zip(responses, records, strict=True):
        if response.status_code == 413:
            assert response.json() == {"upstream": "too large"} and record["upstream_status"] == 413
        else:
            assert response.status_code == 502 and error_of(response) == "upstream_failed"
            assert record["state"] == "failed"
    assert "Traceback" not in relay.log()


def test_a_kept_alive_connection_the_upstream_closes_before_the_first_byte_is_replaced(test_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("short-keepalive")  # closes connections idle for 0.5 s
    relay = start_relay(upstream=upstream.url)
    try:
        first = httpx.post(f"{relay.url}/upload/a", content=b"abc", timeout=10)
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
            # The relay takes the kept-alive connection when these headers arrive (it is 0.1 s idle) ...
            sock.sendall(b"POST /upload/b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
            time.sleep(1.0)  # ... and the upstream closes it before the first body byte comes
            sock.sendall(b"hello")
            answer = sock.recv(65536)
    finally:
        relay.stop()
    assert first.status_code == 200 and first.headers["x-connection"] == "1"
    # Nothing had been written to the closed connection: a new one carries the request.
    assert answer.startswith(b"HTTP/1.1 200") and b"x-connection: 2" in answer.lower(), answer[:300]


def test_an_upstream_that_talks_but_never_reads_the_body_is_504(test_upstream) -> None:  # type: ignore[no-untyped-def]
    upstream = test_upstream("trickle")  # 102 Processing every 0.3 s, body never read
    relay = start_relay("--upstream-timeout", "1", upstream=upstream.url)
    try:
        started = time.monotonic()
        response = httpx.post(f"{relay.url}/upload/x", content=b"z" * (64 * 1024 * 1024), timeout=30)
        elapsed = time.monotonic() - started
    finally:
        relay.stop()
    # Bytes the upstream sends are not progress for the body: only bytes it takes are.
    assert response.status_code == 504 and error_of(response) == "upstream_timeout"
    assert elapsed < 15
