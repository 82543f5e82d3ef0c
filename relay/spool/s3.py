"""`S3Spool`: resumable uploads on S3-compatible object storage (AWS S3, SeaweedFS, MinIO, ...) through aiobotocore.

Several relays that name the same `s3://BUCKET/PREFIX` share the bytes of every upload, so any relay can take the
next append of any upload (the single writer per upload is the caller's business: relay/spool/base.py Rule 1).

Layout, for an upload `ID` under `PREFIX`:
- `PREFIX ID.json`: the info document. A PUT replaces an object atomically (Rule 4).
- `PREFIX ID/<start>.seg`: segments, completed objects of at least 5 MiB; `<start>` (16 digits) is the offset of
  their first byte. Segments follow each other without a gap from offset 0.
- `PREFIX ID/<start>.tail`: the tail, under 5 MiB, the bytes after the last segment. Valid only when `<start>` is
  where the segments end; any other tail is a leftover of a crash and ignored.
- at most one open multipart upload on the key of the segment that the current writer is building.

Why an S3 multipart upload per append, not one per upload. The bytes of an open multipart upload cannot be read
(GetObject and UploadPartCopy take completed objects only; tusd's s3store answers "cannot stream non-finished
upload"), and no single part can be deleted. The relay reads an upload's bytes while the writer of its completing
append is still open (cut-through: relay/resumable/forward.py streams the spooled bytes, then the live ones), and
drops a whole append on a checksum mismatch (`discard`). So each writer builds its own segment: its parts go into a
multipart upload that nobody reads, `commit` completes it into a segment object (readable from then on), and
`discard` aborts it (its parts vanish at once, nothing else was touched). Every byte already committed sits in
completed objects, which ranged GETs stream at any time.

Why a tail. Every part but the last must be at least 5 MiB, and an append may be a byte. A writer opens with the
current tail read into its buffer, and uploads the buffer as a part each time it holds `part_size` bytes: at most
one part per upload is in memory (for an instant two: the part and its copy as the request body), and `write`
waits while a part uploads (the backpressure). At `commit`, a writer that uploaded parts sends what is left as the
last part (of any size) and completes its segment; one that did not PUTs its buffer as the new tail when it is
under 5 MiB (same key: the old tail is replaced atomically), as a segment otherwise. This is tusd's "incomplete
part". `read` streams the segments, then the tail, with ranged GETs; it never completes anything, and a read
that races a commit (the tail became part of a segment) lists again and goes on from where it was.

What is durable when. A part is durable once UploadPart returns; the tail and a segment once their PUT or
CompleteMultipartUpload returns. The bytes in a writer's buffer (under one part) are not durable until
`commit`/`abort`. After a crash (`kill -9` mid-append), the truth is rebuilt from the listings: the segments, then
either the tail or, if an interrupted writer's multipart upload starts where the segments end and has parts, those
parts (ListParts: they begin with the old tail's bytes, since the writer's buffer did). That is always a prefix of
what was handed over, as on disk. `writer` and `truncate` adopt such a multipart upload (complete it into a segment;
the old tail becomes a leftover) and clear leftovers, so call them only while holding the upload (Rule 1): with
several relays, `offset` counts a live writer's uploaded parts too, and `truncate` would complete its segment.
`delete` and `delete_data` abort every multipart upload under `PREFIX ID/` and delete its objects, the last first.

`truncate(size)`, as far as S3 allows: a tail is cut by rewriting it (read, PUT); segments past `size` are deleted,
the last first; a segment that `size` cuts is replaced either by a tail (the kept bytes are under 5 MiB: a ranged
read, then a PUT) or by a server-side copy of its kept bytes onto its own key (UploadPartCopy with ranges, then
CompleteMultipartUpload, which replaces the object atomically). No step leaves anything but a prefix of the data.

A writer that fills `max_parts` parts (10,000, S3's limit) completes its segment and starts the next one, so an
append has no size limit but the object store's own. `free_bytes` is None: object storage has no figure to give.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from relay.spool.base import SpoolDataLost, SpoolError

if TYPE_CHECKING:  # types-aiobotocore[s3], a test extra: only mypy needs it
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef, PartTypeDef

__all__ = ["MAX_PARTS", "MIN_PART", "PART_SIZE", "S3Spool", "S3Writer"]

MIN_PART = 5 * 1024 * 1024  # S3: every part of a multipart upload but the last is at least this
PART_SIZE = 8 * 1024 * 1024  # what a writer buffers before uploading a part
MAX_PARTS = 10_000  # S3: part numbers 1 to 10,000
MAX_COPY_PART = 5 * 1024 * 1024 * 1024  # S3: the largest part UploadPartCopy takes
# Under the 1 MiB mmap threshold relay/tuning.py pins: a 1 MiB read buffer was mmapped and unmapped each time,
# 259,000 page faults per GiB forwarded from the spool (benchmarks/RESULTS.md, run 8); 1 MiB - 64 KiB: a few.
READ_CHUNK = 1024 * 1024 - 64 * 1024
_DELETE_BATCH = 1000  # S3: DeleteObjects takes at most 1,000 keys
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the relay's upload ids (relay/headers.py); never a path
_PIECE = re.compile(r"(\d{16})\.(seg|tail)")


@dataclass(frozen=True, slots=True)
class _Piece:
    """A completed object holding the upload's bytes [start, start + size)."""

    key: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(slots=True)
