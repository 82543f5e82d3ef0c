"""`S3Requests`: the S3 spool's client session and its one-request operations, each mapped onto SpoolError.

Theory of operation. One aiobotocore client per spool, opened on first use (`client`) and checked with a
HeadBucket, so a wrong bucket or endpoint fails at start-up in one line (ValueError) rather than on the first
upload. Two tasks may open it at once: the second one's client is closed and the first kept. The client is
configured for S3-compatible servers as well as AWS: no default CRC checksums (botocore >= 1.36 adds them; third
party servers reject them), path-style addressing when an endpoint is given, 3 attempts in standard retry mode.

Every method below is one S3 request (or one paginated listing) on a key, knows nothing of uploads, and raises
SpoolError for S3's and the HTTP client's failures (`s3_errors`): the glue above the spool knows SpoolError and
OSError only. `get` raises KeyError for an object that is gone, which a reader racing a commit relies on
(relay/spool/s3.py `read`). What the keys mean is relay/spool/s3_layout.py's business.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from relay.spool.base import SpoolError

if TYPE_CHECKING:  # types-aiobotocore[s3], a test extra: only mypy needs it
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef, PartTypeDef

__all__ = ["MAX_COPY_PART", "MAX_PARTS", "MIN_PART", "READ_CHUNK", "Multipart", "S3Requests", "error_code", "s3_errors"]

MIN_PART = 5 * 1024 * 1024  # S3: every part of a multipart upload but the last is at least this
MAX_PARTS = 10_000  # S3: part numbers 1 to 10,000
MAX_COPY_PART = 5 * 1024 * 1024 * 1024  # S3: the largest part UploadPartCopy takes
# Under the 1 MiB mmap threshold relay/tuning.py pins: a 1 MiB read buffer was mmapped and unmapped each time,
# 259,000 page faults per GiB forwarded from the spool (benchmarks/RESULTS.md, run 8); 1 MiB - 64 KiB: a few.
READ_CHUNK = 1024 * 1024 - 64 * 1024
_DELETE_BATCH = 1000  # S3: DeleteObjects takes at most 1,000 keys


@dataclass(slots=True)
class Multipart:
    """An open multipart upload building the segment that starts at `start`."""

    key: str
    upload_id: str
    start: int
    parts: list[CompletedPartTypeDef] = field(default_factory=list)
    size: int = 0


@contextlib.contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """The glue knows SpoolError and OSError: S3's and the HTTP client's failures become SpoolError."""
    try:
        yield
    except ClientError as exc:
        raise SpoolError(f"S3 {what}: {error_code(exc)}: {exc}") from exc
    except (BotoCoreError, aiohttp.ClientError) as exc:
        raise SpoolError(f"S3 {what}: {exc}") from exc


def _blob(body: bytes) -> io.BytesIO:
    """A body aiohttp streams (raw bytes over 2 MiB make it warn); BytesIO shares a bytes object, no copy."""
    return io.BytesIO(body)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _missing(exc: ClientError) -> bool:
    return error_code(exc) in ("NoSuchKey", "404", "NotFound", "NoSuchUpload")


class S3Requests:
    """One bucket's client and the S3 requests the spool makes; `prefix` only names the spool in errors."""

    def __init__(self, bucket: str, prefix: str, *, endpoint: str | None, region: str | None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.region = region
        self._stack: contextlib.AsyncExitStack | None = None
        self._s3: S3Client | None = None

    # -- the client ------------------------------------------------------------------------------------------

    async def client(self) -> S3Client:
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

    # -- S3 operations, each one request (or one paginated listing) ------------------------------------------

    async def put(self, key: str, body: bytes, *, exclusive: bool = False) -> None:
        s3 = await self.client()
        with s3_errors(f"PUT {key}"):
            if exclusive:
                await s3.put_object(Bucket=self.bucket, Key=key, Body=_blob(body), IfNoneMatch="*")
            else:
                await s3.put_object(Bucket=self.bucket, Key=key, Body=_blob(body))

    async def get(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The object's bytes from `start` (to `end`, exclusive), streamed. KeyError if it is gone."""
        s3 = await self.client()
        span = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        with s3_errors(f"GET {key}"):
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

    async def get_bytes(self, key: str, start: int = 0, end: int | None = None) -> bytearray:
        data = bytearray()
        try:
            async for chunk in self.get(key, start, end):
                data += chunk
        except KeyError as exc:
            raise SpoolError(f"S3 GET {key}: the object is gone") from exc
        return data

    async def delete_keys(self, keys: Iterable[str]) -> None:
        s3, batch = await self.client(), list(keys)
        for first in range(0, len(batch), _DELETE_BATCH):
            objects = [{"Key": key} for key in batch[first : first + _DELETE_BATCH]]
            with s3_errors("DeleteObjects"):
                answer = await s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})  # type: ignore[typeddict-item]
            if errors := answer.get("Errors"):
                raise SpoolError(f"S3 DeleteObjects: {errors[0].get('Key')}: {errors[0].get('Code')}")

    async def create_multipart(self, key: str) -> str:
        s3 = await self.client()
        with s3_errors(f"CreateMultipartUpload {key}"):
            return (await s3.create_multipart_upload(Bucket=self.bucket, Key=key))["UploadId"]

    async def upload_part(self, multipart: Multipart, body: bytes) -> None:
        s3, number = await self.client(), len(multipart.parts) + 1
        with s3_errors(f"UploadPart {multipart.key} #{number}"):
            answer = await s3.upload_part(
                Bucket=self.bucket, Key=multipart.key, UploadId=multipart.upload_id, PartNumber=number, Body=_blob(body)
            )
        multipart.parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        multipart.size += len(body)

    async def complete(self, multipart: Multipart) -> None:
        s3 = await self.client()
        with s3_errors(f"CompleteMultipartUpload {multipart.key}"):
            await s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=multipart.key,
                UploadId=multipart.upload_id,
                MultipartUpload={"Parts": multipart.parts},
            )

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        s3 = await self.client()
        with s3_errors(f"AbortMultipartUpload {key}"):
            try:
                await s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except ClientError as exc:
                if not _missing(exc):  # already gone: what was asked
                    raise

    async def parts(self, key: str, upload_id: str, start: int) -> Multipart:
        """An open multipart upload's parts 1..n without a gap (ListParts), as a writer would have left them."""
        s3, listed = await self.client(), dict[int, "PartTypeDef"]()
        with s3_errors(f"ListParts {key}"):
            paginator = s3.get_paginator("list_parts")
            async for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                for part in page.get("Parts", []):
                    listed.setdefault(part["PartNumber"], part)
        multipart = Multipart(key, upload_id, start)
        while (next_part := listed.get(len(multipart.parts) + 1)) is not None:
            multipart.parts.append({"PartNumber": next_part["PartNumber"], "ETag": next_part["ETag"]})
            multipart.size += next_part["Size"]
        return multipart

    async def copy_cut(self, key: str, start: int, keep: int) -> None:
        """Replace the segment at `key` (the upload's bytes from `start`) by its first `keep` bytes, copied on the
        server onto its own key."""
        s3 = await self.client()
        multipart = Multipart(key, await self.create_multipart(key), start)
        try:
            for first in range(0, keep, MAX_COPY_PART):
                last, number = min(first + MAX_COPY_PART, keep) - 1, len(multipart.parts) + 1
                with s3_errors(f"UploadPartCopy {key}"):
                    answer = await s3.upload_part_copy(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=multipart.upload_id,
                        PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": key},
                        CopySourceRange=f"bytes={first}-{last}",
                    )
                multipart.parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            await self.complete(multipart)
        except BaseException:
            with contextlib.suppress(SpoolError):
                await self.abort_multipart(multipart.key, multipart.upload_id)
            raise
