"""Send files to the relay as one streamed request: raw or multipart, with a Content-Length known up front.

Theory of operation:

* A request body is a list of *segments*: literal bytes (multipart framing) and sources (a file on disk, or
  generated data for the benchmark). Every segment's size is known before the first byte is sent, so the body
  always goes out with an explicit Content-Length; httpx would otherwise fall back to chunked framing.
* Files are read 1 MiB at a time in a worker thread, and hashed there too (sha256 releases the GIL on large
  buffers), so the event loop never waits on the disk. httpx pulls the next chunk only after the previous one
  was written: memory stays at a few chunks whatever the file size.
* Progress is counted in the body iterator (httpx has no sent-bytes callback) and reported to an observer.
* With `events=True` the client picks the upload id itself, subscribes to the relay's SSE stream for it before
  sending (so no event is missed), and compares each part's sha256 as seen by the relay with its own.
* A streamed body cannot be replayed: only failures before the first body byte are retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, TypeVar

import httpx

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_FIELD",
    "DEFAULT_RELAY",
    "ArgumentError",
    "FileError",
    "FileResult",
    "HttpError",
    "LocalFile",
    "NetworkError",
    "UploadError",
    "UploadObserver",
    "UploadResult",
    "check_files",
    "describe_http_error",
    "upload",
    "upload_async",
]

CHUNK_SIZE = 1024 * 1024
DEFAULT_RELAY = "http://127.0.0.1:8000"
DEFAULT_FIELD = "file"
# An upstream's answer is a short JSON document; cap what we keep so a chatty upstream cannot grow memory.
RESPONSE_LIMIT = 4 * 1024 * 1024
# After the upload's response, how long to wait for the relay's terminal SSE event.
EVENTS_GRACE_SECONDS = 10.0
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=300.0, pool=None)


class UploadError(Exception):
    """Base of the client's errors; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ArgumentError(UploadError):
    """Bad arguments (exit 2)."""

    exit_code = 2


class FileError(UploadError):
    """A file that does not exist, is a directory, cannot be read, or changed while being sent (exit 2)."""

    exit_code = 2


class NetworkError(UploadError):
    """Relay down, connection cut, timeout (exit 3)."""

    exit_code = 3


class HttpError(UploadError):
    """An HTTP error answer where there is no UploadResult to carry it (events subscription, bench)."""

    exit_code = 1


@dataclass(frozen=True)
class LocalFile:
    """A file to send. `path` is kept exactly as given on the command line."""

    path: str
    size: int
    content_type: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path) or self.path


@dataclass
class FileResult:
    path: str
    size: int
    sha256: str


@dataclass
class UploadResult:
    """The outcome of one request. `response` is the parsed JSON body, or its text when it is not JSON."""

    status: int
    upload_id: str | None
    bytes_sent: int
    seconds: float
    files: list[FileResult]
    response: Any
    # Filled with --events: what the relay reported for each file part, and the paths whose sha256 differ.
    relay_parts: list[dict[str, Any]] | None = None
    mismatches: list[str] = field(default_factory=list)

    @property
    def throughput_mbps(self) -> float:
        return self.bytes_sent / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and not self.mismatches


class UploadObserver(Protocol):
    """Told about one request as it goes; progress.py draws it, tests record it."""

    def file_sent(self, index: int, nbytes: int) -> None: ...

    def relay_received(self, nbytes: int, total: int | None) -> None: ...

    def part_verified(self, index: int, ok: bool) -> None: ...


class _NoObserver:
    def file_sent(self, index: int, nbytes: int) -> None:
        pass

    def relay_received(self, nbytes: int, total: int | None) -> None:
        pass

    def part_verified(self, index: int, ok: bool) -> None:
        pass


def check_files(paths: Sequence[str]) -> list[LocalFile]:
    """Stat and open each path once, so a bad one fails before anything is sent."""
    files = []
    for path in paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FileError(f"{path}: no such file") from None
        except OSError as exc:
            raise FileError(f"{path}: {exc.strerror or exc}") from None
        if os.path.isdir(path):
            raise FileError(f"{path}: is a directory")
        if not os.path.isfile(path):
            # A pipe or device has no size we could announce in Content-Length.
            raise FileError(f"{path}: not a regular file")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise FileError(f"{path}: {exc.strerror or exc}") from None
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        files.append(LocalFile(path, st.st_size, content_type))
    return files


# --- body ------------------------------------------------------------------------------------------------------


class Source(Protocol):
    size: int

    def chunks(self) -> AsyncIterator[bytes]: ...


