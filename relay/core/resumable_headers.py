"""Resumable uploads: the request headers of tus 1.0.0 and of the IETF draft, parsed and checked.

Sans-IO: headers in (ASGI style, `(name, value)` byte pairs with lower-case names), a frozen
`ResumableRequest` or a `RelayError` out. Nothing here knows about an upload's state; that is
relay/core/resumable.py. docs/resumable-protocols.md says what each protocol version sends and expects,
with the sources it was read from.

Three protocols, told apart by the request alone (`detect_protocol`):
- `tus`: `Tus-Resumable` present (every tus request but OPTIONS carries it; 412 unless it is `1.0.0`).
- `ietf-6`: `Upload-Draft-Interop-Version: 6` (drafts -04/-05; tus-js-client `protocol: "ietf-draft-05"`).
- `ietf-8`: `Upload-Draft-Interop-Version: 8` (drafts -09 to -11).
Any other interop version is not ours: the draft forbids answering it with 104, so on a routed path the
request is a plain upload, and on the resumable prefix it is a 400.

Rules:
- A header that is present but malformed is an error (400), never silently read as absent, with one
  exception the draft makes: in interop 8 an `Upload-Complete`, `Upload-Offset` or `Upload-Length` that
  is not a valid structured-field value "MUST cause the entire header field to be ignored" (-11 §4.1).
- Numbers are ASCII digits only (no sign, no spaces inside, no `+`): `int()` alone would take " 1_0".
- `Upload-Checksum` is checked for a known algorithm and a digest of the right size here; the bytes
  are checked by the glue, which hashes the request's body.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from relay.errors import (
    BadRequest,
    BeyondUploadLength,
    ChecksumMismatch,
    CompletedUpload,
    InconsistentLength,
    InsufficientStorage,
    OffsetMismatch,
    RelayError,
    UnsupportedChecksum,
    UnsupportedMediaType,
    UnsupportedTusVersion,
    UploadInvalid,
)

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "IETF_PROTOCOLS",
    "PROBLEM_TYPES",
    "PARTIAL_UPLOAD",
    "TUS_CONTENT_TYPE",
    "TUS_EXTENSIONS",
    "TUS_VERSION",
    "BeyondUploadLength",
    "Checksum",
    "ChecksumMismatch",
    "CompletedUpload",
    "InconsistentLength",
    "InsufficientStorage",
    "ModifyFinal",
    "OffsetMismatch",
    "Protocol",
    "ResumableRequest",
    "UnsupportedChecksum",
    "UnsupportedMediaType",
    "UnsupportedTusVersion",
    "UploadInvalid",
    "detect_protocol",
    "encode_metadata",
    "interim_104",
    "interop_version",
    "parse_metadata",
    "parse_request",
    "parse_sf_boolean",
    "problem",
    "upload_limit",
]

Protocol = Literal["tus", "ietf-6", "ietf-8"]
IETF_PROTOCOLS: Mapping[bytes, Protocol] = {b"6": "ietf-6", b"8": "ietf-8"}

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,creation-defer-length,termination,expiration,checksum,concatenation"
TUS_CONTENT_TYPE = "application/offset+octet-stream"
PARTIAL_UPLOAD = "application/partial-upload"
# Digest sizes in bytes: a digest of another size can never match, so it is refused before the body.
CHECKSUM_ALGORITHMS: Mapping[str, int] = {"sha1": 20, "sha256": 32, "md5": 16}

_DIGITS = re.compile(rb"[0-9]{1,19}")
_SF_INTEGER = re.compile(rb"[0-9]{1,15}")  # RFC 8941 §3.3.1: at most 15 digits; a sign makes it negative
_METADATA_KEY = re.compile(r"[^\s,]+")


class ModifyFinal(RelayError):
    """tus concatenation (relay/core/concat.py): a final upload takes no bytes of its own, and a partial upload
    that a final upload claimed stays until that one ends: 403, as tusd's ERR_MODIFY_FINAL."""

    status_code, code, default_message = 403, "forbidden", "modifying a final upload is not allowed"


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str  # one of CHECKSUM_ALGORITHMS
    digest: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumableRequest:
    """What a resumable request says, checked for form (not against any upload).

    `method` is the effective method (`X-HTTP-Method-Override` applied to a tus POST). `upload_complete`
    is the IETF `Upload-Complete` (None when absent or, in interop 8, invalid). `content_length` is the
    declared body size (None when chunked or absent).
    """

    method: str
    protocol: Protocol
    upload_length: int | None = None
    defer_length: bool = False
    upload_offset: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    checksum: Checksum | None = None
    content_type: str | None = None
    upload_complete: bool | None = None
    content_length: int | None = None


