"""What happened to an upload, as plain frozen data.

One class per contract event; `name` is the SSE event name. None of them does I/O. Every event carries
`upload_id`, `bytes` (request-body bytes received so far), `total` (declared Content-Length or None) and
`ts` (wall-clock seconds since the epoch, so events from several relay instances can be ordered).
Don't subclass these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

__all__ = [
    "TERMINAL",
    "Completed",
    "ErrorInfo",
    "Event",
    "Failed",
    "Interrupted",
    "Part",
    "Progress",
    "ResumableNote",
    "Resumed",
    "Started",
]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Started:
    name: ClassVar[str] = "started"
    upload_id: str
    bytes: int
    total: int | None
    ts: float
    route: str = ""
    method: str = ""
    path: str = ""
    client: str = ""  # the client's address (the trusted X-Forwarded-For hop with --trust-forwarded)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Progress:
    name: ClassVar[str] = "progress"
    upload_id: str
    bytes: int
    total: int | None
    ts: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Part:
    """A part completed. `index` counts parts from 0; `size` is the part's content bytes."""

    name: ClassVar[str] = "part"
    upload_id: str
    bytes: int
    total: int | None
    ts: float
    index: int
    field: str | None
    filename: str | None
    content_type: str | None
    size: int
    sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> dict[str, Any]:
        """The part as the registry and the contract's `parts` list show it."""
        return {
            "field": self.field,
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass(frozen=True, slots=True)
class Completed:
    name: ClassVar[str] = "completed"
    upload_id: str
    bytes: int
    total: int | None
    ts: float
    upstream_status: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Failed:
    name: ClassVar[str] = "failed"
    upload_id: str
    bytes: int
    total: int | None
    ts: float
    error: ErrorInfo
    upstream_status: int | None = None
    rejected: bool = False  # refused from its headers: no body byte was read

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Resumed:
    """A resumable upload's append began at `offset` (its `bytes`, too)."""

    name: ClassVar[str] = "resumed"
    upload_id: str
    bytes: int
    total: int | None
    ts: float
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Interrupted:
    """A resumable upload's append ended, broken or not, with the upload still incomplete."""

    name: ClassVar[str] = "interrupted"
    upload_id: str
    bytes: int
    total: int | None
    ts: float
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ResumableNote:
    """Not an SSE event: what the registry keeps of a resumable upload besides its events (its state between
    requests, `receiving` or `forwarding`, offset, expiry and last error). It also rebuilds the record of an
    upload found in the spool after a restart."""

    name: ClassVar[str] = "resumable"
    upload_id: str
    bytes: int
    total: int | None
    ts: float
    state: str
    expires_at: float
    route: str = ""
    path: str = ""
    started_at: float = 0.0
    error: ErrorInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Event = Started | Progress | Part | Completed | Failed | Resumed | Interrupted
TERMINAL = (Completed, Failed)
