"""/_relay/: health, metrics, the uploads registry and the Server-Sent Events streams.

Health for load balancers: `UpstreamProbe` connects (TCP, plus the TLS handshake for https://) to each upstream
every PROBE_INTERVAL seconds in a background job that relay-server runs beside the servers; `/_relay/health`
only reads its last results, so a health check never waits on an upstream and never touches an upload's path.
The job starts probing at start-up with --health-checks-upstream, otherwise at the first health request: a relay
nobody asks about opens no connections of its own to its upstreams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from relay.adminauth import admin_refusal
from relay.bus import Subscription
from relay.core.events import TERMINAL, Event, Part, Progress
from relay.core.state import COMPLETED, FAILED, RECEIVING, REJECTED
from relay.errors import BadRequest, MethodNotAllowed, NotFound, RelayError, Unauthorized
from relay.metrics import CONTENT_TYPE
from relay.proxy_context import RelayContext
from relay.state import FeedEntry
from relay.types import Message, Receive, Scope, Send
from relay.webhooks import webhook_deliveries

__all__ = ["PROBE_INTERVAL", "UNKNOWN_ID_WAIT", "UpstreamProbe", "create_admin_app", "upstream_probe"]

UNKNOWN_ID_WAIT = 30.0  # seconds a subscriber to an id not seen yet waits for it to start
PING_SECONDS = 15
_HTTP_ERRORS: dict[int, type[RelayError]] = {404: NotFound, 405: MethodNotAllowed, 401: Unauthorized}
PROBE_INTERVAL = 5.0
MAX_LIST_LIMIT = 10_000
_STATES = (RECEIVING, "forwarding", COMPLETED, FAILED, REJECTED)  # forwarding: resumable uploads
_EVENT_IDS = itertools.count(1)


@dataclass
class _Reach:
    reachable: bool = False
    checked_at: float | None = None
    error: str | None = "not checked yet"


class UpstreamProbe:
    """The last connect attempt to each upstream (see the module docstring)."""

    def __init__(self, urls: list[str], *, connect_timeout: float, ca_file: str | None = None) -> None:
        self.results = {url: _Reach() for url in dict.fromkeys(urls)}
        self.connect_timeout = connect_timeout
        self.ca_file = ca_file
        self.wanted = asyncio.Event()  # set by the first health request

    def report(self) -> dict[str, dict[str, Any]]:
        return {url: dataclasses.asdict(reach) for url, reach in self.results.items()}

    def any_reachable(self) -> bool:
        return any(reach.reachable for reach in self.results.values())

    async def run(self, *, eager: bool = True, interval: float = PROBE_INTERVAL) -> None:
        """Check every upstream now (or, not `eager`, once health is first asked), then every `interval` seconds,
        until cancelled."""
        if not eager:
            await self.wanted.wait()
        while True:
            await asyncio.gather(*(self.check(url) for url in self.results))
            await asyncio.sleep(interval)

    async def check(self, url: str) -> None:
        parsed = urlsplit(url)
        secure = parsed.scheme == "https"
        tls = ssl.create_default_context(cafile=self.ca_file) if secure else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, writer = await asyncio.open_connection(
                    parsed.hostname, parsed.port or (443 if secure else 80), ssl=tls
                )
            writer.close()
            self.results[url] = _Reach(True, time.time(), None)
        except TimeoutError:
            self.results[url] = _Reach(False, time.time(), f"no connection within {self.connect_timeout:g} s")
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.results[url] = _Reach(False, time.time(), str(exc) or type(exc).__name__)


def upstream_probe(app: FastAPI) -> UpstreamProbe:
    """The probe of an admin app from `create_admin_app`: relay-server runs its `run()` in the background."""
    probe: UpstreamProbe = app.state.upstream_probe
    return probe


def _sse(event: Event, event_id: str | None = None) -> dict[str, str]:
    """One SSE message; `id:` is the Redis stream entry id, or a counter of this process without --redis."""
    return {"id": event_id or str(next(_EVENT_IDS)), "event": event.name, "data": json.dumps(event.to_dict())}


async def _entries(feed: AsyncIterator[FeedEntry]) -> AsyncIterator[dict[str, str]]:
    async for event_id, event in feed:
        yield _sse(event, event_id)


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
        refusal = admin_refusal(ctx.settings.admin_token, request.headers.get("authorization"), request.cookies)
        if refusal is not None:
            raise Unauthorized(refusal)

    admin = [Depends(require_admin)]
    probe = UpstreamProbe(
        [route.upstream for route in ctx.settings.routes if route.upstream],
        connect_timeout=ctx.settings.upstream_connect_timeout,
        ca_file=ctx.settings.upstream_ca,
    )
    app.state.upstream_probe = probe

    @app.api_route("/_relay/health", methods=["GET", "HEAD"])
    async def health() -> JSONResponse:
        # HEAD gets the same status and headers with no body (uvicorn drops a HEAD response's body).
        probe.wanted.set()
        routes = [{"prefix": route.prefix, "upstream": route.upstream} for route in ctx.settings.routes]
        unavailable = ctx.settings.health_checks_upstream and not probe.any_reachable()
        problem = ctx.shared.problem()  # with --redis: None, or why Redis is not answering
        body = {
            "status": "degraded" if problem else "unavailable" if unavailable else "ok",
            "uploads_in_flight": ctx.in_flight,
            "routes": routes,
            "upstreams": probe.report(),
            **({"shared_state": problem} if problem else {}),
        }
        return JSONResponse(body, status_code=503 if unavailable or problem else 200)

    @app.get("/_relay/metrics", dependencies=admin)
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/_relay/uploads", dependencies=admin)
    async def uploads(request: Request) -> dict[str, Any]:
        state, limit = _list_query(request)
        # The registry keeps a bounded number of records: filtering all of them is cheap.
        records = await ctx.shared.listing(MAX_LIST_LIMIT if state else limit)
        return {"uploads": [record.to_dict() for record in records if state in (None, record.state)][:limit]}

    @app.get("/_relay/uploads/{upload_id}", dependencies=admin)
    async def upload(upload_id: str) -> dict[str, Any]:
        record = await ctx.shared.lookup(upload_id)
        if record is None:
            raise NotFound(f"no upload {upload_id}")
        return record.to_dict()

    @app.get("/_relay/uploads/{upload_id}/events", dependencies=admin)
    async def upload_events(upload_id: str, request: Request) -> EventSourceResponse:
        # With --redis: any relay's events from Redis Streams, `Last-Event-ID` replayed (relay/state/feed.py).
        feed = ctx.shared.follow(upload_id, request.headers.get("last-event-id"), unknown_wait=UNKNOWN_ID_WAIT)
        if feed is not None:
            return _EventStream(ctx, None, _entries(feed))
        # Subscribe and take the snapshot in one step (no await between): an event is either in the snapshot
        # or in the queue, never in both and never in neither.
        subscription = ctx.bus.subscribe(upload_id)
        catch_up = _catch_up(ctx, upload_id)
        return _EventStream(ctx, subscription, _one_upload(ctx, subscription, catch_up))

    @app.get("/_relay/events", dependencies=admin)
    async def all_events(request: Request) -> EventSourceResponse:
        feed = ctx.shared.follow(None, request.headers.get("last-event-id"), unknown_wait=UNKNOWN_ID_WAIT)
        if feed is not None:
            return _EventStream(ctx, None, _entries(feed))
        subscription = ctx.bus.subscribe(None)
        return _EventStream(ctx, subscription, _every_upload(ctx, subscription))

    @app.get("/_relay/webhooks", dependencies=admin)
    async def webhooks() -> dict[str, Any]:
        return webhook_deliveries(ctx)

    @app.api_route("/_relay/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
    async def unknown(rest: str) -> None:
        raise NotFound(f"no admin endpoint /_relay/{rest}")

    return app


def _list_query(request: Request) -> tuple[str | None, int]:
    """`?state=` (one of the record states) and `?limit=` (1..10000, default 100); anything else is 400."""
    state = request.query_params.get("state")
    if state is not None and state not in _STATES:
        raise BadRequest(f"state must be one of {', '.join(_STATES)}")
    text = request.query_params.get("limit", "100")
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIST_LIMIT:
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}")
    return state, int(text)


class _EventStream(EventSourceResponse):
    """An SSE response that always releases its subscription, even when its generator never started
    (the client left before the response headers went out)."""

    def __init__(
        self, ctx: RelayContext, subscription: Subscription | None, events: AsyncIterator[dict[str, str]]
    ) -> None:
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
            if self._subscription is not None:  # a Redis feed (None) cleans up after itself
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
