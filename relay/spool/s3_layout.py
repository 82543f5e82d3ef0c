"""`UploadObjects`: where an upload's bytes sit in the S3 spool's bucket, and the truth rebuilt from listings.

Layout, for an upload `ID` under `PREFIX`:
- `PREFIX ID.json`: the info document. A PUT replaces an object atomically (relay/spool/base.py Rule 4).
- `PREFIX ID/<start>.seg`: segments, completed objects of at least 5 MiB; `<start>` (16 digits) is the offset of
  their first byte. Segments follow each other without a gap from offset 0.
- `PREFIX ID/<start>.tail`: the tail, under 5 MiB, the bytes after the last segment. Valid only when `<start>` is
  where the segments end; any other tail is a leftover of a crash and ignored.
- at most one open multipart upload on the key of the segment that the current writer is building
  (relay/spool/s3_writer.py).

What is durable when. A part is durable once UploadPart returns; the tail and a segment once their PUT or
CompleteMultipartUpload returns. The bytes in a writer's buffer (under one part) are not durable until
`commit`/`abort`. After a crash (`kill -9` mid-append), the truth is rebuilt from the listings (`scan`): the
segments, then either the tail or, if an interrupted writer's multipart upload starts where the segments end and has
parts, those parts (ListParts: they begin with the old tail's bytes, since the writer's buffer did). That is always a
prefix of what was handed over, as on disk. `settle` adopts such a multipart upload (complete it into a segment; the
old tail becomes a leftover) and clears leftovers, so the spool calls it only while holding the upload (base.py
Rule 1): with several relays, the size counts a live writer's uploaded parts too, and settling would complete its
segment.

`cut(size)`, truncation as far as S3 allows: a tail is cut by rewriting it (read, PUT); segments past `size` are
deleted, the last first; a segment that `size` cuts is replaced either by a tail (the kept bytes are under 5 MiB: a
ranged read, then a PUT) or by a server-side copy of its kept bytes onto its own key (UploadPartCopy with ranges,
then CompleteMultipartUpload, which replaces the object atomically). No step leaves anything but a prefix of the
data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from relay.spool.base import SpoolError
from relay.spool.s3_requests import MIN_PART, Multipart, S3Requests, s3_errors

__all__ = ["UPLOAD_ID", "Layout", "Piece", "UploadObjects"]

UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the relay's upload ids (relay/headers.py); never a path
_PIECE = re.compile(r"(\d{16})\.(seg|tail)")


@dataclass(frozen=True, slots=True)
class Piece:
    """A completed object holding the upload's bytes [start, start + size)."""

    key: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(slots=True)
class Layout:
    """What the listings say about one upload (see the module docstring)."""

    known: bool  # its info document exists
    segments: list[Piece]
    tail: Piece | None
    leftovers: list[str]  # keys that are not part of the data: crashes' tails, segments past a gap
    pending: Multipart | None = None  # an interrupted writer's parts, which continue the segments
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

    def pieces(self) -> list[Piece]:
        """The readable objects, in order (the pending parts cannot be read: they are adopted first)."""
        return [*self.segments, self.tail] if self.tail is not None else list(self.segments)


