"""relay-server: flags <-> Settings, then serve.

Every flag also reads RELAY_<FLAG> from the environment, and `--config FILE` (TOML) supplies defaults:
precedence is flags > environment > config file > built-in defaults (click's own order for a default_map).
A bad value is one line on stderr and exit code 2.
"""

from __future__ import annotations

import asyncio
import importlib
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import click

from relay.clitools import run_click
from relay.config import (
    SourcedOption,
    check_ca,
    check_store,
    check_tls,
    load_config,
    read_tokens,
    routes_from_tables,
)
from relay.core.limits import Limits
from relay.settings import (
    DEFAULT_PREFIX,
    DEFAULT_REDIS_PREFIX,
    DEFAULT_RESUMABLE_EXPIRY,
    DEFAULT_RESUMABLE_MAX_INCOMPLETE,
    DEFAULT_RESUMABLE_PREFIX,
    DEFAULT_SPOOL,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_WORKERS,
    Route,
    Settings,
    parse_size,
    relay_version,
)
from relay.state import check_redis
from relay.types import ASGIApp
from relay.webhooks import check_webhooks, webhook_endpoints

__all__ = ["main", "settings_from_options"]

PROG = "relay-server"
FORCED_EXIT = 130  # a second Ctrl-C cut uploads short: the shell's "interrupted"
# show_envvar: --help lists each flag's RELAY_* variable.
option = partial(click.option, cls=SourcedOption, show_envvar=True)


class Size(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise click.BadParameter("must be positive", ctx, param)
    return value


def settings_from_options(ctx: click.Context, options: dict[str, Any]) -> Settings:
    """Build the frozen Settings from resolved option values; raises ValueError on a bad combination or a
    file (token file, CA, TLS certificate and key, store) that cannot be used."""
    check_tls(options["ssl_certfile"], options["ssl_keyfile"])
    limits = Limits(
        max_body_size=options["max_body_size"] or None,
        max_file_size=options["max_file_size"] or None,
        max_files=options["max_files"] or None,
    )
    routes = routes_from_tables(ctx, limits)
    if routes:
        if options["upstream"]:
            routes = tuple(
                route if route.upstream else replace(route, upstream=options["upstream"]) for route in routes
            )
    else:
        routes = (Route(prefix=options["route"], upstream=options["upstream"] or None, limits=limits),)
    return Settings(
        routes=routes,
        upstream_timeout=options["upstream_timeout"],
        upstream_connect_timeout=options["upstream_connect_timeout"],
        digest=options["digest"] == "sha256",
        token=options["token"] or None,
        admin_token=options["admin_token"] or None,
        forward_authorization=options["forward_authorization"],
        trust_forwarded=options["trust_forwarded"],
        max_concurrent_uploads=options["max_concurrent_uploads"] or None,
        tokens=read_tokens(options["token_file"]),
        max_uploads_per_client=options["max_uploads_per_client"] or None,
        client_idle_timeout=options["client_idle_timeout"] or None,
        client_min_rate=options["client_min_rate"] or None,
        client_min_rate_grace=options["client_min_rate_grace"],
        header_timeout=options["header_timeout"],
        cors_origins=tuple(options["cors_origin"]),
        drain_timeout=options["drain_timeout"],
        store=Path(options["store"]),
        upstream_ca=check_ca(options["upstream_ca"]),
        resumable_prefix=options["resumable_prefix"],
        spool=options["spool"],
        s3_endpoint=options["s3_endpoint"] or None,
        resumable_expiry=options["resumable_expiry"],
        resumable_max_incomplete=options["resumable_max_incomplete"],
        ssl_certfile=options["ssl_certfile"] or None,
        ssl_keyfile=options["ssl_keyfile"] or None,
        log_level=options["log_level"],
        log_format=options["log_format"],
        health_checks_upstream=options["health_checks_upstream"],
        redis=options["redis"] or None,
        redis_prefix=options["redis_prefix"],
        webhooks=webhook_endpoints(options["webhook"], options["webhook_secret"], ctx.params.get("config")),
        workers=options["workers"],
    )


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"{PROG} {relay_version()}")
        ctx.exit(0)


