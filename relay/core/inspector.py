"""UploadInspector: everything the relay learns from a request body, one chunk at a time, without I/O.

Theory of operation
-------------------
The glue builds one inspector per upload from the request headers (the constructor already refuses a
multipart Content-Type without a usable boundary), then calls `feed(chunk, now)` for every body chunk, in order,
never concurrently, and `finish(now)` after the last one. Both return the events to publish; `ts` of every
event is the `now` passed in. `feed` may run in a worker thread: it does not touch the event loop.

Rules:

1. Limits are inclusive and checked before the bytes go further: `BodyTooLarge` as soon as the byte count
   passes `max_body_size` (before the chunk reaches the parser); `TooManyFiles` at the headers of the first
   part with a filename beyond `max_files`; `FileTooLarge` as soon as a part with a filename has more than
   `max_file_size` content bytes (before those bytes are hashed). A raw (non-multipart) body is one part
   without a filename, so only `max_body_size` applies to it.
2. Multipart bodies go through `relay.core.multipart.MultipartReader` (its module docstring lists the bounds
   on hostile input). A `Part` event comes out of the `feed` in which the part ended; the raw body's single
   `Part` comes out of `finish`.
3. sha256 is computed from memoryview slices of the caller's chunk: no copies, no joins. With `digest=False`
   no hashing happens and `sha256` is None. `hasher` builds the hash objects (hashlib.sha256 by default;
   the relay passes one that hashes on a worker thread, relay/hashing.py): only `update` and `hexdigest`
   are used.
4. At most one `Progress` per `feed`, last in the list, when the `ProgressTicker` says so.
5. After any exception the inspector is finished; the glue must not feed it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from relay.core.events import Event, Part, Progress
from relay.core.limits import Limits
from relay.core.multipart import MultipartReader, PartHeaders, parse_boundary
from relay.core.progress import ProgressPolicy, ProgressTicker
from relay.errors import BodyTooLarge, FileTooLarge, TooManyFiles

__all__ = ["Hash", "UploadInspector"]


class Hash(Protocol):
    """What the inspector needs of a hash object: hashlib's sha256 and relay.hashing's both fit."""

    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class UploadInspector:
    """Counts, limits, parses and hashes one upload body; returns events."""

    def __init__(
        self,
        *,
        upload_id: str,
        content_type: str | None,
        total: int | None,
        limits: Limits,
        digest: bool = True,
        progress: ProgressPolicy | None = None,
        hasher: Callable[[], Hash] = hashlib.sha256,
    ) -> None:
        self.upload_id = upload_id
        self.content_type = content_type
        self.total = total
        self.limits = limits
        self.digest = digest
        self._hasher = hasher
        self.bytes_received = 0
        self.parts: list[Part] = []
        self._ticker = ProgressTicker(progress)
        self._max_body = limits.max_body_size
        self._max_file = limits.max_file_size
        self._finished = False
        self._now = 0.0
        self._out: list[Event] = []
        # The part being read (multipart) or the whole body (raw).
        self._headers: PartHeaders | None = None
        self._is_file = False
        self._size = 0
        self._files = 0
        self._sha: Hash | None = None
        boundary = parse_boundary(content_type)  # raises MalformedMultipart
        self._reader: MultipartReader | None = None
        if boundary is not None:
            self._reader = MultipartReader(
                boundary, on_part_begin=self._part_begin, on_part_data=self._part_data, on_part_end=self._part_end
            )
        elif digest:
            self._sha = hasher()

    @property
    def is_multipart(self) -> bool:
        return self._reader is not None

    def snapshot(self, now: float) -> Progress:
        """The current counts as a Progress event (for late subscribers)."""
        return Progress(upload_id=self.upload_id, bytes=self.bytes_received, total=self.total, ts=now)

    def feed(self, chunk: bytes, now: float) -> list[Event]:
        """Take the next body chunk; return the parts it completed and maybe a Progress event."""
        n = len(chunk)
        if not n:
            return []
        received = self.bytes_received + n
        self.bytes_received = received
        if self._max_body is not None and received > self._max_body:
            raise BodyTooLarge(f"request body exceeds the limit of {self._max_body} bytes")
        out: list[Event] = []
        reader = self._reader
        if reader is not None:
            self._now = now
            self._out = out
            reader.write(chunk)
        else:
            self._size += n
            if self._sha is not None:
                self._sha.update(chunk)
        if self._ticker.due(received, self.total, now):
            out.append(Progress(upload_id=self.upload_id, bytes=received, total=self.total, ts=now))
        return out

    def count(self, n: int, now: float) -> list[Event]:
        """`n` bytes of a raw body that stay in the kernel (spliced, relay/zerocopy.py): counted, limited and
        reported as `feed` would, never hashed here. Whoever splices them updates this body's hash (the object
        `hasher` made) from their copy, and is done before `finish`."""
        assert self._reader is None, "a multipart body is parsed: its bytes cannot stay in the kernel"
        if not n:
            return []
        received = self.bytes_received + n
        self.bytes_received = received
        if self._max_body is not None and received > self._max_body:
            raise BodyTooLarge(f"request body exceeds the limit of {self._max_body} bytes")
        self._size += n
        if self._ticker.due(received, self.total, now):
            return [Progress(upload_id=self.upload_id, bytes=received, total=self.total, ts=now)]
        return []

    def finish(self, now: float) -> list[Event]:
        """The body is complete: validate its end; return the raw body's Part (multipart: nothing more)."""
        if self._finished:
            return []
        self._finished = True
        if self._reader is not None:
            self._reader.close()  # raises MalformedMultipart when truncated
            return []
        part = Part(
            upload_id=self.upload_id,
            bytes=self.bytes_received,
            total=self.total,
            ts=now,
            index=0,
            field=None,
            filename=None,
            content_type=self.content_type,
            size=self._size,
            sha256=self._sha.hexdigest() if self._sha is not None else None,
        )
        self.parts.append(part)
        return [part]

    # MultipartReader callbacks

    def _part_begin(self, headers: PartHeaders) -> None:
        self._headers = headers
        self._is_file = headers.filename is not None
        if self._is_file:
            self._files += 1
            max_files = self.limits.max_files
            if max_files is not None and self._files > max_files:
                raise TooManyFiles(f"more than {max_files} files in one request")
        self._size = 0
        self._sha = self._hasher() if self.digest else None

    def _part_data(self, data: memoryview) -> None:
        size = self._size + len(data)
        self._size = size
        if self._is_file and self._max_file is not None and size > self._max_file:
            raise FileTooLarge(f"a file exceeds the limit of {self._max_file} bytes")
        if self._sha is not None:
            self._sha.update(data)

    def _part_end(self) -> None:
        headers = self._headers
        assert headers is not None
        part = Part(
            upload_id=self.upload_id,
            bytes=self.bytes_received,
            total=self.total,
            ts=self._now,
            index=len(self.parts),
            field=headers.field,
            filename=headers.filename,
            content_type=headers.content_type,
            size=self._size,
            sha256=self._sha.hexdigest() if self._sha is not None else None,
        )
        self.parts.append(part)
        self._out.append(part)
        self._headers = None
