"""The relayed route: one upload, from its headers to the upstream's answer.

Theory of operation
-------------------
1. Everything that can be decided from the headers is decided before the first `receive()`, and a refused client
   never has to send its body (relay/proxy_admission.py).
2. The body is one async generator handed to the upstream leg, pulling one ASGI message at a time: backpressure
   end to end (relay/proxy_body.py).
3. One chunk is held back, so `inspector.finish()` runs before the last byte leaves, and a body that fails
   validation never reaches the upstream complete (relay/proxy_body.py; a large raw body may be spliced instead:
   relay/splicewire.py).
4. Any failure inside the generator raises out of it, which kills the upstream request mid-body. The error is
   remembered, so it is what gets answered, not what the upstream leg saw of it (relay/proxy_body.py, `forward`).
5. Before `http.response.start` an error can still be answered as JSON; after it, only by closing the
   connection (here: `relay_response`, `fail`).
6. The upstream's answer is relayed as HTTP allows: a status outside 100-599 is not one, and becomes the relay's
   502 `upstream_failed`; an answer that has no body (1xx, 204, 304) goes without Content-Length or body bytes,
   whatever the upstream said (a 304 keeps its other headers).
7. A framing error the server's protocol found in the body (a bad chunk size, trailers over the limit) is answered
   by the protocol, which ends the request: the upload is recorded with that error's code, not as a client that
   went away (relay/protocol.py, `REFUSED`), and the protocol has counted it in relay_rejections_total. That holds
   for a request refused from its headers too, when the protocol answered first (`refuse`). The answer carries the
   id this request goes by: the one the protocol drew at the head when the client chose none (Admission adopts it).

`Upload` is built in three layers, one file each: `Admission` (the request's state and its header decisions),
`BodyPump` (the body), and `Upload` here (the whole request's course: refuse or forward, then the answer).
relay/resumable/forward.py subclasses it to forward a finished resumable upload.
"""

from __future__ import annotations

import asyncio
import time

from relay.core.events import Completed, ErrorInfo, Failed, Started
from relay.errors import (
    ClientDisconnected,
    DigestMismatch,
    RelayError,
    ShuttingDown,
    TooManyUploads,
    UploadIdInUse,
    UpstreamFailed,
)
from relay.headers import forward_request_headers, forward_response_headers, header_value
from relay.proxy_admission import drain_body, error_response, may_have_body
from relay.proxy_body import BodyPump
from relay.upstream import UpstreamResponse

__all__ = ["Upload"]

# scope["extensions"] keys shared with relay/protocol.py's protocol (not imported: the app runs under other servers).
_REFUSED = "relay.refused"  # the error the protocol answered mid-body
_BODYLESS = (204, 304)  # and every 1xx: RFC 9110 6.4.1, no content whatever the header fields say


