"""What every resumable decision is made of: `Decision`, the headers each protocol sends, the error answers.

Sans-IO, like the rest of relay/core/. The `decide_*` functions (relay/core/resumable_decisions.py lists them)
return a `Decision`; the underscored helpers here (`_h`, `_base`, `_error`, `_gone`, `_progress_headers`, ...)
are their shared toolkit, imported by the decision modules only (resumable_create.py, resumable_appends.py,
resumable_completion.py). Also here, the decisions that need no upload: `decide_error` (a request that did not
parse), `decide_options` (discovery) and `method_not_allowed`.

Errors answer as a draft problem document (application/problem+json) where that draft version defines the
problem type, else as the relay's JSON error. `_gone` is the one place that says 404 for an unknown, failed or
expired upload (recording the expiry), and raises WriterOpen while an append is open (relay/core/resumable.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import Literal

from relay.core.limits import Limits
from relay.core.resumable import (
    APPENDING,
    COMPLETED,
    EXPIRE,
    FAILED,
    FORWARDING,
    INCOMPLETE,
    RECEIVING,
    ResumableUpload,
    WriterOpen,
    apply,
)
from relay.core.resumable_headers import (
    PARTIAL_UPLOAD,
    PROBLEM_TYPES,
    TUS_EXTENSIONS,
    TUS_VERSION,
    Protocol,
    ResumableRequest,
    UnsupportedTusVersion,
    interop_version,
    problem,
    upload_limit,
)
from relay.errors import BodyTooLarge, FileTooLarge, MethodNotAllowed, NotFound, RelayError

__all__ = ["Action", "Decision", "Header", "decide_error", "decide_options", "method_not_allowed"]

Action = Literal["respond", "append", "forward", "upstream", "delete", "none"]

# ---------------------------------------------------------------------------------------------------
# Decisions: what to answer and which move to make. `None` status means the glue has more to do first.

Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What the glue does next.

    action:
        respond   write status/headers/body.
        append    (creation with a body, PATCH) send `interim` first if set, then stream at most
                  `max_bytes` bytes (None: no cap from the upload) into the spool under `upload.writer`,
                  then ask decide_append_end.
        forward   every byte is in: forward the spooled file upstream, then ask decide_forward_end.
        upstream  relay the upstream's own answer, adding `headers`.
        delete    delete the spooled data (and, for a terminated upload, forget it), then respond.
        none      nobody to answer (the client went away).
    `upload` is the upload's next state to record (None: nothing to record), `error` what went wrong.
    """

    action: Action = "respond"
    status: int | None = None
    headers: tuple[Header, ...] = ()
    body: bytes = b""
    upload: ResumableUpload | None = None
    error: RelayError | None = None
    max_bytes: int | None = None
    interim: tuple[Header, ...] | None = None  # the 104's headers, when one goes out before the body


def _h(name: str, value: object) -> Header:
    return name.encode("latin-1"), str(value).encode("latin-1")


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def _max_size(limits: Limits) -> int | None:
    sizes = [size for size in (limits.max_body_size, limits.max_file_size) if size is not None]
    return min(sizes) if sizes else None


def _base(protocol: Protocol, upload_id: str | None) -> list[Header]:
    if protocol == "tus":
        headers = [_h("Tus-Resumable", TUS_VERSION)]
    else:
        headers = [_h("Upload-Draft-Interop-Version", interop_version(protocol))]
    if upload_id is not None:
        headers.append(_h("X-Upload-ID", upload_id))
    return headers


def _limit(protocol: Protocol, limits: Limits, upload: ResumableUpload | None, now: float) -> str:
    max_age = None
    if upload is not None and upload.state in INCOMPLETE:
        max_age = int(upload.expires_at - now)
    return upload_limit(protocol, _max_size(limits), max_age)


def _error(
    protocol: Protocol,
    error: RelayError,
    *,
    upload: ResumableUpload | None = None,
    headers: tuple[Header, ...] = (),
    kind: str | None = None,
    members: Mapping[str, int] | None = None,
    record: ResumableUpload | None = None,
) -> Decision:
    """An error answer: a draft problem document where that version defines `kind`, else the relay's JSON."""
    out = _base(protocol, upload.id if upload is not None else None) + list(headers)
    if kind is not None and kind in PROBLEM_TYPES[protocol]:
        body = json.dumps(problem(kind, **(members or {}))).encode()
        out.append(_h("Content-Type", "application/problem+json"))
    else:
        body = json.dumps({"error": error.to_dict()}).encode()
        out.append(_h("Content-Type", "application/json"))
    return Decision(status=error.status_code, headers=tuple(out), body=body, error=error, upload=record)


