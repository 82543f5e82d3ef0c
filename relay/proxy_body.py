"""The body pump: the client's body, pulled one ASGI message at a time, inspected, and handed to the upstream leg.

Theory of operation (relay/proxy.py Rules 2-4):
2. The body is one async generator handed to the upstream leg. It pulls one ASGI message at a time
   (uvicorn stops reading the socket past 64 KiB buffered, the upstream leg asks for the next chunk only
   once the upstream socket has room: backpressure end to end), feeds the sans-IO inspector and yields each chunk
   unchanged.
3. One chunk is held back: chunk N leaves only after chunk N+1 (or the end of the body) has arrived and
   been inspected. So `inspector.finish()` runs before the last byte leaves, and a body that fails
   validation never reaches the upstream complete.
   Counting, limits and multipart parsing run inline on the event loop. sha256 goes to one worker thread
   without an await per chunk (relay/hashing.py): the loop waits only for a part's digest. An await per
   chunk on a thread pool was measured and lost (280 vs 391 MB/s for a 1 GiB upload).
   A large raw Content-Length body with nothing to check but its sha256 may skip all this: relay/splicewire.py
   lets the upstream leg splice it socket to socket, its bytes counted (and tee'd to a hash thread) per splice.
4. Any failure inside the generator (a limit, malformed multipart, the client gone) raises out of it,
   which kills the upstream request mid-body. The error is remembered here (`body_error`), so it is what gets
   answered, not what the upstream leg saw of it.

`BodyPump` is the second layer of relay/proxy.py's `Upload`, on top of the admission (relay/proxy_admission.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from relay import splicewire
from relay.core.events import Event
from relay.errors import ClientDisconnected, ClientTimeout, RelayError
from relay.proxy_admission import Admission
from relay.settings import Settings
from relay.watchdog import IdleWatch

__all__ = ["METRICS_BATCH", "BodyPump"]

# Byte counters reach Prometheus in batches of this size (and at the end of every body).
METRICS_BATCH = 4 * 1024 * 1024


class BodyPump(Admission):
    """The body of one request on a routed path (see the module docstring)."""

    def outgoing(self) -> AsyncIterator[bytes]:
        """The body generator, or the same wrapped so the upstream leg may splice it (relay/splicewire.py)."""
        return splicewire.outgoing(self, self.body())

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    async def body(self) -> AsyncIterator[bytes]:
        """Chunks from the client, inspected, one held back (see the module docstring)."""
        assert self.inspector is not None
        inspector, digests = self.inspector, self.digests
        held: bytes | None = None
        watch = IdleWatch(self.ctx.settings.client_idle_timeout)
        try:
            while not self.body_done:
                chunk = await self.next_chunk(watch)
                if not chunk:
                    continue
                self.emit_all(inspector.feed(chunk, time.time()))
                if digests is not None:
                    digests.update(chunk)
                if held is not None:
                    yield held
                    self.note_forwarded(len(held))
                held = chunk
            self.emit_all(inspector.finish(time.time()))
            if digests is not None:
                # The last held-back chunk leaves only if the body matches its digest (DigestMismatch aborts).
                digests.verify(self.body_sha256())
            if held is not None:
                yield held
                self.note_forwarded(len(held))
        except RelayError as exc:
            self.body_error = exc
            raise
        finally:
            watch.close()
            self.report_bytes()

    async def next_chunk(self, watch: IdleWatch) -> bytes:
        watch.begin()
        try:
            message = await self.receive()
        except asyncio.CancelledError:
            if not watch.claim():
                raise
            raise ClientTimeout(f"no body bytes for {self.ctx.settings.client_idle_timeout:g} s") from None
        watch.end()
        if message["type"] == "http.disconnect":
            self.client_gone = True
            raise ClientDisconnected()
        chunk: bytes = message.get("body", b"")
        self.body_done = not message.get("more_body", False)
        if chunk:
            self.unreported_received += len(chunk)
            self.check_rate()
        return chunk

    def report_bytes(self) -> None:
        """Counters are batched (METRICS_BATCH): a Prometheus inc per chunk was 5 % of a large upload's CPU."""
        metrics = self.ctx.metrics
        if self.unreported_received:
            metrics.bytes_received.inc(self.unreported_received)
            self.unreported_received = 0
        if self.unreported_forwarded:
            metrics.bytes_forwarded.inc(self.unreported_forwarded)
            self.unreported_forwarded = 0

    def check_rate(self) -> None:
        """After the grace period the average rate must stay over --client-min-rate (slow-drip defence)."""
        min_rate = self.ctx.settings.client_min_rate
        if min_rate is None or self.body_done:
            return
        elapsed = time.monotonic() - self.started
        if elapsed > self.ctx.settings.client_min_rate_grace and self.inspector is not None:
            rate = self.inspector.bytes_received / elapsed
            if rate < min_rate:
                raise ClientTimeout(f"body arrives at {rate:.0f} B/s, under the minimum of {min_rate} B/s")

    def note_forwarded(self, size: int) -> None:
        self.unreported_forwarded += size
        if self.unreported_forwarded >= METRICS_BATCH:
            self.report_bytes()

    def body_sha256(self) -> dict[str, bytes]:
        """The whole body's sha-256 when the inspector computed it (a raw body), for the digest checker."""
        assert self.inspector is not None
        parts = self.inspector.parts
        if self.inspector.is_multipart or not parts or parts[0].sha256 is None:
            return {}
        return {"sha-256": bytes.fromhex(parts[0].sha256)}

    def emit_all(self, events: list[Event]) -> None:
        for event in events:
            self.emit(event)

    def emit(self, event: Event) -> None:
        """Every event of this upload passes here (a resumable upload's forward translates them)."""
        self.ctx.emit(event)