@click.command(
    context_settings={
        "auto_envvar_prefix": "RELAY",
        "help_option_names": ["-h", "--help"],
        "show_default": True,
        "max_content_width": shutil.get_terminal_size().columns,  # --help uses the terminal's width
    }
)
@option(
    "--config",
    type=click.Path(dir_okay=False),
    is_eager=True,
    callback=load_config,
    help="TOML file with [server] settings and [[routes]].",
)
@option("--host", default="127.0.0.1", help="Address to listen on.")
@option("--port", type=click.IntRange(0, 65535), default=8000, help="Port to listen on (0: any free port).")
@option("--upstream", default=None, help="Upstream base URL. Without it the sample upstream runs in-process.")
@option("--store", default="received", help="Where the embedded sample upstream stores uploads.")
@option("--route", default=DEFAULT_PREFIX, help="Path prefix that is relayed (case-sensitive).")
@option("--max-body-size", type=Size(), default="10GiB", help="Largest request body; 0 = no limit.")
@option("--max-file-size", type=Size(), default="0", help="Largest file part; 0 = no limit.")
@option("--max-files", type=click.IntRange(0), default=100, help="Most file parts per request; 0 = no limit.")
@option(
    "--upstream-timeout",
    type=float,
    default=60.0,
    callback=_positive,
    help="Seconds the upstream may make no progress.",
)
@option(
    "--upstream-connect-timeout",
    type=float,
    default=5.0,
    callback=_positive,
    help="Seconds to connect to the upstream.",
)
@option("--digest", type=click.Choice(["sha256", "none"]), default="sha256", help="Hash each part.")
@option("--admin-token", default=None, help="Bearer token for /_relay/ (all but health).")
@option("--token", default=None, help="Bearer token required on relayed routes.")
@option(
    "--forward-authorization", is_flag=True, default=False, help="Forward the client's Authorization header upstream."
)
@option("--trust-forwarded", is_flag=True, default=False, help="Keep the client's X-Forwarded-For and append the peer.")
@option("--max-concurrent-uploads", type=click.IntRange(0), default=0, help="Uploads in progress at once; 0 = no cap.")
@option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File of accepted relay tokens, one per line (with or instead of --token).",
)
@option(
    "--max-uploads-per-client",
    type=click.IntRange(0),
    default=0,
    help="Uploads in progress per client address; 0 = no cap.",
)
@option(
    "--client-idle-timeout",
    type=click.FloatRange(0),
    default=60.0,
    help="Seconds without a body byte before the upload is dropped (408); 0 = none.",
)
@option(
    "--client-min-rate",
    type=Size(),
    default="0",
    help="Minimum average body rate in bytes/s after the grace period (408); 0 = none.",
)
@option(
    "--client-min-rate-grace", type=click.FloatRange(0), default=10.0, help="Seconds before --client-min-rate applies."
)
@option(
    "--header-timeout",
    type=float,
    default=30.0,
    callback=_positive,
    help="Seconds a client may take to send its request headers (408 after).",
)
@option("--cors-origin", multiple=True, help="Allowed browser origin (exact, repeatable).")
@option(
    "--drain-timeout",
    type=float,
    default=30.0,
    callback=_positive,
    help="On SIGTERM/SIGINT, seconds to let uploads in flight finish.",
)
@option(
    "--upstream-ca",
    default=None,
    help="PEM file of CA certificates to verify HTTPS upstreams with (instead of the system CAs).",
)
@option(
    "--resumable-prefix",
    default=DEFAULT_RESUMABLE_PREFIX,
    help="Path prefix of resumable uploads' URLs (tus); must not overlap a route or /_relay/.",
)
@option("--spool", default=DEFAULT_SPOOL, help="Where resumable uploads' bytes live: DIR or s3://BUCKET/PREFIX.")
@option(
    "--s3-endpoint",
    default=None,
    metavar="URL",
    help="The S3-compatible server of an s3:// spool (default: AWS); credentials and region from AWS_* variables.",
)
@option(
    "--resumable-expiry",
    type=float,
    default=DEFAULT_RESUMABLE_EXPIRY,
    callback=_positive,
    help="Seconds an incomplete resumable upload is kept without an append.",
)
@option(
    "--resumable-max-incomplete",
    type=click.IntRange(1),
    default=DEFAULT_RESUMABLE_MAX_INCOMPLETE,
    help="Incomplete resumable uploads at once (429 at creation over it).",
)
@option(
    "--ssl-certfile",
    type=click.Path(dir_okay=False),
    default=None,
    help="PEM certificate (chain) to serve HTTPS with; needs --ssl-keyfile.",
)
@option("--ssl-keyfile", type=click.Path(dir_okay=False), default=None, help="PEM private key of --ssl-certfile.")
@option("--log-level", type=click.Choice(LOG_LEVELS), default="info", help="Least severe log records shown.")
@option(
    "--log-format", type=click.Choice(LOG_FORMATS), default="text", help="Log records as text or one JSON per line."
)
@option(
    "--health-checks-upstream",
    is_flag=True,
    default=False,
    help="/_relay/health answers 503 while no upstream is reachable.",
)
@option(
    "--redis",
    default=None,
    help="Redis URL (redis://, rediss://, unix://): share uploads, events and caps with every relay on it.",
)
@option("--redis-prefix", default=DEFAULT_REDIS_PREFIX, help="Prefix of the relay's Redis keys.")
@option("--webhook", multiple=True, help="URL to POST signed upload.completed / upload.failed events to (repeatable).")
@option("--webhook-secret", default=None, help="Webhook signing secret: whsec_<base64>, or any string (its bytes).")
@option(
    "--workers",
    type=click.IntRange(1, MAX_WORKERS),
    default=1,
    help="Relay processes serving the port under one supervisor; above 1 needs --redis.",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    allow_from_autoenv=False,
    callback=_print_version,
    help="Print the version and exit.",
)
@click.pass_context
def command(ctx: click.Context, /, config: str | None, host: str, port: int, **options: Any) -> None:
    """Relay uploads to an upstream, chunk by chunk, inspecting them on the way.

    \b
    Examples:
      relay-server                                   # embedded sample upstream, stores in ./received
      relay-server --upstream http://127.0.0.1:8001 --max-body-size 1GiB
      RELAY_MAX_FILE_SIZE=100MiB relay-server --config relay.toml
    """
    try:
        settings = settings_from_options(ctx, options)
        check_webhooks(settings)  # a bad RELAY_WEBHOOK_BACKOFF or an outbox in S3: exit 2, not a failed start-up
        if any(route.upstream is None for route in settings.routes):
            check_store(settings.store)
        if settings.redis is not None:
            check_redis(settings.redis)  # unreachable at start-up: one line, exit 2
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from exc
    if settings.workers > 1:
        sys.exit(run_workers(settings, host, port))
    if run(settings, host, port):
        sys.exit(FORCED_EXIT)


