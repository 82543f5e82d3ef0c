"""relay-upload: stream files to the upload relay, with progress, sha256 and the relay's own view of them.

Usage::

    >>> from client import upload
    >>> result = upload(["photo.jpg"], "/upload/photos", relay="http://127.0.0.1:8000")
    >>> result.ok, result.status, result.files[0].sha256
"""

from client.errors import ArgumentError, FileError, HttpError, NetworkError, UploadError
from client.results import FileResult, UploadResult
from client.upload import upload, upload_async
from client.version import version as _version

__version__ = _version()

__all__ = [
    "ArgumentError",
    "FileError",
    "FileResult",
    "HttpError",
    "NetworkError",
    "UploadError",
    "UploadResult",
    "__version__",
    "upload",
    "upload_async",
]
