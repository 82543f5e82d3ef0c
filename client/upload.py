"""Send files to the relay, one streamed request at a time: raw or multipart, retried when that is safe.

Theory of operation:

* The body is built from sources (client/sources.py): files with a Content-Length known up front, or standard
  input, sent chunked. Progress is counted in the body iterator (httpx has no sent-bytes callback) and reported
  to an observer.
* With `events=True` the client picks the upload id itself, subscribes to the relay's SSE stream for it before
  sending (so no event is missed), and compares each part's sha256 as seen by the relay with its own
  (client/events.py).
* A streamed body is sent again only when that cannot duplicate an upload (client/retry.py): after a 429, or
  after a connection failure before the first body byte.
* Every request ends in an UploadResult, failed ones too: an error raised to the caller carries the result
  of the request that failed (`exc.result`), so `--json` can print what was sent before it broke.
* Cancelled (Ctrl-C), a request tells `interrupted` how far it got: the attempt in flight, or, in the wait
  before a retry, the last attempt made (status None, error "interrupted", `attempts` the attempts made).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from client.errors import ArgumentError, FileError, HttpError, NetworkError, UploadError
from client.events import (
    EventWatcher,
    ask_why_cut,
    compare_parts,
    describe_http_error,
    parse_response,
    read_capped,
)
from client.results import FileResult, UploadObserver, UploadResult, _NoObserver, error_summary
from client.retry import RetryDecision, after_answer, after_failure
from client.sources import (
    CHUNK_SIZE,
    Body,
    FileSource,
    LocalFile,
    Source,
    StdinSource,
    check_files,
    multipart_segments,
    new_boundary,
)
from client.target import DEFAULT_RELAY, build_url, connect_failure, resolve_target, route_hint

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_FIELD",
    "DEFAULT_RELAY",
    "ArgumentError",
    "Body",
    "FileError",
    "FileResult",
    "FileSource",
    "HttpError",
    "LocalFile",
    "NetworkError",
    "UploadError",
    "UploadObserver",
    "UploadResult",
    "build_url",
    "check_files",
    "describe_http_error",
    "error_summary",
    "multipart_segments",
    "new_boundary",
    "send_body",
    "upload",
    "upload_async",
]

DEFAULT_FIELD = "file"
# After the upload's response, how long to wait for the relay's terminal SSE event.
EVENTS_GRACE_SECONDS = 10.0
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=300.0, pool=None)


# --- one request -----------------------------------------------------------------------------------------------


def new_upload_id() -> str:
    # The contract accepts [A-Za-z0-9_-]{1,64}; 128 random bits like the relay's own.
    return secrets.token_hex(16)


@dataclass
class _Sent:
    status: int
    upload_id: str | None
    response: Any
    seconds: float
    retry_after: str | None = None


def _request_headers(headers: httpx.Headers | Mapping[str, str], body: Body) -> httpx.Headers:
    # httpx.Headers is case-insensitive: a user's "content-length" cannot end up sent next to ours.
    request_headers = httpx.Headers(headers)
    for name in ("Content-Length", "Transfer-Encoding"):
        request_headers.pop(name, None)
    if "Content-Type" not in request_headers or body.content_type.startswith("multipart/"):
        request_headers["Content-Type"] = body.content_type  # a raw body may keep the user's own type
    if body.length is not None:
        request_headers["Content-Length"] = str(body.length)  # else httpx sends it chunked
    return request_headers


def _network_error(exc: httpx.TransportError, url: str, relay: str | None, body: Body) -> NetworkError:
    """The one-line NetworkError for a transport failure; `before_body` says whether a retry is safe."""
    before = not body.started
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        reason = str(exc) or type(exc).__name__
        message = connect_failure(relay, exc) if relay else f"cannot connect to {url} ({reason})"
        return NetworkError(message, before_body=True)
    if isinstance(exc, httpx.TimeoutException):
        return NetworkError(f"timed out talking to {url}: {type(exc).__name__}", before_body=before)
    if body.started and isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
        # Typically an early refusal whose answer was lost with the reset (see events.ask_why_cut).
        reason = f"the connection was closed while sending ({str(exc) or type(exc).__name__})"
        return NetworkError(f"{url}: {reason}; the server may have refused the upload early")
    return NetworkError(f"connection to {url} failed: {str(exc) or type(exc).__name__}", before_body=before)


async def send_body(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    body: Body,
    headers: httpx.Headers | Mapping[str, str],
    *,
    relay: str | None = None,
) -> _Sent:
    """Send one streamed body and read the (small) answer; network failures become NetworkError."""
    started = time.perf_counter()
    try:
        request = client.build_request(method, url, content=body, headers=_request_headers(headers, body))
        response = await client.send(request, stream=True)
        try:
            content = await read_capped(response)
        finally:
            await response.aclose()
    except httpx.TransportError as exc:
        raise _network_error(exc, url, relay, body) from exc
    seconds = time.perf_counter() - (body.first_byte_at or started)
    upload_id = response.headers.get("x-upload-id")
    return _Sent(response.status_code, upload_id, parse_response(content), seconds, response.headers.get("retry-after"))


@dataclass
class _Request:
    """Everything one request needs, the same for every attempt."""

    files: list[LocalFile]
    relay: str
    to: str
    url: str
    field_name: str
    form: list[tuple[str, str]]
    headers: list[tuple[str, str]]
    raw: bool
    method: str
    upload_id: str
    events: bool
    admin_token: str | None
    observer: UploadObserver
    # Standard input can be read once: the same source for every attempt, so a second read is refused.
    stdin: StdinSource | None = None
    boundary: str | None = None  # a multipart boundary chosen beforehand (--digest hashes the framed body first)
    # Hears how far the request got when it is cancelled (Ctrl-C), so --json can still print its object.
    interrupted: Callable[[UploadResult], None] | None = None

    @property
    def replayable(self) -> bool:
        return self.stdin is None or not self.stdin.used


def _build_body(request: _Request) -> tuple[Body, list[FileSource | StdinSource]]:
    sources: list[FileSource | StdinSource] = [
        request.stdin if f.is_stdin and request.stdin is not None else FileSource(f) for f in request.files
    ]
    if request.raw:
        return Body([sources[0]], request.files[0].content_type, request.observer), sources
    boundary = request.boundary or new_boundary()
    parts: list[tuple[str, LocalFile | str, Source]] = [(request.field_name, s.file, s) for s in sources]
    segments = multipart_segments(parts, request.form, boundary)
    return Body(segments, f"multipart/form-data; boundary={boundary}", request.observer), sources


def _file_results(body: Body, sources: Sequence[FileSource | StdinSource]) -> list[FileResult]:
    results = []
    for source, stats in zip(sources, body.stats, strict=True):
        size = source.size if source.size is not None else (source.read if source.eof else None)
        results.append(FileResult(source.file.path, size, source.digest, stats.sent, stats.seconds))
    return results


async def _send(client: httpx.AsyncClient, request: _Request, body: Body) -> _Sent:
    """Send, and recover an early refusal whose answer was lost with a reset from the relay's registry."""
    headers = httpx.Headers(request.headers)
    headers["X-Upload-ID"] = request.upload_id
    try:
        return await send_body(client, request.method, request.url, body, headers, relay=request.relay)
    except NetworkError:
        if not body.started:
            raise
        refusal = await ask_why_cut(client, request.relay, request.upload_id, request.admin_token)
        if refusal is None:
            raise
        status, answer = refusal
        return _Sent(status, request.upload_id, answer, time.perf_counter() - (body.first_byte_at or 0.0))


