"""Appends of resumable uploads: bytes into the spool, and the completing append forwarded as it arrives.

Theory of operation
-------------------
`append` streams one request's body into the spool (relay/resumable/live.py). When that append completes the
upload (its Content-Length reaches the length), the same bytes go upstream at the same time (`_cut_through`,
relay/resumable/forward.py) and the answer is the upstream's. Otherwise a finished upload is forwarded from the
spool (`forward`).

Rules:
1. The spool's bytes follow the decision: an append's bytes are made durable (commit, or abort for a broken
   one) exactly when the next state keeps them, else dropped (`discard`), before the state is saved.
2. An append that completes the upload keeps every byte even when the upstream fails during cut-through: the
   rest of the body still goes into the spool, and the answer is the upstream's error (502/504), after which
   the same completing request (an empty PATCH at the full offset) forwards it again.
3. An append ended by a newer request of the same upload (superseded) keeps what it received and answers
   nothing; its connection is closed. It can be cancelled only while it waits for body bytes (the store's
   Rule 2): opening the spool writer, recording the end and the completion's commit run to their end.
4. A forward holds the upload's forward lock from the completing commit until the upstream's answer is
   recorded; once every byte is in, the append lets go of the upload (HEAD answers at once). A completing
   request that finds the lock held waits, then answers from the upload's state then (no second delivery).
5. The completing append of a cut-through is not fsynced before its last bytes go upstream, and its
   `forwarding` state is kept in memory only: if the upstream takes the file, those bytes are deleted anyway
   (an fsync of the whole file was the largest part of a one-append upload's extra time). If the upstream
   fails, the bytes are fsynced and the state saved before the 502/504 is answered. A relay that dies in
   between restarts with what the disk holds: every byte there, the upload goes back to `forwarding` and is
   delivered again (relay.core.resumable.recover); fewer, the client resumes from there. Nothing that was
   acknowledged is lost: that append is answered only after the upstream answered.
6. On the disk spool, the completing append may be spliced: socket to upstream and into the data file without a
   user-space copy (relay/resumable/spliced.py, offered in `_forwarder`; the same rules, the same decisions).
   Whatever ended it, `_end_append` first waits for its spool thread, so `written` is what the file holds.
7. A partial upload of tus concatenation (relay/core/concat.py) is spooled only: no cut-through (it is never
   forwarded on its own) and no events (`emit` is quiet for it: the final upload is the one users see).
   A final upload is forwarded by `forward`, its body read from its partial uploads' spooled bytes.
8. With sha256 on, once an append has ended its bytes are hashed back from the spool in the background
   (relay/resumable/filehash.py), so the completing forward hashes only what the spool did not hold yet instead
   of the whole file again. That hash is this process's shortcut: whenever it may not cover exactly the spooled
   bytes, the forward re-hashes.
9. An upstream that answers a cut-through before the file is complete (an early 413, 401 or 503) has answered the
   upload: the client gets that answer, as for a plain upload, and the upload ends `completed` with its status
   (the core's `answered`), whatever of the body came; its bytes are deleted. `on_last` does nothing then, though
   the proxy's lingering drain may read the rest of the body: no `forwarding` state the upstream will never answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from relay.core import resumable as core, resumable_decisions as decide
from relay.core.digests import DigestChecker, request_digests
from relay.core.events import ErrorInfo, Event, Interrupted, Resumed
from relay.core.resumable import ResumableUpload
from relay.core.resumable_decisions import Decision
from relay.core.resumable_headers import ChecksumMismatch
from relay.errors import (
    ClientDisconnected,
    ClientTimeout,
    DigestMismatch,
    RelayError,
    UploadIdInUse,
    UpstreamError,
    UpstreamTimeout,
)
from relay.hashing import new_hash
from relay.headers import header_value
from relay.proxy_context import RelayContext
from relay.resumable import spliced
from relay.resumable.answers import Request, SpoolUnavailable, refuse, respond, tus_headers
from relay.resumable.filehash import PrefixHashed, RunningHashes
from relay.resumable.forward import FileBody, ForwardUpload, answer_translator, framing
from relay.resumable.live import LiveAppend, Overflow
from relay.resumable.store import OpenAppend, ResumableStore
from relay.server import INTERIM
from relay.settings import Route
from relay.spool.base import SpoolError
from relay.watchdog import IdleWatch

__all__ = ["Appends"]

Headers = list[tuple[bytes, bytes]]
# A forward that failed with these keeps the file for a retry (502/504; a 409 when the id's lease across relays
# was still held by the relay whose forward of the same upload has just ended).
_RETRYABLE = (UpstreamError, UpstreamTimeout, UploadIdInUse)
# Headers of the completing request that the forward carries on (the rest describe the append, not the file);
# Host becomes X-Forwarded-Host, as for a plain upload (the upstream leg sends the upstream's own Host).
_FORWARDED = {b"authorization", b"user-agent", b"x-forwarded-for", b"host"}


class _Refused(RelayError):
    """The completing append's end was refused by the core (e.g. an inconsistent length): no forward."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__("the append was refused")


