"""The relay as one ASGI app: routing first, then the relayed route or the admin endpoints.

The relayed route is plain ASGI (no Starlette request/response layers on the hot path, and no
BaseHTTPMiddleware, which would hide `http.disconnect`). `/_relay/` is a FastAPI app. The lifespan owns
the upstream connection pools.
"""

from __future__ import annotations

from relay.admin import create_admin_app
from relay.bus import EventBus
from relay.errors import NotFound
from relay.metrics import RelayMetrics
from relay.proxy import Upload
from relay.proxy_admission import error_response, may_have_body
from relay.proxy_context import RelayContext
from relay.resumable import ResumableEndpoints, open_resumable
from relay.settings import Route, Settings
from relay.state import open_state
from relay.types import Receive, Scope, Send
from relay.ui import create_ui_app
from relay.uploads import UploadRegistry
from relay.upstream import Upstream
from relay.webhooks import start_webhooks, stop_webhooks

__all__ = ["RelayApp", "create_app"]

_ADMIN_PREFIX = b"/_relay/"


class RelayApp:
    """ASGI entry point. `ctx.upstreams` is filled at lifespan start-up."""

    def __init__(
        self, settings: Settings, *, bus: EventBus | None = None, registry: UploadRegistry | None = None
    ) -> None:
        self.settings = settings
        metrics = RelayMetrics()
        # The one choice of where shared state lives: this process, or Redis with --redis (relay/state/).
        self.state = open_state(
            settings.redis,
            prefix=settings.redis_prefix,
            metrics=metrics.registry,
            max_concurrent=settings.max_concurrent_uploads,
            max_per_client=settings.max_uploads_per_client,
            registry_size=settings.registry_size,
            registry_ttl=settings.registry_ttl,
            bus=bus,
            registry=registry,
        )
        self.ctx = RelayContext(
            settings=settings,
            bus=self.state.bus,
            registry=self.state.registry,
            metrics=metrics,
            upstreams={},
            state=self.state,
        )
        self.admin = create_admin_app(self.ctx)
        self.ui = create_ui_app(settings)
        # Longest prefix first, so /upload/big/ wins over /upload/.
        self.routes = sorted(settings.routes, key=lambda route: len(route.prefix), reverse=True)
        self.resumable: ResumableEndpoints | None = None  # opened at start-up when a route takes resumable uploads
        self._resumable_prefix = settings.resumable_prefix.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if raw_path == b"/_relay/ui" or raw_path.startswith(b"/_relay/ui/"):
            await self.ui(scope, receive, send)
            return
        if raw_path.startswith(_ADMIN_PREFIX) or raw_path == _ADMIN_PREFIX.rstrip(b"/"):
            await self.admin(scope, receive, send)
            return
        if self.resumable is not None and raw_path.startswith(self._resumable_prefix):
            await self.resumable.prefixed(scope, receive, send)
            return
        route = self.match(raw_path)
        if route is not None and self.resumable is not None and self.resumable.takes(route, scope):
            await self.resumable.routed(route, scope, receive, send)
            return
        if route is None:
            unread = may_have_body(scope["headers"])
            await error_response(
                send,
                NotFound(f"no route for {scope['path']}"),
                upload_id=None,
                close=unread,
                linger=receive if unread else None,
            )
            return
        await Upload(self.ctx, route, scope, receive, send).run()

    def match(self, raw_path: bytes) -> Route | None:
        for route in self.routes:
            if raw_path.startswith(route.prefix.encode()):
                return route
        return None

    async def startup(self) -> None:
        settings = self.settings
        for route in settings.routes:
            key = route.upstream or ""
            if key not in self.ctx.upstreams:
                if not route.upstream:
                    raise RuntimeError("a route has no upstream: run through relay-server or set one")
                self.ctx.upstreams[key] = Upstream(
                    route.upstream,
                    timeout=settings.upstream_timeout,
                    connect_timeout=settings.upstream_connect_timeout,
                    ca_file=settings.upstream_ca,
                )
        if any(route.resumable for route in settings.routes):
            self.resumable = await open_resumable(self.ctx)
        await self.state.start()
        await start_webhooks(self.ctx)

    async def shutdown(self) -> None:
        await stop_webhooks(self.ctx)
        if self.resumable is not None:
            await self.resumable.stop()
        for upstream in self.ctx.upstreams.values():
            await upstream.aclose()
        self.ctx.upstreams.clear()
        await self.state.stop()  # last: what the others emitted is written

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings | None = None) -> RelayApp:
    """The relay ASGI app; serve it with uvicorn (lifespan on)."""
    return RelayApp(settings or Settings())
