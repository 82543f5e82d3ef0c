"""The resumable requests' parsing and admission: what is decided from the headers before any handler runs.

Theory of operation
-------------------
relay/resumable/endpoints.py hands every request here first. OPTIONS is answered whole (`options`: a CORS
preflight, or tus/IETF discovery); any other request is parsed (relay.core.resumable_headers) and admitted as a
plain upload is (relay/proxy_admission.py: the token, CORS, RFC 9530 fields, the path), giving the `Request` the
handlers see (`parse`), or a refusal in the request's protocol. A request that brings bytes is also counted
against the caps (`admit_body`) until its handler is done with it (`release_body`).

Its refusals come before the body was read: `Connection: close` and a lingering drain (endpoints.py Rule 3).
A refusal the server's protocol gives in the middle of a body (a bad chunk size) is answered in the request's
protocol as far as it can be: `for_refusals` tells it the upload's id and, for tus, Tus-Resumable.

Rules:
1. `--token` applies to every request, discovery included, except CORS preflights.
2. `--max-concurrent-uploads` and `--max-uploads-per-client` count requests that bring bytes (creation with
   upload, PATCH), as plain uploads do; each is counted once, and released once.
"""

from __future__ import annotations

from relay.core import resumable_decisions as decide
from relay.core.digests import request_digests
from relay.core.resumable_headers import UnsupportedTusVersion, detect_protocol, parse_request
from relay.errors import BadRequest, RelayError, TooManyUploads
from relay.headers import has_dot_segment, header_value
from relay.protocol import REFUSAL_HEADERS, UPLOAD_ID
from relay.proxy_admission import check_token, client_address, cors_headers, may_have_body
from relay.proxy_context import RelayContext
from relay.resumable.answers import TUS_EXPOSED, Request, refuse_unparsed, write_answer
from relay.settings import Route
from relay.types import Message, Receive, Scope, Send

__all__ = ["admit_body", "for_refusals", "options", "parse", "release_body", "with_header"]

TUS_METHODS = b"POST, HEAD, PATCH, DELETE, OPTIONS"


async def options(ctx: RelayContext, route: Route, scope: Scope, send: Send, *, routed: bool = False) -> bool:
    """Answer an OPTIONS request (a preflight, or discovery); False for any other method."""
    if scope["method"] != "OPTIONS":
        return False
    headers = scope["headers"]
    cors = cors_headers(ctx.settings, headers, TUS_EXPOSED)
    if header_value(headers, b"access-control-request-method") is not None:  # a preflight: no token (Rule 1)
        out = [(b"content-length", b"0"), *cors]
        if cors:
            requested = header_value(headers, b"access-control-request-headers") or b"Content-Type"
            methods = TUS_METHODS
            if routed:  # the route's own methods too: its plain uploads are preflighted here as well
                extra = [m for m in route.methods if m.encode() not in TUS_METHODS.split(b", ")]
                methods = b", ".join([*(m.encode() for m in extra), TUS_METHODS])
            out += [
                (b"access-control-allow-methods", methods),
                (b"access-control-allow-headers", requested),
                (b"access-control-max-age", b"600"),
            ]
        await send({"type": "http.response.start", "status": 204, "headers": out})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True
    try:
        check_token(ctx.settings, headers)
    except RelayError as exc:
        protocol = detect_protocol(headers) or "tus"
        await refuse_unparsed(ctx.metrics, send, protocol, exc, limits=route.limits, cors=cors)
        return True
    decision = decide.decide_options(detect_protocol(headers), route.limits)
    await write_answer(send, decision.status or 204, list(decision.headers) + cors, b"")
    return True


async def parse(ctx: RelayContext, route: Route, scope: Scope, receive: Receive, send: Send) -> Request | None:
    """Parse and admit; on refusal, answer and return None."""
    headers = scope["headers"]
    cors = cors_headers(ctx.settings, headers, TUS_EXPOSED)
    protocol = detect_protocol(headers)
    unread = may_have_body(headers)
    if protocol is None:
        interop = header_value(headers, b"upload-draft-interop-version")
        error: RelayError = (
            BadRequest(f"Upload-Draft-Interop-Version {interop.decode('latin-1')} is not supported (6 or 8)")
            if interop is not None
            else UnsupportedTusVersion("Tus-Resumable: 1.0.0 is required")
        )
        await refuse_unparsed(
            ctx.metrics, send, "tus", error, limits=route.limits, cors=cors, receive=receive, unread=unread
        )
        return None
    try:
        req = parse_request(scope["method"], headers, protocol)
        check_token(ctx.settings, headers)
        request_digests(headers)  # RFC 9530 fields: bad syntax is a 400 before anything is created or read
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if has_dot_segment(raw_path):
            raise BadRequest("the path has a '.' or '..' segment")
    except RelayError as exc:
        await refuse_unparsed(
            ctx.metrics, send, protocol, exc, limits=route.limits, cors=cors, receive=receive, unread=unread
        )
        return None
    client = client_address(ctx.settings, scope)
    request = Request(scope, receive, send, route, req, cors, client, ctx.metrics)
    request.send = _tracked(request, send)
    return request


def admit_body(ctx: RelayContext, request: Request) -> None:
    """Caps count requests that bring bytes, as plain uploads do; counted until `release_body` (Rule 2)."""
    settings = ctx.settings
    if settings.max_concurrent_uploads is not None and ctx.in_flight >= settings.max_concurrent_uploads:
        raise TooManyUploads(f"{settings.max_concurrent_uploads} uploads are in progress; try again shortly")
    per_client = settings.max_uploads_per_client
    if per_client is not None and ctx.per_client.get(request.client, 0) >= per_client:
        raise TooManyUploads(f"{per_client} uploads from {request.client} are in progress; try again shortly")
    ctx.in_flight += 1
    ctx.per_client[request.client] = ctx.per_client.get(request.client, 0) + 1
    ctx.metrics.in_flight.inc()
    request.counted = True


def release_body(ctx: RelayContext, request: Request) -> None:
    """Give back what `admit_body` counted; nothing if it counted nothing (or it was given back already)."""
    if not request.counted:
        return
    request.counted = False
    ctx.in_flight -= 1
    left = ctx.per_client.pop(request.client, 1) - 1
    if left:
        ctx.per_client[request.client] = left
    ctx.metrics.in_flight.dec()


def for_refusals(scope: Scope, upload_id: bytes | None = None) -> None:
    """What an answer the server's protocol gives in the middle of this request's body carries (relay/protocol.py
    `_refuse`): the upload's id when given (under the prefix, the path's: Rule 2 of endpoints.py), and
    Tus-Resumable on a tus request, as every tus answer does."""
    extensions = scope.get("extensions")
    if not isinstance(extensions, dict):
        return
    if upload_id is not None:
        extensions[UPLOAD_ID] = upload_id.decode("ascii")
    if detect_protocol(scope["headers"]) == "tus":
        extensions[REFUSAL_HEADERS] = [(b"tus-resumable", b"1.0.0")]


def with_header(send: Send, header: bytes, value: bytes) -> Send:
    """`send` with `header` (lowercase) added to a response start that lacks it."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if not any(name.lower() == header for name, _ in headers):
                message = {**message, "headers": [*headers, (header, value)]}
        await send(message)

    return sending


def _tracked(request: Request, send: Send) -> Send:
    """`send` that notes on `request` when its response has started."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            request.answered = True
        await send(message)

    return sending