def run(settings: Settings, host: str, port: int) -> bool:
    """Serve until a signal; True when a second Ctrl-C forced the quit."""
    from relay.server import bind_socket

    _prepare(settings)
    try:
        main_sock = bind_socket(host, port)
        sink_sock = bind_socket("127.0.0.1", 0) if _embedded(settings) else None
    except OSError as exc:
        raise click.UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    follower = None
    embedded = _embedded(settings)
    if sink_sock is not None:
        from relay.sink import create_sink_app

        settings = _with_upstream(settings, _sink_url(sink_sock))
        follower = (create_sink_app(settings.store), sink_sock)
    lines = _startup_lines(settings, _url(settings, main_sock), embedded)
    return _serve_relay(settings, main_sock, follower=follower, on_ready=lambda: print(lines, flush=True))


def run_workers(settings: Settings, host: str, port: int) -> int:
    """`--workers N`: a supervisor (relay/workers.py) and N relays on one port; the exit code."""
    from relay.server import bind_socket
    from relay.workers import Pool, bind_shared, supervise

    # Imported once here, before the fork, like `gunicorn --preload`: a restarted worker serves in a fraction of
    # the second the imports take on a busy machine.
    for module in ("relay.app", "relay.admin", "relay.accesslog", "relay.sink"):
        importlib.import_module(module)
    _prepare(settings)
    embedded = _embedded(settings)
    try:
        sockets = bind_shared(host, port, settings.workers)
        sink_sock = bind_socket("127.0.0.1", 0) if embedded else None
    except OSError as exc:
        raise click.UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sink = None
    if sink_sock is not None:
        settings = _with_upstream(settings, _sink_url(sink_sock))
        sink = partial(_serve_sink, settings, sink_sock)
    lines = _startup_lines(settings, _url(settings, sockets[0]), embedded)
    pool = Pool(
        sockets=sockets,
        serve=lambda sock, on_ready: _serve_relay(settings, sock, on_ready=on_ready),
        announce=lambda: print(lines, flush=True),
        sink=sink,
        drain_timeout=settings.drain_timeout,
        prog=PROG,
    )
    return supervise(pool)