class _Multipart:
    """An open multipart upload building the segment that starts at `start`."""

    key: str
    upload_id: str
    start: int
    parts: list[CompletedPartTypeDef] = field(default_factory=list)
    size: int = 0


@dataclass(slots=True)
class _Layout:
    """What the listings say about one upload (see the module docstring)."""

    known: bool  # its info document exists
    segments: list[_Piece]
    tail: _Piece | None
    leftovers: list[str]  # keys that are not part of the data: crashes' tails, segments past a gap
    pending: _Multipart | None = None  # an interrupted writer's parts, which continue the segments
    stale_uploads: list[tuple[str, str]] = field(default_factory=list)

    @property
    def end(self) -> int:
        """Where the segments end: the tail's (or the pending parts') start."""
        return self.segments[-1].end if self.segments else 0

    @property
    def size(self) -> int:
        """The durable size: the truth after a crash."""
        if self.pending is not None:
            return self.pending.start + self.pending.size
        return self.tail.end if self.tail is not None else self.end

    def pieces(self) -> list[_Piece]:
        """The readable objects, in order (the pending parts cannot be read: they are adopted first)."""
        return [*self.segments, self.tail] if self.tail is not None else list(self.segments)


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """The glue knows SpoolError and OSError: S3's and the HTTP client's failures become SpoolError."""
    try:
        yield
    except ClientError as exc:
        raise SpoolError(f"S3 {what}: {_code(exc)}: {exc}") from exc
    except (BotoCoreError, aiohttp.ClientError) as exc:
        raise SpoolError(f"S3 {what}: {exc}") from exc


def _blob(body: bytes) -> io.BytesIO:
    """A body aiohttp streams (raw bytes over 2 MiB make it warn); BytesIO shares a bytes object, no copy."""
    return io.BytesIO(body)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _missing(exc: ClientError) -> bool:
    return _code(exc) in ("NoSuchKey", "404", "NotFound", "NoSuchUpload")