# One reader thread for every file of the process: reads of one file stay in order, and the 1 MiB read
# buffers stay in one thread's malloc arena.
T = TypeVar("T")
_READER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-upload-read")


async def _in_reader(function: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_READER, function, *args)


class FileSource:
    """One file, read and hashed in the reader thread, exactly `size` bytes."""

    def __init__(self, file: LocalFile) -> None:
        self.file = file
        self.size = file.size
        self.sha256 = hashlib.sha256()

    def _read(self, handle: IO[bytes], want: int) -> bytes:
        data = handle.read(want)
        self.sha256.update(data)
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            handle = await _in_reader(open, self.file.path, "rb")
        except OSError as exc:
            raise FileError(f"{self.file.path}: {exc.strerror or exc}") from None
        # Read one chunk ahead: the disk read and the hash of chunk n+1 overlap the socket write of chunk n.
        # At most two chunks are in memory at once.
        left = self.size
        pending: asyncio.Task[bytes] | None = None
        try:
            while left > 0:
                if pending is None:
                    pending = asyncio.ensure_future(_in_reader(self._read, handle, min(CHUNK_SIZE, left)))
                data = await pending
                pending = None
                if not data:
                    # Content-Length is already on the wire: a shrunk file cannot be sent correctly.
                    raise FileError(f"{self.file.path}: file shrank while being sent")
                left -= len(data)
                if left > 0:
                    pending = asyncio.ensure_future(_in_reader(self._read, handle, min(CHUNK_SIZE, left)))
                yield data
        finally:
            if pending is not None:
                # Let the read in flight finish before closing the file under it.
                await asyncio.gather(pending, return_exceptions=True)
            await _in_reader(handle.close)


Segment = bytes | Source


class Body:
    """A request body of known length, iterated once; counts bytes per source for progress."""

    def __init__(self, segments: list[Segment], content_type: str, observer: UploadObserver | None = None) -> None:
        self.segments = segments
        self.content_type = content_type
        self.length = sum(len(s) if isinstance(s, bytes) else s.size for s in segments)
        self.observer = observer or _NoObserver()
        self.sent = 0
        self.first_byte_at: float | None = None

    @property
    def started(self) -> bool:
        return self.first_byte_at is not None

    def _mark(self, nbytes: int) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        self.sent += nbytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        source_index = 0
        for segment in self.segments:
            if isinstance(segment, bytes):
                if segment:  # an empty chunk would read as end-of-body to some writers
                    self._mark(len(segment))
                    yield segment
                continue
            async for chunk in segment.chunks():
                self._mark(len(chunk))
                self.observer.file_sent(source_index, len(chunk))
                yield chunk
            source_index += 1


def _form_quote(value: str) -> str:
    # HTML5 form encoding, as browsers and httpx do: a quote or CR/LF must not end the header parameter.
    out = value.replace("\\", "\\\\").replace('"', "%22")
    return "".join(f"%{ord(c):02X}" if ord(c) < 0x20 and c != "\x1b" else c for c in out)


