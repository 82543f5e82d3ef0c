"""How relay-upload runs its requests: plain uploads (`upload_all`) and resumable ones (`resumable_all`).

Both run `jobs` requests at once on one httpx client and give back (files, Outcome) pairs in order, failed
requests included, for client/cli_output.py to report. A live display (UploadView) gets one progress row per
file, rewound before a retry, and the notes of retries and resumptions; without it, resumable uploads' warnings
become stderr lines (not with --json or --quiet). `--digest` on a plain upload reads the files once before sending
them, hashing the body exactly as it will be framed (RFC 9530 Repr-Digest); Ctrl-C stops that read within 1 MiB
(the exit would otherwise wait for the hashing thread). Cancelled by Ctrl-C, each request that had started leaves
how far it got in `interrupted`, so --json can still print one object per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from client.cli_output import PROG, Outcome
from client.errors import FileError, UploadError
from client.progress import RequestProgress, UploadView
from client.ranges import hash_range
from client.results import UploadResult
from client.resumable import ResumableOptions, upload_resumable
from client.resumable_wire import repr_field
from client.retry import RetryDecision
from client.sources import LocalFile, multipart_segments, new_boundary
from client.upload import DEFAULT_TIMEOUT, upload_async

__all__ = ["resumable_all", "upload_all"]


async def resumable_all(
    files: list[LocalFile],
    settings: ResumableOptions,
    *,
    jobs: int,
    view: UploadView | None,
    plain: bool,
    interrupted: dict[int, UploadResult] | None = None,
) -> list[tuple[list[LocalFile], Outcome]]:
    """Each file its own resumable upload, `jobs` at once (as --each -j for plain uploads).

    Cancelled (Ctrl-C), each upload that had started leaves how far it got in `interrupted`, by file index.
    """
    tasks = view.add_files(files) if view else []
    gate = asyncio.Semaphore(jobs)

    async def one(index: int, file: LocalFile, client: httpx.AsyncClient) -> Outcome:
        observer = view.request(tasks[index : index + 1]) if view is not None else None
        note, warn = _resumable_notes(view, file.path if len(files) > 1 else "", plain=plain)
        keep = _keeper(interrupted, index)
        async with gate:
            try:
                return await upload_resumable(
                    file, settings, client=client, observer=observer, note=note, warn=warn, interrupted=keep
                )
            except UploadError as exc:
                return exc
            finally:
                if observer is not None:
                    observer.done()

    limits = httpx.Limits(max_connections=jobs * 2 + 2)
    async with httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, limits=limits) as client:
        if view is None:
            outcomes = await asyncio.gather(*(one(i, f, client) for i, f in enumerate(files)))
        else:
            with view:
                outcomes = await asyncio.gather(*(one(i, f, client) for i, f in enumerate(files)))
    return [([f], outcome) for f, outcome in zip(files, outcomes, strict=True)]


def _keeper(interrupted: dict[int, UploadResult] | None, index: int) -> Callable[[UploadResult], None] | None:
    """Where request `index` leaves its result when it is cancelled."""
    if interrupted is None:
        return None

    def keep(result: UploadResult) -> None:
        interrupted[index] = result

    return keep


def _resumable_notes(
    view: UploadView | None, label: str, *, plain: bool
) -> tuple[Callable[[str], None] | None, Callable[[str], None] | None]:
    """(note, warn): both on the live display; without one, only warnings, as a stderr line (not with --json or
    --quiet, whose figures say it: resumed_from 0 and a new upload_url). Retries are not errors: no lines."""
    prefix = f"{label}: " if label else ""
    if view is not None:
        on_view: Callable[[str], None] = lambda text: view.note(prefix + text)  # noqa: E731
        return on_view, on_view
    if not plain:
        return None, None

    def line(text: str) -> None:
        sys.stderr.write(f"{PROG}: {' '.join((prefix + text).split())}\n")
        sys.stderr.flush()

    return None, line


async def _with_digest(group: list[LocalFile], options: dict[str, Any]) -> dict[str, Any]:
    """--digest: Repr-Digest of the body about to be sent, from one read of the files before sending (RFC 9530).

    A raw body is the file. A multipart body is the framing too, so the boundary is chosen here and the framed
    body is hashed as it will go: form fields, each file's part head, its bytes, the closing boundary.
    """
    headers = [(k, v) for k, v in options["headers"] if k.lower() != "repr-digest"]
    if options["raw"]:
        digest = await hash_range(group[0].path, 0, group[0].size or 0)
        return {**options, "headers": [*headers, ("Repr-Digest", repr_field(digest))]}
    boundary = new_boundary()
    marks = [(options["field"], file, _FileMark(index)) for index, file in enumerate(group)]
    segments = multipart_segments(marks, options["form"], boundary)  # type: ignore[arg-type]
    stop = threading.Event()
    try:
        digest = await asyncio.to_thread(_hash_framed, segments, group, stop)
    except asyncio.CancelledError:
        # A thread cannot be cancelled, and the exit waits for it: it stops at its next 1 MiB piece instead.
        stop.set()
        raise
    return {**options, "boundary": boundary, "headers": [*headers, ("Repr-Digest", repr_field(digest))]}


class _FileMark:
    """Where a file's bytes stand among the framing segments (hashed from the file itself)."""

    def __init__(self, index: int) -> None:
        self.index = index