def _get(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value.strip(b" \t")
    return None


def detect_protocol(headers: Iterable[tuple[bytes, bytes]]) -> Protocol | None:
    """Which resumable protocol a request speaks, or None when it speaks none we serve."""
    headers = list(headers)
    interop = _get(headers, b"upload-draft-interop-version")
    if interop is not None:
        return IETF_PROTOCOLS.get(interop)
    if _get(headers, b"tus-resumable") is not None:
        return "tus"
    return None


def parse_sf_boolean(value: bytes) -> bool | None:
    """An RFC 8941 Boolean item (`?0` / `?1`, parameters allowed and ignored); None if it is not one."""
    bare = value.split(b";", 1)[0].strip(b" \t")
    return {b"?1": True, b"?0": False}.get(bare)


def _tus_integer(value: bytes, name: str) -> int:
    if not _DIGITS.fullmatch(value):
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(value)


def _sf_integer(value: bytes, name: str, protocol: Protocol) -> int | None:
    bare = value.split(b";", 1)[0].strip(b" \t")
    if _SF_INTEGER.fullmatch(bare):
        return int(bare)
    if protocol == "ietf-8":
        return None  # -11 §4.1: other values MUST cause the entire header field to be ignored
    raise BadRequest(f"{name} must be a non-negative integer")


def _media_type(value: bytes | None) -> str | None:
    if value is None:
        return None
    return value.split(b";", 1)[0].strip(b" \t").decode("latin-1").lower()


def parse_metadata(value: str) -> dict[str, str]:
    """tus `Upload-Metadata`: comma-separated `key base64(value)`; the value (and its space) may be absent.

    Keys are unique, non-empty, without spaces or commas; values must be valid base64 of UTF-8 text
    (the relay forwards them as form fields and filenames).
    """
    result: dict[str, str] = {}
    for element in value.split(","):
        element = element.strip(" \t")
        if not element:
            raise BadRequest("Upload-Metadata has an empty element")
        key, _, encoded = element.partition(" ")
        if not _METADATA_KEY.fullmatch(key) or " " in encoded.strip(" "):
            raise BadRequest(f"Upload-Metadata element {element!r} is not 'key base64value'")
        if key in result:
            raise BadRequest(f"Upload-Metadata key {key!r} appears twice")
        try:
            result[key] = base64.b64decode(encoded.strip(" "), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise BadRequest(f"Upload-Metadata value of {key!r} is not base64 of UTF-8 text") from exc
    return result


def encode_metadata(metadata: Mapping[str, str]) -> str:
    """The `Upload-Metadata` header for `metadata` (HEAD echoes what creation sent)."""
    parts = []
    for key, value in metadata.items():
        encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
        parts.append(f"{key} {encoded}" if encoded else key)
    return ",".join(parts)


def _parse_checksum(value: bytes) -> Checksum:
    algorithm, _, encoded = value.decode("latin-1").partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise UnsupportedChecksum(f"Upload-Checksum algorithm {algorithm!r} is not one of sha1, sha256, md5")
    try:
        digest = base64.b64decode(encoded.strip(" "), validate=True)
    except binascii.Error as exc:
        raise BadRequest("Upload-Checksum digest is not base64") from exc
    if len(digest) != CHECKSUM_ALGORITHMS[algorithm]:
        raise BadRequest(
            f"Upload-Checksum digest has {len(digest)} bytes, {algorithm} has {CHECKSUM_ALGORITHMS[algorithm]}"
        )
    return Checksum(algorithm, digest)


def _effective_method(method: str, headers: list[tuple[bytes, bytes]], protocol: Protocol) -> str:
    override = _get(headers, b"x-http-method-override")
    if protocol == "tus" and method == "POST" and override:
        return override.decode("latin-1").upper()
    return method


def parse_request(method: str, headers: Iterable[tuple[bytes, bytes]], protocol: Protocol) -> ResumableRequest:
    """Parse every resumable header of one request; raise the RelayError the contract gives for bad form."""
    headers = list(headers)
    method = _effective_method(method.upper(), headers, protocol)
    if protocol == "tus" and method != "OPTIONS":
        version = _get(headers, b"tus-resumable")
        if version != TUS_VERSION.encode():
            shown = "(none)" if version is None else repr(version.decode("latin-1"))[:40]
            raise UnsupportedTusVersion(f"Tus-Resumable {shown} is not supported; this server speaks 1.0.0")
    return ResumableRequest(
        method=method,
        protocol=protocol,
        upload_length=_upload_length(headers, protocol),
        defer_length=_defer_length(headers, protocol),
        upload_offset=_upload_offset(headers, protocol),
        metadata=_metadata(headers),
        checksum=_checksum(headers, protocol),
        content_type=_media_type(_get(headers, b"content-type")),
        upload_complete=_upload_complete(headers, protocol),
        content_length=_content_length(headers),
    )


def _upload_length(headers: list[tuple[bytes, bytes]], protocol: Protocol) -> int | None:
    value = _get(headers, b"upload-length")
    if value is None:
        return None
    if protocol == "tus":
        return _tus_integer(value, "Upload-Length")
    return _sf_integer(value, "Upload-Length", protocol)


def _defer_length(headers: list[tuple[bytes, bytes]], protocol: Protocol) -> bool:
    value = _get(headers, b"upload-defer-length")
    if value is None:
        return False
    if value != b"1":
        raise BadRequest("Upload-Defer-Length must be 1")
    # tus-js-client sends it in its IETF mode too (uploadLengthDeferred); harmless there: no length is known.
    if protocol == "tus" and _get(headers, b"upload-length") is not None:
        raise BadRequest("Upload-Length and Upload-Defer-Length together")
    return True


def _upload_offset(headers: list[tuple[bytes, bytes]], protocol: Protocol) -> int | None:
    value = _get(headers, b"upload-offset")
    if value is None:
        return None
    if protocol == "tus":
        return _tus_integer(value, "Upload-Offset")
    return _sf_integer(value, "Upload-Offset", protocol)


def _metadata(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    # tus-js-client sends Upload-Metadata in its IETF mode too; the drafts use Content-Type and
    # Content-Disposition instead, which the glue may read as well.
    value = _get(headers, b"upload-metadata")
    if value is None or not value:
        return {}
    return parse_metadata(value.decode("latin-1"))


def _checksum(headers: list[tuple[bytes, bytes]], protocol: Protocol) -> Checksum | None:
    value = _get(headers, b"upload-checksum")
    if value is None or protocol != "tus":
        return None  # the drafts use RFC 9530 Content-Digest instead; not handled here
    return _parse_checksum(value)


def _upload_complete(headers: list[tuple[bytes, bytes]], protocol: Protocol) -> bool | None:
    if protocol == "tus":
        return None
    value = _get(headers, b"upload-complete")
    if value is None:
        return None
    parsed = parse_sf_boolean(value)
    if parsed is None and protocol == "ietf-6":
        raise BadRequest("Upload-Complete must be ?0 or ?1")
    return parsed


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    value = _get(headers, b"content-length")
    if value is None:
        return None
    return _tus_integer(value, "Content-Length")


# ---------------------------------------------------------------------------------------------------
# The response side: header values, problem documents and the 104 interim response, per protocol.

PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
# The titles are the drafts' own example texts (-05 §10, -11 §8), identical in every version that has them.
PROBLEM_TITLES: Mapping[str, str] = {
    "mismatching-upload-offset": "offset from request does not match offset of resource",
    "completed-upload": "upload is already completed",
    "inconsistent-upload-length": "inconsistent length values for upload",
}
# Which problem types each draft version defines: -05 has no inconsistent-upload-length (added in -06).
PROBLEM_TYPES: Mapping[Protocol, frozenset[str]] = {
    "tus": frozenset(),
    "ietf-6": frozenset({"mismatching-upload-offset", "completed-upload"}),
    "ietf-8": frozenset({"mismatching-upload-offset", "completed-upload", "inconsistent-upload-length"}),
}


def problem(kind: str, **members: int) -> dict[str, object]:
    """An RFC 9457 problem document of one of the drafts' types, e.g. problem("mismatching-upload-offset",
    **{"expected-offset": 100, "provided-offset": 200})."""
    return {"type": PROBLEM_BASE + kind, "title": PROBLEM_TITLES[kind], **members}


def upload_limit(protocol: Protocol, max_size: int | None, max_age: int | None) -> str:
    """The `Upload-Limit` Dictionary. The lifetime key is `expires` in -05 and `max-age` from -06 on; with
    no limit at all the value is `min-size=0` (-05 §8.2), never empty."""
    members = []
    if max_size is not None:
        members.append(f"max-size={max_size}")
    if max_age is not None:
        members.append(f"{'expires' if protocol == 'ietf-6' else 'max-age'}={max(0, max_age)}")
    return ",".join(members) or "min-size=0"


def interop_version(protocol: Protocol) -> str:
    return protocol.removeprefix("ietf-")


def interim_104(protocol: Protocol, location: str, limit: str) -> tuple[tuple[bytes, bytes], ...]:
    """The headers of `104 Upload Resumption Supported` for an IETF creation, sent before the body is read
    (relay/server.py's interim seam writes the status line and these).

    Both versions: `Upload-Draft-Interop-Version` (a server MUST send it on 104, -05 and -11 "Draft Version
    Identification") and `Location`; `Upload-Limit` (a MUST in -09..-11 when limits exist, an example in
    -05). tusd sends the same three (pkg/handler/unrouted_handler.go PostFileV2).
    """
    return (
        (b"Upload-Draft-Interop-Version", interop_version(protocol).encode()),
        (b"Location", location.encode("latin-1")),
        (b"Upload-Limit", limit.encode()),
    )
