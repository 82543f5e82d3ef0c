"""Serving: uvicorn configured for the relay (its protocol is relay/protocol.py's), the embedded sample upstream,
malloc tuning, the drain and the forced quit.

uvicorn runs with uvloop and httptools (about twice the body throughput of asyncio + h11 here), without
`proxy_headers` (it would trust X-Forwarded-For from 127.0.0.1 and let a local client spoof its address),
and without its own `server`/`date` headers so the upstream's pass through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any

import uvicorn
from prometheus_client import Counter

from relay.accesslog import quiet_lifecycle
from relay.protocol import ABORT, DEFAULT_HEADER_TIMEOUT, HeaderLimitProtocol, rejections_of
from relay.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "bind_socket",
    "loop_factory",
    "serve",
    "uvicorn_config",
]

log = logging.getLogger("relay.server")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed. uvicorn's `loop="uvloop"` only applies inside `Server.run`, which we don't use."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind before serving so `--port 0` works and the real port is known.

    `reuse_port` (SO_REUSEPORT): several listening sockets on one port, the kernel spreading connections
    across them (`--workers`, relay/workers.py).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    guarded: bool = True,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    drain_timeout: float = 10.0,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    rejections: Counter | None = None,
) -> uvicorn.Config:
    attributes = {"header_timeout": header_timeout, "rejections": rejections}
    protocol = type("RelayHttpProtocol", (HeaderLimitProtocol,), attributes)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=protocol if guarded else "httptools",
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        date_header=False,
        access_log=False,
        log_config=None,
        # On SIGTERM/SIGINT uvicorn stops accepting, lets requests in flight finish for this long, then
        # cancels them: a cancelled upload's upstream request dies mid-body, so it never looks complete.
        # Annotated int by uvicorn, used as an asyncio timeout: fractions work.
        timeout_graceful_shutdown=drain_timeout,  # type: ignore[arg-type]
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )


class _Follower(uvicorn.Server):
    """A second server in the same loop: the main server owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _EndQuietly:
    """The outermost ASGI layer: a request cancelled because the server is going away (the drain timeout ran
    out, or a second Ctrl-C) ends by closing its connection, not with uvicorn's "Exception in ASGI application"
    traceback. The app below has already recorded the upload as failed (`shutting_down`)."""

    def __init__(self, app: ASGIApp, server: uvicorn.Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not self.server.should_exit:
                raise
            log.warning(
                "%s %s cut short by the shutdown (shutting_down)",
                scope.get("method", "-"),
                scope.get("path", "-"),
            )
            abort = scope.get("extensions", {}).get(ABORT)
            if abort is not None:
                abort()


def _force_quit(server: uvicorn.Server) -> None:
    """What uvicorn's force_exit leaves undone: it stops waiting for requests but still waits for their
    connections to close (asyncio's Server.wait_closed) and leaves them running. Close them and cancel them."""
    server.should_exit = server.force_exit = True
    for connection in list(server.server_state.connections):
        cycle = getattr(connection, "cycle", None)
        if cycle is not None:
            cycle.disconnected = True  # no "returned without completing response" for what we cut short
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.abort()
    for task in list(server.server_state.tasks):
        task.cancel()


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


async def serve(
    main: tuple[ASGIApp, socket.socket],
    *,
    follower: tuple[ASGIApp, socket.socket] | None = None,
    on_ready: Callable[[], Any] | None = None,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    drain_timeout: float = 10.0,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
) -> bool:
    """Serve `main` (and `follower`, the embedded upstream) until a signal; call `on_ready` once listening.

    `background` jobs run while the relay serves and are cancelled after. Returns True when a second SIGINT
    forced the quit (uploads in flight were cut short).
    """
    main_app, main_sock = main
    host, port = main_sock.getsockname()[:2]
    config = uvicorn_config(
        main_app,
        host=host,
        port=port,
        header_timeout=header_timeout,
        drain_timeout=drain_timeout,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        rejections=rejections_of(main_app),
    )
    main_server = uvicorn.Server(config)
    config.app = _EndQuietly(main_app, main_server)
    servers: list[tuple[uvicorn.Server, socket.socket]] = []
    if follower is not None:
        f_app, f_sock = follower
        f_host, f_port = f_sock.getsockname()[:2]
        # The embedded upstream outlives the relay's drain: it is stopped only once the relay has finished.
        f_config = uvicorn_config(f_app, host=f_host, port=f_port, guarded=False, drain_timeout=drain_timeout)
        f_server = _Follower(f_config)
        f_config.app = _EndQuietly(f_app, f_server)
        servers.append((f_server, f_sock))
    servers.append((main_server, main_sock))

    async def announce() -> None:
        while not all(server.started for server, _ in servers):
            if any(server.should_exit for server, _ in servers):
                return
            await asyncio.sleep(0.01)
        if on_ready is not None:
            on_ready()

    async def run_main() -> None:
        try:
            await main_server.serve(sockets=[main_sock])
        finally:
            for server, _ in servers:
                server.should_exit = True

    async def watch_force_quit() -> None:
        while not main_server.force_exit:
            await asyncio.sleep(0.05)
        for server, _ in servers:
            _force_quit(server)

    loop = asyncio.get_running_loop()
    # The embedded upstream runs in a context whose uvicorn INFO lines are dropped: the relay's say it all.
    tasks = [loop.create_task(server.serve(sockets=[sock]), context=quiet_lifecycle()) for server, sock in servers[:-1]]
    tasks.append(asyncio.ensure_future(run_main()))
    tasks.append(asyncio.ensure_future(announce()))
    helpers = [asyncio.ensure_future(job()) for job in background]
    helpers.append(asyncio.ensure_future(watch_force_quit()))
    try:
        await asyncio.gather(*tasks)
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    return main_server.force_exit
