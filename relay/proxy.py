"""The relayed route: one upload, from its headers to the upstream's answer.

Theory of operation
-------------------
1. Everything that can be decided from the headers is decided before the first `receive()`: route and
   method, dot segments, upload id, token, header size, declared length, concurrency cap, multipart
   boundary. uvicorn sends `100 Continue` only on the first `receive()` before a response, so a refused
   client never has to send its body. Refusals carry `Connection: close` and a bounded lingering drain
   (see LINGER_BYTES), never the whole body.
2. The body is one async generator handed to the upstream leg. It pulls one ASGI message at a time
   (uvicorn stops reading the socket past 64 KiB buffered, the upstream leg asks for the next chunk only
   once the upstream socket has room: backpressure end to end), feeds the sans-IO inspector and yields each chunk
   unchanged.
3. One chunk is held back: chunk N leaves only after chunk N+1 (or the end of the body) has arrived and
   been inspected. So `inspector.finish()` runs before the last byte leaves, and a body that fails
   validation never reaches the upstream complete.
   Counting, limits and multipart parsing run inline on the event loop. sha256 goes to one worker thread
   without an await per chunk (relay/hashing.py): the loop waits only for a part's digest. An await per
   chunk on a thread pool was measured and lost (280 vs 391 MB/s for a 1 GiB upload).
   A large raw Content-Length body with nothing to check but its sha256 may skip all this: relay/splicewire.py
   lets the upstream leg splice it socket to socket, its bytes counted (and tee'd to a hash thread) per splice.
4. Any failure inside the generator (a limit, malformed multipart, the client gone) raises out of it,
   which kills the upstream request mid-body. The error is remembered here, so it is what gets answered,
   not what the upstream leg saw of it.
5. Before `http.response.start` an error can still be answered as JSON; after it, only by closing the
   connection.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from relay import splicewire
from relay.bus import EventBus
from relay.core.digests import DigestChecker, request_digests
from relay.core.events import Completed, ErrorInfo, Event, Failed, Started
from relay.core.inspector import Hash, UploadInspector
from relay.core.limits import check_declared_length
from relay.errors import (
    BadRequest,
    ClientDisconnected,
    ClientTimeout,
    DigestMismatch,
    HeadersTooLarge,
    MethodNotAllowed,
    RelayError,
    ShuttingDown,
    TooManyUploads,
    Unauthorized,
    UploadIdInUse,
)
from relay.hashing import new_hash, sha256_factory
from relay.headers import (
    forward_request_headers,
    forward_response_headers,
    has_dot_segment,
    header_value,
    headers_size,
    new_upload_id,
    valid_upload_id,
)
from relay.metrics import RelayMetrics
from relay.settings import Route, Settings
from relay.state import MemoryState, SharedState
from relay.types import Receive, Scope, Send
from relay.uploads import UploadRegistry
from relay.upstream import Upstream, UpstreamResponse
from relay.watchdog import IdleWatch

__all__ = [
    "RelayContext",
    "Upload",
    "check_token",
    "client_address",
    "cors_headers",
    "drain_body",
    "error_response",
    "may_have_body",
]

# Lingering close. An error answered while the client may still be sending is written at once, then the
# relay keeps reading (and dropping) the body for a bounded while before it closes. Closing a socket with
# unread data makes the kernel send a reset, and a client that writes its whole body before reading (httpx,
# requests) then loses our answer. Bounded, so a refused 5 GB upload is not received after all.
LINGER_BYTES = 64 * 1024 * 1024
LINGER_SECONDS = 2.0
HASHER = sha256_factory()
# Byte counters reach Prometheus in batches of this size (and at the end of every body).
METRICS_BATCH = 4 * 1024 * 1024


@dataclass
class RelayContext:
    """What every upload shares; built by the app's lifespan."""

    settings: Settings
    bus: EventBus
    registry: UploadRegistry
    metrics: RelayMetrics
    upstreams: dict[str, Upstream]
    in_flight: int = 0
    per_client: dict[str, int] = field(default_factory=dict)
    state: SharedState | None = None  # None: this process only, over `bus` and `registry`

    @property
    def shared(self) -> SharedState:
        """Reads the admin endpoints may await, and the caps across relays (relay/state/)."""
        if self.state is None:
            self.state = MemoryState(self.bus, self.registry)
        return self.state

    def emit(self, event: Event) -> None:
        self.registry.apply(event)
        self.bus.publish(event)


