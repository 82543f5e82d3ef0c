"""`relay-upload --resumable`: one file as a resumable upload (tus 1.0.0 or the IETF draft), retried and resumed.

Theory of operation:

* An upload is a short conversation: create it at the destination URL (the relay answers with the upload's
  URL), then append `[offset, end)` pieces by PATCH until the last one; the relay answers that one only after
  the upstream answered for the whole file (X-Upstream-Status, X-Upload-Sha256). The headers of each protocol
  are in client/resumable_wire.py; this module decides what to send next.
* The relay's offset is the truth. After anything goes wrong (a broken connection, a 5xx, a 409 offset
  mismatch, a 460 checksum mismatch, a 429) the client asks HEAD where the relay stands and goes on from
  there; the bytes a broken append delivered are kept by the relay, so nothing is sent twice that arrived.
  A 404 or 410 for the upload's URL (expired, or a relay that lost it) starts a new upload from 0, saying so;
  so does any other 4xx but 401, 407 and 429 to the first HEAD of a remembered URL (not an upload, or not
  ours: it was a hint; missing credentials are this run's, and a later run with them resumes).
* Retries: up to `retries` failures in a row, waiting 0.5 s doubling up to 10 s (a 429's Retry-After when it
  gives one); a failure after which the relay's offset moved forward starts the count again, so a long upload
  over a flaky line is not given up for breaks it recovers from. Spent on an HTTP answer (a 5xx, a 429), that
  answer is the result ("gave up after N retries"); spent on the network, NetworkError with the partial result.
* What is final: a 4xx other than those above, a 5xx the relay says came from the upstream (X-Upstream-Status:
  the upstream's verdict, which sending again would only repeat) and 501/505/507; so is a creation answer whose
  Location no request can go to (unparsable, not http(s), no host, a port out of 1-65535: client/target.py's
  check), which is never remembered. A remembered URL that fails the same check is ignored (a new upload).
* Across runs: the upload's URL is remembered (client/resume_store.py) from its creation until it completed,
  so a killed run resumes when started again. Ctrl-C cancels the task; the entry stays (cli.py says so) and
  `interrupted` hears how far the upload got (for --json). A file that cannot be read any more (deleted, shrunk)
  ends the upload with FileError carrying the partial result; its entry, which names bytes that are no more, goes.
* The file is read in 1 MiB pieces on the client's reader thread (client/ranges.py), whatever `chunk_size`
  is, and hashed in order on the way; its sha256 is compared with the relay's X-Upload-Sha256 at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
from rich import filesize

from client.errors import ArgumentError, FileError, NetworkError
from client.events import parse_response, read_capped
from client.ranges import InOrderHasher, RangeSource, catch_up, hash_range
from client.results import FileResult, ResumableInfo, ResumableObserver, UploadResult, _NoObserver
from client.resumable_wire import (
    DIALECTS,
    Answer,
    Final,
    Gone,
    Retry,
    completed,
    header_int,
    judge,
    metadata_header,
    offset_of,
    protocol_error,
)
from client.resume_store import ResumeKey, ResumeStore, StoredUpload, fingerprint
from client.sources import Body, LocalFile, _in_reader
from client.target import connect_failure, route_hint, url_problem

__all__ = ["DEFAULT_RESUMABLE_RETRIES", "ResumableOptions", "backoff", "upload_resumable"]

DEFAULT_RESUMABLE_RETRIES = 10
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0
# Headers the client sets itself on every request; a user's own would contradict them.
_OURS = frozenset({"content-length", "transfer-encoding", "content-type", "upload-offset", "upload-length"})


def backoff(failures: int) -> float:
    """The wait after failure number `failures` (1-based): 0.5 s doubling, at most 10 s."""
    return float(min(FIRST_BACKOFF * 2 ** max(failures - 1, 0), MAX_BACKOFF))


@dataclass(frozen=True)
class ResumableOptions:
    """Everything the uploads of one command share."""

    relay: str
    url: str  # where uploads are created: relay + --to + --query
    headers: Sequence[tuple[str, str]] = ()
    form: Sequence[tuple[str, str]] = ()
    protocol: str = "tus"
    chunk_size: int | None = None  # None: the rest of the file in one append
    digest: bool = False
    retries: int = DEFAULT_RESUMABLE_RETRIES
    store: ResumeStore = field(default_factory=ResumeStore)


Note = Callable[[str], None]


class _Upload:
    """One file's resumable upload; `run()` drives it to an UploadResult."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        file: LocalFile,
        options: ResumableOptions,
        observer: ResumableObserver,
        note: Note,
        warn: Note,
        interrupted: Callable[[UploadResult], None],
    ) -> None:
        self.client = client
        self.file = file
        self.size = file.size or 0
        self.options = options
        self.dialect = DIALECTS[options.protocol]
        self.observer = observer
        self.note = note  # retries and resumptions: for the live display
        self.warn = warn  # a new upload where one was expected: worth a line even without a display
        self.interrupted = interrupted  # hears how far a cancelled (Ctrl-C) upload got, for --json
        self.key: ResumeKey | None = None
        self.url: str | None = None
        self.upload_id: str | None = None
        self.offset = 0
        self.high_water = 0
        self.resumed_from: int | None = None
        self.failures = 0
        self.attempts = 0
        self.bytes_sent = 0
        self.first_byte_at: float | None = None
        self.hasher = InOrderHasher()
        self.full_digest: bytes | None = None
        self.done: Answer | None = None
        self.created_here = False

    # --- the loop ----------------------------------------------------------------------------------------------

    async def run(self) -> UploadResult:
        try:
            return await self._run()
        except FileError as exc:
            # The file went away or changed: the remembered entry names bytes that are no more (its key, the
            # file's size and mtime, will not match again), but the result says how far the upload got.
            if self.key is not None:
                self.options.store.remove(self.key)
            exc.result = self._partial_result(str(exc))
            raise
        except asyncio.CancelledError:
            self.interrupted(self._partial_result("interrupted"))
            raise

    async def _run(self) -> UploadResult:
        path = self.file.path
        try:
            self.key = await _in_reader(fingerprint, path, self.options.url)
        except OSError as exc:
            raise FileError(f"{path}: {exc.strerror or exc}") from None
        if self.options.digest:
            self.full_digest = await hash_range(path, 0, self.size)  # Repr-Digest precedes the bytes
        stored = self.options.store.load(self.key)
        if stored is not None and stored.protocol == self.dialect.name and stored.size == self.size:
            # Only a hint: an entry naming a URL no request can go to (edited by hand) means a new upload.
            self.url = stored.upload_url if url_problem(stored.upload_url) is None else None
        need_head = self.url is not None
        while self.done is None:
            try:
                need_head = await self._step(need_head)
            except Final as final:
                # Raised by a request, or by _wait once the retries are spent on an HTTP answer: the answer
                # is the result (exit 1 with --json's object), not an error out of the run.
                result = await self._result(final.answer)
                if final.gave_up is not None:
                    result.hint = f"gave up after {final.gave_up} retries; run again to resume"
                return result
        return await self._result(self.done)

    async def _step(self, need_head: bool) -> bool:
        """One request (or two: HEAD, then an append) and what to do after a failure; returns `need_head`."""
        try:
            if self.url is None:
                await self._create()
            elif need_head:
                await self._head()
            if self.done is None:
                await self._append()
            return False
        except Gone as gone:
            if self.created_here:  # not a stale entry: a relay that loses uploads must not loop us forever
                await self._wait(Retry(str(gone), delay=0.0, answer=gone.answer))
            if gone.answer.status in (404, 410):
                self._forget(f"the relay no longer knows {self.url}; starting a new upload from 0")
            else:
                self._forget(f"the remembered upload {self.url} is not usable ({gone}); starting a new upload from 0")
            return False
        except Retry as retry:
            await self._wait(retry)
            return self.url is not None

    async def _wait(self, retry: Retry) -> None:
        self.failures += 1
        if self.failures > self.options.retries:
            raise self._give_up(retry)
        delay = retry.delay if retry.delay is not None else backoff(self.failures)
        self.note(f"{retry}; retrying in {delay:.1f} s ({self.failures}/{self.options.retries})")
        await asyncio.sleep(delay)

    def _give_up(self, retry: Retry) -> Exception:
        if retry.answer is not None:
            final = Final(retry.answer)
            final.gave_up = self.options.retries
            return final
        message = str(retry)
        if isinstance(retry.network, httpx.ConnectError | httpx.ConnectTimeout):
            message = connect_failure(self.options.relay, retry.network)
        error = NetworkError(f"{message} (gave up after {self.options.retries} retries; run again to resume)")
        error.result = self._partial_result(str(error))
        return error

    def _forget(self, why: str) -> None:
        if self.key is not None:
            self.options.store.remove(self.key)
        if self.url is not None:
            self.warn(why)
        self.url = None
        self.offset = self.high_water = 0
        self.observer.moved_to(0, 0)

    def _moved(self, offset: int) -> None:
        self.offset = offset
        self.observer.moved_to(0, offset)
        if offset > self.high_water:
            self.high_water = offset
            self.failures = 0  # progress: the next break starts the count again

    # --- the requests ------------------------------------------------------------------------------------------

    def _headers(self, ours: dict[str, str], *, creation: bool = False) -> httpx.Headers:
        headers = httpx.Headers()
        for name, value in self.options.headers:
            if name.lower() in _OURS or (name.lower() == "x-upload-id" and not creation):
                continue
            headers[name] = value
        headers.update(ours)
        return headers

    async def _create(self) -> None:
        metadata = metadata_header(self.file.name, self.file.content_type, self.options.form)
        headers = self._headers(self.dialect.create(self.size, metadata, self.full_digest), creation=True)
        answer = await self._send("POST", self.options.url, headers)
        if not 200 <= answer.status < 300:
            judge(answer, upload_url=False)
        self.upload_id = answer.headers.get("x-upload-id")
        if self.resumed_from is None:
            self.resumed_from = 0
        if completed(answer.headers):  # an empty file is complete at creation
            self.done = answer
            return
        location = answer.headers.get("location")
        if not location:
            raise Final(protocol_error(answer, "the relay's creation answer has no Location"))
        self.url = _upload_url(answer, self.options.url, location)
        self.created_here = True
        self._moved(offset_of(answer.headers) or 0)
        if self.key is not None:
            entry = StoredUpload(self.url, self.dialect.name, self.file.path, self.options.url, self.size)
            self.options.store.save(self.key, entry)

    async def _head(self) -> None:
        assert self.url is not None
        answer = await self._send("HEAD", self.url, self._headers(self.dialect.base()))
        if not 200 <= answer.status < 300:
            if self.resumed_from is None and 400 <= answer.status < 500 and answer.status not in (401, 407, 429):
                # The first HEAD of a remembered URL, refused (not an upload, not ours): it was only a hint.
                # Not for missing credentials (401, 407) or a 429: those are this run's, the next one resumes.
                raise Gone(answer)
            judge(answer, upload_url=True)
        offset = offset_of(answer.headers)
        if offset is None or offset > self.size:
            raise Final(protocol_error(answer, f"HEAD {self.url} gave no usable Upload-Offset"))
        self.upload_id = answer.headers.get("x-upload-id") or self.upload_id
        if self.resumed_from is None:
            self.resumed_from = offset
            self.note(f"resumed at {filesize.decimal(offset)} of {filesize.decimal(self.size)} ({self.url})")
        self._moved(offset)

    async def _append(self) -> None:
        assert self.url is not None
        start = self.offset
        end = self.size if self.options.chunk_size is None else min(start + self.options.chunk_size, self.size)
        last = end == self.size
        checksum = None
        if self.options.digest and self.dialect.per_append_checksum:
            whole = start == 0 and last and self.full_digest is not None
            checksum = self.full_digest if whole else await hash_range(self.file.path, start, end)
        ours = self.dialect.append(start, end - start, last=last, checksum=checksum, repr_digest=self.full_digest)
        body = Body([RangeSource(self.file.path, start, end, self.hasher)], self.dialect.append_type, self.observer)
        self.attempts += 1
        began = time.perf_counter()
        try:
            answer = await self._send("PATCH", self.url, self._headers(ours), body)
        finally:
            self.bytes_sent += body.sent
            if self.first_byte_at is None:
                self.first_byte_at = body.first_byte_at or began
        if not 200 <= answer.status < 300:
            judge(answer, upload_url=True)
        if completed(answer.headers):
            self.done = answer
            return
        offset = offset_of(answer.headers)
        if offset is None or offset < start:
            raise Final(protocol_error(answer, f"PATCH {self.url} gave no usable Upload-Offset"))
        self._moved(offset)

    async def _send(self, method: str, url: str, headers: httpx.Headers, body: Body | None = None) -> Answer:
        try:
            request = self.client.build_request(method, url, headers=headers, content=body)
            response = await self.client.send(request, stream=True)
            try:
                content = await read_capped(response)
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            retry = Retry(f"{method} {url}: {_transport_reason(exc)}")
            retry.network = exc
            raise retry from exc
        return Answer(response.status_code, response.headers, parse_response(content) if content else None)

    # --- results -----------------------------------------------------------------------------------------------

    async def _result(self, answer: Answer) -> UploadResult:
        delivered = "x-upstream-status" in answer.headers
        if delivered and self.key is not None:
            # The upstream has answered for the whole file: there is nothing left to resume.
            self.options.store.remove(self.key)
        ok = 200 <= answer.status < 300 and delivered
        sha256 = None
        if ok:
            self.observer.moved_to(0, self.size)
            sha256 = self.full_digest.hex() if self.full_digest is not None else None
            sha256 = sha256 or await catch_up(self.file.path, self.size, self.hasher)
        relay_sha256 = answer.headers.get("x-upload-sha256")
        file = self._file(sha256, complete=ok)
        file.relay_sha256 = relay_sha256
        file.match = None if not ok or relay_sha256 is None else relay_sha256.lower() == sha256
        info = self._info()
        info.upstream_status = header_int(answer.headers.get("x-upstream-status"))
        response = answer.body
        if response is None and delivered:
            response = {"upstream_status": info.upstream_status, "sha256": relay_sha256, "size": self.size}
        upload_id = answer.headers.get("x-upload-id") or self.upload_id
        result = UploadResult(answer.status, upload_id, self.bytes_sent, self._seconds(), [file], response)
        result.attempts = self.attempts
        result.resumable = info
        if answer.status == 404 and self.url is None:  # the creation's path is not routed: say which are
            to = self.options.url[len(self.options.relay.rstrip("/")) :]
            result.hint = await route_hint(self.client, self.options.relay, to)
        return result

    def _partial_result(self, error: str) -> UploadResult:
        result = UploadResult(
            None,
            self.upload_id,
            self.bytes_sent,
            self._seconds(),
            [self._file(None, complete=False)],
            None,
            error=error,
        )
        result.attempts = self.attempts
        result.resumable = self._info()
        return result

    def _file(self, sha256: str | None, *, complete: bool) -> FileResult:
        held = self.size if complete else self.offset  # what the relay holds of the file
        return FileResult(
            self.file.path, self.size, sha256, self.bytes_sent, self._seconds(), relay_size=held, complete=complete
        )

    def _info(self) -> ResumableInfo:
        return ResumableInfo(self.dialect.name, self.url, self.resumed_from or 0)

    def _seconds(self) -> float:
        return time.perf_counter() - self.first_byte_at if self.first_byte_at is not None else 0.0


