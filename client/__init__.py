"""relay-upload: stream files to the upload relay, with progress, sha256 and the relay's own view of them.

Usage::

    >>> from client import upload
    >>> result = upload(["photo.jpg"], "/upload/photos", relay="http://127.0.0.1:8000")
    >>> result.ok, result.status, result.files[0].sha256
"""

from client.upload import (
    ArgumentError,
    FileError,
    FileResult,
    HttpError,
    NetworkError,
    UploadError,
    UploadResult,
    upload,
    upload_async,
)

__all__ = [
    "ArgumentError",
    "FileError",
    "FileResult",
    "HttpError",
    "NetworkError",
    "UploadError",
    "UploadResult",
    "upload",
    "upload_async",
]