async def _attempt(client: httpx.AsyncClient, request: _Request, number: int) -> UploadResult:
    body, sources = _build_body(request)
    watcher = None
    if request.events:
        watcher = EventWatcher(client, request.relay, request.upload_id, request.admin_token)
    try:
        if watcher is not None:
            await watcher.open(request.observer)
        sent = await _send(client, request, body)
    except asyncio.CancelledError:
        if request.interrupted is not None:
            files = _file_results(body, sources)
            partial = UploadResult(None, request.upload_id, body.sent, _elapsed(body), files, None, error="interrupted")
            partial.attempts = number
            request.interrupted(partial)
        raise
    except UploadError as exc:
        if watcher is not None:
            await watcher.close(0)
        # What was sent before it broke, for --json: the files with the bytes that went, the error.
        exc.result = UploadResult(
            None, request.upload_id, body.sent, _elapsed(body), _file_results(body, sources), None, error=str(exc)
        )
        raise
    files = _file_results(body, sources)
    result = UploadResult(sent.status, sent.upload_id, body.sent, sent.seconds, files, sent.response)
    result.retry_after = sent.retry_after
    if sent.status == 404 and _error_code(sent.response) == "not_found":
        result.hint = await route_hint(client, request.relay, request.to)
    if watcher is not None:
        # A refused upload may never start on the relay; don't wait long for events that will not come.
        await watcher.close(EVENTS_GRACE_SECONDS if 200 <= sent.status < 300 else 1.0)
        _verify(result, watcher, request)
    return result


