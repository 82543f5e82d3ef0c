"""One append's bytes, from the client into the spool: counted, capped, checksummed, reported.

`LiveAppend.chunks()` reads the request body one ASGI message at a time, hands each chunk to the spool's
writer (which returns at once: relay/spool/disk_writer.py writes on its own thread) and yields it, so the same
bytes can go upstream at the same time (cut-through, relay/resumable/forward.py). Used alone, `drain()`
takes the whole body into the spool.

Rules:
1. Nothing past `max_bytes` (the room left before the upload's length) reaches the spool: the chunk that
   crosses it is cut there and the append ends with `overflow` set (relay.core.resumable decides whether
   the part before the cut is kept).
2. A tus `Upload-Checksum` covers this request's body: it is hashed as it passes and judged only once the
   body has ended (`checksum_ok`). While one is pending no progress is reported: its bytes may be dropped
   (460), and a follower's `bytes` must never go back. The same holds for a body of unknown size that may
   overflow the upload's length (`provisional`: tus drops such a request's bytes, -09..-11 invalidate).
3. The chunk iterator can be taken up again after whoever read it stopped (an upstream that failed during
   cut-through): the rest of the body still goes into the spool.
4. `--client-min-rate` applies to each append as to a plain upload: once the grace period is over, an append
   whose average rate is under it ends with ClientTimeout (408); what it brought so far is kept.
5. An append that only goes into the spool is fsynced before its answer: the disk spool starts writing its bytes
   to the disk while they arrive, so the final fsync has little left to wait for. A cut-through (`chunks()`)
   is fsynced only if its upstream fails, and its file is deleted once delivered: its bytes are left in the
   page cache, where most of them never need to reach the disk at all.
6. A spliced cut-through (relay/resumable/spliced.py) moves the body without `receive`: it reports what the kernel
   moved (`count_spliced`) and, once its spool thread has ended, what the data file holds (`spliced_into_file`);
   a rest left by a failed upstream is taken by `drain` through the same pump.
7. A spool that fails to write (a full disk, EIO) ends the append with SpoolUnavailable (503, a RelayError, so
   inside a cut-through it aborts the upstream request like any refusal); the append then keeps only what the
   data file durably holds (relay/resumable/appends.py `_end_append`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from relay.core.events import Progress
from relay.core.progress import ProgressPolicy, ProgressTicker
from relay.core.resumable_headers import Checksum
from relay.errors import ClientDisconnected, ClientTimeout, PayloadTooLarge
from relay.resumable.answers import SpoolUnavailable
from relay.spool.base import SpoolError, SpoolWriter
from relay.types import Receive

__all__ = ["LiveAppend", "Overflow"]


class Overflow(PayloadTooLarge):
    """Bytes came past `max_bytes`; the body stops there (Rule 1). A RelayError, so that raised inside a
    forward's body it aborts the upstream request like any other refusal."""

    code, default_message = "upload_length_exceeded", "the request brings bytes past the upload's length"


