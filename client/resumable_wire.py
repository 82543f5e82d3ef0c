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
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from client.errors import ArgumentError

__all__ = ["DIALECTS", "IETF", "TUS", "Dialect", "completed", "metadata_header", "offset_of"]

TUS_VERSION = "1.0.0"
IETF_INTEROP_VERSION = "8"
# tus: a metadata key is any run of characters without spaces and commas.
_METADATA_KEY = re.compile(r"[^\s,]+")
_RESERVED_KEYS = ("filename", "filetype")


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
            raise ArgumentError(f"--form {key!r}: with --resumable a field name cannot hold spaces or commas")
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
