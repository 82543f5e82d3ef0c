"""Completing resumable uploads: the completing append forwarded as it arrives, or a whole file from the spool.

Theory of operation
-------------------
The append that completes an upload (relay/resumable/appends.py decides which) goes upstream while it arrives:
`cut_through` runs a forward (relay/resumable/forward.py) whose body is the bytes already spooled, then the
append's own as they come (each handed to the spool first), and the answer is the upstream's. A cut-through that
ends before the file is complete (the client broke, the upstream failed or refused the append) is handed back to
the append, which ends as any other (appends.py Rule 2). An upload whose every byte is already in the spool
(the completing request again after a failed forward, a redelivery, tus concatenation's final upload) is
forwarded from the spool (`forward`).

Rules:
1. A forward holds the upload's forward lock from the completing commit until the upstream's answer is
   recorded; once every byte is in, the append lets go of the upload (HEAD answers at once). A completing
   request that finds the lock held waits, then answers from the upload's state then (no second delivery).
2. The completing append of a cut-through is not fsynced before its last bytes go upstream, and its
   `forwarding` state is kept in memory only: if the upstream takes the file, those bytes are deleted anyway
   (an fsync of the whole file was the largest part of a one-append upload's extra time). If the upstream
   fails, the bytes are fsynced and the state saved before the 502/504 is answered. A relay that dies in
   between restarts with what the disk holds: every byte there, the upload goes back to `forwarding` and is
   delivered again (relay.core.resumable.recover); fewer, the client resumes from there. Nothing that was
   acknowledged is lost: that append is answered only after the upstream answered.
3. On the disk spool, the completing append may be spliced: socket to upstream and into the data file without a
   user-space copy (relay/resumable/spliced.py, offered in `_forwarder`; the same rules, the same decisions).
4. A final upload of tus concatenation is forwarded by `forward`, its body read from its partial uploads'
   spooled bytes (a partial upload itself is never forwarded: appends.py Rule 5).
5. With sha256 on, the forward starts from the running hash of the bytes the appends spooled
   (relay/resumable/filehash.py), so it hashes only what the spool did not hold yet instead of the whole file
   again. That hash is this process's shortcut: whenever it may not cover exactly the spooled bytes, the
   forward re-hashes.
6. An upstream that answers a cut-through before the file is complete (an early 413, 401 or 503) has answered the
   upload: the client gets that answer, as for a plain upload, and the upload ends `completed` with its status
   (the core's `answered`) at the offset it had reached when the upstream answered (also in its `completed` event);
   its bytes are deleted. `on_last` does nothing then, though the proxy's lingering drain may read the rest of the
   body: no `forwarding` state the upstream will never answer. From the answer on, the append cannot be superseded
   (a tus client's HEAD right after the error waits out the drain, at most LINGER_SECONDS): ended as an ordinary
   break, it would leave the upload `receiving` while its record says `completed`.
7. The `Repr-Digest` of the request that completes the upload is recorded with it (`with_file_digest`, all of its
   lines) before its forward, like the creation's: a forward that fails and is retried (the completing request
   again without it, a redelivery, a restart) still checks it. A Repr-Digest on an append in between is not used.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from relay.core import resumable as core, resumable_decisions as decide
from relay.core.digests import DigestChecker, request_digests
from relay.core.events import ErrorInfo
from relay.core.resumable import ResumableUpload
from relay.core.resumable_completion import ANSWER_BODY_CAP, keep_answer
from relay.core.resumable_decisions import Decision
from relay.core.resumable_headers import ChecksumMismatch
from relay.errors import ClientDisconnected, DigestMismatch, RelayError
from relay.hashing import new_hash
from relay.headers import header_value
from relay.proxy_context import RelayContext
from relay.resumable import spliced
from relay.resumable.answers import Request, SpoolUnavailable, respond, tus_headers
from relay.resumable.filehash import PrefixHashed, RunningHashes
from relay.resumable.forward import AnswerTranslator, FileBody, ForwardUpload, framing
from relay.resumable.live import LiveAppend
from relay.resumable.store import ResumableStore
from relay.resumable.unavailable import StateUnavailable
from relay.settings import Route
from relay.spool.base import SpoolError

__all__ = ["Completion", "Refused", "repr_digest_of", "with_file_digest"]

log = logging.getLogger("relay.resumable")

Headers = list[tuple[bytes, bytes]]
# Headers of the completing request that the forward carries on (the rest describe the append, not the file);
# Host becomes X-Forwarded-Host, as for a plain upload (the upstream leg sends the upstream's own Host).
_FORWARDED = {b"authorization", b"user-agent", b"x-forwarded-for", b"host"}


class Refused(RelayError):
    """The completing append's end was refused by the core (e.g. an inconsistent length): no forward."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__("the append was refused")