class LiveAppend:
    """The body of one append request, on its way into the spool."""

    def __init__(
        self,
        receive: Receive,
        writer: SpoolWriter,
        *,
        upload_id: str,
        total: int | None,
        max_bytes: int | None,
        checksum: Checksum | None,
        emit: Callable[[Progress], Any],
        progress: ProgressPolicy,
        spooled: Callable[[int], Any] = lambda size: None,
        min_rate: int | None = None,
        min_rate_grace: float = 10.0,
        provisional: bool = False,
    ) -> None:
        self.receive = receive
        self.writer = writer
        self.upload_id = upload_id
        self.total = total
        self.max_bytes = max_bytes
        self.checksum = checksum
        self._hash = hashlib.new(checksum.algorithm) if checksum is not None else None
        self._emit = emit
        self._spooled = spooled  # counts bytes into the spool (metrics)
        self._ticker = ProgressTicker(progress)
        self.written = 0
        self.ended = False
        self.overflow = False
        self._iterator: AsyncIterator[bytes] | None = None
        self._min_rate = min_rate
        self._grace = min_rate_grace
        self._began = time.monotonic()
        self._quiet = provisional or checksum is not None  # Rule 2
        # The zero-copy cut-through of this append (relay/resumable/spliced.py), once offered: its bytes never
        # pass `receive`; a rest left after an upstream failure is taken by `drain` (Rules 3, 6).
        self.splice: Any = None
        self._spliced_in = 0

    @property
    def offset(self) -> int:
        return self.writer.start + self.written

    @property
    def checksum_ok(self) -> bool | None:
        """The tus checksum's verdict once the body has ended (None without a checksum)."""
        if self._hash is None or self.checksum is None:
            return None
        return hmac.compare_digest(self._hash.digest(), self.checksum.digest)

    def chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks, each already handed to the spool, for a forward that sends them upstream as well
        (cut-through); the same iterator every call (Rule 3).

        Such an append is made durable only if the upstream fails (relay/resumable/completion.py Rule 2), so the
        spool is told not to hurry its bytes to the disk (Rule 5 below)."""
        self._urge(False)
        return self._shared()

    async def drain(self) -> None:
        """Take whatever is left of the body into the spool (its commit will wait for the disk: Rule 5)."""
        self._urge(True)
        if self.splice is not None and self.splice.pending():
            await self.splice.rest()
            return
        async for _ in self._shared():
            pass

    def count_spliced(self, size: int) -> None:
        """Bytes the kernel moved from the client into the pipes (relay/resumable/spliced.py): counted and
        reported as `_take` does; `written` follows the data file once the splice is over."""
        self._spliced_in += size
        self._spooled(size)
        now = time.time()
        offset = self.writer.start + self._spliced_in
        if not self._quiet and self._ticker.due(offset, self.total, now):
            self._emit(Progress(self.upload_id, offset, self.total, now))

    def spliced_into_file(self, error: OSError | None) -> None:
        """The splice thread has ended: `written` is what the data file holds past the append's start (the
        bytes a broken append keeps), and the body has ended when all of it is there."""
        self.written = self.writer.spliced(error)  # type: ignore[attr-defined]
        self.ended = self.max_bytes is not None and self.written == self.max_bytes

    def _shared(self) -> AsyncIterator[bytes]:
        if self._iterator is None:
            self._iterator = self._chunks()
        return self._iterator

    def _urge(self, durable_soon: bool) -> None:
        """Rule 5: a hint for spools that can start writing early (DiskWriter.writeback); others ignore it."""
        if hasattr(self.writer, "writeback"):
            self.writer.writeback = durable_soon

    async def _chunks(self) -> AsyncIterator[bytes]:
        while not self.ended:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected()
            chunk: bytes = message.get("body", b"")
            self.ended = not message.get("more_body", False)
            if not chunk:
                self._check_rate()
                continue
            if self.max_bytes is not None and self.written + len(chunk) > self.max_bytes:
                await self._take(chunk[: self.max_bytes - self.written])
                self.overflow = True
                raise Overflow
            await self._take(chunk)
            self._check_rate()
            yield chunk

    def _check_rate(self) -> None:
        """Rule 4."""
        if self._min_rate is None or self.ended:
            return
        elapsed = time.monotonic() - self._began
        if elapsed > self._grace and self.written / elapsed < self._min_rate:
            rate = self.written / elapsed
            raise ClientTimeout(f"body arrives at {rate:.0f} B/s, under the minimum of {self._min_rate} B/s")

    async def _take(self, chunk: bytes) -> None:
        if not chunk:
            return
        try:
            await self.writer.write(chunk)
        except (SpoolError, OSError) as exc:  # Rule 7
            raise SpoolUnavailable.storing(exc) from exc
        self._spooled(len(chunk))
        if self._hash is not None:
            self._hash.update(chunk)
        self.written += len(chunk)
        now = time.time()
        if not self._quiet and self._ticker.due(self.offset, self.total, now):
            self._emit(Progress(self.upload_id, self.offset, self.total, now))