async def error_response(
    send: Send,
    error: RelayError,
    *,
    upload_id: str | None,
    close: bool,
    extra: list[tuple[bytes, bytes]] | None = None,
    linger: Receive | None = None,
) -> int:
    """The contract's JSON error; with `linger`, drain what the client still sends after answering.

    Returns the number of body bytes drained.
    """
    body = json.dumps({"error": error.to_dict()}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if upload_id is not None:
        headers.append((b"x-upload-id", upload_id.encode()))
    if close:
        headers.append((b"connection", b"close"))
    headers.extend(extra or [])
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    if linger is None:
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return 0
    await send({"type": "http.response.body", "body": body, "more_body": True})
    drained = await drain_body(linger)
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return drained


async def drain_body(receive: Receive, *, max_bytes: int = LINGER_BYTES, seconds: float = LINGER_SECONDS) -> int:
    """Read and drop request-body bytes until the body ends, the client leaves, or a bound is hit."""
    drained = 0
    deadline = time.monotonic() + seconds
    while drained < max_bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            message = await asyncio.wait_for(receive(), remaining)
        except TimeoutError:
            break
        if message["type"] != "http.request":
            break
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return drained


PLAIN_EXPOSED = b"X-Upload-ID, X-Upload-Sha256, Repr-Digest"


def check_token(settings: Settings, headers: list[tuple[bytes, bytes]]) -> None:
    """--token / --token-file: `Authorization: Bearer` must match one of them (else Unauthorized)."""
    tokens = settings.accepted_tokens
    if not tokens:
        return
    given = header_value(headers, b"authorization") or b""
    scheme, _, credential = given.partition(b" ")
    # Compare against every token (no early exit), each in constant time.
    matches = [hmac.compare_digest(credential.strip(), token.encode()) for token in tokens]
    if scheme.lower() != b"bearer" or not any(matches):
        raise Unauthorized()


def client_address(settings: Settings, scope: Scope) -> str:
    """The peer, or with --trust-forwarded the nearest hop a trusted proxy reported in X-Forwarded-For."""
    peer = str((scope.get("client") or ("unknown",))[0])
    if settings.trust_forwarded:
        chain = b",".join(value for key, value in scope["headers"] if key == b"x-forwarded-for")
        hops = [hop.strip() for hop in chain.split(b",") if hop.strip()]
        if hops:
            return hops[-1].decode("latin-1")
    return peer


def cors_headers(settings: Settings, headers: list[tuple[bytes, bytes]], expose: bytes) -> list[tuple[bytes, bytes]]:
    """CORS response headers for an allowed Origin: exact match only, never `*`."""
    origin = header_value(headers, b"origin")
    if origin is None or origin.decode("latin-1") not in settings.cors_origins:
        return []
    return [
        (b"access-control-allow-origin", origin),
        (b"vary", b"Origin"),
        (b"access-control-expose-headers", expose),
    ]


def may_have_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for key, value in headers:
        if key == b"transfer-encoding" or (key == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


class Upload:
    """One request on a routed path."""

    def __init__(self, ctx: RelayContext, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        self.ctx = ctx
        self.route = route
        self.scope = scope
        self.receive = receive
        self.send = send
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]
        self.method: str = scope["method"]
        self.raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        self.raw_target: bytes = scope.get("extensions", {}).get("relay.raw_target") or (
            self.raw_path + (b"?" + scope["query_string"] if scope.get("query_string") else b"")
        )
        self.started = time.monotonic()
        self.upload_id = new_upload_id()
        self.id_chosen = False  # by the client (X-Upload-ID): only such an id can be in use on another relay
        self.inspector: UploadInspector | None = None
        self.digests: DigestChecker | None = None  # RFC 9530 Content-/Repr-Digest, when the request has one
        self.content_length: int | None = None
        self.body_done = False
        self.unreported_received = 0  # bytes not yet added to the Prometheus counters
        self.unreported_forwarded = 0
        self.client_gone = False
        self.response_started = False
        self.body_error: RelayError | None = None
        self.finished = False
        self.lease: str | None = None  # the caps' slot across relays, with --redis
        self.body_hash: Hash | None = None  # the last hash the inspector made: a raw body's sha256
        self.client_key = self.client_address()
        self.cors = self.cors_headers()

    # -- 1. decisions from the headers --------------------------------------------------------------------

    def check_headers(self) -> None:
        """Raise the first refusal that the headers alone justify; sets the upload id and inspector."""
        settings = self.ctx.settings
        client_id = header_value(self.headers, b"x-upload-id")
        if client_id is not None and valid_upload_id(client_id):
            self.upload_id = client_id.decode("ascii")
            self.id_chosen = True
            # First, before any other refusal: a refusal recorded under the id of an upload in progress would
            # replace that upload's record and end its event streams.
            if self.ctx.registry.is_active(self.upload_id):
                raise UploadIdInUse(f"upload {self.upload_id} is in progress")
        if headers_size(self.headers) > settings.max_header_bytes:
            raise HeadersTooLarge(f"request headers exceed {settings.max_header_bytes} bytes")
        self.content_length = self.declared_length()  # early, so every refusal records the declared total
        self.check_transfer_encoding()
        if has_dot_segment(self.raw_path):
            raise BadRequest("the path has a '.' or '..' segment")
        if self.method not in self.route.methods:
            raise MethodNotAllowed(f"{self.method} is not allowed here; use {', '.join(self.route.methods)}")
        if client_id is not None and not valid_upload_id(client_id):
            raise BadRequest("X-Upload-ID must match [A-Za-z0-9_-]{1,64}")
        self.check_token()
        check_declared_length(self.content_length, self.route.limits)
        cap = settings.max_concurrent_uploads
        if cap is not None and self.ctx.in_flight >= cap:
            raise TooManyUploads(f"{cap} uploads are in progress; try again shortly")
        per_client = settings.max_uploads_per_client
        if per_client is not None and self.ctx.per_client.get(self.client_key, 0) >= per_client:
            raise TooManyUploads(f"{per_client} uploads from {self.client_key} are in progress; try again shortly")
        self.inspector = UploadInspector(
            upload_id=self.upload_id,
            content_type=self.header_text(b"content-type"),
            total=self.content_length,
            limits=self.route.limits,
            digest=settings.digest,
            hasher=self.new_body_hash,
            progress=settings.progress,
        )
        # A raw body's sha256 is the inspector's anyway: the checker then never hashes sha-256 a second time.
        shared = ("sha-256",) if settings.digest and not self.inspector.is_multipart else ()
        self.digests = request_digests(self.headers, hasher=new_hash, precomputed=shared)

    def new_body_hash(self) -> Hash:
        self.body_hash = HASHER()
        return self.body_hash

    def check_token(self) -> None:
        check_token(self.ctx.settings, self.headers)

    def client_address(self) -> str:
        return client_address(self.ctx.settings, self.scope)

    def cors_headers(self) -> list[tuple[bytes, bytes]]:
        return cors_headers(self.ctx.settings, self.headers, PLAIN_EXPOSED)

    async def preflight(self) -> None:
        """Answer a CORS preflight on a routed path; an origin not listed gets no allow headers."""
        headers = [(b"content-length", b"0"), *self.cors]
        if self.cors:
            requested = header_value(self.headers, b"access-control-request-headers") or b""
            headers += [
                (b"access-control-allow-methods", ", ".join(self.route.methods).encode()),
                (b"access-control-allow-headers", requested or b"Content-Type"),
                (b"access-control-max-age", b"600"),
            ]
        await self.send({"type": "http.response.start", "status": 204, "headers": headers})
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def check_transfer_encoding(self) -> None:
        """Only `chunked` is a framing the relay forwards. httptools strips the chunking of `gzip, chunked` and
        the header is hop-by-hop, so the upstream would get still-encoded bytes as if they were the body."""
        codings = [
            coding.strip().lower()
            for key, value in self.headers
            if key == b"transfer-encoding"
            for coding in value.split(b",")
            if coding.strip()
        ]
        if codings and codings != [b"chunked"]:
            raise BadRequest("unsupported Transfer-Encoding: only chunked is accepted")

    def declared_length(self) -> int | None:
        values = [value for key, value in self.headers if key == b"content-length"]
        if not values:
            return None
        if len(set(values)) > 1 or not values[0].strip().isdigit():
            raise BadRequest("invalid Content-Length")
        return int(values[0])

    def header_text(self, name: bytes) -> str | None:
        value = header_value(self.headers, name)
        return value.decode("latin-1") if value is not None else None

    # -- the whole upload -----------------------------------------------------------------------------------

    async def run(self) -> None:
        if (
            self.method == "OPTIONS"
            and self.ctx.settings.cors_origins
            and header_value(self.headers, b"access-control-request-method") is not None
        ):
            await self.preflight()
            return
        try:
            self.check_headers()
            # The caps across relays: one await on the head of the request, never per chunk.
            # A relay-drawn id (128 random bits) is in use nowhere: not chosen, no lease on it (a Redis round trip).
            self.lease = await self.ctx.shared.take_slots(self.upload_id, self.client_key, chosen=self.id_chosen)
        except UploadIdInUse as exc:
            # The id belongs to the upload in progress: answer, but never touch its record or events.
            self.ctx.metrics.rejections.labels(code=exc.code).inc()
            await self.answer(exc, unread_body=may_have_body(self.headers))
            return
        except RelayError as exc:
            await self.refuse(exc)
            return
        self.begin()
        try:
            await self.forward()
        except RelayError as exc:
            await self.fail(exc)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when the drain timeout runs out: the upstream request
            # dies with this task, mid-body.
            self.fail_quietly(ShuttingDown())
            raise
        except Exception:
            # uvicorn's send() raises when it has already closed the connection (a bad request pipelined
            # behind this one): record the end so the id is not "receiving" forever.
            self.fail_quietly(ClientDisconnected("the connection closed under the relay"))
            raise
        finally:
            self.end()

    async def refuse(self, exc: RelayError) -> None:
        """Refused from its headers: recorded as `rejected`, answered, connection closed."""
        now = time.time()
        self.emit(
            Started(
                self.upload_id,
                0,
                self.content_length,
                now,
                self.route.prefix,
                self.method,
                self.scope["path"],
                self.client_key,
            )
        )
        self.emit(Failed(self.upload_id, 0, self.content_length, now, ErrorInfo(exc.code, exc.message), rejected=True))
        self.ctx.metrics.rejections.labels(code=exc.code).inc()
        self.ctx.metrics.uploads.labels(outcome="rejected").inc()
        extra = [(b"retry-after", b"1")] if isinstance(exc, TooManyUploads) else None
        await self.answer(exc, extra=extra, unread_body=may_have_body(self.headers))

    def begin(self) -> None:
        self.ctx.in_flight += 1
        self.ctx.per_client[self.client_key] = self.ctx.per_client.get(self.client_key, 0) + 1
        self.ctx.metrics.in_flight.inc()
        self.emit(
            Started(
                self.upload_id,
                0,
                self.content_length,
                time.time(),
                self.route.prefix,
                self.method,
                self.scope["path"],
                self.client_key,
            )
        )

    def end(self) -> None:
        self.ctx.shared.give_back(self.lease)
        self.ctx.in_flight -= 1
        left = self.ctx.per_client.pop(self.client_key, 1) - 1
        if left:
            self.ctx.per_client[self.client_key] = left
        self.ctx.metrics.in_flight.dec()

    async def forward(self) -> int:
        upstream = self.ctx.upstreams[self.route.upstream or ""]
        headers = forward_request_headers(
            self.headers,
            peer=(self.scope.get("client") or (None,))[0],
            scheme=self.scope.get("scheme", "http"),
            upload_id=self.upload_id,
            trust_forwarded=self.ctx.settings.trust_forwarded,
            strip_authorization=bool(self.ctx.settings.accepted_tokens) and not self.ctx.settings.forward_authorization,
        )
        try:
            response = await upstream.send(self.method, self.raw_target, headers, self.outgoing(), self.content_length)
        except ClientDisconnected:
            self.client_gone = True
            raise
        except Exception as exc:
            # The body generator's own error is the real cause, whatever the upstream leg made of it.
            if self.body_error is not None and self.body_error is not exc:
                raise self.body_error from exc
            raise
        return await self.relay_response(response)

    # -- 2-4. the body ------------------------------------------------------------------------------------

    def outgoing(self) -> AsyncIterator[bytes]:
        """The body generator, or the same wrapped so the upstream leg may splice it (relay/splicewire.py)."""
        return splicewire.outgoing(self, self.body())

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    async def body(self) -> AsyncIterator[bytes]:
        """Chunks from the client, inspected, one held back (see the module docstring)."""
        assert self.inspector is not None
        inspector, digests = self.inspector, self.digests
        held: bytes | None = None
        watch = IdleWatch(self.ctx.settings.client_idle_timeout)
        try:
            while not self.body_done:
                chunk = await self.next_chunk(watch)
                if not chunk:
                    continue
                self.emit_all(inspector.feed(chunk, time.time()))
                if digests is not None:
                    digests.update(chunk)
                if held is not None:
                    yield held
                    self.note_forwarded(len(held))
                held = chunk
            self.emit_all(inspector.finish(time.time()))
            if digests is not None:
                # The last held-back chunk leaves only if the body matches its digest (DigestMismatch aborts).
                digests.verify(self.body_sha256())
            if held is not None:
                yield held
                self.note_forwarded(len(held))
        except RelayError as exc:
            self.body_error = exc
            raise
        finally:
            watch.close()
            self.report_bytes()

    async def next_chunk(self, watch: IdleWatch) -> bytes:
        watch.begin()
        try:
            message = await self.receive()
        except asyncio.CancelledError:
            if not watch.claim():
                raise
            raise ClientTimeout(f"no body bytes for {self.ctx.settings.client_idle_timeout:g} s") from None
        watch.end()
        if message["type"] == "http.disconnect":
            self.client_gone = True
            raise ClientDisconnected()
        chunk: bytes = message.get("body", b"")
        self.body_done = not message.get("more_body", False)
        if chunk:
            self.unreported_received += len(chunk)
            self.check_rate()
        return chunk

    def report_bytes(self) -> None:
        """Counters are batched (METRICS_BATCH): a Prometheus inc per chunk was 5 % of a large upload's CPU."""
        metrics = self.ctx.metrics
        if self.unreported_received:
            metrics.bytes_received.inc(self.unreported_received)
            self.unreported_received = 0
        if self.unreported_forwarded:
            metrics.bytes_forwarded.inc(self.unreported_forwarded)
            self.unreported_forwarded = 0

    def check_rate(self) -> None:
        """After the grace period the average rate must stay over --client-min-rate (slow-drip defence)."""
        min_rate = self.ctx.settings.client_min_rate
        if min_rate is None or self.body_done:
            return
        elapsed = time.monotonic() - self.started
        if elapsed > self.ctx.settings.client_min_rate_grace and self.inspector is not None:
            rate = self.inspector.bytes_received / elapsed
            if rate < min_rate:
                raise ClientTimeout(f"body arrives at {rate:.0f} B/s, under the minimum of {min_rate} B/s")

    def note_forwarded(self, size: int) -> None:
        self.unreported_forwarded += size
        if self.unreported_forwarded >= METRICS_BATCH:
            self.report_bytes()

    def emit_all(self, events: list[Event]) -> None:
        for event in events:
            self.emit(event)

    def emit(self, event: Event) -> None:
        """Every event of this upload passes here (a resumable upload's forward translates them)."""
        self.ctx.emit(event)

    # -- the answer -------------------------------------------------------------------------------------------

    async def relay_response(self, response: UpstreamResponse) -> int:
        try:
            headers = forward_response_headers(response.headers, self.upload_id) + self.cors
            digest = self.single_file_digest() if self.body_done else None
            if digest is not None:
                headers.append((b"x-upload-sha256", digest.encode()))
            repr_digest = self.digests.repr_digest() if self.digests is not None else None
            if repr_digest is not None:  # the relay's word on what it received replaces any the upstream gave
                headers = [(key, value) for key, value in headers if key != b"repr-digest"]
                headers.append((b"repr-digest", repr_digest))
            if response.early:
                # The upstream refused before the body ended: its answer is relayed, then the rest of the
                # body is drained for a bounded while (lingering close) so the client can read that answer.
                headers.append((b"connection", b"close"))
            await self.send({"type": "http.response.start", "status": response.status, "headers": headers})
            self.response_started = True
            async for chunk in response.body():
                await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
            # Completed before the last response byte: a client that asks about its upload the moment the
            # response ends finds it completed.
            self.complete(response.status)
            if response.early and not self.client_gone:
                self.ctx.metrics.bytes_drained.inc(await drain_body(self.receive))
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
        return response.status

    def body_sha256(self) -> dict[str, bytes]:
        """The whole body's sha-256 when the inspector computed it (a raw body), for the digest checker."""
        assert self.inspector is not None
        parts = self.inspector.parts
        if self.inspector.is_multipart or not parts or parts[0].sha256 is None:
            return {}
        return {"sha-256": bytes.fromhex(parts[0].sha256)}

    def single_file_digest(self) -> str | None:
        assert self.inspector is not None
        parts = self.inspector.parts
        files = [part for part in parts if part.filename is not None]
        if not self.inspector.is_multipart and len(parts) == 1:
            return parts[0].sha256
        return files[0].sha256 if len(files) == 1 else None

    def complete(self, status: int) -> None:
        if self.finished:
            return
        self.finished = True
        assert self.inspector is not None
        received = self.inspector.bytes_received
        self.emit(Completed(self.upload_id, received, self.content_length, time.time(), status))
        self.ctx.metrics.finished("completed", time.monotonic() - self.started, received, upstream_status=status)

    def fail_quietly(self, exc: RelayError) -> None:
        if self.finished:
            return
        self.finished = True
        received = self.inspector.bytes_received if self.inspector else 0
        self.emit(Failed(self.upload_id, received, self.content_length, time.time(), ErrorInfo(exc.code, exc.message)))
        self.ctx.metrics.rejections.labels(code=exc.code).inc()
        self.ctx.metrics.finished("failed", time.monotonic() - self.started, received)

    async def fail(self, exc: RelayError) -> None:
        self.fail_quietly(exc)
        if self.response_started:
            # Only closing the connection is left. The protocol glue does it without a traceback; under
            # another server, raising makes it close the connection.
            abort = self.scope.get("extensions", {}).get("relay.abort")
            if abort is None:
                raise exc
            abort()
            return
        if self.client_gone:
            return
        # The contract: responses to an upload that carried a digest carry Repr-Digest of what the relay received,
        # the refusal of a mismatch too (the client sees what arrived).
        received = self.digests.repr_digest() if isinstance(exc, DigestMismatch) and self.digests else None
        extra = [(b"repr-digest", received)] if received is not None else None
        await self.answer(exc, unread_body=not self.body_done, extra=extra)

    async def answer(
        self, exc: RelayError, *, unread_body: bool, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Answer with the JSON error; when body bytes may still come, close only after a lingering drain."""
        linger = self.receive if unread_body else None
        drained = await error_response(
            self.send, exc, upload_id=self.upload_id, close=unread_body, extra=(extra or []) + self.cors, linger=linger
        )
        self.ctx.metrics.bytes_drained.inc(drained)
