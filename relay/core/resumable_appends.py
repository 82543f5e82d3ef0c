"""Resumable decisions on an append: before its first body byte (`decide_append_begin`) and after its last
(`decide_append_end`).

Sans-IO. `decide_append_begin` makes every check that needs no body byte: the upload exists and is not a final
concatenation, Content-Type, Upload-Offset equal to the upload's offset (else 409 with the offset), a length
declared late (deferred length, or IETF `Upload-Complete: ?1` with a Content-Length), the room left. An append to
an upload that already has every byte is refused if it carries bytes, else forwards (again) or replays the
completion's answer (relay/core/resumable_completion.py).

`decide_append_end` records what the spool holds: a broken request keeps its bytes (discarded if a checksum was
announced, since they cannot be verified), a checksum mismatch discards them (460), and bytes past the length or
the size limit are answered as each protocol says (`_overflow`: tus discards with 413; -05 keeps up to the
length, 400; -09..-11 deactivate the upload). An append that completes the upload goes on to forwarding.
"""

from __future__ import annotations

from dataclasses import replace

from relay.core.events import ErrorInfo
from relay.core.limits import Limits
from relay.core.resumable import (
    APPEND_BEGIN,
    APPEND_BREAK,
    APPEND_COMMIT,
    APPEND_DISCARD,
    COMPLETE,
    COMPLETED,
    FORWARDING,
    INVALIDATE,
    LENGTH_SET,
    ResumableUpload,
    apply,
)
from relay.core.resumable_completion import _replay
from relay.core.resumable_headers import (
    PARTIAL_UPLOAD,
    TUS_CONTENT_TYPE,
    BeyondUploadLength,
    ChecksumMismatch,
    CompletedUpload,
    InconsistentLength,
    ModifyFinal,
    OffsetMismatch,
    ResumableRequest,
    UnsupportedMediaType,
    UploadInvalid,
)
from relay.core.resumable_replies import (
    Decision,
    Header,
    _completes,
    _error,
    _gone,
    _h,
    _max_size,
    _progress_headers,
    _room,
    _too_large,
)
from relay.errors import BadRequest, BodyTooLarge, FileTooLarge, RelayError

__all__ = ["decide_append_begin", "decide_append_end"]


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