def _upload_url(answer: Answer, create_url: str, location: str) -> str:
    """The upload's URL: `location` resolved against the creation URL, or Final when no request can go there.

    A Location httpx cannot parse, with another scheme, no host or a port out of 1-65535 is the relay's
    mistake: retrying would get the same answer, and it must not be remembered for the next run either.
    """
    try:
        url = str(httpx.URL(create_url).join(location))
    except (httpx.InvalidURL, ValueError) as exc:
        problem: str | None = str(exc) or type(exc).__name__
    else:
        problem = url_problem(url)
    if problem is not None:
        raise Final(
            protocol_error(answer, f"the relay's creation answer has an unusable Location {location!r}: {problem}")
        )
    return url


def _transport_reason(exc: httpx.TransportError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def upload_resumable(
    file: LocalFile,
    options: ResumableOptions,
    *,
    client: httpx.AsyncClient,
    observer: ResumableObserver | None = None,
    note: Note | None = None,
    warn: Note | None = None,
    interrupted: Callable[[UploadResult], None] | None = None,
) -> UploadResult:
    """Upload `file` as one resumable upload and return what happened (HTTP errors in the result).

    `note` hears of retries and resumptions, `warn` (default: `note`) of an upload the relay no longer knew
    (a new one starts from 0), `interrupted` of how far the upload got when it is cancelled (the cancellation
    goes on). Raises FileError for a file that cannot be read (its remembered entry is dropped), NetworkError
    once the retries are spent on the network; both carry `result`, how far it got. Retries spent on an HTTP
    answer (a 5xx, a 429) end with that answer as the result.
    """
    if file.size is None:
        raise ArgumentError("'-' (standard input) cannot be sent as a resumable upload: it cannot be read again")
    quiet: Note = lambda text: None  # noqa: E731
    note = note or quiet
    upload = _Upload(client, file, options, observer or _NoObserver(), note, warn or note, interrupted or _ignore)
    return await upload.run()


def _ignore(result: UploadResult) -> None:
    pass
