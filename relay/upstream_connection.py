"""One upstream connection: an asyncio Protocol that writes with flow control and parses the answer as it arrives.

relay/upstream.py is the sender (the pool, the request, the waits and their timeouts); this file is what
one connection knows. The answer is parsed by httptools (llhttp) in `data_received`, whatever the sender
is doing at that moment, so an answer that comes while the body is still being sent is seen at once.
The callbacks only record state (status and headers, body chunks, end of message, errors, closed,
paused) and `wake` the one coroutine waiting on the connection (`wait`): the sender, between chunks or
for the head of the answer, or `UpstreamResponse.body`, for the next chunk. Any byte wakes it, so 1xx
answers and header bytes restart an idle timeout too.

- Flow control both ways: the transport pauses the protocol above HIGH_WATER bytes waiting to be sent
  (`paused`; the sender waits), and reading stops above READ_HIGH_WATER bytes of answer body the relay's
  client has not taken yet (`take_body` resumes it), so a slow client holds the upstream back rather
  than the relay's memory.
- Framing as llhttp reads it: chunked, Content-Length, or neither (the body ends when the connection
  does, `until_close`); a response to HEAD has no body whatever its headers say; 1xx answers are skipped.
- Anything that makes the connection's state unknown fails it and it is never reused: bytes while idle
  (a 408, garbage), a second answer to one request, a switch of protocols, a malformed response, a close
  before the answer's end (except an answer that runs until the close).
- Reuse (`reusable`): only after a whole answer that llhttp says keeps the connection alive, its body all
  taken. `keepalive_expiry` reads the upstream's `Keep-Alive: timeout=N, max=M`: the connection is
  dropped KEEPALIVE_MARGIN s before the upstream would close it for idleness, and never kept longer than
  KEEPALIVE_EXPIRY s (shorter than common servers' 5 s) whatever it says.
- The upstream's progress (`upstream_progress`) is asked of the kernel (TCP_INFO): bytes the upstream
  acknowledged plus the receive window it announced, i.e. how far it lets the relay send. This also sees
  an upstream that still reads the body out of its own receive buffer after the relay's last write, as
  far as its kernel announces it (window updates come when its free space doubles): the silent stretch
  left is the last part of its receive buffer, about a second at 1 MiB/s on loopback here. Without
  TCP_INFO, fewer bytes waiting in the transport is the measure.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import deque
from typing import cast

import httptools

from relay.errors import UpstreamFailed, UpstreamTimeout

__all__ = ["Connection", "keepalive_expiry", "upstream_progress"]

HIGH_WATER = 256 * 1024  # transport write buffer before the sender waits
READ_HIGH_WATER = 256 * 1024  # response bytes buffered before the socket stops being read
# Shorter than the idle keep-alive of common upstream servers (uvicorn, Node, Apache: 5 s). A connection
# the upstream closes for idleness at the moment the relay reuses it would fail a request whose body is
# already flowing and cannot be replayed; reusing only younger connections keeps clear of that moment.
KEEPALIVE_EXPIRY = 4.0
# A `Keep-Alive: timeout=N` from the upstream: the connection is dropped this long before N runs out.
KEEPALIVE_MARGIN = 1.0
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked (u64) and tcpi_snd_wnd (u32, the peer's window, Linux 5.19+).
TCP_INFO_SIZE = 232
TCPI_BYTES_ACKED = 120
TCPI_SND_WND = 228


def keepalive_expiry(headers: list[tuple[bytes, bytes]]) -> float:
    """Seconds an idle connection may be reused, from the response's `Keep-Alive` header (RFC 2068 19.7.1).

    `timeout=N` is the upstream's idle timeout: the relay stops reusing the connection KEEPALIVE_MARGIN s
    before it, never later than KEEPALIVE_EXPIRY; `max=0` means no further request. Malformed parameters
    are ignored (the default applies).
    """
    expiry = KEEPALIVE_EXPIRY
    for name, value in headers:
        if name.lower() != b"keep-alive":
            continue
        for param in value.split(b","):
            key, _, raw = param.partition(b"=")
            key, raw = key.strip().lower(), raw.strip().strip(b'"')
            if not raw.isdigit():
                continue
            if key == b"timeout":
                expiry = min(expiry, max(0.0, int(raw) - KEEPALIVE_MARGIN))
            elif key == b"max" and int(raw) == 0:
                expiry = 0.0
    return expiry


def upstream_progress(transport: asyncio.Transport) -> int:
    """How far the upstream lets the relay send: bytes it acknowledged plus the window it announced.

    It grows when the upstream takes bytes off the relay's send queue and when it reads what its own receive
    buffer holds (its kernel announces the room). Where TCP_INFO is not there, fewer bytes waiting in the
    transport is the measure (negated, so that larger is further, too).
    """
    sock = transport.get_extra_info("socket")
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE) if sock is not None else b""
    except (OSError, ValueError, AttributeError):  # not a TCP socket, or already closed
        raw = b""
    if len(raw) < TCPI_BYTES_ACKED + 8:
        return -transport.get_write_buffer_size()
    (acked,) = struct.unpack_from("=Q", raw, TCPI_BYTES_ACKED)
    window = struct.unpack_from("=I", raw, TCPI_SND_WND)[0] if len(raw) >= TCPI_SND_WND + 4 else 0
    return int(acked + window)


class Connection(asyncio.Protocol):
    """One upstream connection: writes with flow control, a response parsed as bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.in_use = False
        self.idle_since = 0.0
        self.lost = False
        self.error: Exception | None = None
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.head_only = False  # a response to HEAD: no body whatever its headers say
        self.reset_response()

    def reset_response(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False  # llhttp's verdict, taken when the message completes (it resets after)
        self.expiry = KEEPALIVE_EXPIRY  # idle seconds this connection may still be reused after the response
        self.until_close = False  # no Content-Length, not chunked: the body ends when the connection does
        self.body: deque[bytes] = deque()
        self.buffered = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not registered subclasses
        self.transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if not self.in_use:  # bytes from an idle connection (a 408, garbage): never reuse it
            self.fail(UpstreamFailed("the upstream sent bytes nobody asked for"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(UpstreamFailed("the upstream switched protocols; the relay speaks HTTP/1.1 only"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, UpstreamFailed) else None
            self.fail(cause or UpstreamFailed(f"the upstream sent a malformed response: {exc}"))
        self.wake()  # any byte is progress: header bytes and 1xx answers restart the idle timeout too

    def eof_received(self) -> bool:
        return False  # close our side too; a half-open upstream connection is of no use

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.head_done and not self.complete and self.until_close and exc is None and self.error is None:
            self.complete = True
        elif not self.complete and self.error is None:
            detail = f": {exc}" if exc else ""
            self.error = UpstreamFailed(f"the upstream closed the connection{detail}")
        self.wake()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.wake()

    # -- httptools callbacks ------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request: never relayed, never reused
            raise UpstreamFailed("the upstream sent a response nobody asked for")
        self.reset_response()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            return  # informational (100 Continue): the final answer follows
        self.status = status
        self.head_done = True
        # Framing as llhttp reads it: chunked when it is the last transfer coding; any other transfer coding,
        # or neither header, means the body runs until the connection closes.
        codings = b",".join(value for name, value in self.headers if name.lower() == b"transfer-encoding")
        if codings:
            self.until_close = not codings.rstrip().lower().endswith(b"chunked")
        else:
            self.until_close = all(name.lower() != b"content-length" for name, _ in self.headers)
        if self.head_only:
            self.complete = True
        self.wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:  # a body after a HEAD answer: ignored; the connection is not reused
            return
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self.wake()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()
            self.expiry = keepalive_expiry(self.headers)
            self.idle_since = time.monotonic()  # the upstream's idle clock starts at its last byte
            self.wake()

    # -- used by the sender and the response ----------------------------------------------------------
    def fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.abort()
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, timeout: float, what: str) -> None:
        """Wait for the next callback (bytes, drain, close); UpstreamTimeout after `timeout` s of nothing."""
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self.waiter
        except TimeoutError:
            raise UpstreamTimeout(f"the upstream made no progress in {timeout:g} s ({what})") from None
        finally:
            self.waiter = None

    def take_body(self) -> list[bytes]:
        chunks = list(self.body)
        self.body.clear()
        self.buffered = 0
        if self.transport is not None and not self.lost:
            self.transport.resume_reading()
        return chunks

    def usable(self) -> bool:
        """Still open as far as the relay knows (the upstream may have closed it while it sat idle)."""
        return not self.lost and self.error is None and self.transport is not None and not self.transport.is_closing()

    def reusable(self) -> bool:
        return (
            not self.lost
            and self.error is None
            and self.complete
            and not self.head_only
            and not self.body
            and self.keep_alive
        )