def _prepare(settings: Settings) -> None:
    """What every relay process needs before it listens (inherited by forked workers)."""
    from relay.accesslog import configure_logging
    from relay.resumable import check_spool
    from relay.tuning import install_nocopy_body, tune_malloc

    tune_malloc()
    install_nocopy_body()
    configure_logging(settings.log_level, settings.log_format)
    try:  # an unreachable S3 server or a missing bucket is one line and exit 2, before anything listens
        check_spool(settings)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


def _serve_relay(
    settings: Settings,
    sock: socket.socket,
    *,
    follower: tuple[ASGIApp, socket.socket] | None = None,
    on_ready: Callable[[], None],
) -> bool:
    """One relay on a bound socket until a signal; True when a second Ctrl-C forced the quit."""
    from relay.accesslog import AccessLog
    from relay.admin import upstream_probe
    from relay.app import RelayApp
    from relay.server import loop_factory, serve
    from relay.tuning import release_when_idle

    relay = RelayApp(settings)
    _ignore_stop_signals()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(
            serve(
                (AccessLog(relay), sock),
                follower=follower,
                on_ready=on_ready,
                header_timeout=settings.header_timeout,
                drain_timeout=settings.drain_timeout,
                ssl_certfile=settings.ssl_certfile,
                ssl_keyfile=settings.ssl_keyfile,
                background=[
                    partial(upstream_probe(relay.admin).run, eager=settings.health_checks_upstream),
                    # What a burst left in the heap goes back to the kernel once no upload is in flight.
                    partial(release_when_idle, lambda: relay.ctx.in_flight > 0),
                ],
            )
        )


def _serve_sink(settings: Settings, sock: socket.socket, on_ready: Callable[[], None]) -> bool:
    """The embedded sample upstream as a process of its own (with --workers), its INFO lines dropped."""
    from relay.accesslog import quiet_lifecycle
    from relay.server import loop_factory, serve
    from relay.sink import create_sink_app

    _ignore_stop_signals()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        job = serve((create_sink_app(settings.store), sock), on_ready=on_ready, drain_timeout=settings.drain_timeout)
        return runner.run(job, context=quiet_lifecycle())


def _ignore_stop_signals() -> None:
    # uvicorn re-raises a caught SIGTERM/SIGINT after shutting down; with these handlers in place that
    # re-raise is harmless and a signalled relay exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)


def _embedded(settings: Settings) -> set[str]:
    """The prefixes of the routes served by the embedded sample upstream."""
    return {route.prefix for route in settings.routes if route.upstream is None}


def _sink_url(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _url(settings: Settings, sock: socket.socket) -> str:
    scheme = "https" if settings.ssl_certfile else "http"
    bound = sock.getsockname()
    return f"{scheme}://[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{scheme}://{bound[0]}:{bound[1]}"


def _startup_lines(settings: Settings, url: str, embedded: set[str]) -> str:
    workers = f" ({settings.workers} workers)" if settings.workers > 1 else ""
    lines = [f"{PROG} {relay_version()} listening on {url}{workers}"]
    for route in settings.routes:
        note = f" (embedded sample upstream, storing in {settings.store})" if route.prefix in embedded else ""
        lines.append(f"{PROG}: relaying {route.prefix} to {route.upstream}{note}")
    return "\n".join(lines)


def _with_upstream(settings: Settings, url: str) -> Settings:
    routes = tuple(route if route.upstream else replace(route, upstream=url) for route in settings.routes)
    return replace(settings, routes=routes)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `relay-server`."""
    run_click(command, PROG, argv)
