"""Resumable uploads: the upload's state machine, and one pure decision per kind of request.

Sans-IO. The glue (relay/resumable/) parses a request with relay.core.resumable_headers, loads the
upload from the spool, asks a `decide_*` function here what to do, does the I/O the `Decision` names
(`action`), records `decision.upload` (the next state) and writes `status`/`headers`/`body`.

States (`ResumableUpload.state`):
    receiving   created; between appends (no writer)
    appending   one request (the `writer`) is streaming bytes in
    forwarding  every byte is in; the upstream has not answered yet (or failed and will be retried)
    completed   the upstream answered (any status): delivered
    failed      expired, terminated, or invalid (IETF 8: bytes past the length); data deleted

Transition table (event: from -> to). Anything else raises IllegalTransition.
    create            None       -> receiving
    append-begin      receiving  -> appending     writer set; append_start = offset
    append-commit     appending  -> receiving     offset = append_start + bytes written (request ended well)
    append-break      appending  -> receiving     offset = append_start + bytes written (request broke)
    append-discard    appending  -> receiving     offset = append_start (460 checksum mismatch, tus 413)
    length-set        receiving  -> receiving,  appending -> appending   (deferred length becomes known)
    complete          receiving  -> forwarding    requires offset == length
    forward-ok        forwarding -> completed     upstream_status recorded
    forward-error     forwarding -> forwarding    error recorded; the same completing request may retry
    answered          appending  -> completed     the upstream answered the completing append's cut-through
                      before the file was complete: that answer was the client's and is final, as for a plain
                      upload (upstream_status recorded; offset = what had come in; the data is deleted)
    expire            receiving, forwarding -> failed (code expired)
    terminate         receiving, forwarding -> failed (code terminated)
    invalidate        appending  -> failed         (code inconsistent_upload_length)
    lose              receiving, appending, forwarding -> failed (code data_lost: the spool has less
                      than was acknowledged, found by recover())

Rules:
1. Only one writer. append-begin is legal only from `receiving`: a new HEAD/PATCH/DELETE meeting an
   upload in `appending` first ends the older request (append-break with what it wrote), then goes on.
   append-commit/-break/-discard name their writer; a superseded writer is refused (StaleWriter), so a
   late commit of an old request can never move the offset.
2. The offset never decreases below a committed value: it moves only forward from `append_start`, and
   discard returns exactly to it. It never passes the length once the length is known.
3. The length, once known, never changes (length-set only from None, and only to >= offset).
4. Every move out of appending, and create, pushes `expires_at` to now + expiry: an upload expires
   after `expiry` seconds without an append.
5. completed and failed are terminal.

Durability (the spool holds the bytes, the info file this dataclass): the data file is the truth for
bytes. After a restart `recover()` reconciles: an upload found `appending` had its writer killed; its
bytes up to the data file's durable size are kept (append-break), unless that append carried a tus
checksum, which can no longer be verified: then they are discarded. A data file shorter than the
committed offset means lost data: the upload is failed (the draft: "if the server loses any part of the
state, it MUST deactivate the upload resource"). The glue records `appending` in the info file before
the first byte only for appends that carry a tus checksum; other appends are recorded when they end
(one fsync of the info file per append, not two).

tus concatenation (relay/core/concat.py) adds no state: a partial upload (`concat="partial"`) is an ordinary
upload that never takes `complete` (it stays `receiving` with every byte in, also through `recover`); a final
upload (`concat="final"`) is created with its offset at its length and takes `complete` at once.

A completed upload keeps the upstream's answer when the client got it as it was (a tus non-2xx, any IETF answer):
its headers and its body, if small (`answer_headers`, `answer_body`), so that the completing request sent again
gets the same answer (relay/core/resumable_completion.py: `keep_answer`, `_replay`).

The decisions on each request are in relay/core/resumable_decisions.py.
The expiry sweeper asks `sweep`; a restart runs `recover` on every listed upload.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from relay.core.events import ErrorInfo
from relay.core.resumable_headers import (
    Protocol,
    UploadInvalid,
)

__all__ = [
    "ANSWERED",
    "APPEND_BEGIN",
    "APPEND_BREAK",
    "APPEND_COMMIT",
    "APPEND_DISCARD",
    "APPENDING",
    "COMPLETE",
    "COMPLETED",
    "CREATE",
    "EVENTS",
    "EXPIRE",
    "FAILED",
    "FORWARD_ERROR",
    "FORWARD_OK",
    "FORWARDING",
    "INVALIDATE",
    "LENGTH_SET",
    "LOSE",
    "RECEIVING",
    "RECOVERY_WRITER",
    "STATES",
    "TERMINATE",
    "TRANSITIONS",
    "IllegalTransition",
    "ResumableSettings",
    "ResumableUpload",
    "StaleWriter",
    "WriterOpen",
    "apply",
    "create",
    "recover",
    "sweep",
]

RECEIVING, APPENDING, FORWARDING, COMPLETED, FAILED = "receiving", "appending", "forwarding", "completed", "failed"
STATES = frozenset({RECEIVING, APPENDING, FORWARDING, COMPLETED, FAILED})

CREATE, APPEND_BEGIN, APPEND_COMMIT, APPEND_BREAK = "create", "append-begin", "append-commit", "append-break"
APPEND_DISCARD, LENGTH_SET, COMPLETE = "append-discard", "length-set", "complete"
FORWARD_OK, FORWARD_ERROR, EXPIRE, TERMINATE = "forward-ok", "forward-error", "expire", "terminate"
INVALIDATE, LOSE, ANSWERED = "invalidate", "lose", "answered"

TRANSITIONS: Mapping[tuple[str | None, str], str] = {
    (None, CREATE): RECEIVING,
    (RECEIVING, APPEND_BEGIN): APPENDING,  # Rule 1
    (APPENDING, APPEND_COMMIT): RECEIVING,
    (APPENDING, APPEND_BREAK): RECEIVING,
    (APPENDING, APPEND_DISCARD): RECEIVING,
    (RECEIVING, LENGTH_SET): RECEIVING,  # Rule 3
    (APPENDING, LENGTH_SET): APPENDING,
    (RECEIVING, COMPLETE): FORWARDING,
    (FORWARDING, FORWARD_OK): COMPLETED,
    (FORWARDING, FORWARD_ERROR): FORWARDING,
    (APPENDING, ANSWERED): COMPLETED,
    (RECEIVING, EXPIRE): FAILED,
    (FORWARDING, EXPIRE): FAILED,
    (RECEIVING, TERMINATE): FAILED,
    (FORWARDING, TERMINATE): FAILED,
    (APPENDING, INVALIDATE): FAILED,
    (RECEIVING, LOSE): FAILED,
    (APPENDING, LOSE): FAILED,
    (FORWARDING, LOSE): FAILED,
}
EVENTS = frozenset(event for _, event in TRANSITIONS)
INCOMPLETE = frozenset({RECEIVING, APPENDING})

RECOVERY_WRITER = "recovery"  # the writer name recover() uses for bytes found past the recorded offset


class IllegalTransition(ValueError):
    """A move the resumable upload's table (or one of its rules) does not allow."""

    def __init__(self, state: str | None, event: str, why: str = "not in the transition table") -> None:
        self.state, self.event = state, event
        super().__init__(f"illegal resumable upload move {event!r} from {state!r}: {why}")