class UploadObjects:
    """The keys of the uploads under `prefix`, and what their listings say (see the module docstring)."""

    def __init__(self, requests: S3Requests, prefix: str) -> None:
        self.requests = requests
        self.prefix = prefix

    # -- keys ------------------------------------------------------------------------------------------------

    def info_key(self, upload_id: str) -> str:
        if not UPLOAD_ID.fullmatch(upload_id):
            raise SpoolError(f"not an upload id: {upload_id!r}")
        return f"{self.prefix}{upload_id}.json"

    def folder(self, upload_id: str) -> str:
        if not UPLOAD_ID.fullmatch(upload_id):
            raise SpoolError(f"not an upload id: {upload_id!r}")
        return f"{self.prefix}{upload_id}/"

    def segment_key(self, upload_id: str, start: int) -> str:
        return f"{self.folder(upload_id)}{start:016d}.seg"

    def tail_key(self, upload_id: str, start: int) -> str:
        return f"{self.folder(upload_id)}{start:016d}.tail"

    # -- the layout ------------------------------------------------------------------------------------------

    async def scan(self, upload_id: str, *, uploads: bool) -> Layout:
        """List the upload's objects (and, with `uploads`, its open multipart uploads) into a layout."""
        info, folder = self.info_key(upload_id), self.folder(upload_id)
        s3, known = await self.requests.client(), False
        found: dict[str, dict[int, int]] = {"seg": {}, "tail": {}}
        with s3_errors(f"ListObjectsV2 {folder}"):
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.requests.bucket, Prefix=self.prefix + upload_id):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    known = known or key == info
                    if key.startswith(folder) and (match := _PIECE.fullmatch(key[len(folder) :])):
                        found[match.group(2)][int(match.group(1))] = obj["Size"]
        layout = Layout(known, [], None, [])
        for start in sorted(found["seg"]):  # the chain from offset 0; a segment past a gap is a leftover
            key = self.segment_key(upload_id, start)
            if start == layout.end:
                layout.segments.append(Piece(key, start, found["seg"][start]))
            else:
                layout.leftovers.append(key)
        for start, size in found["tail"].items():
            key = self.tail_key(upload_id, start)
            if start == layout.end and size > 0 and layout.tail is None:
                layout.tail = Piece(key, start, size)
            else:
                layout.leftovers.append(key)
        if uploads:
            await self._scan_uploads(upload_id, layout)
        return layout

    async def _scan_uploads(self, upload_id: str, layout: Layout) -> None:
        """An interrupted writer's multipart upload continues the data if it starts where the segments end."""
        s3, expected = await self.requests.client(), self.segment_key(upload_id, layout.end)
        with s3_errors("ListMultipartUploads"):
            paginator = s3.get_paginator("list_multipart_uploads")
            listed = [
                (upload["Key"], upload["UploadId"])
                async for page in paginator.paginate(Bucket=self.requests.bucket, Prefix=self.folder(upload_id))
                for upload in page.get("Uploads", [])
            ]
        for key, multipart_id in listed:
            if key == expected and layout.pending is None:
                multipart = await self.requests.parts(key, multipart_id, layout.end)
                if multipart.size > 0:  # its first part holds the old tail and more: it supersedes the tail
                    layout.pending = multipart
                    continue
            layout.stale_uploads.append((key, multipart_id))

    async def settle(self, upload_id: str) -> Layout:
        """Adopt an interrupted writer's parts as a segment, then clear what crashes left behind."""
        layout = await self.scan(upload_id, uploads=True)
        if layout.pending is not None:
            pending, layout.pending = layout.pending, None
            await self.requests.complete(pending)
            layout.segments.append(Piece(pending.key, pending.start, pending.size))
            if layout.tail is not None:
                layout.leftovers.append(layout.tail.key)
                layout.tail = None
        for key, multipart_id in layout.stale_uploads:
            await self.requests.abort_multipart(key, multipart_id)
        layout.stale_uploads = []
        if layout.leftovers:
            await self.requests.delete_keys(layout.leftovers)
            layout.leftovers = []
        return layout

    async def cut(self, layout: Layout, size: int) -> None:
        """Drop the bytes past `size` (see the module docstring); every step leaves a prefix of the data."""
        tail = layout.tail
        if tail is not None and size >= tail.start:
            if size == tail.start:
                await self.requests.delete_keys([tail.key])
            elif size < tail.end:
                await self.requests.put(tail.key, bytes(await self.requests.get_bytes(tail.key, 0, size - tail.start)))
            return
        if tail is not None:
            await self.requests.delete_keys([tail.key])
        for segment in reversed(layout.segments):
            if segment.end <= size:
                return
            if segment.start >= size:
                await self.requests.delete_keys([segment.key])
            elif size - segment.start < MIN_PART:  # the kept bytes become the tail, then the segment goes
                kept = bytes(await self.requests.get_bytes(segment.key, 0, size - segment.start))
                await self.requests.put(segment.key.removesuffix(".seg") + ".tail", kept)
                await self.requests.delete_keys([segment.key])
            else:
                await self.requests.copy_cut(segment.key, segment.start, size - segment.start)