def repr_digest_of(headers: Headers) -> str | None:
    """A request's `Repr-Digest`, its lines joined (RFC 9110 5.3: several lines of a list field are one list)."""
    values = [value for name, value in headers if name == b"repr-digest"]
    return b", ".join(values).decode("latin-1") if values else None


def with_file_digest(upload: ResumableUpload, headers: Headers) -> ResumableUpload:
    """`upload` with the completing request's Repr-Digest recorded (Rule 7), if it carries one."""
    given = repr_digest_of(headers)
    return upload if given is None else replace(upload, repr_digest=given)


def _file_digests(request: Request, upload: ResumableUpload) -> DigestChecker | None:
    """The whole file's Repr-Digest: the completing request's, else the one recorded (Rule 7; RFC 9530)."""
    value = repr_digest_of(request.scope["headers"]) or upload.repr_digest
    if not value:
        return None
    return request_digests([(b"repr-digest", value.encode("latin-1"))], hasher=new_hash)  # hashed off the loop


class Completion:
    """Forwards of the resumable uploads in `store`: cut-through, or from the spool."""

    def __init__(self, ctx: RelayContext, store: ResumableStore, hashes: RunningHashes) -> None:
        self.ctx = ctx
        self.store = store
        self.hashes = hashes  # Rule 5: the appends' running sha256
        self._routes: dict[str, Route] = {route.prefix: route for route in ctx.settings.routes}

    async def cut_through(
        self, request: Request, upload: ResumableUpload, live: LiveAppend, location: str | None
    ) -> ForwardUpload | None:
        """The completing append, forwarded while it arrives (see the module docstring). Returns the forward if it
        ended before the file was complete (its `error` says why: the append's to end), else None: answered."""
        committed: list[ResumableUpload] = []
        early: tuple[int, int] | None = None  # the upstream's status and the offset then, if it answered early (Rule 6)
        lock = self.store.forward_lock(upload.id, request.lease)

        def answered_early(status: int) -> None:
            # From here a newer request of the upload waits for this append's end (at most the lingering drain),
            # rather than cancel it: the end is `answered`, never an ordinary break.
            nonlocal early
            self.store.hold(upload.id, upload.writer)
            early = (status, live.offset)
            forward.length = live.offset  # what its `completed` event reports

        async def on_last() -> None:
            if early is not None:  # the proxy's lingering drain read the rest of the body: the upload ends as answered
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
                raise Refused(decision)
            forwarding = with_file_digest(decision.upload, request.scope["headers"])  # Rule 7
            await lock.acquire()  # free: no forward runs while the upload is appending (Rule 1)
            # No fsync on this path (Rule 2): these bytes are needed again only if the upstream fails, and then
            # they are made durable, and the upload recorded, before anything is answered (_after_forward).
            try:
                await live.writer.commit(sync=False)
            except (SpoolError, OSError) as exc:  # a disk error: answered 503, the lock not left held
                await lock.release()
                raise SpoolUnavailable.storing(exc) from exc
            except BaseException:
                await lock.release()
                raise
            try:  # with Redis, every relay sees `forwarding` (HEAD shows the full offset) before the last bytes go
                await self.store.mark(forwarding)
            except BaseException:
                await lock.release()
                raise
            committed.append(forwarding)
            self.store.release(upload.id)

        seed = await self.hashes.take(upload, upload.append_start or 0)  # Rule 5
        forward = self._forwarder(
            request, upload, live=live, on_last=on_last, committed=committed, seed=seed, on_early=answered_early
        )
        try:
            await self._run(forward)
            request.body_read = live.ended
            if early is not None and not committed:
                await self._end_answered(upload, live, forward, status=early[0], offset=early[1])
                return None
            if committed:
                await self._after_forward(request, committed[0], forward)
                return None
        finally:
            if lock.held and committed:
                await lock.release()
        return forward

    async def _end_answered(
        self, upload: ResumableUpload, live: LiveAppend, forward: ForwardUpload, *, status: int, offset: int
    ) -> None:
        """Rule 6: the upstream's early answer ends the upload `completed` with its status, at the offset it had
        reached when the upstream answered; nothing is kept."""
        if live.splice is not None:
            await live.splice.close()
        self.store.hold(upload.id, upload.writer)
        ended = core.apply(
            upload, core.ANSWERED, now=time.time(), writer=upload.writer, offset=offset, upstream_status=status
        )
        answer = forward.translator.complete() if forward.translator is not None else None
        if answer is not None:  # for the replay
            ended = keep_answer(ended, *answer)
        with contextlib.suppress(SpoolError, OSError):  # the bytes go either way: delete_data_soon below
            await live.writer.discard()
        await self.store.save(ended)
        self.store.delete_data_soon(upload.id)
        self.ctx.metrics.resumable.labels(event="completed").inc()

    async def forward(self, request: Request, upload: ResumableUpload) -> None:
        """Every byte is in the spool: send the file upstream, answer with what came of it (Rule 1)."""
        async with self.store.forward_lock(upload.id, request.lease):
            current = self.store.get(upload.id)
            if current is not None and current.state != core.FORWARDING:
                # Another request's forward ended meanwhile: answer as the upload stands now.
                now, limits = time.time(), request.route.limits
                again = decide.decide_append_begin(request.req, current, writer="", now=now, limits=limits)
                await respond(request, replace(again, upload=None))
                return
            upload = current or upload
            seed = await self.hashes.take(upload, upload.length or 0)  # Rule 5
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
        on_early: Callable[[int], None] | None = None,
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
        send = AnswerTranslator(
            request.send,
            self._completion(request, committed, on_early),
            cap=ANSWER_BODY_CAP,
            on_end=self._keeper(committed),
            hold=lambda: bool(committed),  # an early answer (Rule 6) is not held: kept by _end_answered
        )
        forward = ForwardUpload(self.ctx, route, scope, body, send, length=length, cut=cut, seed=seed)
        forward.translator = send
        forward.file_index = frame.parts_before
        forward.upload_id = upload.id
        return forward

    def _completion(
        self, request: Request, committed: list[ResumableUpload], on_early: Callable[[int], None] | None = None
    ) -> Callable[[int, Headers], Awaitable[tuple[int, Headers, bool]]]:
        async def on_start(status: int, headers: Headers) -> tuple[int, Headers, bool]:
            if not committed:  # the upstream answered before the file was complete: its answer, as it is (Rule 6)
                if on_early is not None:
                    on_early(status)
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

    def _keeper(self, committed: list[ResumableUpload]) -> Callable[[Headers, bytes], Awaitable[None]]:
        """Where the upstream's answer, passed on to the client as it was, is kept with the completed upload (the
        core's `keep_answer`), before its body goes out, so that the completing request sent again gets it too.
        Best effort: without it the replay has the status and the upload's headers. An early answer (Rule 6) is
        kept by `_end_answered`, with the upload's end."""

        async def keep(headers: Headers, body: bytes) -> None:
            current = self.store.get(committed[0].id) if committed else None
            if current is None or current.state != core.COMPLETED:
                return
            try:
                await self.store.save(keep_answer(current, headers, body))
            except (SpoolError, OSError, StateUnavailable) as exc:
                log.warning("could not keep the upstream's answer to upload %s: %s", current.id, exc)

        return keep

    async def reject_file(self, request: Request, upload: ResumableUpload, error: DigestMismatch) -> None:
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
            await self.reject_file(request, current, error)
            return
        decision = decide.decide_forward_end(request.req, current, now=time.time(), error=error)
        if decision.upload is not None:
            try:
                await self.store.spool.sync(upload.id)  # a cut-through committed without fsync (Rule 2)
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