class S3Writer:
    """The single writer of one upload (relay/spool/base.py SpoolWriter): builds one segment at a time."""

    def __init__(self, spool: S3Spool, upload_id: str, start: int, tail: _Piece | None, buffer: bytearray) -> None:
        self._spool = spool
        self._upload_id = upload_id
        self._start = start
        self._handed = 0
        self._old_tail = tail  # kept until commit, so that discard has it back
        self._segment_start = tail.start if tail is not None else start
        self._buffer = buffer  # the old tail's bytes, then the new ones: at most one part (plus one chunk)
        self._multipart: _Multipart | None = None
        self._created: list[str] = []  # segments this writer completed (a writer past max_parts)
        self._error: SpoolError | None = None
        self._closed = False

    @property
    def start(self) -> int:
        return self._start

    @property
    def handed(self) -> int:
        return self._handed

    async def write(self, chunk: bytes) -> None:
        if self._closed:
            raise SpoolError("this spool writer is closed")
        self._check_error()
        if not chunk:
            return
        self._buffer += chunk  # a copy: the caller may reuse its buffer
        self._handed += len(chunk)
        if len(self._buffer) >= self._spool.part_size:
            try:
                await self._flush_part()  # the backpressure: the next chunk waits for this part
            except SpoolError as exc:
                self._error = exc
                raise

    def _check_error(self) -> None:
        if self._error is not None:
            raise SpoolError(f"spool write failed: {self._error}") from self._error

    async def _flush_part(self) -> None:
        """Upload the buffer as the next part (after completing a segment that has max_parts parts)."""
        spool = self._spool
        await self._roll_over_if_full()
        if self._multipart is None:
            key = spool._segment_key(self._upload_id, self._segment_start)
            self._multipart = _Multipart(key, await spool._create_multipart(key), self._segment_start)
        body, self._buffer = bytes(self._buffer), bytearray()  # one part in memory again once the copy is made
        try:
            await spool._upload_part(self._multipart, body)
        except BaseException:
            # Failed or cancelled: the bytes stay handed over. An abort uploads them again under the same part
            # number, which replaces the part if S3 got it after all: `handed` is always what is stored.
            restored = bytearray(body)
            restored += self._buffer
            self._buffer = restored
            raise

    async def _roll_over_if_full(self) -> None:
        """A segment past S3's part limit: complete it, the next part starts the next segment."""
        multipart = self._multipart
        if multipart is not None and len(multipart.parts) >= self._spool.max_parts:
            await self._spool._complete(multipart)
            self._created.append(multipart.key)
            self._segment_start += multipart.size
            self._multipart = None

    async def commit(self, *, sync: bool = True) -> int:  # S3 keeps what it acknowledged: always durable
        """Upload what is buffered (even after a failed part: its bytes are still here) and complete the segment.

        If S3 fails again, SpoolError: the caller goes back to where the append began, and the parts that made it
        stay in the open multipart upload, which the next writer adopts and then cuts (Rule 2)."""
        self._close()
        await self._keep()
        return self._start + self._handed

    async def abort(self) -> int:
        """Keeps everything handed over, as commit does: the bytes are in memory, S3 takes them at once."""
        return await self.commit()

    async def discard(self) -> int:
        self._close()
        spool = self._spool
        if self._multipart is not None:
            await spool._abort_multipart(self._multipart.key, self._multipart.upload_id)
        for key in reversed(self._created):  # the last first: what is left is always a prefix
            await spool._delete_keys([key])
        return self._start  # the old tail was never touched: it is valid again

    def _close(self) -> None:
        if self._closed:
            raise SpoolError("this spool writer is closed")
        self._closed = True

    async def _keep(self) -> None:
        spool, buffer = self._spool, bytes(self._buffer)
        self._buffer = bytearray()
        if buffer:
            await self._roll_over_if_full()
        if self._multipart is not None:
            if buffer:
                await spool._upload_part(self._multipart, buffer)  # the last part may be of any size
            await spool._complete(self._multipart)
            self._created.append(self._multipart.key)
        elif len(buffer) >= MIN_PART:
            key = spool._segment_key(self._upload_id, self._segment_start)
            await spool._put(key, buffer)
            self._created.append(key)
        elif self._handed and buffer:
            await spool._put(spool._tail_key(self._upload_id, self._segment_start), buffer)  # replaces the old tail
        if self._created and self._old_tail is not None:
            await spool._delete_keys([self._old_tail.key])  # a leftover now: a segment covers its start


