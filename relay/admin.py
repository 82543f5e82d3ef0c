"""/_relay/: health, metrics, the uploads registry and the Server-Sent Events streams."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse

from relay.bus import Subscription
from relay.core.events import TERMINAL, Event, Part, Progress
from relay.errors import NotFound, RelayError, Unauthorized
from relay.metrics import CONTENT_TYPE
from relay.proxy import RelayContext

__all__ = ["UNKNOWN_ID_WAIT", "create_admin_app"]

UNKNOWN_ID_WAIT = 30.0  # seconds a subscriber to an id not seen yet waits for it to start
PING_SECONDS = 15


def _sse(event: Event) -> dict[str, str]:
    return {"event": event.name, "data": json.dumps(event.to_dict())}


def create_admin_app(ctx: RelayContext) -> FastAPI:
    app = FastAPI(title="upload relay admin", docs_url="/_relay/docs", openapi_url="/_relay/openapi.json",
                  redoc_url=None)

    @app.exception_handler(RelayError)
    async def relay_error(request: Request, exc: RelayError) -> JSONResponse:
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.status_code)

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
        # Subscribe and take the snapshot in one step (no await between): no event can fall in the gap.
        subscription = ctx.bus.subscribe(upload_id)
        return EventSourceResponse(_one_upload(ctx, upload_id, subscription), ping=PING_SECONDS)

    @app.get("/_relay/events", dependencies=admin)
    async def all_events() -> EventSourceResponse:
        subscription = ctx.bus.subscribe(None)
        return EventSourceResponse(_every_upload(ctx, subscription), ping=PING_SECONDS)

    @app.api_route("/_relay/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
    async def unknown(rest: str) -> None:
        raise NotFound(f"no admin endpoint /_relay/{rest}")

    return app


async def _one_upload(ctx: RelayContext, upload_id: str, subscription: Subscription) -> AsyncIterator[dict[str, str]]:
    """A late subscriber's catch-up (progress, parts so far, terminal), then live events to the end."""
    try:
        record = ctx.registry.get(upload_id)
        parts_sent = 0
        if record is not None:
            now = record.terminal.ts if record.terminal else time.time()
            yield _sse(Progress(upload_id, record.bytes, record.total, now))
            for part in record.parts:
                yield _sse(part)
            parts_sent = len(record.parts)
            if record.terminal is not None:
                yield _sse(record.terminal)
                return
        first = True
        while True:
            timeout = UNKNOWN_ID_WAIT if first and record is None else None
            event = await subscription.get(timeout)
            if event is None:
                return
            first = False
            if isinstance(event, Part) and event.index < parts_sent:
                continue
            yield _sse(event)
            if isinstance(event, TERMINAL):
                return
    finally:
        ctx.bus.unsubscribe(subscription)


async def _every_upload(ctx: RelayContext, subscription: Subscription) -> AsyncIterator[dict[str, str]]:
    try:
        async for event in subscription:
            yield _sse(event)
    finally:
        ctx.bus.unsubscribe(subscription)

