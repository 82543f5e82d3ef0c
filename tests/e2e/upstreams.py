"""Test upstreams that misbehave on purpose, each a real server process.

    python -m tests.e2e.upstreams MODE

Modes:
  seed           the StackOverflow seed's "other server": POST /upload/{p1}/{p2}?q1=... -> {p1, p2, q1, body}
  close-mid-body reads the request headers and 64 KiB of body, then closes the connection
  stall          reads the request headers and then never reads or answers again
  early-413      reads the headers, answers 413 at once, then drains the body and closes (lingering close)
  early-413-rude reads the headers, answers 413 at once and closes with the body unread (the kernel resets)
  shapes         reads the body, then answers in the shape the path names: /upload/chunked (chunked body),
                 /upload/eof (no length: the body ends at close), /upload/continue (100 Continue first),
                 /upload/204 (no body), /upload/keepalive (Content-Length; the connection stays open),
                 /upload/gzip (Transfer-Encoding: gzip: the body ends at close), /upload/processing
                 (102 Processing every 0.4 s for 1.6 s first). Every answer carries X-Connection: N, the
                 number of connections accepted so far.
  double         answers every request twice (200 "ok", then an unsolicited 500)
  short-keepalive answers 200 with X-Connection: N; closes a connection idle for 0.5 s (uvicorn does at 5 s)
  trickle        reads the request head, never the body, and sends 102 Processing every 0.3 s
  close-at-once  accepts connections and closes them at once, reading nothing
  broken-response sends a 200 with Content-Length 1000 and 10 bytes of body, then closes
  recorder       answers 200 {"seen": N, "target": T, "authorization": [A...], "sha256": H}: N connections
                 accepted so far, T the raw request target, A the Authorization headers it got, H the body's sha256
  big-response   reads the body, then answers /upload/big-cl with RESPONSE_CL_SIZE bytes (Content-Length) and
                 /upload/big-chunked with RESPONSE_CHUNKED_SIZE bytes (chunked), both response_bytes()
  slow-reader    reads the request body at SLOW_READ_RATE bytes/s, then answers 200 {"bytes": N, "sha256": H}
  keepalive-timeout answers 200 with X-Connection: N and `Keep-Alive: timeout=2`; closes a connection idle for 2 s
  tls-recorder   recorder over TLS; the certificate and key files are named by $TLS_CERT and $TLS_KEY

Each prints "listening on http://127.0.0.1:PORT" once bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import ssl
import sys

CONNECTIONS = 0
RESPONSE_CL_SIZE = 100 * 1024 * 1024
RESPONSE_CHUNKED_SIZE = 20 * 1024 * 1024
SLOW_READ_RATE = 1024 * 1024
_BLOCK = random.Random(7).randbytes(1024 * 1024 - 7)  # an odd length, so blocks never line up with reads


def response_bytes(size: int) -> bytes:
    """The big-response body: seeded random bytes, the same in the test and here."""
    return (_BLOCK * (size // len(_BLOCK) + 1))[:size]


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def close_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    await reader.readexactly(64 * 1024)
    writer.transport.abort()


async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    await asyncio.sleep(3600)


async def _answer_413(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    body = b'{"upstream": "too large"}'
    writer.write(
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()


async def early_413_rude(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _answer_413(reader, writer)
    writer.close()


async def double(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await _read_head(reader)
    await _read_body(reader, head)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 500 Oops\r\nContent-Length: 5\r\n\r\nhello")
    await writer.drain()
    await asyncio.sleep(3600)


async def short_keepalive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global CONNECTIONS
    CONNECTIONS += 1
    seen = CONNECTIONS
    while True:
        try:
            head = await asyncio.wait_for(_read_head(reader), 0.5)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        await _read_body(reader, head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Connection: %d\r\n\r\nok" % seen)
        await writer.drain()


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _read_head(reader)
    while True:
        writer.write(b"HTTP/1.1 102 Processing\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)


async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def early_413(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _answer_413(reader, writer)
    writer.write_eof()
    with contextlib.suppress(ConnectionError):
        while await reader.read(65536):
            pass
    writer.close()


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> None:
    lines = head.lower().split(b"\r\n")
    length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")), None)
    if length is not None:
        await reader.readexactly(length)
        return
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        await reader.readexactly(size + 2)
    await reader.readuntil(b"\r\n")


async def shapes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global CONNECTIONS
    CONNECTIONS += 1
    seen = b"X-Connection: %d\r\n" % CONNECTIONS
    while True:
        try:
            head = await _read_head(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        shape = head.split(b" ", 2)[1].rsplit(b"/", 1)[-1]
        if shape == b"continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await _read_body(reader, head)
        if shape == b"processing":
            for _ in range(4):
                writer.write(b"HTTP/1.1 102 Processing\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.4)
        if shape == b"chunked":
            writer.write(b"HTTP/1.1 200 OK\r\n%sTransfer-Encoding: chunked\r\n\r\n" % seen)
            writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        elif shape in (b"eof", b"gzip"):
            coding = b"Transfer-Encoding: gzip\r\n" if shape == b"gzip" else b""
            writer.write(b"HTTP/1.1 200 OK\r\n%s%s\r\nhello world, until close" % (seen, coding))
            await writer.drain()
            writer.close()
            return
        elif shape == b"204":
            writer.write(b"HTTP/1.1 204 No Content\r\n%s\r\n" % seen)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n%s\r\nhello world" % seen)
        await writer.drain()


async def broken_response(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await _read_head(reader)
    lines = head.split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
    await writer.drain()
    writer.transport.abort()


async def recorder(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global CONNECTIONS
    CONNECTIONS += 1
    while True:
        try:
            head = await _read_head(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        body = b""
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                body = await reader.readexactly(int(line.split(b":")[1]))
        target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
        auth = [
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"authorization:")
        ]
        seen = {
            "seen": CONNECTIONS,
            "target": target,
            "authorization": auth,
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        body = json.dumps(seen).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()


async def big_response(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await _read_head(reader)
    await _read_body(reader, head)
    if b"/big-chunked" in head.split(b"\r\n", 1)[0]:
        body = response_bytes(RESPONSE_CHUNKED_SIZE)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for at in range(0, len(body), 300_000):
            piece = body[at : at + 300_000]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
    else:
        body = response_bytes(RESPONSE_CL_SIZE)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for at in range(0, len(body), 1024 * 1024):
            writer.write(body[at : at + 1024 * 1024])
            await writer.drain()
    await writer.drain()
    writer.close()


async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await _read_head(reader)
    lines = head.lower().split(b"\r\n")
    left = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:"))
    digest, total, step = hashlib.sha256(), 0, SLOW_READ_RATE // 16
    while left:
        piece = await reader.readexactly(min(step, left))
        digest.update(piece)
        total += len(piece)
        left -= len(piece)
        await asyncio.sleep(1 / 16)
    body = json.dumps({"bytes": total, "sha256": digest.hexdigest()}).encode()
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


async def keepalive_timeout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global CONNECTIONS
    CONNECTIONS += 1
    seen = CONNECTIONS
    while True:
        try:
            head = await asyncio.wait_for(_read_head(reader), 2.0)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        await _read_body(reader, head)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=2\r\nX-Connection: %d\r\n\r\nok" % seen
        )
        await writer.drain()


def seed_app():  # type: ignore[no-untyped-def]
    # FastAPI resolves the string annotations (from __future__) in module globals, hence the global import.
    global Request
    from fastapi import FastAPI, Request

    app = FastAPI()

    @app.post("/upload/{p1}/{p2}")
    async def upload(p1: str, p2: str, q1: str, request: Request):  # type: ignore[no-untyped-def]
        return {"p1": p1, "p2": p2, "q1": q1, "body": (await request.body()).decode("latin-1")}

    return app


async def main(mode: str) -> None:
    if mode == "seed":
        import uvicorn

        from relay.server import bind_socket

        sock = bind_socket("127.0.0.1", 0)
        config = uvicorn.Config(seed_app(), log_config=None, access_log=False)
        server = uvicorn.Server(config)
        print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
        await server.serve(sockets=[sock])
        return
    handlers = {
        "close-mid-body": close_mid_body,
        "stall": stall,
        "early-413": early_413,
        "early-413-rude": early_413_rude,
        "double": double,
        "close-at-once": close_at_once,
        "short-keepalive": short_keepalive,
        "trickle": trickle,
        "shapes": shapes,
        "broken-response": broken_response,
        "recorder": recorder,
        "big-response": big_response,
        "slow-reader": slow_reader,
        "keepalive-timeout": keepalive_timeout,
        "tls-recorder": recorder,
    }
    tls = None
    if mode.startswith("tls-"):
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
    server = await asyncio.start_server(handlers[mode], "127.0.0.1", 0, ssl=tls)
    print(f"listening on http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
