"""`S3Spool`: resumable uploads on S3-compatible object storage (AWS S3, SeaweedFS, MinIO, ...) through aiobotocore.

Several relays that name the same `s3://BUCKET/PREFIX` share the bytes of every upload, so any relay can take the
next append of any upload (the single writer per upload is the caller's business: relay/spool/base.py Rule 1).

Theory of operation, in four rooms:
- relay/spool/s3_requests.py: the client session (opened and checked once) and each S3 request, mapped onto
  SpoolError.
- relay/spool/s3_layout.py: the objects of an upload (`PREFIX ID.json`, segments `PREFIX ID/<start>.seg`, a tail
  under 5 MiB `PREFIX ID/<start>.tail`), what is durable when, the truth rebuilt from listings after a crash, and
  truncation as far as S3 allows.
- relay/spool/s3_writer.py: the single writer of an append: why one multipart upload per append (its bytes cannot
  be read until completed into a segment), why a tail (every part but the last is at least 5 MiB), backpressure.
- this module: the `Spool` protocol on top. `writer` and `truncate` settle the upload first (adopt an interrupted
  writer's parts into a segment, clear crashes' leftovers), so call them only while holding the upload (Rule 1):
  with several relays, `offset` counts a live writer's uploaded parts too, and `truncate` would complete its
  segment. `read` streams the segments, then the tail, with ranged GETs; it never completes anything, and a read
  that races a commit (the tail became part of a segment) lists again and goes on from where it was. `delete` and
  `delete_data` abort every multipart upload under `PREFIX ID/` and delete its objects, the last first.
  `free_bytes` is None: object storage has no figure to give.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from relay.spool.base import SpoolDataLost, SpoolError
from relay.spool.s3_layout import UPLOAD_ID, UploadObjects

# MAX_PARTS and MIN_PART bound S3Spool's arguments: re-exported here, where the tests and callers look for them.
from relay.spool.s3_requests import MAX_COPY_PART, MAX_PARTS, MIN_PART, S3Requests, error_code, s3_errors
from relay.spool.s3_writer import S3Writer

__all__ = ["MAX_PARTS", "MIN_PART", "PART_SIZE", "S3Spool", "S3Writer"]

PART_SIZE = 8 * 1024 * 1024  # what a writer buffers before uploading a part


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
        self.requests = S3Requests(bucket, self.prefix, endpoint=endpoint, region=region)
        self.objects = UploadObjects(self.requests, self.prefix)

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
        await self.requests.client()

    async def close(self) -> None:
        await self.requests.close()

    # -- the Spool protocol ----------------------------------------------------------------------------------

    async def create(self, upload_id: str, info: bytes) -> None:
        key = self.objects.info_key(upload_id)
        try:
            await self.requests.put(key, info, exclusive=True)  # If-None-Match: * makes the id's taking atomic
        except SpoolError as exc:
            if isinstance(exc.__cause__, ClientError) and error_code(exc.__cause__) in ("PreconditionFailed", "412"):
                raise FileExistsError(f"upload {upload_id!r} exists") from exc
            raise

    async def writer(self, upload_id: str, offset: int) -> S3Writer:
        layout = await self.objects.settle(upload_id)
        if not layout.known:
            raise SpoolError(f"unknown upload {upload_id!r}")
        if layout.size < offset:
            raise SpoolDataLost(f"{upload_id}: {layout.size} bytes stored, {offset} expected")
        if layout.size > offset:  # Rule 2: the append starts where the caller believes the upload ends
            await self.objects.cut(layout, offset)
            layout = await self.objects.scan(upload_id, uploads=False)
        tail = layout.tail
        buffer = bytearray() if tail is None else await self.requests.get_bytes(tail.key, 0, tail.size)
        return S3Writer(
            self.objects, upload_id, offset, tail, buffer, part_size=self.part_size, max_parts=self.max_parts
        )

    async def offset(self, upload_id: str) -> int:
        layout = await self.objects.scan(upload_id, uploads=True)
        if not layout.known:
            raise SpoolError(f"unknown upload {upload_id!r}")
        return layout.size

    async def truncate(self, upload_id: str, size: int) -> None:
        layout = await self.objects.settle(upload_id)
        if not layout.known:
            raise SpoolError(f"unknown upload {upload_id!r}")
        if size < layout.size:
            await self.objects.cut(layout, size)

    async def read(self, upload_id: str, start: int = 0) -> AsyncIterator[bytes]:
        position = start
        for _attempt in range(3):
            layout = await self.objects.scan(upload_id, uploads=False)
            if not layout.known:
                raise SpoolError(f"unknown upload {upload_id!r}")
            try:
                for piece in layout.pieces():
                    if position < piece.end:
                        async for chunk in self.requests.get(piece.key, position - piece.start, piece.size):
                            position += len(chunk)
                            yield chunk
                return
            except KeyError:  # a writer's commit turned the tail into a segment meanwhile: list again, go on
                continue
        raise SpoolError(f"upload {upload_id!r} kept changing while it was read")

    async def save_info(self, upload_id: str, info: bytes) -> None:
        await self.requests.put(self.objects.info_key(upload_id), info)

    async def load_info(self, upload_id: str) -> bytes | None:
        key = self.objects.info_key(upload_id)
        try:
            return bytes(await self.requests.get_bytes(key))
        except SpoolError as exc:
            if isinstance(exc.__cause__, KeyError):
                return None
            raise

    async def delete(self, upload_id: str) -> None:
        await self.delete_data(upload_id)
        await self.requests.delete_keys([self.objects.info_key(upload_id)])

    async def sync(self, upload_id: str) -> None:
        """Nothing to do: what S3 acknowledged is durable."""

    async def delete_data(self, upload_id: str) -> None:
        layout = await self.objects.scan(upload_id, uploads=True)
        uploads = [*layout.stale_uploads]
        if layout.pending is not None:
            uploads.append((layout.pending.key, layout.pending.upload_id))
        for key, multipart_id in uploads:
            await self.requests.abort_multipart(key, multipart_id)
        pieces = [piece.key for piece in reversed(layout.pieces())]  # the last first: a crash leaves a prefix
        await self.requests.delete_keys([*layout.leftovers, *pieces])

    async def list(self) -> list[str]:
        s3, ids = await self.requests.client(), []
        with s3_errors(f"ListObjectsV2 {self.prefix}"):
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self.prefix) :]
                    if name.endswith(".json") and UPLOAD_ID.fullmatch(name[:-5]):
                        ids.append(name[:-5])
        return sorted(ids)

    async def free_bytes(self) -> int | None:
        return None
