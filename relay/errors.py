"""Every error the relay answers with, each knowing its HTTP status and contract code.

Stdlib only, so the sans-IO core may raise these.

    RelayError
    ├── BadRequest                400 bad_request
    │   ├── MalformedMultipart    400 malformed_multipart
    │   └── DigestMismatch        400 digest_mismatch (the body does not match its Content-Digest / Repr-Digest)
    ├── Unauthorized              401 unauthorized
    ├── NotFound                  404 not_found
    ├── MethodNotAllowed          405 method_not_allowed
    ├── ClientTimeout             408 client_timeout (idle between body reads, or under --client-min-rate)
    ├── UploadIdInUse             409 upload_id_in_use
    ├── PayloadTooLarge           413
    │   ├── BodyTooLarge              body_too_large
    │   ├── FileTooLarge              file_too_large
    │   └── TooManyFiles              too_many_files
    ├── TooManyUploads            429 too_many_uploads
    ├── HeadersTooLarge           431 headers_too_large
    ├── ShuttingDown              503 shutting_down (in flight when the drain timeout ran out)
    ├── ClientDisconnected        499 client_disconnected (never answered: nobody is listening)
    ├── UpstreamError             502
    │   ├── UpstreamUnavailable       upstream_unavailable (could not connect)
    │   └── UpstreamFailed            upstream_failed (broke mid-way)
    └── UpstreamTimeout           504 upstream_timeout
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "BodyTooLarge",
    "ClientDisconnected",
    "ClientTimeout",
    "DigestMismatch",
    "FileTooLarge",
    "HeadersTooLarge",
    "MalformedMultipart",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RelayError",
    "ShuttingDown",
    "TooManyFiles",
    "TooManyUploads",
    "Unauthorized",
    "UploadIdInUse",
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
