"""Resumable decisions once every byte is in: the upstream's answer (`decide_forward_end`), and its replay.

Sans-IO. When the upstream answered, tus gets 201/204 for a 2xx (with X-Upstream-Status) and the upstream's own
answer otherwise; the drafts always get the upstream's own answer, with the upload's headers added. An
unreachable upstream (502/504) is recorded and can be retried by sending the completing request again. A
completing request sent again to a delivered upload answers as the completion did (`_replay`), status and
headers only.
"""

from __future__ import annotations

from dataclasses import replace

from relay.core.events import ErrorInfo
from relay.core.resumable import (
    FORWARD_ERROR,
    FORWARD_OK,
    ResumableUpload,
    apply,
)
from relay.core.resumable_headers import (
    ResumableRequest,
)
from relay.core.resumable_replies import Decision, Header, _base, _error, _h
from relay.errors import RelayError

__all__ = ["decide_forward_end"]


def _replay(req: ResumableRequest, upload: ResumableUpload) -> Decision:
    """A completing request sent again to a delivered upload answers as the completion did (contract).
    Only the status and headers are kept: a non-2xx upstream body is not replayed."""
    return Decision(status=_completion_status(req, upload.upstream_status), headers=_completion_headers(req, upload))


def _completion_status(req: ResumableRequest, upstream_status: int | None) -> int:
    if req.protocol == "tus" and upstream_status is not None and 200 <= upstream_status < 300:
        return 201 if req.method == "POST" else 204
    return upstream_status or 502


def _completion_headers(req: ResumableRequest, upload: ResumableUpload) -> tuple[Header, ...]:
    headers = _base(req.protocol, upload.id) + [_h("Upload-Offset", upload.offset)]
    if req.protocol != "tus":
        headers.append(_h("Upload-Complete", "?1"))
    if upload.sha256 is not None:
        headers.append(_h("X-Upload-Sha256", upload.sha256))
    if upload.upstream_status is not None:
        headers.append(_h("X-Upstream-Status", upload.upstream_status))
    return tuple(headers)


def decide_forward_end(
    req: ResumableRequest,
    upload: ResumableUpload,
    *,
    now: float,
    upstream_status: int | None = None,
    error: RelayError | None = None,
    sha256: str | None = None,
) -> Decision:
    """The upstream answered (`upstream_status`) or could not be reached (`error`: 502/504, kept to retry)."""
    if error is not None:
        record = apply(upload, FORWARD_ERROR, now=now, error=ErrorInfo(error.code, error.message))
        return _error(req.protocol, error, upload=record, record=record)
    record = apply(upload, FORWARD_OK, now=now, upstream_status=upstream_status)
    if sha256 is not None:
        record = replace(record, sha256=sha256)
    headers = _completion_headers(req, record)
    if req.protocol == "tus" and upstream_status is not None and 200 <= upstream_status < 300:
        return Decision(status=_completion_status(req, upstream_status), headers=headers, upload=record)
    # tus non-2xx: the upstream's answer as a plain upload gets it; the drafts: always the upstream's own
    return Decision(action="upstream", status=upstream_status, headers=headers, upload=record)