def _hash_framed(segments: Sequence[object], files: list[LocalFile], stop: threading.Event) -> bytes:
    """The framed body's sha256, read 1 MiB at a time; once `stop` is set, it gives up (the result is not used)."""
    sha = hashlib.sha256()
    for segment in segments:
        if isinstance(segment, bytes):
            sha.update(segment)
            continue
        assert isinstance(segment, _FileMark)
        path = files[segment.index].path
        try:
            with open(path, "rb") as handle:
                while not stop.is_set() and (chunk := handle.read(1024 * 1024)):
                    sha.update(chunk)
        except OSError as exc:  # gone or unreadable since it was checked: one line, as when sending it
            raise FileError(f"{path}: {exc.strerror or exc}") from None
        if stop.is_set():
            break
    return sha.digest()


async def upload_all(
    files: list[LocalFile],
    to: str,
    options: dict[str, Any],
    *,
    each: bool,
    jobs: int,
    view: UploadView | None,
    digest: bool = False,
    interrupted: dict[int, UploadResult] | None = None,
) -> list[tuple[list[LocalFile], Outcome]]:
    """Each group of files one request (all files, or one each with `each`), `jobs` at once.

    Cancelled (Ctrl-C), each request that had started leaves how far it got in `interrupted`, by group index.
    """
    tasks = view.add_files(files) if view else []
    groups = [[f] for f in files] if each else [files]
    limits = httpx.Limits(max_connections=jobs * 2 + 2)
    gate = asyncio.Semaphore(jobs)

    async def one(index: int, group: list[LocalFile], client: httpx.AsyncClient) -> Outcome:
        observer = view.request(tasks[index : index + 1] if each else tasks) if view is not None else None
        on_retry = _retry_note(view, observer, group[0].path if each else "")
        keep = _keeper(interrupted, index)
        async with gate:
            try:
                paths = [f.path for f in group]
                own = await _with_digest(group, options) if digest else options
                return await upload_async(
                    paths, to, client=client, observer=observer, on_retry=on_retry, interrupted=keep, **own
                )
            except UploadError as exc:
                return exc
            finally:
                if observer is not None:
                    observer.done()

    async with httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, limits=limits) as client:
        if view is None:
            outcomes = await asyncio.gather(*(one(i, g, client) for i, g in enumerate(groups)))
        else:
            with view:
                outcomes = await asyncio.gather(*(one(i, g, client) for i, g in enumerate(groups)))
    return list(zip(groups, outcomes, strict=True))


def _retry_note(
    view: UploadView | None, observer: RequestProgress | None, label: str
) -> Callable[[RetryDecision], None] | None:
    """What to do before a retry: rewind the request's progress rows and say why on the live display."""
    if view is None or observer is None:
        return None  # no display: the retry shows only in the result's "attempts"
    prefix = f"{label}: " if label else ""

    def note(decision: RetryDecision) -> None:
        observer.restart()
        view.note(f"{prefix}{decision.reason}; retrying in {decision.delay:.1f} s")

    return note
