"""Where the bytes of resumable uploads live: the `Spool` protocol.

A spool keeps, per upload id, the bytes received so far (appended only at the end) and a small info
document (relay.core.resumable.ResumableUpload.to_json()). It knows nothing of protocols or states.

Designed so an S3-compatible spool can come next (relay/spool/s3.py):
- Appends go through a `SpoolWriter` opened at an offset the caller asserts. Chunks are handed over as
  they arrive (`write`, which waits only when too much is queued); `commit` makes them durable (fsync
  on disk; on S3 the upload of the parts, the tail under 5 MiB kept as its own object, as tusd does).
- `offset` is what is durably there: after a crash, the truth the upload continues from.
- `read` streams the bytes back (forwarding a completed upload from the spool).
- `list` enumerates uploads for recovery after a restart; `free_bytes` serves the 507 check (None when
  the backend has no meaningful figure, as for S3).

Rules every implementation keeps:
1. One writer per upload at a time (the caller's job: relay.core.resumable Rule 1); a writer is used
   by one task and once: after commit/abort/discard it is closed.
2. `writer(id, offset)` fails with SpoolDataLost if fewer than `offset` bytes are there, and drops any
   bytes past `offset`, so an append always starts exactly where the caller believes the upload ends.
3. `abort` keeps every byte handed over before it (made durable): the contract keeps what an interrupted
   append delivered. `discard` drops everything this writer wrote (460 checksum mismatch, tus 413).
4. Info documents are replaced atomically: a reader sees the old one or the new one, never a mix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

__all__ = ["Spool", "SpoolDataLost", "SpoolError", "SpoolWriter"]


class SpoolError(Exception):
    """The spool could not do what was asked (disk full, I/O error, unknown upload)."""


class SpoolDataLost(SpoolError):
    """Fewer bytes are stored than an offset the caller was promised: the upload cannot go on."""


class SpoolWriter(Protocol):
    @property
    def start(self) -> int:
        """The offset this writer appends at."""
        ...

    @property
    def handed(self) -> int:
        """Bytes handed to `write` so far (not all of them necessarily on disk yet)."""
        ...

    async def write(self, chunk: bytes) -> None:
        """Queue `chunk` for appending; returns at once unless too much is queued (backpressure)."""
        ...

    async def commit(self, *, sync: bool = True) -> int:
        """Write everything queued, make it durable, close; return the new size.

        `sync=False` leaves the flush to disk to the system (the completing append of a cut-through, whose bytes
        are needed again only if the upstream fails: then `Spool.sync` makes them durable before any answer).
        """
        ...

    async def abort(self) -> int:
        """The append broke: keep (durably) what was handed over, close; return the durable size."""
        ...

    async def discard(self) -> int:
        """Drop all this writer appended (back to `start`), durably, close; return `start`."""
        ...


class Spool(Protocol):
    async def create(self, upload_id: str, info: bytes) -> None:
        """A new, empty upload with its info document. FileExistsError if the id is taken."""
        ...

    async def writer(self, upload_id: str, offset: int) -> SpoolWriter:
        """Open the single writer of `upload_id`, appending at `offset` (Rule 2)."""
        ...

    async def offset(self, upload_id: str) -> int:
        """The number of bytes durably stored for `upload_id`."""
        ...

    async def truncate(self, upload_id: str, size: int) -> None:
        """Cut the stored bytes to `size` (recovery: relay.core.resumable.recover says how many to keep)."""
        ...

    def read(self, upload_id: str, start: int = 0) -> AsyncIterator[bytes]:
        """The stored bytes from `start` to the end, in chunks."""
        ...

    async def save_info(self, upload_id: str, info: bytes) -> None:
        """Replace the info document atomically and durably (Rule 4)."""
        ...

    async def load_info(self, upload_id: str) -> bytes | None:
        """The info document, or None for an unknown upload."""
        ...

    async def delete(self, upload_id: str) -> None:
        """Remove the bytes and the info document; deleting an unknown upload is not an error."""
        ...

    async def sync(self, upload_id: str) -> None:
        """Make every byte stored for `upload_id` durable (after a `commit(sync=False)`)."""
        ...

    async def delete_data(self, upload_id: str) -> None:
        """Remove the bytes only (a delivered upload keeps its record until it expires)."""
        ...

    async def list(self) -> list[str]:
        """Ids of every upload with an info document (recovery after a restart)."""
        ...

    async def free_bytes(self) -> int | None:
        """Bytes the spool can still take, or None when unknown/unbounded."""
        ...

    async def close(self) -> None:
        """Finish queued work and release threads and files."""
        ...
