"""A request head that never ends is answered 431 once 64 KiB are in, with the relay's memory flat (issue 10).

httptools reports a header only when its line ends and buffers it until then, so counting completed lines
alone let an endless `X-Endless: zzzz...` be read whole.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from tests.hostile.conftest import RelayUnderTest

ENDLESS = 8 * 1024 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(
    "head",
    [
        b"POST /upload/x HTTP/1.1\r\nHost: a\r\nX-Endless: ",  # one header value without end
        b"POST /upload/x HTTP/1.1\r\nHost: a\r\nX-Endless",  # a header name without end
        b"POST /upload/" + b"a" * 1000,  # a request target without end
    ],
)
def test_an_endless_head_gets_431_and_memory_stays_flat(hostile_relay: RelayUnderTest, head: bytes) -> None:
    before = rss_kib(hostile_relay.relay.pid)
    sent = 0
    with socket.create_connection(("127.0.0.1", hostile_relay.port), timeout=10) as sock:

        def send_forever() -> None:
            nonlocal sent
            try:
                sock.sendall(head)
                piece = b"z" * 65536
                while sent < ENDLESS:
                    sock.sendall(piece)
                    sent += len(piece)
            except OSError:
                pass  # the relay closed the connection: what this test wants

        writer = threading.Thread(target=send_forever)
        writer.start()
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        writer.join(30)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"headers_too_large"' in answer
    assert sent < ENDLESS  # closed long before the 8 MiB were sent
    assert rss_kib(hostile_relay.relay.pid) - before < 16 * 1024
    assert hostile_relay.healthy()


def test_a_large_head_in_many_reads_under_the_limit_is_served(hostile_relay: RelayUnderTest) -> None:
    # 40 KiB of headers sent in small pieces: reads and completed lines must not both be counted.
    headers = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"v" * 1000) for n in range(40))
    request = b"POST /upload/x HTTP/1.1\r\nHost: a\r\n" + headers + b"Content-Length: 2\r\n\r\nok"
    with socket.create_connection(("127.0.0.1", hostile_relay.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for at in range(0, len(request), 3000):
            sock.sendall(request[at : at + 3000])
            threading.Event().wait(0.002)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
