"""The interim-response seam (relay.server INTERIM): a 1xx written on the transport before the final answer.

A real uvicorn with the relay's protocol class, in a thread, on a free port; raw sockets read the bytes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from relay.protocol import INTERIM
from relay.server import bind_socket, uvicorn_config


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    send_interim = scope["extensions"][INTERIM]
    sent = [send_interim(104, [(b"Location", b"/resumable/abc"), (b"Upload-Draft-Interop-Version", b"6")])]
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    sent.append(send_interim(104, [(b"Location", b"/too-late")]))  # after the final answer began: refused
    try:
        send_interim(104, [(b"Bad\r\nName", b"x")])
    except ValueError:
        sent.append(False)
    await send({"type": "http.response.body", "body": b"%d%d" % (sent[0], sent[1])})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=0))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while not data.endswith(b"10") and not data.endswith(b"00"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_a_104_goes_out_before_the_body_is_read_and_the_final_answer_follows(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        first = sock.recv(65536)  # the body has not been sent yet: only the interim answer can be here
        assert first == (
            b"HTTP/1.1 104 Upload Resumption Supported\r\nLocation: /resumable/abc\r\n"
            b"Upload-Draft-Interop-Version: 6\r\n\r\n"
        )
        sock.sendall(b"hello")
        rest = b""
        while not rest.endswith((b"\r\n\r\n10", b"\r\n\r\n00")) and (chunk := sock.recv(65536)):
            rest += chunk
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert rest.endswith(b"\r\n\r\n10")  # sent once, refused after the final answer began


def test_no_interim_answer_to_http_1_0(port: int) -> None:
    data = exchange(port, b"POST /x HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello")
    assert data.startswith(b"HTTP/1.1 200 ") and b"104" not in data.split(b"\r\n\r\n")[0]
    assert data.endswith(b"00")
