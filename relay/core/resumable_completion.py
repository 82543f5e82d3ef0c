"""Resumable decisions once every byte is in: the upstream's answer (`decide_forward_end`), and its replay.

Sans-IO. When the upstream answered, tus gets 201/204 for a 2xx (with X-Upstream-Status) and the upstream's own
answer otherwise; the drafts always get the upstream's own answer, with the upload's headers added. An
unreachable upstream (502/504) is recorded and can be retried by sending the completing request again. A
completing request sent again to a delivered upload answers as the completion did (`_replay`): the same status
and the upload's headers and, where the client got the upstream's own answer, that answer's headers and body as
`keep_answer` kept them (a body over ANSWER_BODY_CAP bytes is not kept: the replay then has the status and the
upload's headers only, as for a 2xx under tus, whose answer has no body).
"""

from __future__ import annotations

from collections.abc import Iterable
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

__all__ = ["ANSWER_BODY_CAP", "decide_forward_end", "keep_answer"]

# An upstream's answer to an upload is small (a status, an id, a URL); one larger than this is not kept for the
# replay, so that a record stays small in memory, in the info document and in Redis for the upload's expiry
# (a reviewer measured 1000 IETF completions with 65,000-byte answers under a 64 KiB cap: relay RSS 55 -> 122 MiB,
# 87 KB info documents). It is also what the relay holds back of a streamed answer before passing it on.
ANSWER_BODY_CAP = 8 * 1024
# Not kept: the framing and the connection's (the replay has its own), and CORS (each request gets its own).
_UNKEPT = {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}


def keep_answer(upload: ResumableUpload, headers: Iterable[tuple[bytes, bytes]], body: bytes | None) -> ResumableUpload:
    """The completed `upload` with the upstream's answer that its client got (headers, and the body unless None or
    over ANSWER_BODY_CAP), for `_replay`."""
    kept = tuple(
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in headers
        if name.lower().decode("latin-1") not in _UNKEPT and not name.lower().startswith(b"access-control-")
    )
    if body is None or len(body) > ANSWER_BODY_CAP:
        return replace(upload, answer_headers=(), answer_body=None)
    return replace(upload, answer_headers=kept, answer_body=body)


def _replay(req: ResumableRequest, upload: ResumableUpload) -> Decision:
    """A completing request sent again to a delivered upload answers as the completion did (contract): its status
    and the upload's headers, plus the upstream's own headers and body when the completion passed them on."""
    status = _completion_status(req, upload.upstream_status)
    ours = _completion_headers(req, upload)
    if upload.answer_body is None:
        return Decision(status=status, headers=ours)
    names = {name.lower() for name, _ in ours}
    theirs = tuple(
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in upload.answer_headers
        if name.lower().encode("latin-1") not in names
    )
    return Decision(status=status, headers=theirs + ours, body=upload.answer_body)


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