def _elapsed(body: Body) -> float:
    return time.perf_counter() - body.first_byte_at if body.first_byte_at is not None else 0.0


def _error_code(response: Any) -> str | None:
    error = response.get("error") if isinstance(response, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def _verify(result: UploadResult, watcher: EventWatcher, request: _Request) -> None:
    """Record what the relay saw for each part, and (after a success) whether its sha256 matches ours."""
    result.relay_parts = watcher.parts
    result.relay_bytes = watcher.relay_bytes
    for index, part, match in compare_parts(result.files, watcher.parts, request.raw, request.observer):
        file = result.files[index]
        file.relay_size, file.relay_sha256 = part.get("size"), part.get("sha256")
        file.match = match if result.status is not None and 200 <= result.status < 300 else None


# --- retries ---------------------------------------------------------------------------------------------------


async def _with_retries(
    client: httpx.AsyncClient, request: _Request, retries: int, on_retry: Callable[[RetryDecision], None] | None
) -> UploadResult:
    attempt = 0
    while True:
        try:
            result = await _attempt(client, request, attempt + 1)
        except UploadError as exc:
            decision = after_failure(exc, attempt, request.replayable) if attempt < retries else None
            if decision is None:
                if exc.result is not None:
                    exc.result.attempts = attempt + 1
                raise
            last = exc.result
        else:
            result.attempts = attempt + 1
            decision = after_answer(result.status, result.retry_after, result.response, request.replayable)
            decision = decision if attempt < retries else None
            if decision is None:
                return result
            last = result
        attempt += 1
        if on_retry is not None:
            on_retry(decision)
        await _wait_to_retry(decision.delay, request, last, attempt)


async def _wait_to_retry(delay: float, request: _Request, last: UploadResult | None, attempts: int) -> None:
    """Sleep before the next attempt. Cancelled meanwhile (Ctrl-C), the request got as far as its last attempt:
    that attempt's figures, with the attempts made, not those of a request that never started."""
    try:
        await asyncio.sleep(delay)
    except asyncio.CancelledError:
        if request.interrupted is not None and last is not None:
            # A retried answer (a 429) is not the request's outcome: no status, as for an attempt cut off in flight.
            cut = replace(last, status=None, response=None, retry_after=None, hint=None, error="interrupted")
            cut.upload_id = last.upload_id or request.upload_id  # an answer without X-Upload-ID: the one we sent
            cut.attempts = attempts
            request.interrupted(cut)
        raise


# --- public API ------------------------------------------------------------------------------------------------


def _split_pairs(pairs: Mapping[str, str] | Sequence[tuple[str, str]] | None) -> list[tuple[str, str]]:
    if pairs is None:
        return []
    if isinstance(pairs, Mapping):
        return list(pairs.items())
    return list(pairs)


def _check_arguments(files: list[LocalFile], raw: bool, method: str) -> None:
    if any(f.is_stdin for f in files) and len(files) != 1:
        raise ArgumentError("'-' (standard input) is sent alone, as one raw body")
    if raw and len(files) != 1:
        raise ArgumentError("--raw sends exactly one file per request")
    if method not in ("POST", "PUT", "PATCH"):
        raise ArgumentError(f"method must be POST, PUT or PATCH, not {method}")


async def upload_async(
    files: Sequence[str | os.PathLike[str]],
    to: str,
    *,
    relay: str | None = None,
    recursive: bool = False,
    field: str = DEFAULT_FIELD,
    form: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    raw: bool = False,
    method: str = "POST",
    events: bool = False,
    admin_token: str | None = None,
    token: str | None = None,
    upload_id: str | None = None,
    retries: int = 0,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    observer: UploadObserver | None = None,
    on_retry: Callable[[RetryDecision], None] | None = None,
    client: httpx.AsyncClient | None = None,
    boundary: str | None = None,
    interrupted: Callable[[UploadResult], None] | None = None,
) -> UploadResult:
    """Upload `files` in one request to `relay` + `to`; see `upload` for the arguments.

    `interrupted` hears how far the request got when the task is cancelled (the cancellation goes on).
    """
    paths = [os.fspath(f) for f in files]
    method = method.upper()
    if not paths:
        raise ArgumentError("no file given")
    local = check_files(paths, recursive=recursive)
    _check_arguments(local, raw, method)
    relay, to = resolve_target(to, relay)
    header_pairs = _split_pairs(headers)
    if token:
        header_pairs = [(k, v) for k, v in header_pairs if k.lower() != "authorization"]
        header_pairs.append(("Authorization", f"Bearer {token}"))
    # An id given with --header 'X-Upload-ID: ...' is the one to follow with --events; otherwise our own, so
    # we can follow the upload and ask the relay about it afterwards.
    upload_id = upload_id or httpx.Headers(header_pairs).get("X-Upload-ID") or new_upload_id()
    request = _Request(
        files=local,
        relay=relay,
        to=to,
        url=build_url(relay, to, _split_pairs(query)),
        field_name=field,
        form=_split_pairs(form),
        headers=header_pairs,
        raw=raw or local[0].is_stdin,  # stdin has no name to put in a multipart part: it goes as the body
        method=method,
        upload_id=upload_id,
        events=events,
        admin_token=admin_token,
        observer=observer or _NoObserver(),
        stdin=StdinSource(local[0]) if local[0].is_stdin else None,
        boundary=boundary,
        interrupted=interrupted,
    )
    own_client = client is None
    if client is None:
        client = httpx.AsyncClient(timeout=timeout)
    try:
        return await _with_retries(client, request, retries, on_retry)
    finally:
        if own_client:
            await client.aclose()


def upload(files: Sequence[str | os.PathLike[str]], to: str, **options: Any) -> UploadResult:
    """Upload files to the relay and return what happened.

    One multipart request (`field` for every file, `form` fields first), or with `raw=True` one file as the
    whole body; "-" is standard input, sent raw and chunked. `to` is a path on `relay`, or a full URL.
    Keyword options: relay, recursive, field, form, query, headers, raw, method, events, admin_token, token,
    upload_id, retries, timeout, observer, on_retry. HTTP errors are returned (check `result.ok`); bad
    arguments, bad files and network failures raise `ArgumentError`, `FileError`, `NetworkError` (all
    `UploadError`); one raised during a request carries what was sent before it broke in `exc.result`.

        result = upload(["photo.jpg"], "/upload/photos", relay="http://127.0.0.1:8000", form={"album": "x"})
        print(result.status, result.files[0].sha256)
    """
    return asyncio.run(upload_async(files, to, **options))