class S3Spool:
    """The `Spool` on an S3 bucket (relay/spool/base.py); see the module docstring."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        part_size: int = PART_SIZE,
        max_parts: int = MAX_PARTS,
    ) -> None:
        if not bucket:
            raise ValueError("the S3 spool needs a bucket: s3://BUCKET/PREFIX")
        if not MIN_PART <= part_size <= MAX_COPY_PART:
            raise ValueError(f"part_size must be between {MIN_PART} and {MAX_COPY_PART} bytes")
        if not 1 <= max_parts <= MAX_PARTS:
            raise ValueError(f"max_parts must be between 1 and {MAX_PARTS}")
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.endpoint = endpoint
        self.region = region
        self.part_size = part_size
        self.max_parts = max_parts
        self._stack: contextlib.AsyncExitStack | None = None
        self._s3: S3Client | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        part_size: int = PART_SIZE,
        max_parts: int = MAX_PARTS,
    ) -> S3Spool:
        """`s3://BUCKET/PREFIX` (the `--spool` value); credentials and region from the usual AWS_* variables."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an S3 spool location (s3://BUCKET/PREFIX): {url!r}")
        prefix = parts.path.lstrip("/")
        return cls(parts.netloc, prefix, endpoint=endpoint, region=region, part_size=part_size, max_parts=max_parts)

    # -- the client ------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the client and check the bucket (every method does it first): a ValueError of one line if it fails."""
        await self._client()

    async def _client(self) -> S3Client:
        if self._s3 is not None:
            return self._s3
        session = get_session()  # credentials and region: AWS_* variables, ~/.aws, as every AWS tool
        region = self.region or session.get_config_variable("region") or "us-east-1"
        config = AioConfig(
            # botocore >= 1.36 adds CRC checksums to every upload by default; third-party S3 servers reject them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Path-style (endpoint/bucket/key) for self-hosted servers, which rarely have per-bucket host names.
            s3={"addressing_style": "path" if self._custom_endpoint() else "auto"},
            retries={"max_attempts": 3, "mode": "standard"},  # a refused connection fails in ~2 s, not 6
            max_pool_connections=32,
        )
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            session.create_client("s3", region_name=region, endpoint_url=self.endpoint, config=config)
        )
        try:
            await client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError, aiohttp.ClientError) as exc:
            await stack.aclose()
            where = f" at {self.endpoint}" if self.endpoint else ""
            reason = "no such bucket" if isinstance(exc, ClientError) and _missing(exc) else str(exc).splitlines()[0]
            raise ValueError(f"S3 spool s3://{self.bucket}/{self.prefix}{where}: {reason}") from exc
        if self._s3 is not None:  # another task connected meanwhile: keep one client
            await stack.aclose()
            return self._s3
        self._stack, self._s3 = stack, client
        return client

    def _custom_endpoint(self) -> bool:
        """Not AWS: an endpoint given, or one in botocore's own variables (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL)."""
        return bool(self.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._s3 = self._stack, None, None
            await stack.aclose()

    # -- keys ------------------------------------------------------------------------------------------------

    def _info_key(self, upload_id: str) -> str:
        if not _ID.fullmatch(upload_id):
            raise SpoolError(f"not an upload id: {upload_id!r}")
        return f"{self.prefix}{upload_id}.json"

    def _folder(self, upload_id: str) -> str:
        if not _ID.fullmatch(upload_id):
            raise SpoolError(f"not an upload id: {upload_id!r}")
        return f"{self.prefix}{upload_id}/"

    def _segment_key(self, upload_id: str, start: int) -> str:
        return f"{self._folder(upload_id)}{start:016d}.seg"

    def _tail_key(self, upload_id: str, start: int) -> str:
        return f"{self._folder(upload_id)}{start:016d}.tail"

    # -- S3 operations, each one request (or one paginated listing) ------------------------------------------

    async def _put(self, key: str, body: bytes, *, exclusive: bool = False) -> None:
        s3 = await self._client()
        with _s3_errors(f"PUT {key}"):
            if exclusive:
                await s3.put_object(Bucket=self.bucket, Key=key, Body=_blob(body), IfNoneMatch="*")
            else:
                await s3.put_object(Bucket=self.bucket, Key=key, Body=_blob(body))

    async def _get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The object's bytes from `start` (to `end`, exclusive), streamed. KeyError if it is gone."""
        s3 = await self._client()
        span = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        with _s3_errors(f"GET {key}"):
            try:
                if start == 0 and end is None:
                    response = await s3.get_object(Bucket=self.bucket, Key=key)
                else:
                    response = await s3.get_object(Bucket=self.bucket, Key=key, Range=span)
            except ClientError as exc:
                if _missing(exc):
                    raise KeyError(key) from exc
                raise
            async with response["Body"] as body:
                while chunk := await body.read(READ_CHUNK):
                    yield chunk

    async def _get_bytes(self, key: str, start: int = 0, end: int | None = None) -> bytearray:
        data = bytearray()
        try:
            async for chunk in self._get(key, start, end):
                data += chunk
        except KeyError as exc:
            raise SpoolError(f"S3 GET {key}: the object is gone") from exc
        return data

    async def _delete_keys(self, keys: Iterable[str]) -> None:
        s3, batch = await self._client(), list(keys)
        for first in range(0, len(batch), _DELETE_BATCH):
            objects = [{"Key": key} for key in batch[first : first + _DELETE_BATCH]]
            with _s3_errors("DeleteObjects"):
                answer = await s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})  # type: ignore[typeddict-item]
            if errors := answer.get("Errors"):
                raise SpoolError(f"S3 DeleteObjects: {errors[0].get('Key')}: {errors[0].get('Code')}")

    async def _create_multipart(self, key: str) -> str:
        s3 = await self._client()
        with _s3_errors(f"CreateMultipartUpload {key}"):
            return (await s3.create_multipart_upload(Bucket=self.bucket, Key=key))["UploadId"]

    async def _upload_part(self, multipart: _Multipart, body: bytes) -> None:
        s3, number = await self._client(), len(multipart.parts) + 1
        with _s3_errors(f"UploadPart {multipart.key} #{number}"):
            answer = await s3.upload_part(
                Bucket=self.bucket, Key=multipart.key, UploadId=multipart.upload_id, PartNumber=number, Body=_blob(body)
            )
        multipart.parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        multipart.size += len(body)

    async def _complete(self, multipart: _Multipart) -> None:
        s3 = await self._client()
        with _s3_errors(f"CompleteMultipartUpload {multipart.key}"):
            await s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=multipart.key,
                UploadId=multipart.upload_id,
                MultipartUpload={"Parts": multipart.parts},
            )

    async def _abort_multipart(self, key: str, upload_id: str) -> None:
        s3 = await self._client()
        with _s3_errors(f"AbortMultipartUpload {key}"):
            try:
                await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError as exc:
                if not _missing(exc):  # already gone: what was asked
                    raise

    async def _parts(self, key: str, upload_id: str, start: int) -> _Multipart:
        """An open multipart upload's parts 1..n without a gap (ListParts), as a writer would have left them."""
        s3, listed = await self._client(), dict[int, "PartTypeDef"]()
        with _s3_errors(f"ListParts {key}"):
            paginator = s3.get_paginator("list_parts")
            async for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                for part in page.get("Parts", []):
                    listed.setdefault(part["PartNumber"], part)
        multipart = _Multipart(key, upload_id, start)
        while (next_part := listed.get(len(multipart.parts) + 1)) is not None:
            multipart.parts.append({"PartNumber": next_part["PartNumber"], "ETag": next_part["ETag"]})
            multipart.size += next_part["Size"]
        return multipart

    # -- the layout ------------------------------------------------------------------------------------------

    async def _scan(self, upload_id: str, *, uploads: bool) -> _Layout:
        """List the upload's objects (and, with `uploads`, its open multipart uploads) into a layout."""
        info, folder = self._info_key(upload_id), self._folder(upload_id)
        s3, known = await self._client(), False
        found: dict[str, dict[int, int]] = {"seg": {}, "tail": {}}
        with _s3_errors(f"ListObjectsV2 {folder}"):
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + upload_id):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    known = known or key == info
                    if key.startswith(folder) and (match := _PIECE.fullmatch(key[len(folder) :])):
                        found[match.group(2)][int(match.group(1))] = obj["Size"]
        layout = _Layout(known, [], None, [])
        for start in sorted(found["seg"]):  # the chain from offset 0; a segment past a gap is a leftover
            key = self._segment_key(upload_id, start)
            if start == layout.end:
                layout.segments.append(_Piece(key, start, found["seg"][start]))
            else:
                layout.leftovers.append(key)
        for start, size in found["tail"].items():
            key = self._tail_key(upload_id, start)
            if start == layout.end and size > 0 and layout.tail is None:
                layout.tail = _Piece(key, start, size)
            else:
                layout.leftovers.append(key)
        if uploads:
            await self._scan_uploads(upload_id, layout)
        return layout

    async def _scan_uploads(self, upload_id: str, layout: _Layout) -> None:
        """An interrupted writer's multipart upload continues the data if it starts where the segments end."""
        s3, expected = await self._client(), self._segment_key(upload_id, layout.end)
        with _s3_errors("ListMultipartUploads"):
            paginator = s3.get_paginator("list_multipart_uploads")
            listed = [
                (upload["Key"], upload["UploadId"])
                async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._folder(upload_id))
                for upload in page.get("Uploads", [])
            ]
        for key, multipart_id in listed:
            if key == expected and layout.pending is None:
                multipart = await self._parts(key, multipart_id, layout.end)
                if multipart.size > 0:  # its first part holds the old tail and more: it supersedes the tail
                    layout.pending = multipart
                    continue
            layout.stale_uploads.append((key, multipart_id))

    async def _settle(self, upload_id: str) -> _Layout:
        """Adopt an interrupted writer's parts as a segment, then clear what crashes left behind."""
        layout = await self._scan(upload_id, uploads=True)
        if layout.pending is not None:
            pending, layout.pending = layout.pending, None
            await self._complete(pending)
            layout.segments.append(_Piece(pending.key, pending.start, pending.size))
            if layout.tail is not None:
                layout.leftovers.append(layout.tail.key)
                layout.tail = None
        for key, multipart_id in layout.stale_uploads:
            await self._abort_multipart(key, multipart_id)
        layout.stale_uploads = []
        if layout.leftovers:
            await self._delete_keys(layout.leftovers)
            layout.leftovers = []
        return layout

    async def _cut(self, layout: _Layout, size: int) -> None:
        """Drop the bytes past `size` (see the module docstring); every step leaves a prefix of the data."""
        tail = layout.tail
        if tail is not None and size >= tail.start:
            if size == tail.start:
                await self._delete_keys([tail.key])
            elif size < tail.end:
                await self._put(tail.key, bytes(await self._get_bytes(tail.key, 0, size - tail.start)))
            return
        if tail is not None:
            await self._delete_keys([tail.key])
        for segment in reversed(layout.segments):
            if segment.end <= size:
                return
            if segment.start >= size:
                await self._delete_keys([segment.key])
            elif size - segment.start < MIN_PART:  # the kept bytes become the tail, then the segment goes
                kept = bytes(await self._get_bytes(segment.key, 0, size - segment.start))
                await self._put(segment.key.removesuffix(".seg") + ".tail", kept)
                await self._delete_keys([segment.key])
            else:
                await self._copy_cut(segment, size - segment.start)

    async def _copy_cut(self, segment: _Piece, keep: int) -> None:
        """Replace `segment` by its first `keep` bytes, copied on the server onto its own key."""
        s3 = await self._client()
        multipart = _Multipart(segment.key, await self._create_multipart(segment.key), segment.start)
        try:
            for first in range(0, keep, MAX_COPY_PART):
                last, number = min(first + MAX_COPY_PART, keep) - 1, len(multipart.parts) + 1
                with _s3_errors(f"UploadPartCopy {segment.key}"):
                    answer = await s3.upload_part_copy(
                        Bucket=self.bucket,
                        Key=segment.key,
                        UploadId=multipart.upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": segment.key},
                        CopySourceRange=f"bytes={first}-{last}",
                    )
                multipart.parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            await self._complete(multipart)
        except BaseException:
            with contextlib.suppress(SpoolError):
                await self._abort_multipart(multipart.key, multipart.upload_id)
            raise

    # -- the Spool protocol ----------------------------------------------------------------------------------

    async def create(self, upload_id: str, info: bytes) -> None:
        key = self._info_key(upload_id)
        try:
            await self._put(key, info, exclusive=True)  # If-None-Match: * makes the id's taking atomic
        except SpoolError as exc:
            if isinstance(exc.__cause__, ClientError) and _code(exc.__cause__) in ("PreconditionFailed", "412"):
                raise FileExistsError(f"upload {upload_id!r} exists") from exc
            raise

    async def writer(self, upload_id: str, offset: int) -> S3Writer:
        layout = await self._settle(upload_id)
        if not layout.known:
            raise SpoolError(f"unknown upload {upload_id!r}")
        if layout.size < offset:
            raise SpoolDataLost(f"{upload_id}: {layout.size} bytes stored, {offset} expected")
        if layout.size > offset:  # Rule 2: the append starts where the caller believes the upload ends
            await self._cut(layout, offset)
            layout = await self._scan(upload_id, uploads=False)
        tail = layout.tail
        buffer = bytearray() if tail is None else await self._get_bytes(tail.key, 0, tail.size)
        return S3Writer(self, upload_id, offset, tail, buffer)

    async def offset(self, upload_id: str) -> int:
        layout = await self._scan(upload_id, uploads=True)
        if not layout.known:
            raise SpoolError(f"unknown upload {upload_id!r}")
        return layout.size

    async def truncate(self, upload_id: str, size: int) -> None:
        layout = await self._settle(upload_id)
        if not layout.known:
            raise SpoolError(f"unknown upload {upload_id!r}")
        if size < layout.size:
            await self._cut(layout, size)

    async def read(self, upload_id: str, start: int = 0) -> AsyncIterator[bytes]:
        position = start
        for _attempt in range(3):
            layout = await self._scan(upload_id, uploads=False)
            if not layout.known:
                raise SpoolError(f"unknown upload {upload_id!r}")
            try:
                for piece in layout.pieces():
                    if position < piece.end:
                        async for chunk in self._get(piece.key, position - piece.start, piece.size):
                            position += len(chunk)
                            yield chunk
                return
            except KeyError:  # a writer's commit turned the tail into a segment meanwhile: list again, go on
                continue
        raise SpoolError(f"upload {upload_id!r} kept changing while it was read")

    async def save_info(self, upload_id: str, info: bytes) -> None:
        await self._put(self._info_key(upload_id), info)

    async def load_info(self, upload_id: str) -> bytes | None:
        key = self._info_key(upload_id)
        try:
            return bytes(await self._get_bytes(key))
        except SpoolError as exc:
            if isinstance(exc.__cause__, KeyError):
                return None
            raise

    async def delete(self, upload_id: str) -> None:
        await self.delete_data(upload_id)
        await self._delete_keys([self._info_key(upload_id)])

    async def sync(self, upload_id: str) -> None:
        """Nothing to do: what S3 acknowledged is durable."""

    async def delete_data(self, upload_id: str) -> None:
        layout = await self._scan(upload_id, uploads=True)
        uploads = [*layout.stale_uploads]
        if layout.pending is not None:
            uploads.append((layout.pending.key, layout.pending.upload_id))
        for key, multipart_id in uploads:
            await self._abort_multipart(key, multipart_id)
        pieces = [piece.key for piece in reversed(layout.pieces())]  # the last first: a crash leaves a prefix
        await self._delete_keys([*layout.leftovers, *pieces])

    async def list(self) -> list[str]:
        s3, ids = await self._client(), []
        with _s3_errors(f"ListObjectsV2 {self.prefix}"):
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self.prefix) :]
                    if name.endswith(".json") and _ID.fullmatch(name[:-5]):
                        ids.append(name[:-5])
        return sorted(ids)

    async def free_bytes(self) -> int | None:
        return None
