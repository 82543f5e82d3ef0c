"""A minimal discarding HTTP/1.1 upstream for the benchmark suite.

`relay-sink --discard` hands every chunk to a worker thread and hashes it (about 0.6 CPU-s/GiB for sha256
alone), so on a 2-core machine it would cap "direct" and every relay below what they can do. This one is
an asyncio `BufferedProtocol` (uvloop when installed) that receives into a 1 MiB buffer, counts, and throws
the bytes away. It parses just enough HTTP/1.1: Content-Length and chunked bodies, `Expect: 100-continue`,
keep-alive. Every POST/PUT is answered `{"bytes": N, "framing": "content-length"|"chunked"}`; any GET
answers the running totals `{"requests": N, "bytes": N}`.

    python benchmarks/upstream.py --port 18080
"""

from __future__ import annotations

import argparse
import asyncio
import json

STATS = {"requests": 0, "bytes": 0}
BUF = 1 << 20


def _response(body: bytes, keep_alive: bool) -> bytes:
    close = b"" if keep_alive else b"connection: close\r\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n" % (len(body), close)
    return head + body


class DiscardProtocol(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buf = memoryview(bytearray(BUF))
        self.pending = bytearray()  # request head, chunk-size line or trailer being assembled
        self.state = "head"
        self.transport: asyncio.Transport | None = None
        self.remaining = 0
        self.count = 0
        self.framing = "content-length"
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        data = self.buf[:nbytes]
        while len(data) and self.transport is not None:
            data = getattr(self, "_" + self.state)(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # Each state consumes from `data` and returns what is left.
    def _head(self, data: memoryview) -> memoryview:
        self.pending += data
        end = self.pending.find(b"\r\n\r\n")
        if end < 0:
            if len(self.pending) > 65536:
                self.transport.close()  # type: ignore[union-attr]
            return data[len(data) :]
        block = bytes(self.pending[:end])
        rest = memoryview(bytes(self.pending[end + 4 :]))
        self.pending.clear()
        lines = block.decode("latin-1").split("\r\n")
        method, _target, version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        conn = headers.get("connection", "")
        self.keep_alive = "close" not in conn and (version == "HTTP/1.1" or "keep-alive" in conn)
        self.count = 0
        if method == "GET":
            self._reply(json.dumps(STATS).encode())
            return rest
        if headers.get("expect") == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        if "chunked" in headers.get("transfer-encoding", ""):
            self.framing, self.state = "chunked", "size"
        else:
            self.framing = "content-length"
            self.remaining = int(headers.get("content-length", "0") or 0)
            if self.remaining:
                self.state = "body"
            else:
                self._finish()
        return rest

    def _body(self, data: memoryview) -> memoryview:
        take = min(self.remaining, len(data))
        self.count += take
        self.remaining -= take
        if self.remaining == 0:
            if self.state == "body":
                self._finish()
            else:  # the end of one chunk's data: its CRLF follows
                self.state, self.remaining = "crlf", 2
        return data[take:]

    _data = _body

    def _crlf(self, data: memoryview) -> memoryview:
        take = min(self.remaining, len(data))
        self.remaining -= take
        if self.remaining == 0:
            self.state = "size"
        return data[take:]

    def _size(self, data: memoryview) -> memoryview:
        before = len(self.pending)
        self.pending += data[:64]
        end = self.pending.find(b"\r\n")
        if end < 0:
            return data[64:]
        size = int(bytes(self.pending[:end]).split(b";")[0], 16)
        self.pending.clear()
        if size == 0:
            self.state = "trailer"
        else:
            self.state, self.remaining = "data", size
        return data[end + 2 - before :]

    def _trailer(self, data: memoryview) -> memoryview:
        before = len(self.pending)
        self.pending += data[:4096]
        if self.pending.startswith(b"\r\n"):
            end = 2
        else:
            i = self.pending.find(b"\r\n\r\n")
            if i < 0:
                return data[4096:]
            end = i + 4
        self.pending.clear()
        self._finish()
        return data[end - before :]

    def _finish(self) -> None:
        STATS["requests"] += 1
        STATS["bytes"] += self.count
        self._reply(json.dumps({"bytes": self.count, "framing": self.framing}).encode())

    def _reply(self, body: bytes) -> None:
        self.state = "head"
        assert self.transport is not None
        self.transport.write(_response(body, self.keep_alive))
        if not self.keep_alive:
            self.transport.close()
            self.transport = None


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(DiscardProtocol, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18080)
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
