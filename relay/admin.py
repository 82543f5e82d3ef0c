"""/_relay/: health, metrics, the uploads registry and the Server-Sent Events streams."""

from __future__ import annotations

import dataclasses
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from relay.bus import Subscription
from relay.core.events import TERMINAL, Event, Part, Progress
from relay.errors import BadRequest, MethodNotAllowed, NotFound, RelayError, Unauthorized
from relay.metrics import CONTENT_TYPE
from relay.proxy import RelayContext
from relay.types import Message, Receive, Scope, Send

__all__ = ["UNKNOWN_ID_WAIT", "create_admin_app"]

UNKNOWN_ID_WAIT = 30.0  # seconds a subscriber to an id not seen yet waits for it to start
PING_SECONDS = 15
_HTTP_ERRORS: dict[int, type[RelayError]] = {404: NotFound, 405: MethodNotAllowed, 401: Unauthorized}


def _sse(event: Event) -> dict[str, str]:
    return {"event": event.name, "data": json.dumps(event.to_dict())}


def create_admin_app(ctx: RelayContext) -> FastAPI:
    # FastAPI's docs routes cannot take our admin dependency: with an admin token they are simply off.
    public_docs = ctx.settings.admin_token is None
    app = FastAPI(
        title="upload relay admin",
        docs_url="/_relay/docs" if public_docs else None,
        openapi_url="/_relay/openapi.json" if public_docs else None,
        redoc_url=None,
        # No slash redirects: Starlette builds their Location from the client's Host header (open redirect).
        redirect_slashes=False,
    )

    @app.exception_handler(RelayError)
    async def relay_error(request: Request, exc: RelayError) -> JSONResponse:
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own 404/405 (a method a route does not take) in the contract's shape, not {"detail"}.
        error = _HTTP_ERRORS.get(exc.status_code, BadRequest)(str(exc.detail))
        return JSONResponse({"error": error.to_dict()}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": BadRequest("invalid request").to_dict()}, status_code=400)

    def require_admin(request: Request) -> None:
        token = ctx.settings.admin_token
        if token is None:
            return
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), token.encode()):
            raise Unauthorized("an admin bearer token is required")

    admin = [Depends(require_admin)]

    @app.get("/_relay/health")
    async def health() -> dict[str, Any]:
        routes = [{"prefix": route.prefix, "upstream": route.upstream} for route in ctx.settings.routes]
        return {"status": "ok", "uploads_in_flight": ctx.in_flight, "routes": routes}

    @app.get("/_relay/metrics", dependencies=admin)
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/_relay/uploads", dependencies=admin)
    async def uploads() -> dict[str, Any]:
        return {"uploads": [record.to_dict() for record in ctx.registry.recent()]}

    @app.get("/_relay/uploads/{upload_id}", dependencies=admin)
    async def upload(upload_id: str) -> dict[str, Any]:
        record = ctx.registry.get(upload_id)
        if record is None:
            raise NotFound(f"no upload {upload_id}")
        return record.to_dict()

    @app.get("/_relay/uploads/{upload_id}/events", dependencies=admin)
    async def upload_events(upload_id: str) -> EventSourceResponse:
        # Subscribe and take the snapshot in one step (no await between): an event is either in the snapshot
        # or in the queue, never in both and never in neither.
        subscription = ctx.bus.subscribe(upload_id)
        catch_up = _catch_up(ctx, upload_id)
        return _EventStream(ctx, subscription, _one_upload(ctx, subscription, catch_up))

    @app.get("/_relay/events", dependencies=admin)
    async def all_events() -> EventSourceResponse:
        subscription = ctx.bus.subscribe(None)
        return _EventStream(ctx, subscription, _every_upload(ctx, subscription))

    @app.api_route("/_relay/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
    async def unknown(rest: str) -> None:
        raise NotFound(f"no admin endpoint /_relay/{rest}")

    return app


class _EventStream(EventSourceResponse):
    """An SSE response that always releases its subscription, even when its generator never started
    (the client left before the response headers went out)."""

    def __init__(self, ctx: RelayContext, subscription: Subscription, events: AsyncIterator[dict[str, str]]) -> None:
        super().__init__(events, ping=PING_SECONDS)
        self._ctx = ctx
        self._subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"started": False, "ended": False}

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["ended"] = True
            await send(message)

        try:
            await super().__call__(scope, receive, tracked_send)
            if state["started"] and not state["ended"]:
                # sse-starlette stops its streams on shutdown without the closing message; end the chunked
                # body cleanly, so followers see the stream end (and uvicorn logs no incomplete response).
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self._ctx.bus.unsubscribe(self._subscription)


@dataclass(frozen=True)
class _CatchUp:
    """What a late subscriber is owed first: current counts, parts so far, the terminal event if any."""

    known: bool
    events: tuple[Event, ...]
    parts_sent: int
    finished: bool


def _catch_up(ctx: RelayContext, upload_id: str) -> _CatchUp:
    record = ctx.registry.get(upload_id)
    if record is None:
        return _CatchUp(known=False, events=(), parts_sent=0, finished=False)
    now = record.terminal.ts if record.terminal else time.time()
    # Replayed parts carry the current count: within one stream `bytes` never goes down (contract).
    parts = [dataclasses.replace(part, bytes=record.bytes) for part in record.parts]
    events: list[Event] = [Progress(upload_id, record.bytes, record.total, now), *parts]
    if record.terminal is not None:
        events.append(record.terminal)
    return _CatchUp(known=True, events=tuple(events), parts_sent=len(record.parts), finished=record.finished)


async def _one_upload(
    ctx: RelayContext, subscription: Subscription, catch_up: _CatchUp
) -> AsyncIterator[dict[str, str]]:
    """The catch-up, then live events until the terminal one (or 30 s of nothing for an unknown id)."""
    try:
        for event in catch_up.events:
            yield _sse(event)
        if catch_up.finished:
            return
        first = True
        while True:
            timeout = UNKNOWN_ID_WAIT if first and not catch_up.known else None
            live = await subscription.get(timeout)
            if live is None:
                return
            first = False
            if isinstance(live, Part) and live.index < catch_up.parts_sent:
                continue
            yield _sse(live)
            if isinstance(live, TERMINAL):
                return
    finally:
        ctx.bus.unsubscribe(subscription)


async def _every_upload(ctx: RelayContext, subscription: Subscription) -> AsyncIterator[dict[str, str]]:
    try:
        async for event in subscription:
            yield _sse(event)
    finally:
        ctx.bus.unsubscribe(subscription)
