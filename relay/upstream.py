"""The upstream leg: HTTP/1.1 written by the relay, the pool of keep-alive connections, the answer's body.

Why not httpx here. The relay's request is always the same shape: a head the relay has already
validated, then body chunks that must leave unchanged and at once. httpx, httpcore, h11 and anyio cost
about 1 ms of CPU per request and 0.6 CPU-s per GiB on top of what the data path needs (see
benchmarks/RESULTS.md), and httpcore is half-duplex: an upstream that refuses early (413 and close) looks
like a broken connection. So this module writes the request itself (it is a few lines: the head, then the
chunks, framed by Content-Length or chunked) and leaves the hard part, reading the response, to httptools:
llhttp, the C parser uvicorn itself uses, which knows chunked bodies, 1xx, 204/304 and keep-alive rules.

Two files. relay/upstream_connection.py is one connection: the asyncio Protocol that parses the answer
as bytes arrive, its flow-control flags, the `Keep-Alive` reading and the measure of the upstream's
progress (TCP_INFO). This file is the sender's side: `Upstream` (the pool, the request head, the body
written or spliced, every wait and its timeout) and `UpstreamResponse` (the answer handed to relay.proxy).

- Backpressure: the transport pauses the protocol above HIGH_WATER buffered bytes; the sender then waits
  until it drains, so at most HIGH_WATER bytes per upload sit in the relay on the upstream side.
- Timeouts are idle timeouts (the contract's `--upstream-timeout`): no bytes taken by the upstream,
  while the transport is paused, and no bytes read (1xx answers and header bytes count), while a
  response is awaited, for that long gives UpstreamTimeout. A slow but moving transfer never times out:
  what the upstream took is measured (`upstream_progress`: bytes it acknowledged plus the window it
  announced), not guessed from "the transport became writable" (on loopback the kernel's send buffer is
  several MiB and wakes a writer only when much of it has drained, which at 1 MiB/s is seconds apart).
  When the idle deadline comes, the measure is taken again; further than at the last sample is progress.
  Time spent waiting for the relay's own client (its next body chunk, or reading the response) is not
  the upstream's and never counts.
- Full duplex: the response is parsed as it arrives, also while the body is still being sent. An early
  final answer of 400 or more (an upstream refusing an upload it will not read) stops the body and is
  relayed as the upstream's answer, even when the upstream then closes the connection. An earlier
  answer below 400 lets the body go on; if the upstream then stops reading, that answer stands too.
  An upstream that answers and closes with the body unread makes the kernel reset the connection; if
  the relay's next write meets the reset before the answer is read, the answer is lost (502), as it
  would be for any proxy: well-behaved servers drain (lingering close).
- Connections are kept alive and reused (LIFO, expiring after KEEPALIVE_EXPIRY s idle, or sooner when the
  upstream's `Keep-Alive: timeout=N` says it closes idle connections earlier) only when the
  request was sent whole and the response read to its end under keep-alive rules. The head waits for
  the first body chunk (one write for a small upload); a reused connection found closed by then has
  had nothing written to it, so a new connection takes its place.
- A failure of the body generator (a limit, the client gone) aborts the connection: the upstream sees a
  short body and a reset, never a complete request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from urllib.parse import unquote, urlsplit

from relay.errors import UpstreamFailed, UpstreamTimeout, UpstreamUnavailable
from relay.upstream_connection import Connection, upstream_progress
from relay.zerocopy import SplicedBody, UpstreamGone

__all__ = ["Upstream", "UpstreamResponse"]

MAX_IDLE = 64


class UpstreamResponse:
    """The upstream's answer, headers in hand, body still on the wire.

    `early` is true when the upstream answered before the whole request body was sent: the relay
    stopped sending, and the connection is not reused.
    """

    def __init__(self, upstream: Upstream, conn: Connection, *, early: bool) -> None:
        self._upstream = upstream
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self.early = early
        self._released = False

    async def body(self) -> AsyncIterator[bytes]:
        """The body exactly as upstream sent it (de-chunked, never decompressed)."""
        conn, timeout = self._conn, self._upstream.timeout
        while True:
            if conn.body:
                # Bytes that arrived while the client was reading the last ones are already here (reading may
                # even be paused on them): take them before waiting, or no callback would ever come. The
                # time spent in `yield` is the client's, so the idle wait below starts only after it.
                for chunk in conn.take_body():
                    yield chunk
                continue
            if conn.complete:
                return
            if conn.error is not None:
                raise conn.error
            await conn.wait(timeout, "reading the response body")

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        if not self.early and conn.reusable():
            self._upstream.release(conn)
        elif conn.transport is not None:
            conn.transport.abort()


class Upstream:
    """A pool of keep-alive connections to one upstream base URL."""

    def __init__(self, base_url: str, *, timeout: float, connect_timeout: float, ca_file: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.ca_file = ca_file
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        # Verified against the system CAs, or only against --upstream-ca when given (a private CA).
        self._ssl = ssl.create_default_context(cafile=ca_file) if parts.scheme == "https" else None
        self._host_header = parts.netloc.rpartition("@")[2].encode("idna")  # IDNA: ASCII stays as it is
        # Credentials in the upstream URL become Basic auth (as httpx did), replacing a forwarded Authorization.
        self._authorization: bytes | None = None
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._authorization = b"Basic " + base64.b64encode(userinfo)
        self._base_path = parts.path.rstrip("/").encode()
        self._idle: list[Connection] = []

    async def send(
        self,
        method: str,
        raw_target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterator[bytes],
        content_length: int | None,
    ) -> UpstreamResponse:
        """Stream `body` upstream and return once the response headers are in.

        With `content_length` the body goes with that Content-Length; without it, chunked. An exception
        raised inside `body` propagates out of here after the connection is aborted mid-body, so the
        upstream never sees a complete request (see the relay's promise in the README).
        """
        conn = await self._acquire()
        conn.head_only = method == "HEAD"
        head = self._head(method, raw_target, headers, content_length)
        spliced: bool | None = None
        if isinstance(body, SplicedBody) and self._ssl is None:
            conn, spliced = await self._send_spliced(conn, head, body)
        if spliced is None:
            conn, early = await self._send_body(conn, head, body, chunked=content_length is None)
        else:
            early = spliced
        try:
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await self._wait_answer(conn)
        except BaseException:
            if conn.transport is not None:
                conn.transport.abort()
            raise
        return UpstreamResponse(self, conn, early=early)

    def _head(
        self, method: str, raw_target: bytes, headers: list[tuple[bytes, bytes]], content_length: int | None
    ) -> bytes:
        # The target goes byte for byte as the client sent it (after the base path); the headers were
        # validated and filtered by relay.headers, so they are written as they are, case kept.
        target = self._base_path + raw_target
        lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), target, self._host_header)]
        if self._authorization is not None:
            headers = [(name, value) for name, value in headers if name.lower() != b"authorization"]
            lines.append(b"Authorization: %s\r\n" % self._authorization)
        lines.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
        if content_length is None:
            lines.append(b"Transfer-Encoding: chunked\r\n\r\n")
        else:
            lines.append(b"Content-Length: %d\r\n\r\n" % content_length)
        return b"".join(lines)

    async def _send_body(
        self, conn: Connection, head: bytes, body: AsyncIterator[bytes], *, chunked: bool
    ) -> tuple[Connection, bool]:
        """Write the head and every chunk; return the connection used and whether an early answer stopped
        the body. On any error the connection is aborted (the upstream sees a short body) and it re-raises."""
        pending: bytes | None = head  # sent with the first chunk: one write for a small request
        try:
            async for chunk in body:
                if pending is not None and not conn.usable():
                    conn = await self._replace(conn)  # nothing written yet: a fresh connection is safe
                if conn.error is not None or conn.lost:
                    return conn, self._early_or_raise(conn)
                transport = conn.transport
                assert transport is not None
                if chunked:
                    parts = [b"%x\r\n" % len(chunk), chunk, b"\r\n"]
                elif pending is None:
                    transport.write(chunk)  # the hot path: uvloop sends at once, writelines() would queue
                    parts = None
                else:
                    parts = [chunk]
                if parts is not None:
                    if pending is not None:
                        parts.insert(0, pending)
                        pending = None
                    transport.writelines(parts)
                if conn.paused and not await self._wait_writable(conn, transport):
                    return conn, True  # the upstream answered and then stopped reading: its answer stands
                if self._refused(conn) or conn.lost:
                    return conn, self._early_or_raise(conn)
            if pending is not None and not conn.usable():
                conn = await self._replace(conn)
            if conn.error is not None or conn.lost:  # while the last client bytes were awaited
                return conn, self._early_or_raise(conn)
            tail = [pending] if pending is not None else []
            if chunked:
                tail.append(b"0\r\n\r\n")
            if tail and conn.transport is not None:
                conn.transport.writelines(tail)
            return conn, False
        except BaseException:
            if conn.transport is not None:
                conn.transport.abort()
            raise
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:  # an early stop leaves the generator suspended: run its cleanup now
                await aclose()

    async def _send_spliced(self, conn: Connection, head: bytes, body: SplicedBody) -> tuple[Connection, bool | None]:
        """The zero-copy seam (relay/zerocopy.py): head and body spliced to the upstream socket on plain TCP.

        Returns the connection and whether an early answer stopped the body, or None when the body was not spliced
        (nothing written: the caller iterates it). Errors abort the connection, as on the normal path."""
        if not conn.usable():
            conn = await self._replace(conn)
        transport = conn.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if transport is None or sock is None or transport.get_write_buffer_size():
            return conn, None

        def attach(waiter: asyncio.Future[None] | None) -> None:
            conn.waiter = waiter  # response bytes, drains and closes wake the splice loop too

        try:
            stopped = await body.splice(
                sock.fileno(),
                head,
                upstream_idle=self.timeout,
                upstream_progress=lambda: upstream_progress(transport),
                stop=lambda: conn.lost or conn.error is not None or self._refused(conn),
                attach=attach,
            )
            if stopped is None:
                return conn, None
            return conn, self._early_or_raise(conn) if stopped else False
        except UpstreamGone as exc:
            return conn, await self._answer_after_reset(conn, exc)
        except UpstreamTimeout:
            if conn.head_done:  # it answered, then stopped reading: its answer stands
                return conn, True
            transport.abort()
            raise
        except BaseException:
            transport.abort()
            raise

    async def _answer_after_reset(self, conn: Connection, exc: UpstreamGone) -> bool:
        """A write met a closed upstream socket: an answer it sent before closing may still be unread; read it
        (bounded by the upstream timeout), else the upstream failed mid-body."""
        try:
            while not conn.head_done and not conn.lost:
                await conn.wait(self.timeout, "reading an answer after the upstream closed")
        except UpstreamTimeout:
            pass
        if conn.head_done:
            return True
        if conn.transport is not None:
            conn.transport.abort()
        raise conn.error or UpstreamFailed(f"the upstream closed the connection mid-body: {exc}")

    async def _replace(self, stale: Connection) -> Connection:
        """A kept-alive connection the upstream closed before the relay wrote to it: open a new one."""
        if stale.transport is not None:
            stale.transport.abort()
        conn = await self._connect()
        conn.head_only = stale.head_only
        return conn

    async def _wait_writable(self, conn: Connection, transport: asyncio.Transport) -> bool:
        """Wait while the transport is paused; False when the upstream answered and then stopped reading.

        Progress is what the upstream takes (`upstream_progress`, sampled at each wake-up and when the
        deadline comes), so a slow but steady reader, whose progress the kernel does not report as
        writability for seconds, is seen. Bytes the upstream sends meanwhile wake this up to re-check, but
        do not count.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        mark = upstream_progress(transport)
        while conn.paused and not conn.lost and not self._refused(conn):
            remaining = deadline - loop.time()
            if remaining <= 0:
                now_mark = upstream_progress(transport)
                if now_mark > mark:
                    mark, deadline = now_mark, loop.time() + self.timeout
                    continue
                if conn.head_done:
                    return False
                raise UpstreamTimeout(f"the upstream made no progress in {self.timeout:g} s (sending the request body)")
            with contextlib.suppress(UpstreamTimeout):
                await conn.wait(remaining, "sending the request body")
            now_mark = upstream_progress(transport)
            if now_mark > mark:
                mark, deadline = now_mark, loop.time() + self.timeout
        return True

    async def _wait_answer(self, conn: Connection) -> None:
        """Wait for the next byte of the answer. Until the upstream has read the whole body (several MiB may
        still sit in the kernel's buffers), each idle period in which it took some of it is progress too."""
        transport = conn.transport
        mark = upstream_progress(transport) if transport is not None else 0
        while True:
            try:
                await conn.wait(self.timeout, "waiting for the response headers")
                return
            except UpstreamTimeout:
                now_mark = upstream_progress(transport) if transport is not None else 0
                if now_mark <= mark:
                    raise
                mark = now_mark

    @staticmethod
    def _refused(conn: Connection) -> bool:
        return conn.head_done and conn.status >= 400

    def _early_or_raise(self, conn: Connection) -> bool:
        """The upstream stopped taking the body: relay its answer when it gave one, else fail."""
        if conn.head_done:
            return True
        raise conn.error or UpstreamFailed("the upstream closed the connection mid-body")

    async def _acquire(self) -> Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable() and now - conn.idle_since < conn.expiry:
                conn.reset_response()
                conn.in_use = True
                return conn
            if conn.transport is not None:
                conn.transport.abort()
        return await self._connect()

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            raise UpstreamUnavailable(f"could not connect to the upstream within {self.connect_timeout:g} s") from None
        except ssl.SSLCertVerificationError as exc:
            hint = "" if self.ca_file else "; give its CA with --upstream-ca FILE"
            raise UpstreamUnavailable(
                f"the upstream's TLS certificate was not accepted: {exc.verify_message or exc.reason}{hint}"
            ) from exc
        except ssl.SSLError as exc:
            raise UpstreamUnavailable(f"TLS with the upstream failed: {exc.reason or exc}") from exc
        except OSError as exc:
            raise UpstreamUnavailable(f"could not connect to the upstream: {exc}") from exc
        conn.in_use = True
        return conn

    def release(self, conn: Connection) -> None:
        """Back to the pool, after a whole request and a whole keep-alive response."""
        conn.in_use = False
        if conn.expiry <= 0:  # the upstream closes it at once, or takes no further request on it
            if conn.transport is not None:
                conn.transport.close()
            return
        now = time.monotonic()
        # The pool is used from its top; expired or closed connections below it are dropped here, and
        # when it is full the oldest goes.
        fresh = []
        for idle in self._idle:
            if idle.usable() and now - idle.idle_since < idle.expiry:
                fresh.append(idle)
            elif idle.transport is not None:
                idle.transport.close()
        if len(fresh) >= MAX_IDLE:
            oldest = fresh.pop(0)
            if oldest.transport is not None:
                oldest.transport.close()
        fresh.append(conn)
        self._idle = fresh

    async def aclose(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