class Upload(BodyPump):
    """One request on a routed path: admitted from its headers, its body pumped upstream, the answer relayed."""

    counted = False  # the rejection is already in relay_rejections_total (the protocol answered it)

    # -- the whole upload -----------------------------------------------------------------------------------

    async def run(self) -> None:
        if (
            self.method == "OPTIONS"
            and self.ctx.settings.cors_origins
            and header_value(self.headers, b"access-control-request-method") is not None
        ):
            await self.preflight()
            return
        try:
            self.check_headers()
            # The caps across relays: one await on the head of the request, never per chunk.
            # A relay-drawn id (128 random bits) is in use nowhere: not chosen, no lease on it (a Redis round trip).
            self.lease = await self.ctx.shared.take_slots(self.upload_id, self.client_key, chosen=self.id_chosen)
        except UploadIdInUse as exc:
            # The id belongs to the upload in progress: answer, but never touch its record or events.
            if self.refused_by_server() is None:  # else the protocol answered, and counted, its own error
                self.count_rejection(exc)
            await self.answer(exc, unread_body=may_have_body(self.headers))
            return
        except RelayError as exc:
            await self.refuse(exc)
            return
        self.begin()
        try:
            await self.forward()
        except RelayError as exc:
            await self.fail(exc)
        except asyncio.CancelledError:
            # uvicorn cancels what is still running when the drain timeout runs out: the upstream request
            # dies with this task, mid-body.
            self.fail_quietly(ShuttingDown())
            raise
        except Exception:
            # uvicorn's send() raises when it has already closed the connection (a bad request pipelined
            # behind this one): record the end so the id is not "receiving" forever.
            self.fail_quietly(ClientDisconnected("the connection closed under the relay"))
            raise
        finally:
            self.end()

    async def refuse(self, exc: RelayError) -> None:
        """Refused from its headers: recorded as `rejected`, answered, connection closed.

        When the protocol has already refused a framing error in the same body (head and bad chunk in one packet,
        before this ran), the client got the protocol's answer: that error is recorded, and counted only there."""
        refused = self.refused_by_server()
        if refused is not None:
            exc, self.counted = refused, True
        now = time.time()
        self.emit(
            Started(
                self.upload_id,
                0,
                self.content_length,
                now,
                self.route.prefix,
                self.method,
                self.scope["path"],
                self.client_key,
            )
        )
        self.emit(Failed(self.upload_id, 0, self.content_length, now, ErrorInfo(exc.code, exc.message), rejected=True))
        if not self.counted:
            self.count_rejection(exc)
        self.ctx.metrics.uploads.labels(outcome="rejected").inc()
        extra = [(b"retry-after", b"1")] if isinstance(exc, TooManyUploads) else None
        await self.answer(exc, extra=extra, unread_body=may_have_body(self.headers))

    def count_rejection(self, exc: RelayError) -> None:
        self.ctx.metrics.rejections.labels(code=exc.code).inc()

    def refused_by_server(self) -> RelayError | None:
        """The framing error the protocol answered in the middle of the body, when that is why the body ended."""
        refused = self.scope.get("extensions", {}).get(_REFUSED)
        return refused if isinstance(refused, RelayError) else None

    def begin(self) -> None:
        self.ctx.in_flight += 1
        self.ctx.per_client[self.client_key] = self.ctx.per_client.get(self.client_key, 0) + 1
        self.ctx.metrics.in_flight.inc()
        self.emit(
            Started(
                self.upload_id,
                0,
                self.content_length,
                time.time(),
                self.route.prefix,
                self.method,
                self.scope["path"],
                self.client_key,
            )
        )

    def end(self) -> None:
        self.ctx.shared.give_back(self.lease)
        self.ctx.in_flight -= 1
        left = self.ctx.per_client.pop(self.client_key, 1) - 1
        if left:
            self.ctx.per_client[self.client_key] = left
        self.ctx.metrics.in_flight.dec()

    async def forward(self) -> int:
        upstream = self.ctx.upstreams[self.route.upstream or ""]
        headers = forward_request_headers(
            self.headers,
            peer=(self.scope.get("client") or (None,))[0],
            scheme=self.scope.get("scheme", "http"),
            upload_id=self.upload_id,
            trust_forwarded=self.ctx.settings.trust_forwarded,
            strip_authorization=bool(self.ctx.settings.accepted_tokens) and not self.ctx.settings.forward_authorization,
        )
        try:
            response = await upstream.send(self.method, self.raw_target, headers, self.outgoing(), self.content_length)
        except Exception as exc:
            # The body generator's own error is the real cause, whatever the upstream leg made of it.
            error = self.body_error if self.body_error is not None else exc
            if isinstance(error, ClientDisconnected):
                self.client_gone = True
                refused = self.refused_by_server()
                if refused is not None:  # not a client gone: a request the protocol refused, and answered
                    self.counted = True
                    error = refused
            if error is exc:
                raise
            raise error from exc
        return await self.relay_response(response)

    # -- the answer -------------------------------------------------------------------------------------------

    async def relay_response(self, response: UpstreamResponse) -> int:
        try:
            if not 100 <= response.status <= 599:
                raise UpstreamFailed(f"the upstream answered with status {response.status}, outside 100-599")
            bodyless = response.status < 200 or response.status in _BODYLESS
            headers = forward_response_headers(response.headers, self.upload_id) + self.cors
            if bodyless:
                headers = [
                    (key, value) for key, value in headers if key not in (b"content-length", b"transfer-encoding")
                ]
            digest = self.single_file_digest() if self.body_done else None
            if digest is not None:
                headers.append((b"x-upload-sha256", digest.encode()))
            repr_digest = self.digests.repr_digest() if self.digests is not None else None
            if repr_digest is not None:  # the relay's word on what it received replaces any the upstream gave
                headers = [(key, value) for key, value in headers if key != b"repr-digest"]
                headers.append((b"repr-digest", repr_digest))
            if response.early:
                # The upstream refused before the body ended: its answer is relayed, then the rest of the
                # body is drained for a bounded while (lingering close) so the client can read that answer.
                headers.append((b"connection", b"close"))
            await self.send({"type": "http.response.start", "status": response.status, "headers": headers})
            self.response_started = True
            async for chunk in response.body():
                if not bodyless:  # llhttp reads none for these; whatever it might, the client gets none
                    await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
            # Completed before the last response byte: a client that asks about its upload the moment the
            # response ends finds it completed.
            self.complete(response.status)
            if response.early and not self.client_gone:
                self.ctx.metrics.bytes_drained.inc(await drain_body(self.receive))
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()
        return response.status

    def single_file_digest(self) -> str | None:
        assert self.inspector is not None
        parts = self.inspector.parts
        files = [part for part in parts if part.filename is not None]
        if not self.inspector.is_multipart and len(parts) == 1:
            return parts[0].sha256
        return files[0].sha256 if len(files) == 1 else None

    def complete(self, status: int) -> None:
        if self.finished:
            return
        self.finished = True
        assert self.inspector is not None
        received = self.inspector.bytes_received
        self.emit(Completed(self.upload_id, received, self.content_length, time.time(), status))
        self.ctx.metrics.finished("completed", time.monotonic() - self.started, received, upstream_status=status)

    def fail_quietly(self, exc: RelayError) -> None:
        if self.finished:
            return
        self.finished = True
        received = self.inspector.bytes_received if self.inspector else 0
        self.emit(Failed(self.upload_id, received, self.content_length, time.time(), ErrorInfo(exc.code, exc.message)))
        if not self.counted:
            self.ctx.metrics.rejections.labels(code=exc.code).inc()
        self.ctx.metrics.finished("failed", time.monotonic() - self.started, received)

    async def fail(self, exc: RelayError) -> None:
        self.fail_quietly(exc)
        if self.response_started:
            # Only closing the connection is left. The protocol glue does it without a traceback; under
            # another server, raising makes it close the connection.
            abort = self.scope.get("extensions", {}).get("relay.abort")
            if abort is None:
                raise exc
            abort()
            return
        if self.client_gone:
            return
        # The contract: responses to an upload that carried a digest carry Repr-Digest of what the relay received,
        # the refusal of a mismatch too (the client sees what arrived).
        received = self.digests.repr_digest() if isinstance(exc, DigestMismatch) and self.digests else None
        extra = [(b"repr-digest", received)] if received is not None else None
        await self.answer(exc, unread_body=not self.body_done, extra=extra)

    async def answer(
        self, exc: RelayError, *, unread_body: bool, extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Answer with the JSON error; when body bytes may still come, close only after a lingering drain."""
        linger = self.receive if unread_body else None
        drained = await error_response(
            self.send, exc, upload_id=self.upload_id, close=unread_body, extra=(extra or []) + self.cors, linger=linger
        )
        self.ctx.metrics.bytes_drained.inc(drained)
