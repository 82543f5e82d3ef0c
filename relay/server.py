"""Serving: uvicorn configured for the relay, the 431 guard, body bytes kept past a client's close, the embedded
sample upstream, malloc tuning.

What the protocol answers itself (a malformed request, headers over the limit, headers too slow) is the contract's
JSON error, counted in relay_rejections_total like the app's refusals. When the bad bytes are inside a request's
body (a bad chunk size, trailers over the limit), the answer belongs to that request: it carries its upload id, the
app records the upload as failed with the same code (`REFUSED`), and when the app's answer has already begun (an
upstream that refused early) the connection is only closed: a second response would follow the first.

uvicorn runs with uvloop and httptools (about twice the body throughput of asyncio + h11 here), without
`proxy_headers` (it would trust X-Forwarded-For from 127.0.0.1 and let a local client spoof its address),
and without its own `server`/`date` headers so the upstream's pass through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import socket
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any, cast

import uvicorn
from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from relay.accesslog import quiet_lifecycle
from relay.errors import BadRequest, ClientTimeout, HeadersTooLarge, RelayError
from relay.headers import header_value, new_upload_id, valid_upload_id
from relay.keptbody import KeptBodyReceive
from relay.metrics import RelayMetrics
from relay.types import ASGIApp, Receive, Scope, Send
from relay.zerocopy import ClientSocket

__all__ = [
    "HeaderLimitProtocol",
    "bind_socket",
    "loop_factory",
    "serve",
    "uvicorn_config",
]

log = logging.getLogger("relay.server")
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_HEADER_TIMEOUT = 30.0
RAW_TARGET = "relay.raw_target"  # scope["extensions"] key
ABORT = "relay.abort"  # scope["extensions"] key: a callable that ends the response by closing the connection
# scope["extensions"] key: send_interim(status, headers) -> bool writes a 1xx interim response (ASGI has no message
# for one but 103; the resumable uploads' 104 needs it) before the final answer.
INTERIM = "relay.send_interim"
# scope["extensions"] key: take_body(scope) -> ClientSocket | None hands the client socket over for a spliced body.
TAKE_BODY = "relay.take_body"
# scope["extensions"] key: the RelayError the protocol answered in the middle of this request's body; the app finds
# it there when its receive() says http.disconnect, and records the upload with that code (relay/proxy.py).
REFUSED = "relay.refused"
# scope["extensions"] key the app sets: the upload id it drew for the request (none chosen by the client), so an
# answer the protocol gives mid-body carries it too.
UPLOAD_ID = "relay.upload_id"
_INTERIM_REASONS = {104: b"Upload Resumption Supported"}


class HeaderLimitProtocol(HttpToolsProtocol):
    """httptools with a header-size cap (431 past it; httptools has none), a header-read timeout (408; uvicorn
    has none, so a client trickling header bytes would hold a connection forever), the raw request target, and
    the body bytes read before a client closed handed to the app before `http.disconnect` (KeptBodyReceive).
    """

    max_header_bytes = MAX_HEADER_BYTES
    header_timeout = DEFAULT_HEADER_TIMEOUT
    rejections: Counter | None = None  # the app's relay_rejections_total (serve() finds it), labelled by code
    _header_timer: asyncio.TimerHandle | None = None
    _kept_body: KeptBodyReceive | None = None  # the current cycle's

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        # The current cycle only (a pipelined one queued behind it never starts now), with bytes left unread, not
        # answered and not ended by the relay (relay.abort, the forced quit: they mark it disconnected first; a
        # framing error the protocol answered has marked it cut short already, `_end_cycle`).
        cycle, kept = self.cycle, self._kept_body
        if kept is not None and kept.cycle is cycle and (cycle.body or not cycle.more_body) and not kept.cut_short:
            kept.cut_short = not cycle.disconnected and not cycle.response_complete
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        self._headers_too_large = False
        self._in_head = True
        self._head_began_here = True
        self._raw_head_bytes = 0
        self._arm_header_timer()
        super().on_message_begin()

    def data_received(self, data: bytes) -> None:
        """Count the bytes of a head still being read, not only its completed lines.

        httptools reports a header only once its line has ended, and buffers it until then: a head that never
        ends (`X-Endless: zzzz...` with no CRLF) would be read whole into memory. A read that arrives while a
        head is open counts in full; the read that began the head is left to the per-line count (it may hold
        the end of a pipelined request before it). Both counts are lower bounds of the head's size and are
        kept apart (lines completed in a counted read would otherwise count twice), so memory stays under
        the limit plus two reads.
        """
        self._head_began_here = False
        super().data_received(data)
        if not getattr(self, "_in_head", False) or self._head_began_here or self.transport.is_closing():
            return
        self._raw_head_bytes += len(data)  # the head is still open after this read: all of it is head
        if self._raw_head_bytes > self.max_header_bytes:
            self._headers_too_large = True
            self._refuse(HeadersTooLarge("request headers too large"))

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served; its own timeouts apply
        self._refuse(ClientTimeout("request headers took too long"))

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        self._header_bytes = 0
        self._in_head = False
        extensions: dict[str, Any] = {
            ABORT: self._abort_response,
            INTERIM: self._send_interim,
            TAKE_BODY: self._take_body,
        }
        # ASGI's query_string cannot tell "/x?" from "/x"; the relay forwards the target byte for byte, so
        # hand it the raw origin-form target (absolute-form targets fall back to raw_path + query_string).
        if self.url.startswith(b"/"):
            extensions[RAW_TARGET] = self.url.split(b"#", 1)[0]
        cast(Any, self.scope)["extensions"] = extensions
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not previous:  # a new request (an upgrade makes none)
            # Its task has been created but has not run: run_asgi looks `receive` up on the cycle when it does.
            self._kept_body = KeptBodyReceive(self.cycle)
            self.cycle.receive = self._kept_body  # type: ignore[method-assign,assignment]

    def _send_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """Write an interim (1xx) response now, ahead of the final one; False when it cannot be sent.

        Only to HTTP/1.1 clients (RFC 9110 15.2: never to HTTP/1.0), only before the final response has started,
        and never 100/101 (uvicorn owns 100 Continue; 101 changes protocols). Header names and values must be
        plain tokens and visible text: they go on the wire as given.
        """
        cycle = self.cycle
        if not 102 <= status <= 199 or cycle is None or cycle.response_started or self.transport.is_closing():
            return False
        if self.scope.get("http_version") != "1.1":
            return False
        for name, value in headers:
            if not name or any(byte in b"\r\n:" for byte in name) or any(byte in b"\r\n" for byte in value):
                raise ValueError(f"unsafe interim header {name!r}")
        reason = _INTERIM_REASONS.get(status, b"Informational")
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        lines.extend(b"%s: %s\r\n" % (name, value) for name, value in headers)
        lines.append(b"\r\n")
        self.transport.write(b"".join(lines))
        return True

    def _take_body(self, scope: Any) -> ClientSocket | None:
        """Hand the client socket over for the body of the request `scope` (relay/zerocopy.py); None when it cannot
        be had.

        uvicorn stops reading the socket and what it already read of the body comes along. The connection then
        closes after the answer: the HTTP parser never sees the spliced bytes, so it cannot find the next request.
        Not for TLS (the socket carries ciphertext), a body uvicorn has already read whole, a client gone, or a
        request that is not the protocol's current one: a pipelined request parsed behind it, or a request the
        app made up (a resumable upload's forward copies the extensions into a scope of its own, and its body is
        not this socket's)."""
        cycle, transport = self.cycle, self.transport
        if cycle is None or cycle.scope is not scope or cycle.disconnected or not cycle.more_body:
            return None
        if cycle.response_started or transport.is_closing() or transport.get_extra_info("ssl_object") is not None:
            return None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        if cycle.waiting_for_100_continue:  # what uvicorn's receive() would have sent first
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        self.flow.pause_reading()
        buffered = bytes(cycle.body)
        cycle.body = bytearray()
        cycle.keep_alive = False
        return ClientSocket(sock.fileno(), buffered)

    def _abort_response(self) -> None:
        """End a response that has started and cannot be finished (the upstream broke mid-answer): close the
        connection so the client sees a truncated body, and mark the cycle disconnected so uvicorn logs no
        "Exception in ASGI application" for a failure the relay has already recorded."""
        if self.cycle is not None:
            self.cycle.disconnected = True
        self.transport.close()

    def _count(self, size: int) -> None:
        self._header_bytes = getattr(self, "_header_bytes", 0) + size
        if self._header_bytes > self.max_header_bytes:
            self._headers_too_large = True
            raise ValueError("request headers too large")  # httptools turns it into HttpParserError

    def send_400_response(self, msg: str) -> None:
        """What httptools could not parse (Content-Length with Transfer-Encoding, two Content-Lengths, a bad
        byte in the request line, a bad chunk size...) gets the contract's JSON error, not uvicorn's text/plain
        one. Header bytes over the limit (in the head or in a chunked body's trailers) are a 431."""
        if getattr(self, "_headers_too_large", False):
            in_body = self._body_cycle() is not None
            self._refuse(HeadersTooLarge(f"request {'trailers' if in_body else 'headers'} too large"))
            return
        self._refuse(BadRequest(f"malformed HTTP request ({msg.rstrip('.')})"))

    def _body_cycle(self) -> RequestResponseCycle | None:
        """The request whose body is being read, when it is: its head is done, its body is not, and it has not
        been answered. Bad bytes then belong to it, not to a request after it."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete or getattr(self, "_in_head", False) or not cycle.more_body:
            return None
        return cycle

    def _refuse(self, error: RelayError) -> None:
        """Answer `error` and close the connection: JSON, with an X-Upload-ID (every answer on a routed path
        carries one, and the path may not even be known here), counted in relay_rejections_total.

        Inside a request's body the answer is that request's: its upload id, and the error left in its scope for
        the app's record. The bytes it had read before go to the app as after a client's close (KeptBodyReceive):
        a resumable append keeps them. When the app's response has started, only closing is left."""
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self.transport.close()  # the answer is on the wire: a second response after it would be garbage
            return
        upload_id = new_upload_id()
        body_cycle = self._body_cycle()
        if body_cycle is not None:
            scope = cast(Scope, body_cycle.scope)
            upload_id = _upload_id_of(scope) or upload_id
            extensions = scope.get("extensions")
            if isinstance(extensions, dict):
                extensions[REFUSED] = error
            self._end_cycle(body_cycle)
        if self.rejections is not None:
            self.rejections.labels(code=error.code).inc()
        body = json.dumps({"error": error.to_dict()})
        reason = http.HTTPStatus(error.status_code).phrase
        head = (
            f"HTTP/1.1 {error.status_code} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nx-upload-id: {upload_id}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body.encode())
        self.transport.close()

    def _end_cycle(self, cycle: RequestResponseCycle) -> None:
        """The request is over for the app: its receive() says http.disconnect at once (after the bytes read
        before the error) and its send() writes nothing, so no answer of its own can follow the protocol's."""
        kept = self._kept_body
        if kept is not None and kept.cycle is cycle and cycle.body:
            kept.cut_short = True
        cycle.disconnected = True
        cycle.message_event.set()


def _upload_id_of(scope: Scope) -> str | None:
    """The request's upload id as the app picks it: the one it drew and published (UPLOAD_ID), else a valid
    X-Upload-ID from the client."""
    drawn = scope.get("extensions", {}).get(UPLOAD_ID)
    if isinstance(drawn, str):
        return drawn
    chosen = header_value(scope.get("headers", []), b"x-upload-id")
    return chosen.decode("ascii") if chosen is not None and valid_upload_id(chosen) else None


def _rejections_of(app: object) -> Counter | None:
    """The relay_rejections_total of the RelayApp inside `app`'s wrappers (AccessLog keeps it as `.app`), so
    what the protocol answers itself is counted with the app's refusals; None for any other app."""
    for _ in range(8):
        metrics = getattr(getattr(app, "ctx", None), "metrics", None)
        if isinstance(metrics, RelayMetrics):
            return metrics.rejections
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed. uvicorn's `loop="uvloop"` only applies inside `Server.run`, which we don't use."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind before serving so `--port 0` works and the real port is known.

    `reuse_port` (SO_REUSEPORT): several listening sockets on one port, the kernel spreading connections
    across them (`--workers`, relay/workers.py).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    guarded: bool = True,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    drain_timeout: float = 10.0,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    rejections: Counter | None = None,
) -> uvicorn.Config:
    attributes = {"header_timeout": header_timeout, "rejections": rejections}
    protocol = type("RelayHttpProtocol", (HeaderLimitProtocol,), attributes)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=protocol if guarded else "httptools",
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        date_header=False,
        access_log=False,
        log_config=None,
        # On SIGTERM/SIGINT uvicorn stops accepting, lets requests in flight finish for this long, then
        # cancels them: a cancelled upload's upstream request dies mid-body, so it never looks complete.
        # Annotated int by uvicorn, used as an asyncio timeout: fractions work.
        timeout_graceful_shutdown=drain_timeout,  # type: ignore[arg-type]
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )


class _Follower(uvicorn.Server):
    """A second server in the same loop: the main server owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _EndQuietly:
    """The outermost ASGI layer: a request cancelled because the server is going away (the drain timeout ran
    out, or a second Ctrl-C) ends by closing its connection, not with uvicorn's "Exception in ASGI application"
    traceback. The app below has already recorded the upload as failed (`shutting_down`)."""

    def __init__(self, app: ASGIApp, server: uvicorn.Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not self.server.should_exit:
                raise
            log.warning(
                "%s %s cut short by the shutdown (shutting_down)",
                scope.get("method", "-"),
                scope.get("path", "-"),
            )
            abort = scope.get("extensions", {}).get(ABORT)
            if abort is not None:
                abort()


def _force_quit(server: uvicorn.Server) -> None:
    """What uvicorn's force_exit leaves undone: it stops waiting for requests but still waits for their
    connections to close (asyncio's Server.wait_closed) and leaves them running. Close them and cancel them."""
    server.should_exit = server.force_exit = True
    for connection in list(server.server_state.connections):
        cycle = getattr(connection, "cycle", None)
        if cycle is not None:
            cycle.disconnected = True  # no "returned without completing response" for what we cut short
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.abort()
    for task in list(server.server_state.tasks):
        task.cancel()


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


async def serve(
    main: tuple[ASGIApp, socket.socket],
    *,
    follower: tuple[ASGIApp, socket.socket] | None = None,
    on_ready: Callable[[], Any] | None = None,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    drain_timeout: float = 10.0,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> bool:
    """Serve `main` (and `follower`, the embedded upstream) until a signal; call `on_ready` once listening.

    `background` jobs run while the relay serves and are cancelled after. Returns True when a second SIGINT
    forced the quit (uploads in flight were cut short).
    """
    main_app, main_sock = main
    host, port = main_sock.getsockname()[:2]
    config = uvicorn_config(
        main_app,
        host=host,
        port=port,
        header_timeout=header_timeout,
        drain_timeout=drain_timeout,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        rejections=_rejections_of(main_app),
    )
    main_server = uvicorn.Server(config)
    config.app = _EndQuietly(main_app, main_server)
    servers: list[tuple[uvicorn.Server, socket.socket]] = []
    if follower is not None:
        f_app, f_sock = follower
        f_host, f_port = f_sock.getsockname()[:2]
        # The embedded upstream outlives the relay's drain: it is stopped only once the relay has finished.
        f_config = uvicorn_config(f_app, host=f_host, port=f_port, guarded=False, drain_timeout=drain_timeout)
        f_server = _Follower(f_config)
        f_config.app = _EndQuietly(f_app, f_server)
        servers.append((f_server, f_sock))
    servers.append((main_server, main_sock))

    async def announce() -> None:
        while not all(server.started for server, _ in servers):
            if any(server.should_exit for server, _ in servers):
                return
            await asyncio.sleep(0.01)
        if on_ready is not None:
            on_ready()

    async def run_main() -> None:
        try:
            await main_server.serve(sockets=[main_sock])
        finally:
            for server, _ in servers:
                server.should_exit = True

    async def watch_force_quit() -> None:
        while not main_server.force_exit:
            await asyncio.sleep(0.05)
        for server, _ in servers:
            _force_quit(server)

    loop = asyncio.get_running_loop()
    # The embedded upstream runs in a context whose uvicorn INFO lines are dropped: the relay's say it all.
    tasks = [loop.create_task(server.serve(sockets=[sock]), context=quiet_lifecycle()) for server, sock in servers[:-1]]
    tasks.append(asyncio.ensure_future(run_main()))
    tasks.append(asyncio.ensure_future(announce()))
    helpers = [asyncio.ensure_future(job()) for job in background]
    helpers.append(asyncio.ensure_future(watch_force_quit()))
    try:
        await asyncio.gather(*tasks)
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    return main_server.force_exit
