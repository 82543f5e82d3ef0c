"""relay-sink: the sample upstream. Stores each upload under a directory, all or nothing.

Theory of operation
-------------------
A pure ASGI app (`create_sink_app`). For every POST or PUT, on any path, it streams the body to temporary
files under `DIR/.tmp` and answers with what it received. Body chunks go to a worker thread in batches, one
hop per batch, where they are parsed (multipart via `relay.core.multipart`), hashed and written (relay/sink_files.py);
the event loop never touches a file, and it keeps receiving (up to `MAX_BATCH` bytes) while the worker writes.

Rules:

1. Nothing appears under DIR unless the whole body arrived and is valid. Files move from `DIR/.tmp` to
   `DIR/<request id>/<name>` (hard link then unlink, so an existing file is never overwritten; a clash gets a
   `-1`, `-2`... suffix) only after the last byte. A client that goes away (`http.disconnect`: a short
   Content-Length body, a chunked body without its last chunk), a malformed multipart body (400) or a field over
   `MAX_FIELD_SIZE` (413) leaves no file and no directory.
2. The request id is the `X-Upload-ID` header when it matches `[A-Za-z0-9_-]{1,64}`, else a random uuid4 hex.
3. Multipart parts with a filename are files; the others are text fields, answered in `fields` (at most
   `MAX_FIELD_SIZE` each, `MAX_FIELDS_SIZE` in all). Any other body is one file, named after the last path
   segment or `body.bin`. Filenames are reduced to a safe basename (`sanitize_filename`).
4. With `--discard` (directory None) nothing is written, but sizes and sha256 are still computed; so it is
   for a request that carries `X-Relay-Sink-Discard: 1` (what `relay-upload bench` sends).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import click

from relay.core.multipart import parse_boundary
from relay.errors import MalformedMultipart
from relay.sink_files import MAX_FIELD_SIZE, MAX_FIELDS_SIZE, FieldTooLarge, StoredUpload, add_value, sanitize_filename

if TYPE_CHECKING:
    pass

__all__ = ["MAX_FIELDS_SIZE", "MAX_FIELD_SIZE", "create_sink_app", "main", "sanitize_filename"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROG = "relay-sink"
DISCARD_HEADER = "x-relay-sink-discard"
MAX_BATCH = 1024 * 1024
"""Most body bytes waiting for the worker thread, per upload."""
MAX_DRAIN = 16 * 1024 * 1024
"""After an early error, read and drop at most this much more body so the client can see the answer."""

_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
log = logging.getLogger("relay.sink")


class _Disconnected(Exception):
    pass


def _query(raw: bytes) -> dict[str, str | list[str]]:
    query: dict[str, str | list[str]] = {}
    for key, value in parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True):
        add_value(query, key, value)
    return query


async def _respond(send: Send, status: int, body: dict[str, Any], *, close: bool = False) -> None:
    payload = json.dumps(body, ensure_ascii=False).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


async def _settle(job: asyncio.Future[None] | None) -> None:
    """Let a running worker job end before the upload is cleaned up (its own error is already handled)."""
    if job is not None:
        try:
            await job
        except Exception:
            pass


async def _drain(receive: Receive) -> None:
    """Read and drop what is left of the body (up to MAX_DRAIN), so the client gets to read our answer."""
    dropped = 0
    while dropped <= MAX_DRAIN:
        message = await receive()
        if message["type"] != "http.request":
            return
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def create_sink_app(directory: Path | str | None) -> ASGIApp:
    """The sample upstream as an ASGI app; `directory=None` discards bodies (still sizing and hashing them)."""
    store = Path(directory) if directory is not None else None
    if store is not None:
        (store / ".tmp").mkdir(parents=True, exist_ok=True)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        await _handle(store, scope, receive, send)

    return app


async def _handle(store: Path | None, scope: Scope, receive: Receive, send: Send) -> None:
    method = scope["method"]
    if method not in ("POST", "PUT"):
        await _respond(send, 405, _error("method_not_allowed", f"{method} is not allowed; use POST or PUT"), close=True)
        return
    headers = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in scope["headers"]]
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name, value)
    if "chunked" in first.get("transfer-encoding", "").lower():
        framing = "chunked"
    elif "content-length" in first:
        framing = "content-length"
    else:
        framing = "none"
    upload_id = first.get("x-upload-id", "")
    request_id = upload_id if _UPLOAD_ID.fullmatch(upload_id) else uuid.uuid4().hex
    content_type = first.get("content-type")
    path: str = scope["path"]
    try:
        boundary = parse_boundary(content_type)
    except MalformedMultipart as exc:
        await _respond(send, 400, _error(exc.code, exc.message), close=True)
        return

    loop = asyncio.get_running_loop()
    # Benchmark traffic (`relay-upload bench` sends this header) is counted and hashed, never stored: three
    # runs of 256 MiB would otherwise fill ./received with generated bytes.
    discard = first.get(DISCARD_HEADER, "").strip() == "1"
    upload = StoredUpload(None if discard else store, request_id, path.rsplit("/", 1)[-1], boundary, content_type)
    # At most one worker job per upload: while it runs, the next messages are received and batched (up to
    # MAX_BATCH bytes, then we wait for the job: backpressure), so socket reads and disk writes overlap.
    pending: asyncio.Future[None] | None = None
    batch: list[bytes] = []
    batched = 0
    body_done = False
    try:
        await loop.run_in_executor(None, upload.start)
        while not body_done:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            body_done = not message.get("more_body", False)
            chunk = message.get("body", b"")
            if chunk:
                batch.append(chunk)
                batched += len(chunk)
            if batch and (pending is None or pending.done() or batched >= MAX_BATCH or body_done):
                if pending is not None:
                    await pending  # raises the job's error, if any
                pending = loop.run_in_executor(None, upload.feed_many, batch)
                batch, batched = [], 0
        if pending is not None:
            await pending
        await loop.run_in_executor(None, upload.finish)
    except _Disconnected:
        await _settle(pending)
        await loop.run_in_executor(None, upload.abort)
        return
    except MalformedMultipart as exc:
        await _settle(pending)
        await loop.run_in_executor(None, upload.abort)
        if not body_done:
            await _drain(receive)
        await _respond(send, 400, _error(exc.code, exc.message), close=True)
        return
    except FieldTooLarge as exc:
        await _settle(pending)
        await loop.run_in_executor(None, upload.abort)
        if not body_done:
            await _drain(receive)
        await _respond(send, 413, _error("field_too_large", str(exc)), close=True)
        return
    except asyncio.CancelledError:
        upload.abort()  # shutting down: no await possible any more
        raise
    except Exception:
        log.exception("upload %s failed", request_id)
        await _settle(pending)
        await loop.run_in_executor(None, upload.abort)
        await _respond(send, 500, _error("internal_error", "the sink could not store the upload"), close=True)
        return
    await _respond(
        send,
        200,
        {
            "path": path,
            "query": _query(scope.get("query_string", b"")),
            "bytes": upload.bytes,
            "files": [file.describe() for file in upload.files],
            "fields": upload.fields,
            "framing": framing,
            "headers": [[name, value] for name, value in headers],
        },
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections made before uvicorn is up wait in the backlog
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _serve(store: Path | None, host: str, port: int) -> None:
    import uvicorn

    try:
        app = create_sink_app(store)
    except OSError as exc:
        raise click.UsageError(f"cannot use --dir {store}: {exc.strerror or exc}") from exc
    try:
        sock = _bind(host, port)
    except (OSError, OverflowError) as exc:
        raise click.UsageError(f"cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from exc
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        proxy_headers=False,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    bound_host, bound_port = sock.getsockname()[:2]
    where = "discarding bodies" if store is None else f"storing in {store}"
    print(f"{PROG} listening on http://{bound_host}:{bound_port} ({where})", flush=True)
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; with these no-op handlers underneath, a
    # signalled sink exits 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    from relay.tuning import install_nocopy_body, tune_malloc

    tune_malloc()  # as in the relay: without it glibc trims and re-faults the chunk buffers (293k faults/GiB)
    install_nocopy_body()
    uvicorn.Server(config).run(sockets=[sock])


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from relay.settings import relay_version

        click.echo(f"{PROG} {relay_version()}")
        ctx.exit(0)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="0 picks a free port.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where uploads are stored (default ./received).",
)
@click.option("--discard", is_flag=True, help="Store nothing; still count and hash.")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the version and exit.",
)
def command(host: str, port: int, directory: Path | None, discard: bool) -> None:
    """The sample upstream: stores each upload under DIR/<request id>/, all or nothing."""
    if discard and directory is not None:
        raise click.UsageError("--dir and --discard cannot be used together")
    _serve(None if discard else (directory or Path("received")), host, port)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `relay-sink`: a usage error is one line on stderr and exit code 2."""
    from relay.clitools import run_click

    run_click(command, PROG, argv)


if __name__ == "__main__":
    main()
