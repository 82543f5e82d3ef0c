"""The requests of resumable uploads (tus 1.0.0 and the IETF draft): creation on a routed path, then HEAD,
PATCH, DELETE and OPTIONS under the resumable prefix.

Theory of operation
-------------------
Each request is parsed and admitted like a plain upload (token, CORS; the caps for requests that bring bytes:
relay/resumable/admission.py; the upload id here), then decided by a pure function of relay.core.resumable;
this module only does what the decision names: answer, append, forward, delete. Appends are
relay/resumable/appends.py's, forwards completion.py's: an append streams the body into the spool, and the append
that completes the upload goes upstream at the same time (cut-through); a finished upload whose forward failed is
forwarded again from the spool.

Rules:
1. One writer: HEAD, PATCH and DELETE first end an open append of the same upload (`store.settle`); DELETE
   also waits for a forward under way (the store's Rule 5).
2. Every answer under the prefix carries `X-Upload-ID` when the path names a valid id.
3. Refusals answered before the body was read carry `Connection: close` and a bounded lingering drain,
   as for plain uploads.
4. Every answer to a creation that created the upload carries its `Location`, also when the same request
   completed it (clients need it: tus-js-client fails a creation answer without one) or failed upstream
   (so the client can retry the completion).
5. tus concatenation (relay/core/concat.py): `Upload-Concat: partial` creates an upload that is never
   forwarded on its own and not shown in the registry (`note` skips it); `Upload-Concat: final;...` is
   relay/resumable/concat.py's; HEAD of either carries `Upload-Concat`.
6. On a routed path, a resumable request that is not a creation POST, or any on a route without POST, gets 405
   with `Allow` naming what that URL takes: the route's methods and OPTIONS (`_routed_allow`).
7. On the resumable prefix, a path that names no upload is 404 and a method other than HEAD, PATCH, DELETE (and
   OPTIONS, discovery) is 405 with `Allow`, whatever the request's headers: checked before its token and its
   `Tus-Resumable` (an absent one would otherwise make a GET a 412), as routing comes before the resource.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

from relay.core import resumable as core, resumable_decisions as decide
from relay.core.concat import FINAL, PARTIAL, concat_header, parse_concat
from relay.core.events import ErrorInfo, Failed, ResumableNote, Started
from relay.core.multipart import _part_headers as part_headers
from relay.core.resumable import ResumableSettings, ResumableUpload
from relay.core.resumable_decisions import Decision
from relay.core.resumable_headers import detect_protocol
from relay.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    RelayError,
    TooManyUploads,
    UploadIdInUse,
)
from relay.headers import header_value, valid_upload_id
from relay.proxy_admission import cors_headers, drawn_upload_id, may_have_body
from relay.proxy_context import RelayContext
from relay.resumable.admission import admit_body, for_refusals, options, parse, release_body, with_header
from relay.resumable.answers import (
    TUS_EXPOSED,
    Request,
    SpoolUnavailable,
    note_refused_creation,
    refuse,
    refuse_unparsed,
    respond,
)
from relay.resumable.appends import Appends
from relay.resumable.completion import with_file_digest
from relay.resumable.concat import FinalUploads
from relay.resumable.redeliver import Redelivery
from relay.resumable.store import ResumableStore
from relay.resumable.unavailable import StateUnavailable
from relay.settings import Route
from relay.spool.base import SpoolError
from relay.types import Receive, Scope, Send

__all__ = ["ResumableEndpoints", "disposition_filename"]


class ResumableEndpoints:
    """Routing and the request handlers of resumable uploads (parsing and admission: admission.py)."""

    def __init__(self, ctx: RelayContext, store: ResumableStore) -> None:
        self.ctx = ctx
        self.store = store
        settings = ctx.settings
        self.prefix = settings.resumable_prefix
        self.core = ResumableSettings(
            expiry=settings.resumable_expiry, max_incomplete=settings.resumable_max_incomplete
        )
        self._routes = {route.prefix: route for route in settings.routes}
        self.appends = Appends(ctx, store)
        self.redelivery = Redelivery(self.appends, self._routes)
        self.finals = FinalUploads(self)
        store.on_sweep = self.redelivery.due

    # -- routing --------------------------------------------------------------------------------------------

    def takes(self, route: Route, scope: Scope) -> bool:
        """Whether a request on a routed path is a resumable one (creation or discovery)."""
        if not route.resumable:
            return False
        return scope["method"] == "OPTIONS" or detect_protocol(scope["headers"]) is not None

    async def routed(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        """Creation, and discovery by OPTIONS, on a routed path."""
        # The contract: every answer on a routed path carries X-Upload-ID, refusals and OPTIONS too (as for plain
        # uploads): the client's valid id, else the one the server's protocol drew (its mid-body answers carry that
        # one), which a creation then uses.
        given = header_value(scope["headers"], b"x-upload-id")
        upload_id = given.decode("ascii") if given is not None and valid_upload_id(given) else drawn_upload_id(scope)
        send = with_header(send, b"x-upload-id", upload_id.encode())
        for_refusals(scope)
        if await options(self.ctx, route, scope, send, routed=True):
            return
        request = await parse(self.ctx, route, scope, receive, send)
        if request is None:
            return
        if request.req.method != "POST" or "POST" not in route.methods:
            await respond(request, decide.method_not_allowed(request.req.protocol, _routed_allow(route)))
            return
        await self._create(request, upload_id)
        if self.store.get(upload_id) is None:  # refused before any upload existed: recorded as `rejected`
            note_refused_creation(self.ctx, request, upload_id)

    async def prefixed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """HEAD, PATCH, DELETE and OPTIONS on `<resumable-prefix><id>`."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        upload_id = raw_path[len(self.prefix) :]
        upload = self.store.get(upload_id.decode("latin-1")) if valid_upload_id(upload_id) else None
        route = self._routes.get(upload.route) if upload is not None else None
        route = route or self.ctx.settings.routes[0]
        if valid_upload_id(upload_id):
            send = with_header(send, b"x-upload-id", upload_id)  # every answer about the upload says which
        for_refusals(scope, upload_id if valid_upload_id(upload_id) else None)
        if await options(self.ctx, route, scope, send):
            return
        if await self._off_route(scope, receive, send, route, upload_id):
            return
        request = await parse(self.ctx, route, scope, receive, send)
        if request is None:
            return
        await self._prefixed(request, upload_id.decode("ascii"))

    async def _off_route(self, scope: Scope, receive: Receive, send: Send, route: Route, upload_id: bytes) -> bool:
        """Rule 7: not an upload's URL (404) or not one of its methods (405), answered as such whatever the
        request's headers (before its token and its protocol version are asked for), in its protocol all the same."""
        headers = scope["headers"]
        method = scope["method"]
        override = header_value(headers, b"x-http-method-override") if method == "POST" else None
        method = override.decode("latin-1").upper() if override is not None else method
        error: RelayError | None = None
        extra: list[tuple[bytes, bytes]] = []
        if not upload_id:  # the prefix itself is only for discovery (OPTIONS, answered before): another path
            error = NotFound("no resumable upload at this path")
        elif not valid_upload_id(upload_id):
            error = NotFound("no such resumable upload")
        elif method not in ("HEAD", "PATCH", "DELETE"):
            error, extra = MethodNotAllowed(), [(b"allow", b"HEAD, PATCH, DELETE, OPTIONS")]
        if error is None:
            return False
        cors = cors_headers(self.ctx.settings, headers, TUS_EXPOSED)
        protocol, unread = detect_protocol(headers) or "tus", may_have_body(headers)
        await refuse_unparsed(
            self.ctx.metrics,
            send,
            protocol,
            error,
            limits=route.limits,
            cors=cors,
            receive=receive,
            unread=unread,
            extra=extra,
        )
        return True

    async def _prefixed(self, request: Request, upload_id: str) -> None:
        try:
            request.lease = await self.store.begin(upload_id, take=request.req.method == "PATCH")  # Rule 1
            await self._prefixed_held(request, upload_id)
        except StateUnavailable as exc:  # Redis gone (or the upload held too long elsewhere): 503, nothing moved
            if not request.answered:
                await refuse(self.ctx.metrics, request, exc, upload_id=upload_id)
        finally:
            await self.store.let_go(upload_id, request.lease)

    async def _prefixed_held(self, request: Request, upload_id: str) -> None:
        upload = self.store.get(upload_id)
        if upload is not None:  # the route it was created under (another relay's upload was not known before)
            request.route = self._routes.get(upload.route, request.route)
        now, limits, req = time.time(), request.route.limits, request.req
        if req.method == "HEAD":
            decision = decide.decide_head(req, upload, now=now, limits=limits)
            concat = concat_header(upload, self.prefix) if upload is not None and req.protocol == "tus" else None
            if concat is not None and decision.status == 200:  # Rule 5
                decision = replace(decision, headers=(*decision.headers, concat))
            await respond(request, decision)
            if upload is not None:
                self.redelivery.kick(upload)  # a client back after a failed forward: deliver now if we can
        elif req.method == "DELETE":
            async with self.store.forward_lock(upload_id):  # a forward under way ends first (store Rule 5)
                upload = self.store.get(upload_id)
                await self._delete(request, decide.decide_delete(req, upload, now=time.time()))
        else:
            writer = uuid.uuid4().hex
            decision = decide.decide_append_begin(req, upload, writer=writer, now=now, limits=limits)
            await self._act(request, decision)

    # -- creation -------------------------------------------------------------------------------------------

    async def _create(self, request: Request, upload_id: str) -> None:
        """Creation under `upload_id`: the client's X-Upload-ID when valid, else one the relay drew."""
        scope, req = request.scope, request.req
        given = header_value(scope["headers"], b"x-upload-id")
        if given is not None and not valid_upload_id(given):
            await refuse(self.ctx.metrics, request, BadRequest("X-Upload-ID must match [A-Za-z0-9_-]{1,64}"))
            return
        if req.protocol != "tus" and "filename" not in req.metadata:
            disposition = header_value(scope["headers"], b"content-disposition")
            filename = disposition_filename(disposition) if disposition is not None else None
            if filename:  # the drafts have no metadata: the file's name as a plain upload would give it
                req = request.req = replace(req, metadata={**req.metadata, "filename": filename})
        in_use = self.store.get(upload_id) is not None or self.ctx.registry.is_active(upload_id)
        if given is not None and not in_use:  # a plain upload under the chosen id, on any relay (with Redis)
            in_use = await self.ctx.shared.id_in_use(upload_id)
        if in_use:
            await refuse(self.ctx.metrics, request, UploadIdInUse(f"upload {upload_id} exists"))
            return
        target: bytes = scope.get("extensions", {}).get("relay.raw_target") or scope.get("raw_path") or b"/"
        try:
            concat = parse_concat(header_value(scope["headers"], b"upload-concat"), self.prefix, req.protocol)
        except RelayError as exc:
            await refuse(self.ctx.metrics, request, exc, upload_id=upload_id)
            return
        if concat is not None and concat.kind == FINAL:  # Rule 5
            await self.finals.create(request, upload_id, concat, target)
            return
        try:
            free = await self.store.spool.free_bytes()
        except (SpoolError, OSError):
            free = None
        try:
            incomplete = await self.store.incomplete()
        except StateUnavailable as exc:
            await refuse(self.ctx.metrics, request, exc)
            return
        decision = decide.decide_create(
            req,
            upload_id=upload_id,
            route=request.route.prefix,
            target=target,
            location=self.prefix + upload_id,
            writer=uuid.uuid4().hex,
            now=time.time(),
            limits=request.route.limits,
            settings=self.core,
            free_bytes=free,
            incomplete=incomplete,
            partial=concat is not None and concat.kind == PARTIAL,
        )
        if decision.action == "append":  # the caps first: a refused body must not leave an upload behind
            try:
                admit_body(self.ctx, request)
            except RelayError as exc:
                await refuse(self.ctx.metrics, request, exc)
                return
        try:
            await self.created(request, decision, upload_id)
        except StateUnavailable as exc:
            if not request.answered:
                await refuse(self.ctx.metrics, request, exc, upload_id=upload_id)
        finally:
            release_body(self.ctx, request)
            await self.store.let_go(upload_id, request.lease)

    async def refuse(self, request: Request, error: RelayError, *, upload_id: str | None = None) -> None:
        await refuse(self.ctx.metrics, request, error, upload_id=upload_id)

    async def created(
        self,
        request: Request,
        decision: Decision,
        upload_id: str,
        *,
        before_act: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Create the upload `decision` names (refusing when the id, the cap or the spool says no), then do
        what the decision says; `before_act` runs in between (a final upload claims its partial ones)."""
        scope = request.scope
        if decision.upload is not None:  # checked over the whole file before it goes up
            decision = replace(decision, upload=with_file_digest(decision.upload, scope["headers"]))
        if decision.upload is not None:
            fresh = decision.upload
            try:
                await self.store.create(
                    replace(fresh, state=core.RECEIVING, writer=None, append_start=None),
                    max_incomplete=self.core.max_incomplete,
                )
            except FileExistsError:  # the same X-Upload-ID created by a request racing this one (or relay)
                await refuse(self.ctx.metrics, request, UploadIdInUse(f"upload {upload_id} exists"))
                return
            except TooManyUploads as exc:  # --resumable-max-incomplete, counted across relays (with Redis)
                await refuse(self.ctx.metrics, request, exc)
                return
            except (SpoolError, OSError) as exc:
                error = SpoolUnavailable(f"the spool could not create the upload: {exc}")
                await refuse(self.ctx.metrics, request, error)
                return
            if fresh.concat != PARTIAL:  # Rule 5: the final upload is the one users see
                self.ctx.emit(
                    Started(
                        upload_id,
                        0,
                        fresh.length,
                        fresh.created_at,
                        request.route.prefix,
                        "POST",
                        scope["path"],
                        request.client,
                    )
                )
            self.ctx.metrics.resumable.labels(event="created").inc()
            self.store.record(replace(fresh, state=core.RECEIVING, writer=None, append_start=None))
            if decision.action == "append" and self.store.shared is not None:  # creation-with-upload appends
                request.lease = await self.store.begin(upload_id, take=True)
            # Rule 4: whatever the answer (a completion, the upstream's own, a 502), it says where the upload is
            request.send = with_header(request.send, b"location", (self.prefix + upload_id).encode())
        if before_act is not None:
            await before_act()
        await self._act(request, decision, location=self.prefix + upload_id)

    # -- doing what a decision says -------------------------------------------------------------------------

    async def _act(self, request: Request, decision: Decision, *, location: str | None = None) -> None:
        if decision.action == "append":
            try:
                if not request.counted:  # a creation was admitted before the upload was created
                    admit_body(self.ctx, request)
            except RelayError as exc:
                await refuse(self.ctx.metrics, request, exc, upload_id=decision.upload.id if decision.upload else None)
                return
            try:
                await self.appends.append(request, decision, location)
            finally:
                release_body(self.ctx, request)
        elif decision.action == "forward" and decision.upload is not None:
            await self.store.save(with_file_digest(decision.upload, request.scope["headers"]))  # completion.py Rule 7
            await self.appends.forward(request, decision.upload)
        else:
            if decision.upload is not None:
                await self.store.save(decision.upload)
            await respond(request, decision)

    async def _delete(self, request: Request, decision: Decision) -> None:
        upload = decision.upload
        if decision.action == "delete" and upload is not None and upload.state == core.COMPLETED:
            # Delivered already: nothing to terminate, but the client asked for it to be gone (the contract: later
            # requests 404), so it is forgotten now rather than at the end of its expiry; its record stays
            # `completed`, which is what happened.
            await self.store.drop(upload.id)
        elif decision.action == "delete" and upload is not None:
            await self.store.spool.delete_data(upload.id)
            await self.store.save(upload)
            if upload.state == core.FAILED:
                self.ctx.metrics.resumable.labels(event="terminated").inc()
        await respond(request, replace(decision, upload=None))

    async def stop(self) -> None:
        """Stop the background retries, then the store (its sweeper, the spool)."""
        await self.redelivery.stop()
        await self.store.stop()

    # -- the registry -------------------------------------------------------------------------------------------

    def note(self, upload: ResumableUpload) -> None:
        """What the registry keeps of an upload as it moves (the store calls this on every change)."""
        if upload.state == core.COMPLETED or upload.concat == PARTIAL:  # Rule 5: partial uploads are not shown
            return
        now = time.time()
        if upload.state == core.FAILED:
            record = self.ctx.registry.get(upload.id)
            if record is not None and record.finished:
                return
            if record is None:
                self.ctx.registry.apply(self._note(upload, core.RECEIVING, now))
            error = upload.error or ErrorInfo("failed", "the upload failed")
            if error.code == "expired":
                self.ctx.metrics.resumable.labels(event="expired").inc()
            self.ctx.emit(Failed(upload.id, upload.offset, upload.length, now, error))
            return
        state = core.FORWARDING if upload.state == core.FORWARDING else core.RECEIVING
        self.ctx.registry.apply(self._note(upload, state, now))
        if upload.state == core.RECEIVING or (upload.state == core.FORWARDING and upload.error is not None):
            # Between requests (no append open, no forward under way here: a failed one waits for a retry). With
            # Redis the next request may go to any relay, and the one that completes it emits the end there: this
            # relay's copy must not stay "in progress" for good (relay/uploads.py `release`).
            self.ctx.registry.release(upload.id)

    @staticmethod
    def _note(upload: ResumableUpload, state: str, now: float) -> ResumableNote:
        return ResumableNote(
            upload.id,
            upload.offset,
            upload.length,
            now,
            state,
            upload.expires_at,
            route=upload.route,
            path=upload.target.split(b"?", 1)[0].decode("latin-1"),
            started_at=upload.created_at,
            error=upload.error,
        )


def _routed_allow(route: Route) -> str:
    """`Allow` for a routed path: what the URL takes, the route's methods (plain uploads; creation if POST is one)
    and OPTIONS (discovery). Never a fixed "POST": on a route without it, that names the very method refused."""
    methods = [*route.methods, *(["OPTIONS"] if "OPTIONS" not in route.methods else [])]
    return ", ".join(methods)


def disposition_filename(value: bytes) -> str | None:
    """The `filename` (or RFC 5987 `filename*`) of a Content-Disposition header, as a multipart part's is read."""
    return part_headers(value, None).filename
