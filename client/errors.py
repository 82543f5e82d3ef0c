"""The client's errors: each knows the exit code the CLI ends with (CONTRACT.md: 1 HTTP, 2 usage, 3 network).

    UploadError              1
    ├── ArgumentError        2  bad arguments
    ├── FileError            2  a file that does not exist, cannot be read, or changed while being sent
    ├── NetworkError         3  relay down, connection cut, timeout
    └── HttpError            1  an HTTP error where there is no UploadResult to carry it (events, bench)

An error raised during a request may carry `result`: what was known when it failed (bytes sent, the files),
so `--json` can still print an object for that request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from client.upload import UploadResult

__all__ = ["ArgumentError", "FileError", "HttpError", "NetworkError", "UploadError"]


class UploadError(Exception):
    """Base of the client's errors; `exit_code` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, before_body: bool = False) -> None:
        super().__init__(message)
        # True when no body byte was handed to the connection: the request can be replayed safely.
        self.before_body = before_body
        self.result: UploadResult | None = None


class ArgumentError(UploadError):
    """Bad arguments (exit 2)."""

    exit_code = 2


class FileError(UploadError):
    """A file that does not exist, is a directory, cannot be read, or changed while being sent (exit 2)."""

    exit_code = 2


class NetworkError(UploadError):
    """Relay down, connection cut, timeout (exit 3)."""

    exit_code = 3


class HttpError(UploadError):
    """An HTTP error answer where there is no UploadResult to carry it (events subscription, bench)."""

    exit_code = 1
