"""Resumable decisions on an upload as a whole: its creation (`decide_create`), HEAD and DELETE.

Sans-IO. Creation (tus POST with Tus-Resumable, an IETF request with Upload-Complete) checks the length against
the limits, the count of incomplete uploads (429) and the spool's free bytes (507) before anything is created;
a creation request with a body becomes the upload's first append (after a 104 for the drafts), one that is
already complete goes straight to forwarding. HEAD reports the offset (and, per protocol, length, metadata,
expiry, completeness); DELETE terminates (or, for a completed upload, only deletes the spooled data).
"""

from __future__ import annotations

from dataclasses import replace

from relay.core.limits import Limits
from relay.core.resumable import (
    APPEND_BEGIN,
    COMPLETE,
    COMPLETED,
    FORWARDING,
    TERMINATE,
    ResumableSettings,
    ResumableUpload,
    apply,
    create,
)
from relay.core.resumable_headers import (
    PARTIAL_UPLOAD,
    TUS_CONTENT_TYPE,
    BeyondUploadLength,
    InconsistentLength,
    InsufficientStorage,
    ModifyFinal,
    ResumableRequest,
    encode_metadata,
    interim_104,
)
from relay.core.resumable_replies import (
    Decision,
    _base,
    _completes,
    _error,
    _gone,
    _h,
    _http_date,
    _limit,
    _progress_headers,
    _room,
    _too_large,
)
from relay.errors import BadRequest, TooManyUploads

__all__ = ["decide_create", "decide_delete", "decide_head"]


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