def multipart_segments(
    sources: Sequence[tuple[str, LocalFile | str, Source]],
    form: Sequence[tuple[str, str]],
    boundary: str,
) -> list[Segment]:
    """Form fields first, then one part per (field, file or filename, source), then the closing boundary."""
    segments: list[Segment] = []
    for name, value in form:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{_form_quote(name)}"\r\n\r\n'
        segments.append(head.encode() + value.encode() + b"\r\n")
    for field_name, file, source in sources:
        filename = file.name if isinstance(file, LocalFile) else file
        content_type = file.content_type if isinstance(file, LocalFile) else "application/octet-stream"
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{_form_quote(field_name)}"; filename="{_form_quote(filename)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        segments += [head.encode(), source, b"\r\n"]
    segments.append(f"--{boundary}--\r\n".encode())
    return segments


def new_boundary() -> str:
    return secrets.token_hex(16)


# --- request ---------------------------------------------------------------------------------------------------


def build_url(relay: str, to: str, query: Sequence[tuple[str, str]]) -> str:
    """relay base + path + the encoded query (appended to any query already in `to`)."""
    if not relay.startswith(("http://", "https://")):
        raise ArgumentError(f"--relay must be an http:// or https:// URL, not {relay!r}")
    path = to if to.startswith("/") else "/" + to
    url = relay.rstrip("/") + path
    if query:
        encoded = str(httpx.QueryParams(list(query)))
        url += ("&" if "?" in path else "?") + encoded
    return url


def new_upload_id() -> str:
    # The contract accepts [A-Za-z0-9_-]{1,64}; 128 random bits like the relay's own.
    return secrets.token_hex(16)


def _parse_response(content: bytes) -> Any:
    text = content.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _read_capped(response: httpx.Response) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        if len(data) < RESPONSE_LIMIT:
            data += chunk[: RESPONSE_LIMIT - len(data)]
    return bytes(data)


@dataclass
class _Sent:
    status: int
    upload_id: str | None
    response: Any
    seconds: float


async def send_body(
    client: httpx.AsyncClient, method: str, url: str, body: Body, headers: httpx.Headers | Mapping[str, str]
) -> _Sent:
    """Send one streamed body and read the (small) answer; network failures become NetworkError."""
    started = time.perf_counter()
    # httpx.Headers is case-insensitive: a user's "content-length" cannot end up sent next to ours.
    request_headers = httpx.Headers(headers)
    for name in ("Content-Length", "Transfer-Encoding"):
        request_headers.pop(name, None)
    if "Content-Type" not in request_headers or body.content_type.startswith("multipart/"):
        request_headers["Content-Type"] = body.content_type  # a raw body may keep the user's own type
    request_headers["Content-Length"] = str(body.length)
    try:
        request = client.build_request(method, url, content=body, headers=request_headers)
        response = await client.send(request, stream=True)
        try:
            content = await _read_capped(response)
        finally:
            await response.aclose()
    except httpx.TimeoutException as exc:
        raise NetworkError(f"timed out talking to {url}: {type(exc).__name__}") from exc
    except httpx.TransportError as exc:
        if body.started and isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
            # Typically an early refusal whose answer was lost with the reset (see ask_why_cut).
            reason = f"the connection was closed while sending ({str(exc) or type(exc).__name__})"
            raise NetworkError(f"{url}: {reason}; the server may have refused the upload early") from exc
        raise NetworkError(f"connection to {url} failed: {str(exc) or type(exc).__name__}") from exc
    ended = time.perf_counter()
    seconds = ended - (body.first_byte_at or started)
    return _Sent(response.status_code, response.headers.get("x-upload-id"), _parse_response(content), seconds)


# --- relay events (SSE) ----------------------------------------------------------------------------------------


class EventWatcher:
    """Follows /_relay/uploads/{id}/events: relay-side byte counts and each part's sha256."""

    def __init__(self, client: httpx.AsyncClient, relay: str, upload_id: str, admin_token: str | None) -> None:
        self.url = f"{relay.rstrip('/')}/_relay/uploads/{upload_id}/events"
        self.client = client
        self.headers = {"Accept": "text/event-stream"}
        if admin_token:
            self.headers["Authorization"] = f"Bearer {admin_token}"
        self.parts: list[dict[str, Any]] = []
        self.terminal = asyncio.Event()
        self._response: httpx.Response | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self, observer: UploadObserver) -> None:
        """Returns once the relay answered with headers, so the upload can start without missing events."""
        # No read timeout: a quiet stream is normal while the relay waits for bytes.
        timeout = httpx.Timeout(connect=10.0, read=None, write=10.0, pool=None)
        request = self.client.build_request("GET", self.url, headers=self.headers, timeout=timeout)
        try:
            self._response = await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise NetworkError(f"could not subscribe to {self.url}: {str(exc) or type(exc).__name__}") from exc
        if self._response.status_code != 200:
            content = await _read_capped(self._response)
            await self._response.aclose()
            detail = describe_http_error(self._response.status_code, _parse_response(content))
            raise HttpError(f"could not subscribe to relay events: {detail}")
        self._task = asyncio.create_task(self._follow(self._response, observer))

    async def _follow(self, response: httpx.Response, observer: UploadObserver) -> None:
        name, data_lines = "message", []
        try:
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    continue  # keep-alive comment
                if line:
                    key, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if key == "event":
                        name = value
                    elif key == "data":
                        data_lines.append(value)
                    continue
                if data_lines:
                    self._dispatch(name, "\n".join(data_lines), observer)
                name, data_lines = "message", []
        except httpx.HTTPError:
            pass  # the stream is only a witness: losing it must not fail the upload
        finally:
            self.terminal.set()

    def _dispatch(self, name: str, raw: str, observer: UploadObserver) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        if isinstance(data.get("bytes"), int):
            observer.relay_received(data["bytes"], data.get("total"))
        if name == "part":
            self.parts.append(data)
        elif name in ("completed", "failed"):
            self.terminal.set()

    async def close(self, wait: float) -> None:
        try:
            await asyncio.wait_for(self.terminal.wait(), wait)
        except TimeoutError:
            pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._response is not None:
            await self._response.aclose()