def _too_large(protocol: Protocol, length: int, limits: Limits) -> Decision | None:
    tus_max = () if _max_size(limits) is None else (_h("Tus-Max-Size", _max_size(limits)),)
    if limits.max_body_size is not None and length > limits.max_body_size:
        error: RelayError = BodyTooLarge(f"Upload-Length {length} exceeds the limit of {limits.max_body_size}")
        return _error(protocol, error, headers=tus_max)
    if limits.max_file_size is not None and length > limits.max_file_size:
        error = FileTooLarge(f"Upload-Length {length} exceeds the file limit of {limits.max_file_size}")
        return _error(protocol, error, headers=tus_max)
    return None


def decide_error(protocol: Protocol, error: RelayError, *, limits: Limits, upload_id: str | None = None) -> Decision:
    """The answer to an error raised before any decision (parse_request's): 412 names the versions spoken,
    a 413 the size limit."""
    headers: tuple[Header, ...] = ()
    if isinstance(error, UnsupportedTusVersion):
        headers = (_h("Tus-Version", TUS_VERSION),)
    elif error.status_code == 413 and _max_size(limits) is not None:
        headers = (_h("Tus-Max-Size", _max_size(limits)),)
    decision = _error(protocol, error, headers=headers)
    if upload_id is None:
        return decision
    return replace(decision, headers=decision.headers + (_h("X-Upload-ID", upload_id),))


def decide_options(protocol: Protocol | None, limits: Limits) -> Decision:
    """Discovery: 204 with the tus headers, plus `Upload-Limit` and `Accept-Patch` for the drafts."""
    headers = [
        _h("Tus-Resumable", TUS_VERSION),
        _h("Tus-Version", TUS_VERSION),
        _h("Tus-Extension", TUS_EXTENSIONS),
        _h("Tus-Checksum-Algorithm", "sha1,sha256,md5"),
    ]
    if _max_size(limits) is not None:
        headers.append(_h("Tus-Max-Size", _max_size(limits)))
    if protocol is not None and protocol != "tus":
        headers.append(_h("Upload-Draft-Interop-Version", interop_version(protocol)))
        headers.append(_h("Upload-Limit", upload_limit(protocol, _max_size(limits), None)))
        headers.append(_h("Accept-Patch", PARTIAL_UPLOAD))  # a MUST from -09 on (§4.1.3)
    return Decision(status=204, headers=tuple(headers))


def method_not_allowed(protocol: Protocol, allow: str = "HEAD, PATCH, DELETE, OPTIONS") -> Decision:
    return _error(protocol, MethodNotAllowed(), headers=(_h("Allow", allow),))


def _completes(req: ResumableRequest, upload: ResumableUpload) -> bool:
    """tus completes when the offset reaches the length; the drafts only on `Upload-Complete: ?1`. A partial
    upload (tus concatenation) never completes on its own: it waits for its final upload."""
    if upload.concat == "partial":
        return False
    if req.protocol == "tus":
        return upload.length is not None and upload.offset == upload.length
    return bool(req.upload_complete)


def _room(upload: ResumableUpload, limits: Limits) -> int | None:
    ceiling = upload.length if upload.length is not None else _max_size(limits)
    return None if ceiling is None else ceiling - upload.offset


def _progress_headers(
    req: ResumableRequest, upload: ResumableUpload, limits: Limits, now: float, location: str | None
) -> tuple[Header, ...]:
    """Headers of a successful, not yet complete creation or append."""
    headers = _base(req.protocol, upload.id)
    if location is not None:  # only creation passes one
        headers.append(_h("Location", location))
    headers.append(_h("Upload-Offset", upload.offset))
    if req.protocol == "tus":
        headers.append(_h("Upload-Expires", _http_date(upload.expires_at)))
    else:
        headers.append(_h("Upload-Complete", "?0"))
        headers.append(_h("Upload-Limit", _limit(req.protocol, limits, upload, now)))
    return tuple(headers)


def _gone(req: ResumableRequest, upload: ResumableUpload | None, now: float) -> Decision | None:
    """404 for unknown, failed or expired uploads; an expired one is recorded as such."""
    if upload is None or upload.state == FAILED:
        return _error(req.protocol, NotFound("no such resumable upload"))
    if upload.state in (RECEIVING, FORWARDING) and now >= upload.expires_at:
        return _error(req.protocol, NotFound("the upload expired"), record=apply(upload, EXPIRE, now=now))
    if upload.state == COMPLETED and now >= upload.expires_at:
        return _error(req.protocol, NotFound("the upload expired"))  # kept for the expiry period only
    if upload.state == APPENDING:
        raise WriterOpen(upload.state, req.method, "end the open append first")
    return None
