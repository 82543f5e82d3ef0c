"""Appends of resumable uploads: bytes into the spool, each append ended as its decision says.

Theory of operation
-------------------
`append` streams one request's body into the spool (relay/resumable/live.py). When that append completes the
upload (its Content-Length reaches the length), the same bytes go upstream at the same time (the cut-through,
relay/resumable/completion.py) and the answer is the upstream's. Otherwise the append ends here (`_end_append`),
and a finished upload is forwarded from the spool (`forward`, completion.py's).

Rules:
1. The spool's bytes follow the decision: an append's bytes are made durable (commit, or abort for a broken
   one) exactly when the next state keeps them, else dropped (`discard`), before the state is saved.
2. An append that completes the upload keeps every byte even when the upstream fails during cut-through: the
   rest of the body still goes into the spool, and the answer is the upstream's error (502/504), after which
   the same completing request (an empty PATCH at the full offset) forwards it again.
3. An append ended by a newer request of the same upload (superseded) keeps what it received and answers
   nothing; its connection is closed. It can be cancelled only while it waits for body bytes (the store's
   Rule 2): opening the spool writer, recording the end and the completion's commit run to their end.
4. On the disk spool, the completing append may be spliced (relay/resumable/spliced.py; completion.py Rule 3).
   Whatever ended it, `_end_append` first waits for its spool thread, so `written` is what the file holds.
5. A partial upload of tus concatenation (relay/core/concat.py) is spooled only: no cut-through (it is never
   forwarded on its own) and no events (`emit` is quiet for it: the final upload is the one users see).
   A final upload is forwarded from the spool, its body read from its partial uploads' (completion.py Rule 4).
6. With sha256 on, once an append has ended its bytes are hashed back from the spool in the background
   (relay/resumable/filehash.py), so the completing forward hashes only what the spool did not hold yet instead
   of the whole file again (completion.py Rule 5).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from relay.core import resumable as core, resumable_decisions as decide
from relay.core.events import Event, Interrupted, Resumed
from relay.core.resumable import ResumableUpload
from relay.core.resumable_decisions import Decision
from relay.errors import (
    ClientDisconnected,
    ClientTimeout,
    DigestMismatch,
    RelayError,
    UploadIdInUse,
    UpstreamError,
    UpstreamTimeout,
)
from relay.protocol import INTERIM
from relay.proxy_context import RelayContext
from relay.resumable.answers import Request, SpoolUnavailable, refuse, respond
from relay.resumable.completion import Completion, Refused, with_file_digest
from relay.resumable.filehash import RunningHashes
from relay.resumable.live import LiveAppend, Overflow
from relay.resumable.store import OpenAppend, ResumableStore
from relay.spool.base import SpoolError
from relay.watchdog import IdleWatch

__all__ = ["Appends"]

# A forward that failed with these keeps the file for a retry (502/504; a 409 when the id's lease across relays
# was still held by the relay whose forward of the same upload has just ended).
_RETRYABLE = (UpstreamError, UpstreamTimeout, UploadIdInUse)


def _no_interim(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    return False


def _quiet(event: Event) -> None:
    return None


class Appends:
    """Appends of the resumable uploads in `store`; their forwards are `completion`'s."""

    def __init__(self, ctx: RelayContext, store: ResumableStore) -> None:
        self.ctx = ctx
        self.store = store
        self.hashes = RunningHashes(ctx.settings.digest, getattr(store.spool, "data_path", None))  # Rule 6
        self.completion = Completion(ctx, store, self.hashes)

    async def append(self, request: Request, decision: Decision, location: str | None) -> None:
        upload = decision.upload
        assert upload is not None and upload.writer is not None and upload.append_start is not None
        handle = self.store.open_append(upload.id, upload.writer)
        try:
            await self._append_held(request, decision, upload, handle, location)
        finally:
            current = self.store.get(upload.id)
            if current is not None and current.state == core.APPENDING and current.writer == upload.writer:
                # It ended without recording its end (cancelled at shutdown, or an unexpected error): let the
                # upload go on from where this append began, rather than stay held by a writer that is gone.
                start = current.append_start if current.append_start is not None else current.offset
                now = time.time()
                self.store.record(core.apply(current, core.APPEND_BREAK, now=now, writer=current.writer, offset=start))
            self.store.close_append(upload.id, handle)

    async def _append_held(
        self, request: Request, decision: Decision, upload: ResumableUpload, handle: OpenAppend, location: str | None
    ) -> None:
        start = upload.append_start
        assert start is not None
        req, digest = request.req, upload.repr_digest
        completing = (
            req.content_length and req.content_length == decision.max_bytes and req.upload_complete is not False
        )
        if completing and upload.concat is None:
            # Meant to complete the upload (not an IETF `Upload-Complete: ?0` append that fills it): its Repr-Digest
            # is recorded, durably, before any byte can go upstream (completion.py Rule 7): a relay killed
            # mid-forward then redelivers with it.
            upload = with_file_digest(upload, request.scope["headers"])
        try:
            if upload.append_checksum or upload.repr_digest != digest:
                # The core's recovery needs to know this append's bytes are unverified; or the digest above.
                await self.store.save(upload)
            else:
                self.store.record(upload)
            writer = await self.store.spool.writer(upload.id, start)
            if request.req.content_length and hasattr(writer, "reserve"):  # the disk spool: blocks at once
                writer.reserve(min(request.req.content_length, decision.max_bytes or request.req.content_length))
        except (SpoolError, OSError) as exc:
            self.store.record(
                core.apply(upload, core.APPEND_BREAK, now=time.time(), writer=upload.writer, offset=start)
            )
            await refuse(self.ctx.metrics, request, SpoolUnavailable(f"the spool could not open the upload: {exc}"))
            return
        if decision.interim is not None:
            request.scope.get("extensions", {}).get(INTERIM, _no_interim)(104, list(decision.interim))
        emit = self._emitter(upload)
        emit(Resumed(upload.id, start, upload.length, time.time(), start))
        self.ctx.metrics.resumable.labels(event="append").inc()
        req = request.req  # cut-through only for the append that completes the upload (the drafts: says so)
        cut = req.content_length and req.content_length == decision.max_bytes and req.upload_complete is not False
        cut = cut and upload.concat is None  # Rule 5
        live = LiveAppend(
            request.receive,
            writer,
            upload_id=upload.id,
            total=upload.length,
            max_bytes=decision.max_bytes,
            checksum=request.req.checksum,
            emit=emit,
            progress=self.ctx.settings.progress,
            spooled=self.ctx.metrics.bytes_spooled.inc,
            min_rate=self.ctx.settings.client_min_rate,
            min_rate_grace=self.ctx.settings.client_min_rate_grace,
            # a body of unknown size against a known length may overflow it: quiet (live.py Rule 2); one
            # against the size limit alone (a deferred length) reports progress, as a plain upload does
            provisional=request.req.content_length is None and upload.length is not None,
        )
        try:
            if not handle.allow_cancel():  # superseded while the writer opened: end with nothing taken
                raise asyncio.CancelledError
            if cut:
                await self._cut_through(request, upload, live, location)
            else:
                await self._spool_only(request, upload, live, location)
        except asyncio.CancelledError:
            if not handle.claim():
                raise
            # Superseded by a newer request of the same upload (Rule 3): keep what came, record the break.
            await self._end_append(request, upload, live, location, answer=False)
            abort = request.scope.get("extensions", {}).get("relay.abort")
            if abort is not None:
                abort()

    def _emitter(self, upload: ResumableUpload) -> Callable[[Event], None]:
        """Where an upload's events go: the relay's bus, or nowhere for a partial upload (Rule 5)."""
        return _quiet if upload.concat == "partial" else self.ctx.emit

    async def _spool_only(
        self, request: Request, upload: ResumableUpload, live: LiveAppend, location: str | None
    ) -> None:
        failure = await self._take_body(live)
        request.body_read = live.ended
        await self._end_append(request, upload, live, location, answer=True, failure=failure)

    async def _take_body(self, live: LiveAppend) -> RelayError | None:
        """The rest of the body into the spool, under the client idle timeout; the client's failure, if any."""
        watch = IdleWatch(self.ctx.settings.client_idle_timeout)
        receive = live.receive

        async def watched() -> Any:
            watch.begin()
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not watch.claim():
                    raise
                raise ClientTimeout(f"no body bytes for {self.ctx.settings.client_idle_timeout:g} s") from None
            watch.end()
            return message

        live.receive = watched
        try:
            await live.drain()
        except Overflow:
            return None
        except (ClientDisconnected, ClientTimeout, SpoolUnavailable) as exc:
            return exc
        finally:
            watch.close()
            live.receive = receive
        return None

    async def _end_append(
        self,
        request: Request,
        upload: ResumableUpload,
        live: LiveAppend,
        location: str | None,
        *,
        answer: bool,
        failure: RelayError | None = None,
    ) -> Decision:
        """Decide the append's end, make the spool match (Rule 1), save, report; answer unless told not to."""
        if live.splice is not None:
            await live.splice.close()  # Rule 4: a spliced append's count is the data file's (spliced.py Rule 3)
        self.store.hold(upload.id, upload.writer)
        ended = live.ended and not live.overflow and failure is None
        decision = decide.decide_append_end(
            request.req,
            upload,
            writer=upload.writer or "",
            written=live.written,
            ended=ended,
            overflow=live.overflow,
            checksum_ok=live.checksum_ok if ended else None,
            now=time.time(),
            limits=request.route.limits,
            location=location,
        )
        record = decision.upload
        keep = record is not None and record.state != core.FAILED and record.offset == live.offset
        try:
            if keep and ended:
                await live.writer.commit()
            elif keep:
                durable = await live.writer.abort()
                if record is not None and durable < record.offset:  # the writer failed first: keep what is there
                    start = upload.append_start if upload.append_start is not None else upload.offset
                    record = core.apply(
                        upload, core.APPEND_BREAK, now=time.time(), writer=upload.writer, offset=max(durable, start)
                    )
            else:
                await live.writer.discard()
        except (SpoolError, OSError) as exc:
            decision = decide.decide_error(
                request.req.protocol, SpoolUnavailable(str(exc)), limits=request.route.limits
            )
            record = core.apply(upload, core.APPEND_DISCARD, now=time.time(), writer=upload.writer)
        if record is not None:
            if decision.action == "forward":
                record = with_file_digest(record, request.scope["headers"])  # completion.py Rule 7
                decision = replace(decision, upload=record)
            await self.store.save(record)
            if record.concat is None and record.state in (core.RECEIVING, core.FORWARDING):
                self.hashes.appended(record)  # Rule 6
            if record.state == core.RECEIVING:
                self._emitter(record)(Interrupted(record.id, record.offset, record.length, time.time(), record.offset))
        if decision.action == "delete" and record is not None:
            await self.store.spool.delete_data(record.id)
        if not answer:
            return decision
        if decision.action == "forward" and record is not None:
            self.store.release(record.id)  # every byte is in: HEAD answers at once (completion.py Rule 1)
            await self.forward(request, record)
        elif failure is None and decision.action != "none":
            await respond(request, replace(decision, upload=None))
        elif isinstance(failure, ClientTimeout | SpoolUnavailable):
            await respond(request, decide.decide_error(request.req.protocol, failure, limits=request.route.limits))
        return decision

    async def _cut_through(
        self, request: Request, upload: ResumableUpload, live: LiveAppend, location: str | None
    ) -> None:
        """The completing append, forwarded as it arrives (completion.py); if that forward ended before the file
        was complete, the append ends here: say why, keep the bytes (Rules 1 and 2)."""
        forward = await self.completion.cut_through(request, upload, live, location)
        if forward is None:  # the whole file went (delivered, or kept for a retry) or the upstream answered early:
            return  # completion.py has settled the upload and answered
        error = forward.error
        if isinstance(error, DigestMismatch):  # the file's Repr-Digest did not match: nothing of it is kept
            await live.writer.discard()
            dropped = core.apply(upload, core.APPEND_DISCARD, now=time.time(), writer=upload.writer)
            await self.completion.reject_file(request, dropped, error)
            return
        if isinstance(error, Refused):
            await self._end_append(request, upload, live, location, answer=False)
            await respond(request, replace(error.decision, upload=None))
            return
        failure: RelayError | None = (
            error if isinstance(error, ClientDisconnected | ClientTimeout | SpoolUnavailable) else None
        )
        if isinstance(error, _RETRYABLE) and not live.ended and not live.overflow:
            failure = await self._take_body(live)
            request.body_read = live.ended
        if forward.response_started:
            await self._end_append(request, upload, live, location, answer=False, failure=failure or error)
            return
        decision = await self._end_append(request, upload, live, location, answer=False, failure=failure)
        record = decision.upload
        if isinstance(error, _RETRYABLE) and record is not None and failure is None:
            if record.state == core.FORWARDING:
                end = decide.decide_forward_end(request.req, record, now=time.time(), error=error)
                if end.upload is not None:
                    await self.store.save(end.upload)
                await respond(request, replace(end, upload=None))
                return
        if failure is None and decision.action not in ("none", "forward"):
            await respond(request, replace(decision, upload=None))
        elif isinstance(failure, ClientTimeout | SpoolUnavailable):
            await respond(request, decide.decide_error(request.req.protocol, failure, limits=request.route.limits))

    async def forward(self, request: Request, upload: ResumableUpload) -> None:
        """Every byte is in the spool: send the file upstream, answer with what came of it (completion.py; the
        endpoints' completing request and the redelivery come in here)."""
        await self.completion.forward(request, upload)