# The relay's own error codes and their statuses (CONTRACT.md, relay-server, "Errors").
ERROR_STATUS = {
    "bad_request": 400,
    "malformed_multipart": 400,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "upload_id_in_use": 409,
    "body_too_large": 413,
    "file_too_large": 413,
    "too_many_files": 413,
    "too_many_uploads": 429,
    "headers_too_large": 431,
    "upstream_unavailable": 502,
    "upstream_failed": 502,
    "upstream_timeout": 504,
}


async def ask_why_cut(
    client: httpx.AsyncClient, relay: str, upload_id: str, admin_token: str | None
) -> tuple[int, dict[str, Any]] | None:
    """Ask the relay's registry why it cut our upload; (status, error answer) or None when it cannot tell.

    An early refusal (413 from the declared Content-Length) comes with `Connection: close`. The relay closes
    while we are still writing; our next write breaks the pipe, the kernel resets the connection and the 413
    sitting in our receive buffer is lost with it (httpcore tries to read it, the socket is already gone).
    The relay remembers the refusal under our upload id, so the answer can be recovered from there.
    """
    url = f"{relay.rstrip('/')}/_relay/uploads/{upload_id}"
    headers = {"Authorization": f"Bearer {admin_token}"} if admin_token else {}
    for _ in range(5):
        try:
            response = await client.get(url, headers=headers, timeout=5.0)
            state = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(state, dict):
            return None
        error = state.get("error")
        if isinstance(error, dict) and error.get("code") in ERROR_STATUS:
            answer = {"error": {"code": error["code"], "message": error.get("message", "")}}
            return ERROR_STATUS[error["code"]], answer
        if state.get("state") != "receiving":
            return None
        await asyncio.sleep(0.1)  # the relay may not have recorded the outcome yet
    return None


def compare_parts(
    files: Sequence[FileResult], parts: Sequence[dict[str, Any]], raw: bool, observer: UploadObserver
) -> list[str]:
    """Match the relay's file parts to ours in order; return the paths whose sha256 differs."""
    # In multipart mode form fields are parts too, but only file parts carry a filename.
    file_parts = list(parts) if raw else [p for p in parts if p.get("filename") is not None]
    mismatches = []
    for index, (mine, theirs) in enumerate(zip(files, file_parts, strict=False)):
        reported = theirs.get("sha256")
        if reported is None:  # the relay runs with --digest none
            continue
        ok = reported == mine.sha256 and theirs.get("size", mine.size) == mine.size
        observer.part_verified(index, ok)
        if not ok:
            mismatches.append(mine.path)
    return mismatches


def describe_http_error(status: int, response: Any) -> str:
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict):
        return f"HTTP {status} {error.get('code', '')}: {error.get('message', '')}".strip()
    text = response if isinstance(response, str) else json.dumps(response)
    text = " ".join(text.split())[:200]
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def error_summary(result: UploadResult) -> str:
    """One line describing why `result` is not ok."""
    if result.mismatches:
        return "sha256 mismatch: the relay saw different content for " + ", ".join(result.mismatches)
    return describe_http_error(result.status, result.response)


# --- upload ----------------------------------------------------------------------------------------------------


def _split_pairs(pairs: Mapping[str, str] | Sequence[tuple[str, str]] | None) -> list[tuple[str, str]]:
    if pairs is None:
        return []
    if isinstance(pairs, Mapping):
        return list(pairs.items())
    return list(pairs)


def _build_body(
    files: Sequence[LocalFile], field_name: str, form: Sequence[tuple[str, str]], raw: bool, observer: UploadObserver
) -> tuple[Body, list[FileSource]]:
    sources = [FileSource(f) for f in files]
    if raw:
        return Body([sources[0]], files[0].content_type, observer), sources
    boundary = new_boundary()
    segments = multipart_segments([(field_name, s.file, s) for s in sources], form, boundary)
    return Body(segments, f"multipart/form-data; boundary={boundary}", observer), sources


