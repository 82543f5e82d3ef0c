"""Answers of resumable requests, and the request as the handlers see it.

Refusals answered while the client may still be sending carry `Connection: close` and a bounded lingering
drain, as for plain uploads (relay/proxy.py): closing with unread bytes would reset the connection and lose
the answer.

Counting. Every error the relay answers on the resumable path (status >= 400 with a `RelayError` behind it) is
counted once in `relay_rejections_total{code}` (the contract: "errors answered by the relay, by code"); the
resumable glue counts them here only. `respond` (a decision of the state machine: 404, 409, 413, 415, 460, a
forward's 502/504 ...), `refuse` (an error raised by the glue) and `refuse_unparsed` (a request refused before it
became a `Request`) all go through `_count`. The code is the decision's error's, the one the JSON body carries; a
draft's problem document (application/problem+json) is counted under the code the relay uses for the same error
elsewhere (`mismatching-upload-offset` is `offset_mismatch`). Not counted: an upstream's own answer relayed (even
a 4xx, and its replay to a completing request sent again), and the answers of a background redelivery, which
nobody reads (its `Request` has no `metrics`). A forward's made-up request (relay/resumable/forward.py) takes the
id's and the caps' leases with --redis; a refusal there (409, 429) is not counted by relay/proxy.py but comes back
here to be answered, and counted, once.

What a refusal leaves behind. A creation refused before any upload existed (413 from `Upload-Length`, 400 from a
header that does not parse, 429 at a cap, 507 ...) is recorded as a plain upload refused from its headers is
(relay/proxy.py `refuse`): under the id its answer carries (X-Upload-ID), a `started` and a `failed` event with
`rejected`, so /_relay/uploads shows it `rejected`, and `relay_uploads_total{outcome="rejected"}`
(`note_refused_creation`). Not a 409 `upload_id_in_use`: that id is another upload's, whose record stays as it is.
Refusals of HEAD, PATCH and DELETE on an upload that exists (409, 415, 460 ...) are not the upload's end: it stays
`receiving` and the client goes on, so they get no record or event of their own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from relay.core import resumable_decisions as decide
from relay.core.events import ErrorInfo, Failed, Started
from relay.core.limits import Limits
from relay.core.resumable_decisions import Decision
from relay.core.resumable_headers import Protocol, ResumableRequest
from relay.errors import RelayError, TooManyUploads, UploadIdInUse
from relay.metrics import RelayMetrics
from relay.proxy_admission import drain_body, may_have_body
from relay.proxy_context import RelayContext
from relay.settings import Route
from relay.types import Receive, Scope, Send

__all__ = [
    "TUS_EXPOSED",
    "Request",
    "SpoolUnavailable",
    "note_refused_creation",
    "refuse",
    "refuse_unparsed",
    "respond",
    "tus_headers",
    "write_answer",
]

Headers = list[tuple[bytes, bytes]]
TUS_EXPOSED = (
    b"Location, Upload-Offset, Upload-Length, Upload-Defer-Length, Upload-Metadata, Upload-Expires, Tus-Resumable, "
    b"Tus-Version, Tus-Extension, Tus-Max-Size, X-Upload-ID, X-Upload-Sha256, X-Upstream-Status, Upload-Complete, "
    b"Upload-Limit, Upload-Draft-Interop-Version, Upload-Concat"
)


class SpoolUnavailable(RelayError):
    status_code, code, default_message = 503, "spool_unavailable", "the spool could not store the upload"

    @classmethod
    def storing(cls, exc: BaseException) -> SpoolUnavailable:
        """A write into the spool failed (a full disk, EIO): the append's answer."""
        return cls(f"the spool could not store the upload: {exc}")


