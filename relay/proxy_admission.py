"""Admission: everything about an upload that the headers alone decide, and the refusal that answers it.

Theory of operation (relay/proxy.py Rule 1): everything that can be decided from the headers is decided before the
first `receive()`: route and method, dot segments, upload id, token, header size, declared length, concurrency
cap, multipart boundary. uvicorn sends `100 Continue` only on the first `receive()` before a response, so a refused
client never has to send its body. Refusals carry `Connection: close` and a bounded lingering drain (see
LINGER_BYTES), never the whole body.

`Admission` is the first layer of relay/proxy.py's `Upload`: it holds the request's state (built in `__init__`)
and the header decisions (`check_headers`, which also builds the inspector and the digest checker). The body pump
(relay/proxy_body.py) and the answer (relay/proxy.py) build on it. The free functions (token, client address,
CORS, the JSON error with its lingering drain) are shared with the resumable endpoints (relay/resumable/).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time

from relay.core.digests import DigestChecker, request_digests
from relay.core.inspector import Hash, UploadInspector
from relay.core.limits import check_declared_length
from relay.errors import (
    BadRequest,
    HeadersTooLarge,
    MethodNotAllowed,
    RelayError,
    TooManyUploads,
    Unauthorized,
    UploadIdInUse,
)
from relay.hashing import new_hash, sha256_factory
from relay.headers import has_dot_segment, header_value, headers_size, new_upload_id, valid_upload_id
from relay.proxy_context import RelayContext
from relay.settings import Route, Settings
from relay.types import Receive, Scope, Send

__all__ = [
    "LINGER_BYTES",
    "LINGER_SECONDS",
    "PLAIN_EXPOSED",
    "Admission",
    "check_token",
    "client_address",
    "cors_headers",
    "drain_body",
    "drawn_upload_id",
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
# scope["extensions"] key shared with relay/protocol.py (not imported: the app runs under other servers).
_UPLOAD_ID = "relay.upload_id"


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


def drawn_upload_id(scope: Scope) -> str:
    """The id of a request whose client chose none: the one the server's protocol drew when the head was complete
    (relay/protocol.py UPLOAD_ID: an answer it gives mid-body, before the app has run, carries that one), else a
    new one (another server)."""
    drawn = scope.get("extensions", {}).get(_UPLOAD_ID)
    return drawn if isinstance(drawn, str) and valid_upload_id(drawn.encode()) else new_upload_id()


class Admission:
    """One request on a routed path: its state, and the decisions its headers allow (relay/proxy.py `Upload`)."""

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
        self.upload_id = drawn_upload_id(scope)  # the client's valid X-Upload-ID replaces it (check_headers)
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
        # The answer's Repr-Digest is sha-256 whatever the client gave (the contract), so sha-256 is always
        # computed. A raw body's sha256 is the inspector's anyway: the checker then never hashes it a second time;
        # a multipart body (the inspector hashes parts) or `--digest none` has it hashed by the checker, off the loop.
        shared = ("sha-256",) if settings.digest and not self.inspector.is_multipart else ()
        self.digests = request_digests(self.headers, hasher=new_hash, precomputed=shared, reported=("sha-256",))

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
        # every answer on a routed path carries an id (contract, "Upload ids"): this request's, drawn at its start
        headers = [(b"content-length", b"0"), (b"x-upload-id", self.upload_id.encode()), *self.cors]
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