async def _attempt(
    client: httpx.AsyncClient,
    files: Sequence[LocalFile],
    url: str,
    *,
    relay: str,
    field_name: str,
    form: Sequence[tuple[str, str]],
    headers: list[tuple[str, str]],
    raw: bool,
    method: str,
    upload_id: str | None,
    events: bool,
    admin_token: str | None,
    observer: UploadObserver,
) -> tuple[UploadResult, Body]:
    body, sources = _build_body(files, field_name, form, raw, observer)
    request_headers = httpx.Headers(headers)
    if upload_id is not None:
        request_headers["X-Upload-ID"] = upload_id
    watcher = EventWatcher(client, relay, upload_id, admin_token) if events and upload_id is not None else None
    try:
        if watcher is not None:
            await watcher.open(observer)
        sent = await send_body(client, method, url, body, request_headers)
    except UploadError as exc:
        if watcher is not None:
            await watcher.close(0)
        refusal = None
        if isinstance(exc, NetworkError) and body.started and upload_id is not None:
            refusal = await ask_why_cut(client, relay, upload_id, admin_token)
        if refusal is None:
            raise
        status, answer = refusal
        sent = _Sent(status, upload_id, answer, time.perf_counter() - (body.first_byte_at or 0.0))
    results = [FileResult(s.file.path, s.size, s.sha256.hexdigest()) for s in sources]
    result = UploadResult(sent.status, sent.upload_id, body.sent, sent.seconds, results, sent.response)
    if watcher is not None:
        # A refused upload may never start on the relay; don't wait long for events that will not come.
        await watcher.close(EVENTS_GRACE_SECONDS if 200 <= sent.status < 300 else 1.0)
        result.relay_parts = watcher.parts
        if 200 <= sent.status < 300:
            result.mismatches = compare_parts(results, watcher.parts, raw, observer)
    return result, body


async def upload_async(
    files: Sequence[str | os.PathLike[str]],
    to: str,
    *,
    relay: str = DEFAULT_RELAY,
    field: str = DEFAULT_FIELD,
    form: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    raw: bool = False,
    method: str = "POST",
    events: bool = False,
    admin_token: str | None = None,
    upload_id: str | None = None,
    retries: int = 0,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    observer: UploadObserver | None = None,
    client: httpx.AsyncClient | None = None,
) -> UploadResult:
    """Upload `files` in one request to `relay` + `to`; see `upload` for the arguments."""
    paths = [os.fspath(f) for f in files]
    if not paths:
        raise ArgumentError("no file given")
    if raw and len(paths) != 1:
        raise ArgumentError("--raw sends exactly one file per request")
    method = method.upper()
    if method not in ("POST", "PUT", "PATCH"):
        raise ArgumentError(f"method must be POST, PUT or PATCH, not {method}")
    local = check_files(paths)
    url = build_url(relay, to, _split_pairs(query))
    header_pairs = _split_pairs(headers)
    if upload_id is None:
        # An id given with --header 'X-Upload-ID: ...' is the one to follow with --events.
        upload_id = httpx.Headers(header_pairs).get("X-Upload-ID")
    if upload_id is None:
        # Always our own id: with it we can follow the upload (--events) and ask the relay about it afterwards.
        upload_id = new_upload_id()
    own_client = client is None
    if client is None:
        client = httpx.AsyncClient(timeout=timeout)
    try:
        for attempt in range(retries + 1):
            try:
                result, _ = await _attempt(
                    client, local, url,
                    relay=relay, field_name=field, form=_split_pairs(form), headers=header_pairs,
                    raw=raw, method=method, upload_id=upload_id, events=events, admin_token=admin_token,
                    observer=observer or _NoObserver(),
                )  # fmt: skip
                return result
            except NetworkError as exc:
                # Only a request whose body never started can be replayed (a stream is read once).
                if attempt == retries or not _before_first_byte(exc):
                    raise
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        raise AssertionError("unreachable")
    finally:
        if own_client:
            await client.aclose()


def _before_first_byte(exc: NetworkError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def upload(files: Sequence[str | os.PathLike[str]], to: str, **options: Any) -> UploadResult:
    """Upload files to the relay and return what happened.

    One multipart request (`field` for every file, `form` fields first), or with `raw=True` one file as the
    whole body. Keyword options: relay, field, form, query, headers, raw, method, events, admin_token,
    upload_id, retries, timeout, observer. HTTP errors are returned (check `result.ok`); bad arguments, bad
    files and network failures raise `ArgumentError`, `FileError`, `NetworkError` (all `UploadError`).

        result = upload(["photo.jpg"], "/upload/photos", relay="http://127.0.0.1:8000", form={"album": "x"})
        print(result.status, result.files[0].sha256)
    """
    return asyncio.run(upload_async(files, to, **options))
