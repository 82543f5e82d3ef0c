"""The relay's HTTP/1.1 protocol: uvicorn's httptools protocol with what the relay adds on the connection.

Theory of operation
-------------------
uvicorn parses requests with httptools and runs one request-response cycle at a time per connection. The relay's
subclass, `HeaderLimitProtocol`, adds what only the connection can do, each behind a `scope["extensions"]` key the
app reads (the app never imports this module: the keys are plain strings, named here):

- the 431 guard: httptools has no limit of its own, so the bytes of a head still being read are counted and a
  head over MAX_HEADER_BYTES is refused at once, memory flat; a head slower than the header timeout is a 408;
- interim responses (`INTERIM`: a 104 written on the transport before the final answer, for the IETF draft);
- the client socket handed over for a spliced body (`TAKE_BODY`), and a response ended by closing (`ABORT`);
- body bytes kept past a client's close (relay/keptbody.py): what arrived before the close reaches the app;
- what the protocol answers itself (a malformed request, headers over the limit, headers too slow) is the
  contract's JSON error, counted in relay_rejections_total like the app's refusals. When the bad bytes are
  inside a request's body (a bad chunk size, trailers over the limit), the answer belongs to that request: it
  carries its upload id (`UPLOAD_ID`: drawn here when the head is complete if the client chose no valid one,
  before the app has run, so the app adopts it; the app may replace it, as the resumable prefix does with the
  path's id) and the headers the app asked for (`REFUSAL_HEADERS`: a tus request's Tus-Resumable), the app records
  the upload as failed with the same code (`REFUSED`), and when the app's answer has already begun (an upstream
  that refused early) the connection is only closed: a second response would follow the first.

relay/server.py configures uvicorn with this protocol and runs it.
"""

from __future__ import annotations

import asyncio
import http
import json
from typing import Any, cast

from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from relay.errors import BadRequest, ClientTimeout, HeadersTooLarge, RelayError
from relay.headers import header_value, new_upload_id, valid_upload_id
from relay.keptbody import KeptBodyReceive
from relay.metrics import RelayMetrics
from relay.types import Scope
from relay.zerocopy import ClientSocket

__all__ = [
    "ABORT",
    "DEFAULT_HEADER_TIMEOUT",
    "INTERIM",
    "MAX_HEADER_BYTES",
    "RAW_TARGET",
    "REFUSAL_HEADERS",
    "REFUSED",
    "TAKE_BODY",
    "UPLOAD_ID",
    "HeaderLimitProtocol",
    "rejections_of",
]

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
# scope["extensions"] key: the upload id of the request when the client chose no valid one, drawn when its head is
# complete (a bad chunk in the same packet is answered before the app runs); the app goes by it (relay/proxy.py),
# or sets the id it goes by instead (the resumable prefix: the path's), so an answer given mid-body carries it.
UPLOAD_ID = "relay.upload_id"
# scope["extensions"] key the app may set: header fields, [(name, value)], for an answer given mid-body (a tus
# request's answers carry Tus-Resumable).
REFUSAL_HEADERS = "relay.refusal_headers"
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
        if _client_upload_id(self.headers) is None:
            extensions[UPLOAD_ID] = new_upload_id()
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
        extra: list[tuple[bytes, bytes]] = []
        body_cycle = self._body_cycle()
        if body_cycle is not None:
            scope = cast(Scope, body_cycle.scope)
            upload_id = _upload_id_of(scope) or upload_id
            extra = _refusal_headers(scope)
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
            f"content-length: {len(body)}\r\nx-upload-id: {upload_id}\r\nconnection: close\r\n"
        )
        fields = b"".join(b"%s: %s\r\n" % (name, value) for name, value in extra)
        self.transport.write(head.encode() + fields + b"\r\n" + body.encode())
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
    """The request's upload id as the app goes by it: the one under UPLOAD_ID (drawn at the head, or set by the
    app), else a valid X-Upload-ID from the client."""
    drawn = scope.get("extensions", {}).get(UPLOAD_ID)
    if isinstance(drawn, str):
        return drawn
    return _client_upload_id(scope.get("headers", []))


def _client_upload_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    chosen = header_value(headers, b"x-upload-id")
    return chosen.decode("ascii") if chosen is not None and valid_upload_id(chosen) else None


def _refusal_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The header fields the app asked for on an answer given mid-body (REFUSAL_HEADERS); only plain tokens and
    visible text, as they go on the wire as given."""
    fields = scope.get("extensions", {}).get(REFUSAL_HEADERS) or []
    return [
        (name, value)
        for name, value in fields
        if name and not any(byte in b"\r\n: " for byte in name) and not any(byte in b"\r\n" for byte in value)
    ]


def rejections_of(app: object) -> Counter | None:
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
