"""What a request came to: per file (bytes sent, seconds, sha256 only when whole, the relay's view) and per request.

Failed requests have results too (`status` None and `error`), so `--json` prints an object for every request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from client.events import describe_http_error

__all__ = ["FileResult", "ResumableInfo", "ResumableObserver", "UploadObserver", "UploadResult", "error_summary"]


@dataclass
class FileResult:
    """One file of a request. `sha256` is None unless the whole file was read: never a partial read's digest."""

    path: str
    size: int | None
    sha256: str | None
    sent: int = 0
    seconds: float = 0.0
    # With --events: the relay's own size and sha256 for this part, and whether they match ours.
    relay_size: int | None = None
    relay_sha256: str | None = None
    match: bool | None = None
    # Resumable uploads: whether the whole file is on the relay (None for plain uploads, where `sent` says it).
    complete: bool | None = None

    @property
    def throughput_mbps(self) -> float:
        return self.sent / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def partial(self) -> bool:
        """Some of the file went, not all of it (a refusal or a broken connection mid-file)."""
        if self.complete is not None:
            # A resumed upload sends only the rest of the file: what counts is what the relay holds.
            return not self.complete and (self.sent > 0 or bool(self.relay_size))
        return self.sent > 0 and (self.sha256 is None or (self.size is not None and self.sent < self.size))


@dataclass
class ResumableInfo:
    """What a resumable upload adds to its result (`--json`: resumable, upload_url, resumed_from)."""

    protocol: str
    upload_url: str | None = None
    # Bytes the relay already held when this run began.
    resumed_from: int = 0
    upstream_status: int | None = None


@dataclass
class UploadResult:
    """The outcome of one request. `status` is None when no answer came (then `error` says why)."""

    status: int | None
    upload_id: str | None
    bytes_sent: int
    seconds: float
    files: list[FileResult]
    response: Any
    error: str | None = None
    attempts: int = 1
    retry_after: str | None = None
    # Filled with --events: what the relay reported for each part, and the bytes it received.
    relay_parts: list[dict[str, Any]] | None = None
    relay_bytes: int | None = None
    # After a 404: the relay's routes and the likely fix.
    hint: str | None = None
    resumable: ResumableInfo | None = None

    @property
    def throughput_mbps(self) -> float:
        return self.bytes_sent / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def mismatches(self) -> list[str]:
        return [f.path for f in self.files if f.match is False]

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and not self.mismatches


class UploadObserver(Protocol):
    """Told about one request as it goes; progress.py draws it, tests record it."""

    def file_sent(self, index: int, nbytes: int) -> None: ...

    def relay_received(self, nbytes: int, total: int | None) -> None: ...

    def part_verified(self, index: int, ok: bool) -> None: ...


class ResumableObserver(UploadObserver, Protocol):
    """A resumable upload's observer also learns where the relay stands: the bytes before `offset` are there."""

    def moved_to(self, index: int, offset: int) -> None: ...


class _NoObserver:
    """An observer that ignores everything: the default when nobody draws progress."""

    def file_sent(self, index: int, nbytes: int) -> None:
        pass

    def relay_received(self, nbytes: int, total: int | None) -> None:
        pass

    def part_verified(self, index: int, ok: bool) -> None:
        pass

    def moved_to(self, index: int, offset: int) -> None:
        pass


def error_summary(result: UploadResult) -> str:
    """One line describing why `result` is not ok."""
    if result.error is not None:
        return result.error
    if result.mismatches:
        return "sha256 mismatch: the relay saw different content for " + ", ".join(result.mismatches)
    text = describe_http_error(result.status or 0, result.response)
    return f"{text}; {result.hint}" if result.hint else text
