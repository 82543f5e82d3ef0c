"""Resumable uploads: one pure decision per kind of request, on the state machine of relay/core/resumable.py.

Sans-IO. The glue (relay/resumable/) parses a request with relay.core.resumable_headers, takes the upload's
current state, asks a `decide_*` function here what to do, does the I/O the `Decision` names (`action`),
records `decision.upload` (the next state) and writes `status`/`headers`/`body`.

Decisions, one per kind of request (protocol differences: docs/resumable-protocols.md):
    OPTIONS                      decide_options
    creation on a routed path    decide_create       -> respond 201 | append (after a 104 for the drafts) | forward
    HEAD                         decide_head
    PATCH (or overridden POST)   decide_append_begin -> append | forward (retry) | respond (error, replay)
    the append's body is over    decide_append_end   -> respond | forward | none (client gone) | delete
    the upstream answered        decide_forward_end  -> respond (tus 2xx) | upstream (its own answer)
    DELETE                       decide_delete
    errors from parsing          decide_error;  other methods: method_not_allowed
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import Literal

from relay.core.events import ErrorInfo
from relay.core.limits import Limits
from relay.core.resumable import (
    APPEND_BEGIN,
    APPEND_BREAK,
    APPEND_COMMIT,
    APPEND_DISCARD,
    APPENDING,
    COMPLETE,
    COMPLETED,
    EXPIRE,
    FAILED,
    FORWARD_ERROR,
    FORWARD_OK,
    FORWARDING,
    INCOMPLETE,
    INVALIDATE,
    LENGTH_SET,
    RECEIVING,
    TERMINATE,
    ResumableSettings,
    ResumableUpload,
    WriterOpen,
    apply,
    create,
)
from relay.core.resumable_headers import (
    PARTIAL_UPLOAD,
    PROBLEM_TYPES,
    TUS_CONTENT_TYPE,
    TUS_EXTENSIONS,
    TUS_VERSION,
    BeyondUploadLength,
    ChecksumMismatch,
    CompletedUpload,
    InconsistentLength,
    InsufficientStorage,
    ModifyFinal,
    OffsetMismatch,
    Protocol,
    ResumableRequest,
    UnsupportedMediaType,
    UnsupportedTusVersion,
    UploadInvalid,
    encode_metadata,
    interim_104,
    interop_version,
    problem,
    upload_limit,
)
from relay.errors import BadRequest, BodyTooLarge, FileTooLarge, MethodNotAllowed, NotFound, RelayError, TooManyUploads

__all__ = [
    "Decision",
    "decide_append_begin",
    "decide_append_end",
    "decide_create",
    "decide_delete",
    "decide_error",
    "decide_forward_end",
    "decide_head",
    "decide_options",
    "method_not_allowed",
]

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


def _creation_length(req: ResumableRequest) -> tuple[int | None, Decision | None]:
    if req.protocol == "tus":
        if req.upload_length is None and not req.defer_length:
            return None, _error(req.protocol, BadRequest("Upload-Length or Upload-Defer-Length: 1 is required"))
        return req.upload_length, None
    from_body = req.content_length if req.upload_complete and req.content_length is not None else None
    if from_body is not None and req.upload_length is not None and from_body != req.upload_length:
        error = InconsistentLength(f"Upload-Length {req.upload_length} but the complete body has {from_body} bytes")
        return None, _error(req.protocol, error, kind="inconsistent-upload-length")
    return (req.upload_length if req.upload_length is not None else from_body), None


def decide_create(
    req: ResumableRequest,
    *,
    upload_id: str,
    route: str,
    target: bytes,
    location: str,
    writer: str,
    now: float,
    limits: Limits,
    settings: ResumableSettings,
    free_bytes: int | None,
    incomplete: int,
    partial: bool = False,
) -> Decision:
    """Creation (tus POST with Tus-Resumable, IETF request with Upload-Complete) on a routed path; `partial`:
    `Upload-Concat: partial` (relay/core/concat.py), an upload that is never forwarded on its own."""
    if req.protocol != "tus" and req.upload_complete is None:
        return _error(req.protocol, BadRequest("Upload-Complete: ?0 or ?1 is required"))
    length, refusal = _creation_length(req)
    if refusal is not None:
        return refusal
    if length is not None and (refusal := _too_large(req.protocol, length, limits)) is not None:
        return refusal
    if settings.max_incomplete is not None and incomplete >= settings.max_incomplete:
        # Retry-After as every 429 of the relay (the caps of plain uploads): a client knows when to try again.
        too_many = TooManyUploads(f"{incomplete} resumable uploads are incomplete")
        return _error(req.protocol, too_many, headers=(_h("Retry-After", 1),))
    if free_bytes is not None and (length or 0) + settings.headroom > free_bytes:
        return _error(req.protocol, InsufficientStorage(f"{free_bytes} bytes free in the spool"))
    metadata = dict(req.metadata)
    if req.protocol != "tus" and req.content_type not in (None, PARTIAL_UPLOAD):
        metadata.setdefault("filetype", req.content_type)  # the drafts: Content-Type is the file's type
    upload = create(
        upload_id=upload_id,
        route=route,
        target=target,
        protocol=req.protocol,
        now=now,
        expiry=settings.expiry,
        length=length,
        metadata=metadata,
    )
    if partial:
        upload = replace(upload, concat="partial")
    if _has_body(req):
        if req.protocol == "tus" and length is not None and (req.content_length or 0) > length:
            return _error(req.protocol, BeyondUploadLength(), headers=(_h("Upload-Offset", 0),))
        appending = apply(upload, APPEND_BEGIN, now=now, writer=writer, checksum=req.checksum is not None)
        interim = (
            None
            if req.protocol == "tus"
            else interim_104(req.protocol, location, _limit(req.protocol, limits, upload, now))
        )
        return Decision(action="append", upload=appending, max_bytes=_room(appending, limits), interim=interim)
    if _completes(req, upload):
        return Decision(action="forward", upload=apply(upload, COMPLETE, now=now))
    return Decision(status=201, headers=_progress_headers(req, upload, limits, now, location), upload=upload)


def _has_body(req: ResumableRequest) -> bool:
    if req.content_length == 0:
        return False
    if req.protocol == "tus":
        # tusd: another Content-Type on a POST is ignored as if no body was meant (unrouted_handler.go PostFile)
        return req.content_type == TUS_CONTENT_TYPE
    return True  # the drafts: the creation request's content is the start of the upload, whatever its type


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


def decide_head(req: ResumableRequest, upload: ResumableUpload | None, *, now: float, limits: Limits) -> Decision:
    if (gone := _gone(req, upload, now)) is not None:
        return gone
    assert upload is not None
    if req.protocol == "ietf-6" and (req.upload_offset, req.upload_complete, req.upload_length) != (None, None, None):
        return _error(req.protocol, BadRequest("HEAD must not carry Upload-Offset, Upload-Complete or Upload-Length"))
    headers = _base(req.protocol, upload.id) + [_h("Upload-Offset", upload.offset), _h("Cache-Control", "no-store")]
    if upload.length is not None:
        headers.append(_h("Upload-Length", upload.length))
    if req.protocol == "tus":
        if upload.length is None:
            headers.append(_h("Upload-Defer-Length", 1))
        if upload.metadata:
            headers.append(_h("Upload-Metadata", encode_metadata(upload.metadata)))
        headers.append(_h("Upload-Expires", _http_date(upload.expires_at)))
        return Decision(status=200, headers=tuple(headers))
    complete = upload.state in (FORWARDING, COMPLETED)
    headers.append(_h("Upload-Complete", "?1" if complete else "?0"))
    headers.append(_h("Upload-Limit", _limit(req.protocol, limits, upload, now)))
    return Decision(status=204, headers=tuple(headers))


def decide_delete(req: ResumableRequest, upload: ResumableUpload | None, *, now: float) -> Decision:
    if (gone := _gone(req, upload, now)) is not None:
        return gone
    assert upload is not None
    if upload.concat == "partial" and upload.final is not None:  # its bytes are its final upload's now
        error = ModifyFinal(f"partial upload {upload.id} is part of final upload {upload.final}; terminate that one")
        return _error(req.protocol, error, upload=upload)
    if req.protocol == "ietf-6" and (req.upload_offset is not None or req.upload_complete is not None):
        return _error(req.protocol, BadRequest("DELETE must not carry Upload-Offset or Upload-Complete"))
    record = upload if upload.state == COMPLETED else apply(upload, TERMINATE, now=now)
    return Decision(action="delete", status=204, headers=tuple(_base(req.protocol, upload.id)), upload=record)


def _mismatch(req: ResumableRequest, upload: ResumableUpload, provided: int) -> Decision:
    members = {"expected-offset": upload.offset, "provided-offset": provided}
    return _error(
        req.protocol,
        OffsetMismatch(upload.offset, provided),
        upload=upload,
        headers=(_h("Upload-Offset", upload.offset),),
        kind="mismatching-upload-offset",
        members=members,
    )


def _content_type_error(req: ResumableRequest) -> Decision | None:
    wanted = TUS_CONTENT_TYPE if req.protocol == "tus" else PARTIAL_UPLOAD
    if req.content_type != wanted:
        return _error(req.protocol, UnsupportedMediaType(f"an append needs Content-Type: {wanted}"))
    return None


def _replay(req: ResumableRequest, upload: ResumableUpload) -> Decision:
    """A completing request sent again to a delivered upload answers as the completion did (contract).
    Only the status and headers are kept: a non-2xx upstream body is not replayed."""
    return Decision(status=_completion_status(req, upload.upstream_status), headers=_completion_headers(req, upload))


def _finished(req: ResumableRequest, upload: ResumableUpload, limits: Limits, now: float) -> Decision:
    """An append to an upload that has every byte (forwarding or completed)."""
    body_coming = req.content_length is not None and req.content_length > 0
    if body_coming:
        if req.protocol == "tus":
            return _error(
                req.protocol, BeyondUploadLength(), upload=upload, headers=(_h("Upload-Offset", upload.offset),)
            )
        kind = "completed-upload" if req.protocol == "ietf-6" else "inconsistent-upload-length"
        error: RelayError = CompletedUpload() if req.protocol == "ietf-6" else InconsistentLength()
        return _error(req.protocol, error, upload=upload, kind=kind)
    if upload.state == FORWARDING:
        return Decision(action="forward", upload=upload)
    return _replay(req, upload)


def decide_append_begin(
    req: ResumableRequest, upload: ResumableUpload | None, *, writer: str, now: float, limits: Limits
) -> Decision:
    """PATCH (or a tus POST overridden to PATCH): every check that needs no body byte."""
    if (gone := _gone(req, upload, now)) is not None:
        return gone
    assert upload is not None
    if upload.concat == "final":  # tus: "403 Forbidden to PATCH requests against a final upload URL"
        return _error(req.protocol, ModifyFinal(), upload=upload)
    if (refusal := _content_type_error(req)) is not None:
        return refusal
    if req.upload_offset is None:
        return _error(req.protocol, BadRequest("Upload-Offset is required"), upload=upload)
    if req.upload_offset != upload.offset:
        return _mismatch(req, upload, req.upload_offset)
    if upload.state in (FORWARDING, COMPLETED):
        return _finished(req, upload, limits, now)
    upload, refusal = _declare_length(req, upload, now, limits)
    if refusal is not None:
        return refusal
    room = _room(upload, limits)
    if req.protocol == "tus" and room is not None and req.content_length is not None and req.content_length > room:
        error, headers = _past_the_end(req, upload, limits)
        return _error(req.protocol, error, upload=upload, headers=headers)
    appending = apply(upload, APPEND_BEGIN, now=now, writer=writer, checksum=req.checksum is not None)
    return Decision(action="append", upload=appending, max_bytes=room)


def _declare_length(
    req: ResumableRequest, upload: ResumableUpload, now: float, limits: Limits
) -> tuple[ResumableUpload, Decision | None]:
    """Upload-Length on an append (deferred length), and IETF `Upload-Complete: ?1` + Content-Length."""
    declared = req.upload_length
    if req.protocol != "tus" and req.upload_complete and req.content_length is not None:
        from_body = upload.offset + req.content_length
        if declared is not None and declared != from_body:
            error = InconsistentLength(f"Upload-Length {declared} but this request ends the upload at {from_body}")
            return upload, _error(req.protocol, error, upload=upload, kind="inconsistent-upload-length")
        declared = from_body
    if declared is None or declared == upload.length:
        return upload, None
    if upload.length is not None or declared < upload.offset:
        error = InconsistentLength(
            f"length {declared} conflicts with the upload (length {upload.length}, offset {upload.offset})"
        )
        return upload, _error(req.protocol, error, upload=upload, kind="inconsistent-upload-length")
    if (refusal := _too_large(req.protocol, declared, limits)) is not None:
        return upload, refusal
    return apply(upload, LENGTH_SET, now=now, length=declared), None


def decide_append_end(
    req: ResumableRequest,
    upload: ResumableUpload,
    *,
    writer: str,
    written: int,
    ended: bool,
    overflow: bool = False,
    checksum_ok: bool | None = None,
    now: float,
    limits: Limits,
    location: str | None = None,
) -> Decision:
    """The append's body is over: `written` bytes are in the spool (fsynced by the glue when `ended`).

    `location` is given for the body of a creation request (and only then): its answer is 201 with it.

    `ended` is False when the request broke; `overflow` when bytes came past `max_bytes` (the glue wrote
    only up to it); `checksum_ok` is the tus checksum's verdict (None without one).
    """
    start = upload.append_start if upload.append_start is not None else upload.offset
    if overflow:
        return _overflow(req, upload, writer, start + written, now, limits)
    if not ended:
        event = APPEND_DISCARD if upload.append_checksum else APPEND_BREAK  # unverifiable bytes are not kept
        return Decision(action="none", upload=apply(upload, event, now=now, writer=writer, offset=start + written))
    if checksum_ok is False:
        record = apply(upload, APPEND_DISCARD, now=now, writer=writer)
        return _error(
            req.protocol,
            ChecksumMismatch(),
            upload=record,
            headers=(_h("Upload-Offset", record.offset),),
            record=record,
        )
    record = apply(upload, APPEND_COMMIT, now=now, writer=writer, offset=start + written)
    if req.protocol != "tus" and req.upload_complete:
        if record.length is None:
            record = apply(record, LENGTH_SET, now=now, length=record.offset)
        if record.offset != record.length:
            error = InconsistentLength(f"Upload-Complete: ?1 at offset {record.offset} of {record.length}")
            return _error(req.protocol, error, upload=record, kind="inconsistent-upload-length", record=record)
    if _completes(req, record):
        return Decision(action="forward", upload=apply(record, COMPLETE, now=now))
    status = 201 if location is not None or req.protocol == "ietf-6" else 204  # -05 §6: 201 for appends too
    return Decision(status=status, headers=_progress_headers(req, record, limits, now, location), upload=record)


def _past_the_end(
    req: ResumableRequest, upload: ResumableUpload, limits: Limits
) -> tuple[RelayError, tuple[Header, ...]]:
    """413 for bytes past the length, or, while the length is deferred, past the size limit."""
    headers = (_h("Upload-Offset", upload.offset),)
    if upload.length is not None:
        return BeyondUploadLength(), headers
    limit = _max_size(limits)
    passed = f"the upload passed the size limit of {limit} bytes"
    # The smaller of the two limits was passed; as at creation (`_too_large`), the body limit first.
    error: RelayError = BodyTooLarge(passed) if limit == limits.max_body_size else FileTooLarge(passed)
    return error, (*headers, _h("Tus-Max-Size", limit))


def _overflow(
    req: ResumableRequest, upload: ResumableUpload, writer: str, offset: int, now: float, limits: Limits
) -> Decision:
    """Bytes past the length. tus: 413, the request's bytes discarded (contract). -05: keep up to the
    length, 400. -09..-11: reject and deactivate the upload resource, inconsistent-upload-length.
    Past the size limit of a deferred-length upload: tus discards (413); the drafts deactivate ("the server
    might also deactivate the upload resource if the offset exceeds the maximum size", -11 §4.1.3)."""
    if req.protocol == "tus":
        record = apply(upload, APPEND_DISCARD, now=now, writer=writer)
        error, headers = _past_the_end(req, record, limits)
        return _error(req.protocol, error, upload=record, headers=headers, record=record)
    if upload.length is None:
        error, headers = _past_the_end(req, upload, limits)
        record = apply(upload, INVALIDATE, now=now, writer=writer, error=ErrorInfo(error.code, error.message))
        return replace(_error(req.protocol, error, upload=record, record=record), action="delete")
    if req.protocol == "ietf-6":
        record = apply(upload, APPEND_COMMIT, now=now, writer=writer, offset=min(offset, upload.length))
        return _error(req.protocol, InconsistentLength("bytes past the upload's length"), upload=record, record=record)
    record = apply(upload, INVALIDATE, now=now, writer=writer)
    refusal = _error(req.protocol, UploadInvalid(), upload=record, kind="inconsistent-upload-length", record=record)
    return replace(refusal, action="delete")


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
