"""Every error the relay answers with, each knowing its HTTP status and contract code.

Stdlib only, so the sans-IO core may raise these.

    RelayError
    ├── BadRequest                400 bad_request
    │   ├── MalformedMultipart    400 malformed_multipart
    │   ├── DigestMismatch        400 digest_mismatch (the body does not match its Content-Digest / Repr-Digest)
    │   ├── UnsupportedChecksum   400 unsupported_checksum (tus Upload-Checksum algorithm)
    │   ├── InconsistentLength    400 inconsistent_upload_length
    │   └── CompletedUpload       400 completed_upload
    ├── UploadInvalid             400 inconsistent_upload_length (IETF 8: the upload is deactivated)
    ├── Unauthorized              401 unauthorized
    ├── NotFound                  404 not_found
    ├── MethodNotAllowed          405 method_not_allowed
    ├── ClientTimeout             408 client_timeout (idle between body reads, or under --client-min-rate)
    ├── UploadIdInUse             409 upload_id_in_use
    ├── OffsetMismatch            409 offset_mismatch (resumable: Upload-Offset is not the upload's)
    ├── PayloadTooLarge           413
    │   ├── BodyTooLarge              body_too_large
    │   ├── FileTooLarge              file_too_large
    │   ├── TooManyFiles              too_many_files
    │   └── BeyondUploadLength        upload_length_exceeded (resumable: bytes past Upload-Length)
    ├── UnsupportedTusVersion     412 unsupported_version
    ├── UnsupportedMediaType      415 unsupported_media_type
    ├── TooManyUploads            429 too_many_uploads
    ├── HeadersTooLarge           431 headers_too_large
    ├── ChecksumMismatch          460 checksum_mismatch (tus: the append's bytes are dropped)
    ├── ShuttingDown              503 shutting_down (in flight when the drain timeout ran out)
    ├── ClientDisconnected        499 client_disconnected (never answered: nobody is listening)
    ├── UpstreamError             502
    │   ├── UpstreamUnavailable       upstream_unavailable (could not connect)
    │   └── UpstreamFailed            upstream_failed (broke mid-way)
    ├── UpstreamTimeout           504 upstream_timeout
    └── InsufficientStorage       507 insufficient_storage (the spool cannot hold the upload)
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "BeyondUploadLength",
    "BodyTooLarge",
    "ChecksumMismatch",
    "ClientDisconnected",
    "ClientTimeout",
    "CompletedUpload",
    "DigestMismatch",
    "FileTooLarge",
    "HeadersTooLarge",
    "InconsistentLength",
    "InsufficientStorage",
    "MalformedMultipart",
    "MethodNotAllowed",
    "NotFound",
    "OffsetMismatch",
    "PayloadTooLarge",
    "RelayError",
    "ShuttingDown",
    "TooManyFiles",
    "TooManyUploads",
    "Unauthorized",
    "UnsupportedChecksum",
    "UnsupportedMediaType",
    "UnsupportedTusVersion",
    "UploadIdInUse",
    "UploadInvalid",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class RelayError(Exception):
    """Base of the relay's own errors: `status_code` and `code` decide the JSON answer."""

    status_code = 500
    code = "internal_error"
    default_message = "internal error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class BadRequest(RelayError):
    status_code, code, default_message = 400, "bad_request", "bad request"


class MalformedMultipart(BadRequest):
    code, default_message = "malformed_multipart", "malformed multipart body"


class DigestMismatch(BadRequest):
    code, default_message = "digest_mismatch", "the body does not match its digest"


class Unauthorized(RelayError):
    status_code, code, default_message = 401, "unauthorized", "a valid bearer token is required"


class NotFound(RelayError):
    status_code, code, default_message = 404, "not_found", "not found"


class MethodNotAllowed(RelayError):
    status_code, code, default_message = 405, "method_not_allowed", "method not allowed"


class ClientTimeout(RelayError):
    status_code, code, default_message = 408, "client_timeout", "the client sent its body too slowly"


class UploadIdInUse(RelayError):
    status_code, code, default_message = 409, "upload_id_in_use", "an upload with this id is in progress"


class PayloadTooLarge(RelayError):
    status_code, code, default_message = 413, "body_too_large", "payload too large"


class BodyTooLarge(PayloadTooLarge):
    code, default_message = "body_too_large", "request body exceeds the size limit"


class FileTooLarge(PayloadTooLarge):
    code, default_message = "file_too_large", "a file exceeds the per-file size limit"


class TooManyFiles(PayloadTooLarge):
    code, default_message = "too_many_files", "too many files in one request"


class TooManyUploads(RelayError):
    status_code, code, default_message = 429, "too_many_uploads", "too many uploads in progress"


class HeadersTooLarge(RelayError):
    status_code, code, default_message = 431, "headers_too_large", "request headers too large"


class ShuttingDown(RelayError):
    status_code, code, default_message = 503, "shutting_down", "the relay stopped before this upload finished"


class ClientDisconnected(RelayError):
    status_code, code, default_message = 499, "client_disconnected", "the client went away mid-body"


class UpstreamError(RelayError):
    status_code, code, default_message = 502, "upstream_failed", "upstream failed"


class UpstreamUnavailable(UpstreamError):
    code, default_message = "upstream_unavailable", "could not connect to the upstream"


class UpstreamFailed(UpstreamError):
    code, default_message = "upstream_failed", "the upstream connection broke mid-way"


class UpstreamTimeout(RelayError):
    status_code, code, default_message = 504, "upstream_timeout", "the upstream made no progress in time"


# -- resumable uploads (tus 1.0.0 and the IETF draft; relay/core/resumable_headers.py raises them) --------


class UnsupportedTusVersion(RelayError):
    status_code, code, default_message = 412, "unsupported_version", "Tus-Resumable must be 1.0.0"


class UnsupportedMediaType(RelayError):
    status_code, code, default_message = 415, "unsupported_media_type", "wrong Content-Type for an append"


class OffsetMismatch(RelayError):
    status_code, code, default_message = 409, "offset_mismatch", "Upload-Offset does not match the upload"

    def __init__(self, expected: int, provided: int) -> None:
        self.expected, self.provided = expected, provided
        super().__init__(f"Upload-Offset {provided} does not match the upload's offset {expected}")


class UnsupportedChecksum(BadRequest):
    code, default_message = "unsupported_checksum", "unsupported Upload-Checksum algorithm"


class ChecksumMismatch(RelayError):
    status_code, code, default_message = 460, "checksum_mismatch", "the body does not match Upload-Checksum"


class BeyondUploadLength(PayloadTooLarge):
    code, default_message = "upload_length_exceeded", "the request brings bytes past Upload-Length"


class InconsistentLength(BadRequest):
    code, default_message = "inconsistent_upload_length", "inconsistent upload length values"


class CompletedUpload(BadRequest):
    code, default_message = "completed_upload", "the upload is already complete"


class UploadInvalid(RelayError):
    """IETF interop 8: bytes past the length deactivate the upload resource (draft -09..-11 §4.4.2)."""

    status_code, code, default_message = 400, "inconsistent_upload_length", "bytes past the upload's length"


class InsufficientStorage(RelayError):
    status_code, code, default_message = 507, "insufficient_storage", "the spool cannot hold this upload"
