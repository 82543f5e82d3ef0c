"""What the resumable glue needs of the shared state without importing redis-py: its refusal and its answer.

Theory of operation: relay/resumable/shared.py (the Redis side of resumable uploads) imports redis-py, and is
imported only when `--redis` is given (relay/resumable/__init__.py `_shared`, and under TYPE_CHECKING elsewhere),
so a relay without Redis never loads it (about 6 MiB of resident memory). What the rest of relay/resumable/ must
name either way, the 503 a Redis outage answers and what a TAKE found, lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.resumable import ResumableUpload
from relay.resumable.answers import SpoolUnavailable

__all__ = ["Seen", "StateUnavailable"]


class StateUnavailable(SpoolUnavailable):
    """Redis did not answer (or the upload was held too long elsewhere): 503, the client retries."""

    default_message = "the shared state of resumable uploads (redis) is unreachable"


@dataclass(frozen=True, slots=True)
class Seen:
    """What TAKE (or a peek) found: the document, and either our new token or the lease's holder."""

    doc: str | None
    token: int | None = None
    holder: str | None = None  # the relay id of the lease's holder
    mode: str | None = None
    orphan: bool = False  # a lease was never let go: its holder died mid-append or mid-forward

    def upload(self) -> ResumableUpload | None:
        return ResumableUpload.from_json(self.doc) if self.doc is not None else None