def _file_digests(request: Request, upload: ResumableUpload) -> DigestChecker | None:
    """The whole file's Repr-Digest: the completing request's, else the creation's (RFC 9530; contract)."""
    given = header_value(request.scope["headers"], b"repr-digest")
    value = given if given is not None else (upload.repr_digest or "").encode("latin-1")
    return request_digests([(b"repr-digest", value)], hasher=new_hash) if value else None  # hashed off the loop


def _no_interim(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    return False


def _quiet(event: Event) -> None:
    return None


class Appends:
    """Appends and forwards of the resumable uploads in `store`."""

    def __init__(self, ctx: RelayContext, store: ResumableStore) -> None:
        self.ctx = ctx
        self.store = store
        self._routes: dict[str, Route] = {route.prefix: route for route in ctx.settings.routes}
        self.hashes = RunningHashes(ctx.settings.digest, getattr(store.spool, "data_path", None))  # Rule 8

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
        try:
            if upload.append_checksum:
                await self.store.save(upload)  # the core's recovery needs to know this append's bytes are unverified
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
        cut = cut and upload.concat is None  # Rule 7
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
        """Where an upload's events go: the relay's bus, or nowhere for a partial upload (Rule 7)."""
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
            await live.splice.close()  # a spliced append's count is the data file's (spliced.py Rule 3)
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
            await self.store.save(record)
            if record.concat is None and record.state in (core.RECEIVING, core.FORWARDING):
                self.hashes.appended(record)  # Rule 8
            if record.state == core.RECEIVING:
                self._emitter(record)(Interrupted(record.id, record.offset, record.length, time.time(), record.offset))
        if decision.action == "delete" and record is not None:
            await self.store.spool.delete_data(record.id)
        if not answer:
            return decision
        if decision.action == "forward" and record is not None:
            self.store.release(record.id)
            await self.forward(request, record)
        elif failure is None and decision.action != "none":
            await respond(request, replace(decision, upload=None))
        elif isinstance(failure, ClientTimeout | SpoolUnavailable):
            await respond(request, decide.decide_error(request.req.protocol, failure, limits=request.route.limits))
        return decision

    # -- forwarding ---------------------------------------------------------------------------------------------

    async def _cut_through(
        self, request: Request, upload: ResumableUpload, live: LiveAppend, location: str | None
    ) -> None:
        """The completing append, forwarded while it arrives (see the module docstring)."""
        committed: list[ResumableUpload] = []
        early: list[int] = []  # the upstream's status, when it answered before the file was complete (Rule 9)
        lock = self.store.forward_lock(upload.id, request.lease)

        async def on_last() -> None:
            if early:  # the proxy's lingering drain read the rest of the body: the upload ends as answered
                return
            self.store.hold(upload.id, upload.writer)
            ok = live.checksum_ok
            if ok is False:
                raise ChecksumMismatch()
            decision = decide.decide_append_end(
                request.req,
                upload,
                writer=upload.writer or "",
                written=live.written,
                ended=True,
                checksum_ok=ok,
                now=time.time(),
                limits=request.route.limits,
                location=location,
            )
            if decision.action != "forward" or decision.upload is None:
                raise _Refused(decision)
            await lock.acquire()  # free: no forward runs while the upload is appending (Rule 4)
            # No fsync on this path (Rule 5): these bytes are needed again only if the upstream fails, and then
            # they are made durable, and the upload recorded, before anything is answered (_after_forward).
            try:
                await live.writer.commit(sync=False)
            except (SpoolError, OSError) as exc:  # a disk error: answered 503, the lock not left held
                await lock.release()
                raise SpoolUnavailable(f"the spool could not store the upload: {exc}") from exc
            except BaseException:
                await lock.release()
                raise
            try:  # with Redis, every relay sees `forwarding` (HEAD shows the full offset) before the last bytes go
                await self.store.mark(decision.upload)
            except BaseException:
                await lock.release()
                raise
            committed.append(decision.upload)
            self.store.release(upload.id)

        seed = await self.hashes.take(upload, upload.append_start or 0)  # Rule 8
        forward = self._forwarder(
            request, upload, live=live, on_last=on_last, committed=committed, seed=seed, early=early
        )
        try:
            await self._run(forward)
            request.body_read = live.ended
            if early and not committed:
                await self._end_answered(upload, live, early[0])
                return
            if committed:
                await self._after_forward(request, committed[0], forward)
                return
        finally:
            if lock.held and committed:
                await lock.release()
        # The forward ended before the file was complete: say why, keep the bytes (Rule 3).
        error = forward.error
        if isinstance(error, DigestMismatch):  # the file's Repr-Digest did not match: nothing of it is kept
            await live.writer.discard()
            dropped = core.apply(upload, core.APPEND_DISCARD, now=time.time(), writer=upload.writer)
            await self._reject_file(request, dropped, error)
            return
        if isinstance(error, _Refused):
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

    async def _end_answered(self, upload: ResumableUpload, live: LiveAppend, status: int) -> None:
        """Rule 9: the upstream's early answer ends the upload `completed` with its status; nothing is kept."""
        if live.splice is not None:
            await live.splice.close()
        self.store.hold(upload.id, upload.writer)
        ended = core.apply(
            upload, core.ANSWERED, now=time.time(), writer=upload.writer, offset=live.offset, upstream_status=status
        )
        with contextlib.suppress(SpoolError, OSError):  # the bytes go either way: delete_data_soon below
            await live.writer.discard()
        await self.store.save(ended)
        self.store.delete_data_soon(upload.id)
        self.ctx.metrics.resumable.labels(event="completed").inc()

    async def forward(self, request: Request, upload: ResumableUpload) -> None:
        """Every byte is in the spool: send the file upstream, answer with what came of it (Rule 4)."""
        async with self.store.forward_lock(upload.id, request.lease):
            current = self.store.get(upload.id)
            if current is not None and current.state != core.FORWARDING:
                # Another request's forward ended meanwhile: answer as the upload stands now.
                now, limits = time.time(), request.route.limits
                again = decide.decide_append_begin(request.req, current, writer="", now=now, limits=limits)
                await respond(request, replace(again, upload=None))
                return
            upload = current or upload
            seed = await self.hashes.take(upload, upload.length or 0)  # Rule 8
            forward = self._forwarder(request, upload, live=None, on_last=None, committed=[upload], seed=seed)
            await self._run(forward)
            await self._after_forward(request, upload, forward)

    async def _run(self, forward: ForwardUpload) -> None:
        """Run a forward; with Redis, give back the id's lease its head took (relay/state/leases.py): the made-up
        request does not end like a client's, and the next forward of the upload may run on another relay."""
        try:
            await forward.run()
        finally:
            self.ctx.shared.give_back(forward.lease)
            forward.lease = None

    def _forwarder(
        self,
        request: Request,
        upload: ResumableUpload,
        *,
        live: LiveAppend | None,
        on_last: Callable[[], Awaitable[None]] | None,
        committed: list[ResumableUpload],
        seed: PrefixHashed | None,
        early: list[int] | None = None,
    ) -> ForwardUpload:
        route = self._routes.get(upload.route, request.route)
        frame = framing(upload.metadata, route=route, upload_id=upload.id)
        length = upload.length or 0
        spooled = upload.append_start if live is not None and upload.append_start is not None else length
        digests = _file_digests(request, upload)
        cut = None
        if live is not None:
            framed = bool(frame.preamble or frame.epilogue)
            cut = spliced.offer(
                request.scope,
                live,
                spooled=spooled,
                length=length,
                framed=framed,
                digests=digests,
                on_last=on_last,
            )
            live.splice = cut
        body = FileBody(
            self.store.spool,
            upload.id,
            spooled=spooled,
            sources=list(zip(upload.parts, upload.part_lengths, strict=True)) if upload.concat == "final" else None,
            frame=frame,
            live=live.chunks() if live is not None else None,
            on_last=on_last,
            digests=digests,
        )
        forwarded = [(name, value) for name, value in request.scope["headers"] if name in _FORWARDED]
        scope = ForwardUpload.scope_for(
            request.scope, target=upload.target, frame=frame, length=length, forwarded=forwarded
        )
        send = answer_translator(request.send, self._completion(request, committed, early))
        forward = ForwardUpload(self.ctx, route, scope, body, send, length=length, cut=cut, seed=seed)
        forward.file_index = frame.parts_before
        forward.upload_id = upload.id
        return forward

    def _completion(
        self, request: Request, committed: list[ResumableUpload], early: list[int] | None = None
    ) -> Callable[[int, Headers], Awaitable[tuple[int, Headers, bool]]]:
        async def on_start(status: int, headers: Headers) -> tuple[int, Headers, bool]:
            if not committed:  # the upstream answered before the file was complete: its answer, as it is (Rule 9)
                if early is not None:
                    early.append(status)
                return status, headers + tus_headers(request) + request.cors, True
            upload = committed[0]
            sha256 = header_value(headers, b"x-upload-sha256")
            decision = decide.decide_forward_end(
                request.req,
                upload,
                now=time.time(),
                upstream_status=status,
                sha256=sha256.decode("ascii") if sha256 else None,
            )
            if decision.upload is not None:
                committed[0] = decision.upload
                await self.store.save(decision.upload)
                self.store.delete_data_soon(upload.id)
                self.ctx.metrics.resumable.labels(event="completed").inc()
            ours = list(decision.headers) + request.cors
            if decision.action == "respond":
                status = decision.status or 204
                if status != 204:  # a 201 without a body: say so, rather than a chunked nothing
                    ours.append((b"content-length", b"0"))
                return status, ours, False
            names = {name.lower() for name, _ in ours}
            return status, [(n, v) for n, v in headers if n.lower() not in names] + ours, True

        return on_start

    async def _reject_file(self, request: Request, upload: ResumableUpload, error: DigestMismatch) -> None:
        """The whole file does not match its Repr-Digest: the upload ends `failed` (digest_mismatch), its data
        deleted (contract, "Digests"); the upstream saw only an aborted request."""
        ended = core.apply(upload, core.TERMINATE, now=time.time(), error=ErrorInfo(error.code, error.message))
        await self.store.spool.delete_data(upload.id)
        await self.store.save(ended)
        refusal = decide.decide_error(request.req.protocol, error, limits=request.route.limits, upload_id=upload.id)
        await respond(request, refusal)

    async def _after_forward(self, request: Request, upload: ResumableUpload, forward: ForwardUpload) -> None:
        """A forward ended; if it failed before answering, the file stays for a retry (502/504)."""
        error = forward.error
        if error is None or forward.response_started:
            return
        current = self.store.get(upload.id) or upload
        if current.state != core.FORWARDING:
            return
        if isinstance(error, DigestMismatch):
            await self._reject_file(request, current, error)
            return
        decision = decide.decide_forward_end(request.req, current, now=time.time(), error=error)
        if decision.upload is not None:
            try:
                await self.store.spool.sync(upload.id)  # a cut-through committed without fsync (Rule 5)
            except (SpoolError, OSError) as exc:
                await self._lose(request, current, exc)
                return
            await self.store.save(decision.upload)
        if not isinstance(error, ClientDisconnected):
            await respond(request, replace(decision, upload=None))

    async def _lose(self, request: Request, upload: ResumableUpload, exc: Exception) -> None:
        """The file could not be made durable (an fsync that fails has lost the bytes: Linux drops the dirty pages
        it could not write): the upload ends `failed` (data_lost) rather than offer bytes it may not have."""
        info = ErrorInfo("data_lost", f"the spool could not make the upload durable: {exc}")
        await self.store.save(core.apply(upload, core.LOSE, now=time.time(), error=info))
        with contextlib.suppress(SpoolError, OSError):
            await self.store.spool.delete_data(upload.id)
        await respond(
            request, decide.decide_error(request.req.protocol, SpoolUnavailable(str(exc)), limits=request.route.limits)
        )