class StaleWriter(IllegalTransition):
    """An append that was superseded by a newer request tried to commit, break or discard."""


class WriterOpen(IllegalTransition):
    """A decision needs the open append ended first (Rule 1); the glue must break it, then ask again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumableUpload:
    """One resumable upload, as the spool's info file keeps it. `sha256` is the whole file's digest once
    known: hashlib state cannot be saved, so after a restart the glue recomputes it from the spool."""

    id: str
    route: str  # the route prefix it was created under
    target: bytes  # raw path and query of the creating request, forwarded as given
    protocol: Protocol
    created_at: float
    expires_at: float
    expiry: float  # seconds without an append until it expires (Rule 4)
    offset: int = 0
    length: int | None = None  # None while deferred
    metadata: Mapping[str, str] = field(default_factory=dict)
    state: str = RECEIVING
    writer: str | None = None  # the request that holds the upload while appending
    append_start: int | None = None  # offset when the open append began
    append_checksum: bool = False  # the open append carries a tus checksum: its bytes are unverified
    sha256: str | None = None
    repr_digest: str | None = None  # the creation's RFC 9530 Repr-Digest, checked over the whole file at the end
    upstream_status: int | None = None
    error: ErrorInfo | None = None
    # tus concatenation (relay/core/concat.py): "partial" or "final" (None: a plain resumable upload); a final
    # upload's partial uploads and their lengths, in order; a partial upload's final upload once one claimed it.
    concat: str | None = None
    parts: tuple[str, ...] = ()
    part_lengths: tuple[int, ...] = ()
    final: str | None = None
    # The upstream's answer as the client got it, for a replay (see the module docstring); body None: not kept.
    answer_headers: tuple[tuple[str, str], ...] = ()
    answer_body: bytes | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["target"] = self.target.decode("latin-1")  # latin-1 maps bytes 1:1 onto code points
        data["metadata"] = dict(self.metadata)
        data["error"] = None if self.error is None else {"code": self.error.code, "message": self.error.message}
        data["answer_body"] = None if self.answer_body is None else base64.b64encode(self.answer_body).decode()
        if not self.answer_headers and self.answer_body is None:  # as before they existed: older relays read it
            del data["answer_headers"], data["answer_body"]
        return json.dumps({"v": 1, **data}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ResumableUpload:
        data = json.loads(text)
        if data.pop("v", None) != 1:
            raise ValueError("unknown resumable upload info version")
        data["target"] = data["target"].encode("latin-1")
        data["parts"] = tuple(data.get("parts", ()))  # JSON has lists; equality needs the tuples back
        data["part_lengths"] = tuple(data.get("part_lengths", ()))
        data = {
            name: value for name, value in data.items() if name in cls.__dataclass_fields__
        }  # a newer relay may add fields
        data["answer_headers"] = tuple((name, value) for name, value in data.get("answer_headers", ()))
        body = data.get("answer_body")
        data["answer_body"] = None if body is None else base64.b64decode(body)
        if data["error"] is not None:
            data["error"] = ErrorInfo(**data["error"])
        upload = cls(**data)
        if upload.state not in STATES:
            raise ValueError(f"unknown state {upload.state!r}")
        return upload


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumableSettings:
    expiry: float = 24 * 3600.0
    max_incomplete: int | None = 1000
    headroom: int = 1 << 30  # creation needs Upload-Length plus this much free spool space


def _start(upload: ResumableUpload, event: str) -> str:
    new = TRANSITIONS.get((upload.state, event))
    if new is None:
        raise IllegalTransition(upload.state, event)
    return new


def _check_writer(upload: ResumableUpload, event: str, writer: str | None) -> None:
    if writer != upload.writer:
        raise StaleWriter(upload.state, event, f"writer {writer!r} does not hold the upload ({upload.writer!r})")


def apply(
    upload: ResumableUpload,
    event: str,
    *,
    now: float,
    writer: str | None = None,
    offset: int | None = None,
    length: int | None = None,
    checksum: bool = False,
    upstream_status: int | None = None,
    error: ErrorInfo | None = None,
) -> ResumableUpload:
    """The upload after `event`; raise IllegalTransition (or StaleWriter) if the table or a rule forbids it."""
    new = _start(upload, event)
    if event == APPEND_BEGIN:
        if writer is None:
            raise IllegalTransition(upload.state, event, "an append needs a writer")
        return replace(upload, state=new, writer=writer, append_start=upload.offset, append_checksum=checksum)
    if event in (APPEND_COMMIT, APPEND_BREAK, APPEND_DISCARD, ANSWERED):
        _check_writer(upload, event, writer)
        start = upload.append_start if upload.append_start is not None else upload.offset
        end = start if event == APPEND_DISCARD else offset
        if end is None or end < start or (upload.length is not None and end > upload.length):  # Rule 2
            raise IllegalTransition(upload.state, event, f"offset {end} outside [{start}, {upload.length}]")
        ended = replace(
            upload,
            state=new,
            offset=end,
            writer=None,
            append_start=None,
            append_checksum=False,
            expires_at=now + upload.expiry,
        )
        return replace(ended, upstream_status=upstream_status, error=None) if event == ANSWERED else ended
    if event == LENGTH_SET:
        if upload.length is not None or length is None or length < upload.offset:  # Rule 3
            raise IllegalTransition(upload.state, event, f"length {length} (known: {upload.length})")
        return replace(upload, length=length)
    if event == COMPLETE:
        if upload.length is None or upload.offset != upload.length:
            raise IllegalTransition(upload.state, event, f"offset {upload.offset} is not the length {upload.length}")
        return replace(upload, state=new, error=None)
    if event == FORWARD_OK:
        return replace(upload, state=new, upstream_status=upstream_status, error=None)
    if event == FORWARD_ERROR:
        return replace(upload, state=new, error=error)
    if event == INVALIDATE:
        _check_writer(upload, event, writer)
    code = {EXPIRE: "expired", TERMINATE: "terminated", LOSE: "data_lost"}.get(event, UploadInvalid.code)
    info = error or ErrorInfo(code, f"the upload was {code.replace('_', ' ')}")
    return replace(upload, state=new, writer=None, append_start=None, append_checksum=False, error=info)


def create(
    *,
    upload_id: str,
    route: str,
    target: bytes,
    protocol: Protocol,
    now: float,
    expiry: float,
    length: int | None,
    metadata: Mapping[str, str],
) -> ResumableUpload:
    """A new upload in `receiving` (the `create` move)."""
    return ResumableUpload(
        state=TRANSITIONS[(None, CREATE)],
        id=upload_id,
        route=route,
        target=target,
        protocol=protocol,
        created_at=now,
        expires_at=now + expiry,
        expiry=expiry,
        length=length,
        metadata=dict(metadata),
    )


def recover(upload: ResumableUpload, durable: int, *, now: float) -> tuple[ResumableUpload, int]:
    """Reconcile an upload read back after a restart with the spool's durable size.

    Returns the upload and the size its data file must have (the glue truncates when that is smaller
    than `durable`). Bytes past the recorded offset came from an append that was not (or could not be)
    recorded before the relay died: they are kept, up to the length, unless the info file says that
    append carried a tus checksum (the glue records `appending` before the first byte of such an append).
    """
    if upload.state in (COMPLETED, FAILED):
        return upload, durable
    committed = upload.append_start if upload.state == APPENDING and upload.append_start is not None else upload.offset
    if durable < committed:
        lost = ErrorInfo("data_lost", f"the spool holds {durable} bytes, {committed} were acknowledged")
        return apply(upload, LOSE, now=now, error=lost), durable
    if upload.state == FORWARDING:
        return upload, committed
    if upload.state == RECEIVING:
        if durable == upload.offset:
            return _complete_if_full(upload, now), durable  # nothing new: the expiry clock is not reset
        upload = apply(upload, APPEND_BEGIN, now=now, writer=RECOVERY_WRITER)
    keep = committed if upload.append_checksum else durable
    if upload.length is not None:
        keep = min(keep, upload.length)
    event = APPEND_DISCARD if upload.append_checksum else APPEND_BREAK
    return _complete_if_full(apply(upload, event, now=now, writer=upload.writer, offset=keep), now), keep


def _complete_if_full(upload: ResumableUpload, now: float) -> ResumableUpload:
    """Every byte is there but the relay died before the upstream answered (the completing append is recorded
    `forwarding` only in memory until then: its bytes are fsynced only if the upstream fails). Such an upload
    is finished: it goes back to `forwarding`, with a note, so that the relay delivers it again by itself.
    A partial upload (tus concatenation) is never delivered on its own: it stays `receiving`."""
    if upload.state != RECEIVING or upload.length is None or upload.offset != upload.length:
        return upload
    if upload.concat == "partial":
        return upload
    note = ErrorInfo("relay_restarted", "the relay restarted before the upstream answered; it delivers again")
    return replace(apply(upload, COMPLETE, now=now), error=note)


def sweep(upload: ResumableUpload, now: float) -> Literal["keep", "expire", "forget"]:
    """What the expiry sweeper does with an upload (also right after a restart): `expire` an incomplete or
    undelivered one past its time (apply EXPIRE, delete its data), `forget` a delivered or failed one past
    its time (delete its record), `keep` the rest. An upload with an open append is kept: it is not idle."""
    if now < upload.expires_at or upload.state == APPENDING:
        return "keep"
    return "expire" if upload.state in (RECEIVING, FORWARDING) else "forget"
