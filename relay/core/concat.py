"""tus concatenation (parallel uploads): `Upload-Concat` parsed, and the decisions on partial and final uploads.

Sans-IO, beside relay/core/resumable.py and relay/core/resumable_decisions.py; the glue is
relay/resumable/concat.py. Read from the tus 1.0.0 protocol ("Concatenation"), tusd
(pkg/handler/unrouted_handler.go: parseConcat, sizeOfUploads, ErrModifyFinal) and tus-js-client
(lib/upload.ts `_startParallelUpload`: N partial uploads created with `Upload-Concat: partial` on every
request, then one POST `Upload-Concat: final;<absolute url> <absolute url> ...` with the file's
`Upload-Metadata`, which must answer 2xx with a `Location`; the client reports success from that answer).

The exchange:
1. `POST` with `Upload-Concat: partial` and `Upload-Length` creates a partial upload. It is spooled like any
   other resumable upload (appends, checksums, resuming, one writer) but it is never forwarded: when its
   offset reaches its length it stays `receiving`, complete, waiting to be part of a final upload (no
   cut-through either). Partial uploads do not show in the registry and send no events (`started`, `resumed`,
   `interrupted`, `progress`): the final upload is the one users see, and a partial never ends `completed`
   as if it had been delivered. HEAD answers `Upload-Concat: partial`.
2. `POST` with `Upload-Concat: final;<url> <url> ...` (no body, no `Upload-Length`) creates the final upload.
   Each URL is absolute (`http(s)://host/<prefix><id>`) or an absolute path (`<prefix><id>`) naming an
   upload of this relay's resumable prefix; each must exist and be a partial upload with every byte in
   (`concatenation-unfinished` is not offered), not yet claimed by another final upload. The final upload's
   length is the sum of theirs; its metadata is the final request's own (the spec: partial uploads'
   metadata SHALL NOT be transferred). Every byte being in, it is created `forwarding` and forwarded at once,
   by the same request, as one body (partial 1, then 2, ...) read from the spool, along a completed
   upload's path (inspection, sha256, digests, events, redelivery). So the final POST is answered like a
   completing request: 201 with `Location`, `X-Upload-Sha256` and `X-Upstream-Status` when the upstream took
   it; the upstream's own answer when it refused it; 502/504 (with `Location`) when it could not be reached,
   and then the relay delivers it again by itself (after a HEAD, and from the sweeper), as for any upload.
   HEAD answers `Upload-Concat: final;<prefix><id> ...` and `Upload-Offset` = `Upload-Length`.
3. The partial uploads are claimed by the final upload (`final` set, their expiry moved past the final's):
   they can no longer be appended to (they are complete), terminated (403) or used in another final upload.
   Once the final upload is delivered, terminated or expired, its partial uploads are deleted (bytes and
   records), and its own data (none) too.

Refusals (the contract's JSON error; statuses as tusd answers them):
    Upload-Concat malformed, empty URL list, URL outside the prefix, bad id   400 bad_request
    a partial upload that is unknown, terminated or expired                   404 not_found
    not a partial upload, not finished, claimed by another final upload       400 bad_request
    Upload-Length or Upload-Defer-Length on a final upload                    400 bad_request
    a body on the final POST; PATCH on a final upload; DELETE of a claimed
    partial upload                                                            403 forbidden
    the sum over the route's size limits                                      413 body_too_large / file_too_large
    Upload-Concat on an IETF-draft request (the drafts have no concatenation) 400 bad_request
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from relay.core.limits import Limits
from relay.core.resumable import COMPLETE, FAILED, RECEIVING, ResumableSettings, ResumableUpload, apply, create
from relay.core.resumable_headers import TUS_CONTENT_TYPE, ModifyFinal, Protocol, ResumableRequest
from relay.core.resumable_replies import Decision, decide_error
from relay.errors import BadRequest, BodyTooLarge, FileTooLarge, NotFound, RelayError

__all__ = [
    "FINAL",
    "MAX_PARTS",
    "PARTIAL",
    "Concat",
    "ModifyFinal",
    "claim",
    "concat_header",
    "decide_final",
    "parse_concat",
    "partial_id",
]

PARTIAL: Literal["partial"] = "partial"
FINAL: Literal["final"] = "final"
MAX_PARTS = 1000  # a final upload names at most this many partial uploads (each is read, checked and claimed)
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # relay.headers.valid_upload_id's alphabet
_URL = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no controls, no spaces inside one URL


@dataclass(frozen=True, slots=True)
class Concat:
    """A parsed `Upload-Concat`: `partial`, or `final` with the ids of its partial uploads, in order."""

    kind: Literal["partial", "final"]
    ids: tuple[str, ...] = ()


def partial_id(url: str, prefix: str) -> str:
    """The upload id a `final;` URL names: `<prefix><id>`, as an absolute path or an absolute http(s) URL.

    No percent-decoding: an id's alphabet has nothing to encode, so `%2e%2e` or `%2F` can only fail the id
    check (no path games). A query or fragment is refused; one trailing slash is allowed, as tusd allows it.
    """
    path = url
    scheme, sep, rest = url.partition("://")
    if sep:
        if scheme.lower() not in ("http", "https"):
            raise BadRequest(f"Upload-Concat URL {url!r} is not http(s)")
        slash = rest.find("/")
        if slash <= 0:
            raise BadRequest(f"Upload-Concat URL {url!r} has no host or no path")
        path = rest[slash:]
    if "?" in path or "#" in path or not path.startswith(prefix):
        raise BadRequest(f"Upload-Concat URL {url!r} is not an upload under {prefix}")
    upload_id = path[len(prefix) :]
    if upload_id.endswith("/"):
        upload_id = upload_id[:-1]
    if not _ID.fullmatch(upload_id):
        raise BadRequest(f"Upload-Concat URL {url!r} does not name an upload")
    return upload_id


def parse_concat(value: bytes | None, prefix: str, protocol: Protocol = "tus") -> Concat | None:
    """`Upload-Concat` of a creation request (None when absent); BadRequest when malformed, or when the request
    speaks an IETF draft (they have no concatenation: a partial upload forwarded whole would be a wrong file)."""
    if value is None:
        return None
    if protocol != "tus":
        raise BadRequest("Upload-Concat is a tus extension; the drafts have no concatenation")
    text = value.decode("latin-1").strip(" \t")
    if text == PARTIAL:
        return Concat(PARTIAL)
    if not text.startswith("final;"):
        raise BadRequest("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    urls = text[len("final;") :].replace("\t", " ").split(" ")
    urls = [url for url in urls if url]
    if not urls:
        raise BadRequest("Upload-Concat: final; names no partial upload")
    if len(urls) > MAX_PARTS:
        raise BadRequest(f"Upload-Concat: final; names {len(urls)} partial uploads (at most {MAX_PARTS})")
    ids = []
    for url in urls:
        if not _URL.fullmatch(url):
            raise BadRequest("Upload-Concat has a character that is not visible ASCII")
        ids.append(partial_id(url, prefix))
    if len(set(ids)) != len(ids):
        raise BadRequest("Upload-Concat: final; names the same partial upload twice")
    return Concat(FINAL, tuple(ids))


def concat_header(upload: ResumableUpload, prefix: str) -> tuple[bytes, bytes] | None:
    """`Upload-Concat` on HEAD (tus: a partial or final upload's HEAD carries it)."""
    if upload.concat == PARTIAL:
        return b"Upload-Concat", b"partial"
    if upload.concat == FINAL:
        urls = " ".join(prefix + part for part in upload.parts)
        return b"Upload-Concat", f"final;{urls}".encode("latin-1")
    return None


def _refuse(req: ResumableRequest, error: RelayError, limits: Limits) -> Decision:
    return decide_error(req.protocol, error, limits=limits)


def _check_partial(upload_id: str, partial: ResumableUpload | None, final_id: str, now: float) -> RelayError | None:
    if partial is None or partial.state == FAILED or now >= partial.expires_at:
        return NotFound(f"partial upload {upload_id} does not exist (unknown, terminated or expired)")
    if partial.concat != PARTIAL:
        return BadRequest(f"upload {upload_id} is not a partial upload (Upload-Concat: partial)")
    if partial.state != RECEIVING or partial.length is None or partial.offset != partial.length:
        return BadRequest(f"partial upload {upload_id} is not finished ({partial.offset} of {partial.length})")
    if partial.final is not None and partial.final != final_id:
        return BadRequest(f"partial upload {upload_id} is already part of final upload {partial.final}")
    return None


def _too_large(total: int, limits: Limits) -> RelayError | None:
    if limits.max_body_size is not None and total > limits.max_body_size:
        return BodyTooLarge(f"the partial uploads add up to {total} bytes, over the limit of {limits.max_body_size}")
    if limits.max_file_size is not None and total > limits.max_file_size:
        return FileTooLarge(f"the partial uploads add up to {total} bytes, over the file limit {limits.max_file_size}")
    return None


def decide_final(
    req: ResumableRequest,
    concat: Concat,
    partials: Sequence[ResumableUpload | None],
    *,
    upload_id: str,
    route: str,
    target: bytes,
    now: float,
    limits: Limits,
    settings: ResumableSettings,
) -> Decision:
    """The final POST: refuse it, or create the final upload `forwarding` (action `forward`).

    `partials` are the uploads `concat.ids` name, in order, as the store has them (None: unknown).
    """
    if req.protocol != "tus":
        return _refuse(req, BadRequest("Upload-Concat is a tus extension; the drafts have no concatenation"), limits)
    if req.content_type == TUS_CONTENT_TYPE and req.content_length != 0:
        return _refuse(req, ModifyFinal("a final upload takes no body: its bytes are its partial uploads'"), limits)
    error: RelayError | None
    if req.upload_length is not None or req.defer_length:
        error = BadRequest("a final upload takes its length from its partial uploads: no Upload-Length")
        return _refuse(req, error, limits)
    for part_id, partial in zip(concat.ids, partials, strict=True):
        if (error := _check_partial(part_id, partial, upload_id, now)) is not None:
            return _refuse(req, error, limits)
    lengths = tuple(partial.length or 0 for partial in partials if partial is not None)
    total = sum(lengths)
    if (error := _too_large(total, limits)) is not None:
        return _refuse(req, error, limits)
    upload = create(
        upload_id=upload_id,
        route=route,
        target=target,
        protocol=req.protocol,
        now=now,
        expiry=settings.expiry,
        length=total,
        metadata=req.metadata,
    )
    upload = replace(upload, offset=total, concat=FINAL, parts=concat.ids, part_lengths=lengths)
    return Decision(action="forward", upload=apply(upload, COMPLETE, now=now))


def claim(partial: ResumableUpload, final: ResumableUpload) -> ResumableUpload:
    """A partial upload taken by `final`: it lives until `final` ends (the final upload's end deletes it), so
    its own expiry moves one expiry period past the final upload's."""
    return replace(partial, final=final.id, expires_at=max(partial.expires_at, final.expires_at + partial.expiry))
