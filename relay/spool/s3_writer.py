"""`S3Writer`: the single writer of one upload on the S3 spool, which buffers parts and builds one segment at a time.

Why an S3 multipart upload per append, not one per upload. The bytes of an open multipart upload cannot be read
(GetObject and UploadPartCopy take completed objects only; tusd's s3store answers "cannot stream non-finished
upload"), and no single part can be deleted. The relay reads an upload's bytes while the writer of its completing
append is still open (cut-through: relay/resumable/forward.py streams the spooled bytes, then the live ones), and
drops a whole append on a checksum mismatch (`discard`). So each writer builds its own segment: its parts go into a
multipart upload that nobody reads, `commit` completes it into a segment object (readable from then on), and
`discard` aborts it (its parts vanish at once, nothing else was touched). Every byte already committed sits in
completed objects, which ranged GETs stream at any time (relay/spool/s3_layout.py draws the objects).

Why a tail. Every part but the last must be at least 5 MiB, and an append may be a byte. A writer opens with the
current tail read into its buffer, and uploads the buffer as a part each time it holds `part_size` bytes: at most
one part per upload is in memory (for an instant two: the part and its copy as the request body), and `write`
waits while a part uploads (the backpressure). At `commit`, a writer that uploaded parts sends what is left as the
last part (of any size) and completes its segment; one that did not PUTs its buffer as the new tail when it is
under 5 MiB (same key: the old tail is replaced atomically), as a segment otherwise. This is tusd's "incomplete
part".

A writer that fills `max_parts` parts (10,000, S3's limit) completes its segment and starts the next one, so an
append has no size limit but the object store's own.
"""

from __future__ import annotations

from relay.spool.base import SpoolError
from relay.spool.s3_layout import Piece, UploadObjects
from relay.spool.s3_requests import MIN_PART, Multipart

__all__ = ["S3Writer"]


class S3Writer:
    """The single writer of one upload (relay/spool/base.py SpoolWriter): builds one segment at a time."""

    def __init__(
        self,
        objects: UploadObjects,
        upload_id: str,
        start: int,
        tail: Piece | None,
        buffer: bytearray,
        *,
        part_size: int,
        max_parts: int,
    ) -> None:
        self._objects = objects
        self._requests = objects.requests
        self._part_size = part_size
        self._max_parts = max_parts
        self._upload_id = upload_id
        self._start = start
        self._handed = 0
        self._old_tail = tail  # kept until commit, so that discard has it back
        self._segment_start = tail.start if tail is not None else start
        self._buffer = buffer  # the old tail's bytes, then the new ones: at most one part (plus one chunk)
        self._multipart: Multipart | None = None
        self._created: list[str] = []  # segments this writer completed (a writer past max_parts)
        self._error: SpoolError | None = None
        self._closed = False

    @property
    def start(self) -> int:
        return self._start

    @property
    def handed(self) -> int:
        return self._handed

    async def write(self, chunk: bytes) -> None:
        if self._closed:
            raise SpoolError("this spool writer is closed")
        self._check_error()
        if not chunk:
            return
        self._buffer += chunk  # a copy: the caller may reuse its buffer
        self._handed += len(chunk)
        if len(self._buffer) >= self._part_size:
            try:
                await self._flush_part()  # the backpressure: the next chunk waits for this part
            except SpoolError as exc:
                self._error = exc
                raise

    def _check_error(self) -> None:
        if self._error is not None:
            raise SpoolError(f"spool write failed: {self._error}") from self._error

    async def _flush_part(self) -> None:
        """Upload the buffer as the next part (after completing a segment that has max_parts parts)."""
        await self._roll_over_if_full()
        if self._multipart is None:
            key = self._objects.segment_key(self._upload_id, self._segment_start)
            self._multipart = Multipart(key, await self._requests.create_multipart(key), self._segment_start)
        body, self._buffer = bytes(self._buffer), bytearray()  # one part in memory again once the copy is made
        try:
            await self._requests.upload_part(self._multipart, body)
        except BaseException:
            # Failed or cancelled: the bytes stay handed over. An abort uploads them again under the same part
            # number, which replaces the part if S3 got it after all: `handed` is always what is stored.
            restored = bytearray(body)
            restored += self._buffer
            self._buffer = restored
            raise

    async def _roll_over_if_full(self) -> None:
        """A segment past S3's part limit: complete it, the next part starts the next segment."""
        multipart = self._multipart
        if multipart is not None and len(multipart.parts) >= self._max_parts:
            await self._requests.complete(multipart)
            self._created.append(multipart.key)
            self._segment_start += multipart.size
            self._multipart = None

    async def commit(self, *, sync: bool = True) -> int:  # S3 keeps what it acknowledged: always durable
        """Upload what is buffered (even after a failed part: its bytes are still here) and complete the segment.

        If S3 fails again, SpoolError: the caller goes back to where the append began, and the parts that made it
        stay in the open multipart upload, which the next writer adopts and then cuts (relay/spool/base.py Rule 2)."""
        self._close()
        await self._keep()
        return self._start + self._handed

    async def abort(self) -> int:
        """Keeps everything handed over, as commit does: the bytes are in memory, S3 takes them at once."""
        return await self.commit()

    async def discard(self) -> int:
        self._close()
        if self._multipart is not None:
            await self._requests.abort_multipart(self._multipart.key, self._multipart.upload_id)
        for key in reversed(self._created):  # the last first: what is left is always a prefix
            await self._requests.delete_keys([key])
        return self._start  # the old tail was never touched: it is valid again

    def _close(self) -> None:
        if self._closed:
            raise SpoolError("this spool writer is closed")
        self._closed = True

    async def _keep(self) -> None:
        buffer = bytes(self._buffer)
        self._buffer = bytearray()
        if buffer:
            await self._roll_over_if_full()
        if self._multipart is not None:
            if buffer:
                await self._requests.upload_part(self._multipart, buffer)  # the last part may be of any size
            await self._requests.complete(self._multipart)
            self._created.append(self._multipart.key)
        elif len(buffer) >= MIN_PART:
            key = self._objects.segment_key(self._upload_id, self._segment_start)
            await self._requests.put(key, buffer)
            self._created.append(key)
        elif self._handed and buffer:
            tail_key = self._objects.tail_key(self._upload_id, self._segment_start)
            await self._requests.put(tail_key, buffer)  # replaces the old tail
        if self._created and self._old_tail is not None:
            await self._requests.delete_keys([self._old_tail.key])  # a leftover now: a segment covers its start