@dataclass
class Request:
    """One resumable request: the ASGI triple and what admission learned."""

    scope: Scope
    receive: Receive
    send: Send
    route: Route
    req: ResumableRequest
    cors: Headers
    client: str
    metrics: RelayMetrics | None = None  # None: nobody reads the answers (a background redelivery), none is counted
    counted: bool = False
    body_read: bool = False  # the request body was read to its end: no lingering close needed
    lease: int | None = None  # with Redis: the token of the upload's lease this request holds
    answered: bool = False  # the response has started: a late refusal can no longer be written
    refusal: RelayError | None = None  # the error this request was answered with, if any

    @property
    def headers(self) -> Headers:
        return list(self.scope["headers"])


def tus_headers(request: Request) -> Headers:
    if request.req.protocol == "tus":
        return [(b"tus-resumable", b"1.0.0")]
    return [(b"upload-draft-interop-version", request.req.protocol.removeprefix("ietf-").encode())]


def _count(metrics: RelayMetrics | None, decision: Decision) -> None:
    """The one place an error answer of the resumable path is counted (see the module docstring)."""
    if metrics is not None and decision.error is not None and (decision.status or 500) >= 400:
        metrics.rejections.labels(code=decision.error.code).inc()


async def respond(request: Request, decision: Decision) -> None:
    """Write `decision`'s answer; an error answer is counted."""
    await _answer(request.metrics, request, decision)


async def refuse(metrics: RelayMetrics, request: Request, error: RelayError, *, upload_id: str | None = None) -> None:
    """Refuse with `error` (counted), in the request's protocol."""
    decision = decide.decide_error(request.req.protocol, error, limits=request.route.limits, upload_id=upload_id)
    extra: Headers = [(b"retry-after", b"1")] if isinstance(error, TooManyUploads) else []
    await _answer(metrics, request, replace(decision, headers=decision.headers + tuple(extra)))


async def refuse_unparsed(
    metrics: RelayMetrics,
    send: Send,
    protocol: Protocol,
    error: RelayError,
    *,
    limits: Limits,
    cors: Headers,
    receive: Receive | None = None,
    unread: bool = False,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Refuse a request that did not become a `Request` (its headers did not parse, its token was wrong ...)."""
    decision = decide.decide_error(protocol, error, limits=limits)
    _count(metrics, decision)
    out = [*decision.headers, *extra, *cors]
    await write_answer(send, error.status_code, out, decision.body, receive, unread)


def note_refused_creation(ctx: RelayContext, request: Request, upload_id: str) -> None:
    """A creation refused before any upload existed: a `rejected` record and a `failed` event, as for a plain
    upload refused from its headers (see the module docstring)."""
    error = request.refusal
    if error is None or isinstance(error, UploadIdInUse):
        return
    now, total = time.time(), request.req.upload_length
    path = request.scope["path"]
    ctx.emit(Started(upload_id, 0, total, now, request.route.prefix, "POST", path, request.client))
    ctx.emit(Failed(upload_id, 0, total, now, ErrorInfo(error.code, error.message), rejected=True))
    ctx.metrics.uploads.labels(outcome="rejected").inc()


async def _answer(metrics: RelayMetrics | None, request: Request, decision: Decision) -> None:
    _count(metrics, decision)
    if decision.error is not None and (decision.status or 500) >= 400:
        request.refusal = decision.error
    unread = may_have_body(request.headers) and not request.body_read
    status = decision.status or 500
    await write_answer(request.send, status, [*decision.headers, *request.cors], decision.body, request.receive, unread)


async def write_answer(
    send: Send,
    status: int,
    headers: Any,
    body: bytes,
    receive: Receive | None = None,
    unread: bool = False,
) -> None:
    """An answer with a known body; when body bytes may still come, `Connection: close` and a lingering drain."""
    out = [(name.lower(), value) for name, value in headers]
    if status not in (204, 304) and not any(name == b"content-length" for name, _ in out):
        out.append((b"content-length", str(len(body)).encode()))
    if unread and receive is not None:
        out.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": out})
    if unread and receive is not None:
        await send({"type": "http.response.body", "body": body, "more_body": True})
        await drain_body(receive)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    await send({"type": "http.response.body", "body": body if status not in (204, 304) else b"", "more_body": False})
