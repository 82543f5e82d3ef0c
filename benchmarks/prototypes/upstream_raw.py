"""PROTOTYPE: the upstream leg without httpx: HTTP/1.1 written straight to an asyncio transport.

Same interface as the httpx version (Upstream.send -> UpstreamResponse with status, headers, body(), aclose()).
Request body chunks are handed to the transport as they are (no h11 join, no anyio, no httpcore state);
back-pressure via StreamWriter.drain() (transport high-water mark). Keep-alive pool of idle connections.
Response bodies: Content-Length, chunked, or until close. Prototype quality: no HTTP/1.0 upstreams, no
response trailers, no 1xx other than 100.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from relay.errors import UpstreamFailed, UpstreamTimeout, UpstreamUnavailable

__all__ = ["Upstream", "UpstreamResponse", "map_upstream_errors"]

HIGH_WATER = 256 * 1024


@contextmanager
def map_upstream_errors() -> Iterator[None]:
    try:
        yield
    except TimeoutError as exc:
        raise UpstreamTimeout("the upstream made no progress in time") from exc
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        raise UpstreamFailed(f"the upstream connection broke: {exc or type(exc).__name__}") from exc


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def abort(self) -> None:
        self.writer.transport.abort()


class UpstreamResponse:
    def __init__(
        self, upstream: Upstream, conn: _Conn, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool
    ) -> None:
        self._upstream, self._conn = upstream, conn
        self.status, self.headers = status, headers
        self._keep_alive = keep_alive
        self._done = False

    async def body(self) -> AsyncIterator[bytes]:
        reader, timeout = self._conn.reader, self._upstream.timeout
        lengths = [v for k, v in self.headers if k.lower() == b"content-length"]
        chunked = any(k.lower() == b"transfer-encoding" and b"chunked" in v.lower() for k, v in self.headers)
        with map_upstream_errors():
            if chunked:
                while True:
                    line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
                    size = int(line.split(b";")[0], 16)
                    if size == 0:
                        while await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout) != b"\r\n":
                            pass
                        break
                    yield await asyncio.wait_for(reader.readexactly(size), timeout)
                    await asyncio.wait_for(reader.readexactly(2), timeout)
            elif lengths:
                left = int(lengths[0])
                while left:
                    data = await asyncio.wait_for(reader.read(min(left, 65536)), timeout)
                    if not data:
                        raise ConnectionError("short response body")
                    left -= len(data)
                    yield data
            else:
                self._keep_alive = False
                while data := await asyncio.wait_for(reader.read(65536), timeout):
                    yield data
        self._done = True

    async def aclose(self) -> None:
        if self._done and self._keep_alive:
            self._upstream._release(self._conn)
        else:
            self._conn.abort()


class Upstream:
    def __init__(self, base_url: str, *, timeout: float, connect_timeout: float) -> None:
        self.base_url = base_url
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.host_header = parts.netloc.encode()
        self._base_path = parts.path.rstrip("/").encode()
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._idle: list[_Conn] = []

    def url_for(self, raw_target: bytes) -> str:
        return f"http://{self.host_header.decode()}{(self._base_path + raw_target).decode('latin-1')}"

    def _release(self, conn: _Conn) -> None:
        if len(self._idle) < 64 and not conn.writer.transport.is_closing():
            self._idle.append(conn)
        else:
            conn.abort()

    async def _connect(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if not conn.writer.transport.is_closing() and not conn.reader.at_eof():
                return conn
            conn.abort()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=65536), self.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"could not connect to the upstream: {exc or type(exc).__name__}") from exc
        writer.transport.set_write_buffer_limits(high=HIGH_WATER)
        return _Conn(reader, writer)

    async def send(
        self,
        method: str,
        raw_target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterator[bytes],
        content_length: int | None,
    ) -> UpstreamResponse:
        conn = await self._connect()
        head = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method.encode(), self._base_path + raw_target, self.host_header)]
        head += [b"%s: %s\r\n" % (k, v) for k, v in headers]
        head.append(
            b"content-length: %d\r\n\r\n" % content_length
            if content_length is not None
            else b"transfer-encoding: chunked\r\n\r\n"
        )
        writer, timeout = conn.writer, self.timeout
        transport = writer.transport
        try:
            writer.write(b"".join(head))
            with map_upstream_errors():
                async for chunk in body:
                    if content_length is None:
                        writer.writelines([b"%x\r\n" % len(chunk), chunk, b"\r\n"])
                    else:
                        transport.write(chunk)
                    if transport.get_write_buffer_size() > HIGH_WATER:
                        await asyncio.wait_for(writer.drain(), timeout)
                if content_length is None:
                    writer.write(b"0\r\n\r\n")
                await asyncio.wait_for(writer.drain(), timeout)
                while True:
                    raw = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), timeout)
                    lines = raw[:-4].split(b"\r\n")
                    status = int(lines[0].split(b" ", 2)[1])
                    if status == 100:
                        continue
                    break
            resp_headers = []
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                resp_headers.append((k.strip().lower(), v.strip()))
            keep = not any(k == b"connection" and b"close" in v.lower() for k, v in resp_headers)
            return UpstreamResponse(self, conn, status, resp_headers, keep)
        except BaseException:
            conn.abort()  # a body error: the upstream sees a short body and a closed connection
            raise

    async def aclose(self) -> None:
        for conn in self._idle:
            with contextlib.suppress(Exception):
                conn.writer.close()
        self._idle.clear()
