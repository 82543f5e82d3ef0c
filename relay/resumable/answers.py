"""Answers of resumable requests, and the request as the handlers see it.

Refusals answered while the client may still be sending carry `Connection: close` and a bounded lingering
drain, as for plain uploads (relay/proxy.py): closing with unread bytes would reset the connection and lose
the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from relay.core import resumable_decisions as decide
from relay.core.resumable_decisions import Decision
from relay.core.resumable_headers import ResumableRequest
from relay.errors import RelayError, TooManyUploads
from relay.metrics import RelayMetrics
from relay.proxy_admission import drain_body, may_have_body
from relay.settings import Route
from relay.types import Receive, Scope, Send

__all__ = [
    "TUS_EXPOSED",
    "Request",
    "SpoolUnavailable",
    "refuse",
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
    counted: bool = False
    body_read: bool = False  # the request body was read to its end: no lingering close needed
    lease: int | None = None  # with Redis: the token of the upload's lease this request holds
    answered: bool = False  # the response has started: a late refusal can no longer be written

    @property
    def headers(self) -> Headers:
        return list(self.scope["headers"])


def tus_headers(request: Request) -> Headers:
    if request.req.protocol == "tus":
        return [(b"tus-resumable", b"1.0.0")]
    return [(b"upload-draft-interop-version", request.req.protocol.removeprefix("ietf-").encode())]


async def respond(request: Request, decision: Decision) -> None:
    unread = may_have_body(request.headers) and not request.body_read
    status = decision.status or 500
    await write_answer(request.send, status, [*decision.headers, *request.cors], decision.body, request.receive, unread)


async def refuse(metrics: RelayMetrics, request: Request, error: RelayError, *, upload_id: str | None = None) -> None:
    decision = decide.decide_error(request.req.protocol, error, limits=request.route.limits, upload_id=upload_id)
    extra: Headers = [(b"retry-after", b"1")] if isinstance(error, TooManyUploads) else []
    metrics.rejections.labels(code=error.code).inc()
    await respond(request, replace(decision, headers=decision.headers + tuple(extra)))


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
