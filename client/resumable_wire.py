"""The two resumable protocols the client speaks, as header recipes behind one small interface.

* tus 1.0.0: creation `POST` with `Tus-Resumable`, `Upload-Length`, `Upload-Metadata`; `HEAD` for the offset;
  appends as `PATCH` with `application/offset+octet-stream`, `Upload-Offset` and, with --digest,
  `Upload-Checksum: sha256 <base64>` of that request's body (a mismatch is 460, the bytes are dropped).
* The IETF draft "Resumable Uploads for HTTP", interop version 8 (drafts -09 to -11): creation with
  `Upload-Complete: ?0`; appends as `PATCH` with `application/partial-upload` and `Upload-Complete: ?1` on the
  one that reaches the end. The draft has no per-request checksum, so --digest sends only `Repr-Digest`.

Both carry `Upload-Metadata` (the relay reads it in either protocol, as tus-js-client sends it): `filename`,
`filetype`, then the `--form` fields. The completing request is answered only once the upstream answered; the
relay then adds `X-Upstream-Status` and `X-Upload-Sha256`, which is how the client tells completion apart.

What a non-2xx answer means is decided here too (`judge`), the same for both protocols: `Retry` (HEAD and go
on: 409, 460, 429 after its Retry-After, a 5xx of the relay's own), `Gone` (404/410 for the upload's URL: start
anew) or `Final` (a 4xx, the upstream's own verdict marked by X-Upstream-Status, 501/505/507).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from client.errors import ArgumentError
from client.events import describe_http_error
from client.retry import parse_retry_after

__all__ = [
    "DIALECTS",
    "IETF",
    "TUS",
    "Answer",
    "Dialect",
    "Final",
    "Gone",
    "Retry",
    "completed",
    "header_int",
    "judge",
    "metadata_header",
    "offset_of",
    "protocol_error",
]

TUS_VERSION = "1.0.0"
IETF_INTEROP_VERSION = "8"
# tus: a metadata key is ASCII without spaces and commas (a header value carries it as it is, so no controls).
_METADATA_KEY = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_RESERVED_KEYS = ("filename", "filetype")
# 5xx answers that sending again will not mend.
FINAL_5XX = frozenset({501, 505, 507, 508, 510, 511})


@dataclass(frozen=True)
class Dialect:
    """One protocol's headers for creation, HEAD and appends."""

    name: str
    version_header: tuple[str, str]
    append_type: str
    # Whether a per-append `Upload-Checksum` is part of the protocol (tus' checksum extension).
    per_append_checksum: bool

    def base(self) -> dict[str, str]:
        return dict([self.version_header])

    def create(self, size: int, metadata: str, repr_digest: bytes | None) -> dict[str, str]:
        headers = {**self.base(), "Upload-Length": str(size), "Content-Length": "0"}
        if self.name == "ietf":
            # An empty file is complete at creation; otherwise the bytes come in appends.
            headers["Upload-Complete"] = "?1" if size == 0 else "?0"
        if metadata:
            headers["Upload-Metadata"] = metadata
        if repr_digest is not None:
            headers["Repr-Digest"] = repr_field(repr_digest)
        return headers

    def append(
        self, offset: int, length: int, *, last: bool, checksum: bytes | None, repr_digest: bytes | None
    ) -> dict[str, str]:
        headers = {
            **self.base(),
            "Content-Type": self.append_type,
            "Upload-Offset": str(offset),
            "Content-Length": str(length),
        }
        if self.name == "ietf":
            headers["Upload-Complete"] = "?1" if last else "?0"
        if checksum is not None and self.per_append_checksum:
            headers["Upload-Checksum"] = "sha256 " + base64.b64encode(checksum).decode("ascii")
        if repr_digest is not None and last:
            # RFC 9530 on the last append too: a run that resumes an upload created without --digest still
            # has the whole file checked before it goes upstream.
            headers["Repr-Digest"] = repr_field(repr_digest)
        return headers


TUS = Dialect("tus", ("Tus-Resumable", TUS_VERSION), "application/offset+octet-stream", True)
IETF = Dialect("ietf", ("Upload-Draft-Interop-Version", IETF_INTEROP_VERSION), "application/partial-upload", False)
DIALECTS = {"tus": TUS, "ietf": IETF}


def repr_field(digest: bytes) -> str:
    """`sha-256=:<base64>:` (RFC 9530: a structured-field dictionary with a byte sequence)."""
    return "sha-256=:" + base64.b64encode(digest).decode("ascii") + ":"


def metadata_header(filename: str, filetype: str, form: Sequence[tuple[str, str]]) -> str:
    """`Upload-Metadata`: `key base64(value)` pairs; a --form key that tus cannot carry is a usage error."""
    pairs = [("filename", filename), ("filetype", filetype)]
    seen = set(_RESERVED_KEYS)
    for key, value in form:
        if not _METADATA_KEY.fullmatch(key):
            raise ArgumentError(
                f"--form {key!r}: with --resumable a field name is printable ASCII without spaces or commas"
            )
        if key in seen:
            raise ArgumentError(f"--form {key!r}: given twice, or reserved for the file (filename, filetype)")
        seen.add(key)
        pairs.append((key, value))
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode('ascii')}" for key, value in pairs)


def offset_of(headers: httpx.Headers) -> int | None:
    value = headers.get("upload-offset", "").strip()
    return int(value) if value.isdigit() else None


def completed(headers: httpx.Headers) -> bool:
    """The upstream answered for the whole file (the relay adds X-Upstream-Status only then)."""
    return "x-upstream-status" in headers


# --- what an answer means -------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    body: Any


class Retry(Exception):
    """Something went wrong that HEAD-and-go-on may mend; `answer` is the HTTP answer, None for the network."""

    def __init__(self, reason: str, *, delay: float | None = None, answer: Answer | None = None) -> None:
        super().__init__(reason)
        self.delay = delay
        self.answer = answer
        self.network: httpx.TransportError | None = None


class Gone(Exception):
    """The relay no longer knows the upload's URL (404, 410)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(describe_http_error(answer.status, answer.body))
        self.answer = answer


class Final(Exception):
    """An answer that ends the upload: the relay's (or the upstream's) verdict."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(describe_http_error(answer.status, answer.body))
        self.answer = answer
        # Set when the answer was one to retry, and the retries (this many) were spent on it.
        self.gave_up: int | None = None


def judge(answer: Answer, *, upload_url: bool) -> None:
    """Raise what a non-2xx answer means: retry after HEAD, start anew, or the end."""
    status = answer.status
    text = describe_http_error(status, answer.body)
    if status == 429:
        raise Retry(text, delay=parse_retry_after(answer.headers.get("retry-after")), answer=answer)
    if upload_url and status in (404, 410):
        raise Gone(answer)
    if upload_url and status == 409:
        raise Retry("offset mismatch: asking the relay where it stands", delay=0.0, answer=answer)
    if upload_url and status == 460:
        raise Retry("checksum mismatch (did the file change?)", answer=answer)
    if status >= 500 and status not in FINAL_5XX and "x-upstream-status" not in answer.headers:
        raise Retry(text, answer=answer)
    raise Final(answer)


def header_int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def protocol_error(answer: Answer, message: str) -> Answer:
    # Not something a retry mends: a relay that does not speak the protocol (or not this version of it).
    return Answer(
        answer.status if answer.status >= 400 else 502,
        answer.headers,
        {"error": {"code": "protocol", "message": message}},
    )
