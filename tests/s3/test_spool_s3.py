"""S3Spool's own behaviour on a real S3 server (SeaweedFS): the objects it leaves, the open multipart uploads it
leaves none of, a crash mid-append (the parts uploaded survive and are adopted), crashes' leftovers, a writer's
memory, a writer past S3's part limit, a read while the completing append's writer is open, configuration errors.
The behaviours every spool shares are in test_spool_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from relay.core.resumable import RECEIVING, create, recover
from relay.spool.s3 import MAX_PARTS, MIN_PART, S3Spool
from tests.s3.conftest import S3Server
from tests.s3.test_spool_contract import append, read_all

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client

T = TypeVar("T")
MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def new_spool(server: S3Server, *, max_parts: int = MAX_PARTS) -> S3Spool:
    return S3Spool.from_url(server.location(), endpoint=server.endpoint, part_size=MIN_PART, max_parts=max_parts)


def again(spool: S3Spool) -> S3Spool:
    """The same bucket and prefix, a new S3Spool: a relay restarted, or another relay."""
    return S3Spool(spool.bucket, spool.prefix, endpoint=spool.endpoint, part_size=spool.part_size)


def run(spool: S3Spool, scenario: Callable[[S3Spool], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await scenario(spool)
        finally:
            await spool.close()

    return asyncio.run(main())


@asynccontextmanager
async def raw_client(server: S3Server) -> AsyncIterator[S3Client]:
    config = AioConfig(request_checksum_calculation="when_required", s3={"addressing_style": "path"})
    async with get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=config,
    ) as s3:
        yield s3


async def objects(server: S3Server, spool: S3Spool) -> dict[str, int]:
    """Every object under the spool's prefix, by key without the prefix: its size."""
    async with raw_client(server) as s3:
        found = {}
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=spool.prefix):
            found.update({obj["Key"][len(spool.prefix) :]: obj["Size"] for obj in page.get("Contents", [])})
        return found


async def open_uploads(server: S3Server, spool: S3Spool) -> list[str]:
    """The keys of the multipart uploads still open under the spool's prefix (ListMultipartUploads)."""
    async with raw_client(server) as s3:
        answer = await s3.list_multipart_uploads(Bucket=server.bucket, Prefix=spool.prefix)
        return sorted(upload["Key"][len(spool.prefix) :] for upload in answer.get("Uploads", []))


def seg(upload_id: str, start: int) -> str:
    return f"{upload_id}/{start:016d}.seg"


def tail(upload_id: str, start: int) -> str:
    return f"{upload_id}/{start:016d}.tail"


def test_segments_a_tail_under_5_mib_and_no_open_upload_after_commits(s3_env: S3Server) -> None:
    data = random.Random(1).randbytes(1 + 3 * MiB + 5 * MiB + 12 * MiB)
    spool = new_spool(s3_env)

    async def scenario(spool: S3Spool) -> list[dict[str, int]]:
        await spool.create("up", b"{}")
        seen, offset = [], 0
        for size in (1, 3 * MiB, 5 * MiB, 12 * MiB):
            offset = await append(spool, "up", offset, data[offset : offset + size])
            seen.append({key: size for key, size in (await objects(s3_env, spool)).items() if key != "up.json"})
        assert await open_uploads(s3_env, spool) == []
        return seen

    first = 1 + 3 * MiB + 5 * MiB  # the 1-byte and 3 MiB appends waited in the tail, then went into a segment
    assert run(spool, scenario) == [
        {tail("up", 0): 1},
        {tail("up", 0): 1 + 3 * MiB},
        {seg("up", 0): first},
        {seg("up", 0): first, seg("up", first): 12 * MiB},
    ]


def test_read_while_the_completing_appends_writer_is_open(s3_env: S3Server) -> None:
    """Cut-through reads the spooled bytes while the last append's writer uploads parts: it sees them whole."""
    data = random.Random(2).randbytes(20 * MiB)
    spool = new_spool(s3_env)

    async def scenario(spool: S3Spool) -> tuple[bytes, list[str], bytes]:
        await spool.create("up", b"{}")
        await append(spool, "up", 0, data[: 7 * MiB + 3])  # a segment and a tail
        await append(spool, "up", 7 * MiB + 3, data[7 * MiB + 3 : 8 * MiB])
        writer = await spool.writer("up", 8 * MiB)
        await writer.write(data[8 * MiB : 19 * MiB])  # two parts uploaded, the tail's bytes among them
        during = await read_all(spool, "up")
        uploads = await open_uploads(s3_env, spool)
        await writer.write(data[19 * MiB :])
        await writer.commit()
        return during, uploads, await read_all(spool, "up")

    during, uploads, after = run(spool, scenario)
    assert during == data[: 8 * MiB]
    assert uploads == [seg("up", 7 * MiB + 3)]
    assert hashlib.sha256(after).digest() == hashlib.sha256(data).digest()


CHILD = textwrap.dedent(
    """
    import asyncio, random, sys
    from relay.spool.s3 import MIN_PART, S3Spool

    POOL = random.Random(7).randbytes(40 * 1024 * 1024)

    async def main():
        spool = S3Spool.from_url(sys.argv[1], endpoint=sys.argv[2], part_size=MIN_PART)
        await spool.create("victim", b"{}")
        writer = await spool.writer("victim", 0)
        await writer.write(POOL[: 3 << 20])
        print("committed", await writer.commit(), flush=True)  # a tail only
        writer = await spool.writer("victim", 3 << 20)
        for start in range(3 << 20, len(POOL), 256 * 1024):
            await writer.write(POOL[start : start + 256 * 1024])  # waits while a part uploads
            print("handed", writer.handed, flush=True)
            await asyncio.sleep(0.005)  # a slow client: the kill lands mid-append
        await writer.commit()
        print("finished", flush=True)

    asyncio.run(main())
    """
)


def test_kill_9_mid_append_keeps_the_uploaded_parts_and_recovery_adopts_them(s3_env: S3Server) -> None:
    spool = new_spool(s3_env)
    location = f"s3://{spool.bucket}/{spool.prefix}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, location, s3_env.endpoint], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None
        committed = int(child.stdout.readline().split()[1])
        while int(child.stdout.readline().split()[1]) < 12 * MiB:  # parts 1 and 2 are in, the third is going
            pass
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert committed == 3 * MiB and child.returncode == -signal.SIGKILL
    pool = random.Random(7).randbytes(40 * MiB)

    async def reopen(spool: S3Spool) -> tuple[list[str], int, list[str]]:
        return await spool.list(), await spool.offset("victim"), await open_uploads(s3_env, spool)

    ids, durable, uploads = run(again(spool), reopen)
    assert ids == ["victim"] and uploads == [seg("victim", 0)]
    # Whole parts of 5 MiB, the old tail's 3 MiB first: a prefix of what was handed over, past what was committed.
    assert durable % (5 * MiB) == 0 and committed < 10 * MiB <= durable < len(pool)

    # The info document still says offset 0 (the glue records at append ends): recover adopts the spool.
    upload = create(
        upload_id="victim", route="/", target=b"/", protocol="tus", now=0, expiry=60, length=len(pool), metadata={}
    )
    recovered, keep = recover(upload, durable, now=1)
    assert (recovered.state, recovered.offset, keep) == (RECEIVING, durable, durable)

    async def resume(spool: S3Spool) -> tuple[dict[str, int], bytes, bytes]:
        await spool.truncate("victim", keep)  # what the store does at start-up: the parts become a segment
        layout = await objects(s3_env, spool)
        adopted = await read_all(spool, "victim")
        await append(spool, "victim", keep, pool[keep:])
        return layout, adopted, await read_all(spool, "victim")

    layout, adopted, back = run(again(spool), resume)
    assert layout == {"victim.json": 2, seg("victim", 0): durable}  # the old tail is gone, no upload is open
    assert adopted == pool[:durable]
    assert hashlib.sha256(back).digest() == hashlib.sha256(pool).digest()


def test_crash_leftovers_are_ignored_then_cleared(s3_env: S3Server) -> None:
    """A tail a crashed commit did not delete, a segment past a gap, a multipart upload at a stale key."""
    spool = new_spool(s3_env)
    data = random.Random(4).randbytes(6 * MiB)

    async def scenario(spool: S3Spool) -> tuple[int, bytes, dict[str, int], list[str]]:
        await spool.create("up", b"{}")
        await append(spool, "up", 0, data)
        async with raw_client(s3_env) as s3:
            for key in (tail("up", 0), seg("up", 9 * MiB)):
                await s3.put_object(Bucket=s3_env.bucket, Key=spool.prefix + key, Body=b"junk")
            await s3.create_multipart_upload(Bucket=s3_env.bucket, Key=spool.prefix + seg("up", 3))
        durable, back = await spool.offset("up"), await read_all(spool, "up")
        writer = await spool.writer("up", durable)  # a writer clears what crashes left
        await writer.commit()
        return durable, back, await objects(s3_env, spool), await open_uploads(s3_env, spool)

    durable, back, left, uploads = run(spool, scenario)
    assert (durable, back) == (len(data), data)
    assert left == {"up.json": 2, seg("up", 0): len(data)} and uploads == []


def test_delete_and_delete_data_leave_no_object_and_no_open_upload(s3_env: S3Server) -> None:
    spool = new_spool(s3_env)

    async def scenario(spool: S3Spool) -> tuple[dict[str, int], list[str], dict[str, int], list[str]]:
        for upload_id in ("a", "b"):
            await spool.create(upload_id, b"{}")
            await append(spool, upload_id, 0, b"q" * (6 * MiB + 100))
            writer = await spool.writer(upload_id, 6 * MiB + 100)
            await writer.write(b"r" * (6 * MiB))  # a part uploaded, then abandoned: an open multipart upload
        assert len(await open_uploads(s3_env, spool)) == 2
        await spool.delete_data("a")
        after_data = await objects(s3_env, spool), await open_uploads(s3_env, spool)
        await spool.delete("a")
        await spool.delete("b")
        await spool.delete("never-was")
        return *after_data, await objects(s3_env, spool), await open_uploads(s3_env, spool)

    left, uploads, nothing, none = run(spool, scenario)
    assert sorted(left) == ["a.json", "b.json", seg("b", 0)]
    assert uploads == [seg("b", 6 * MiB + 100)]
    assert nothing == {} and none == []


def test_a_writer_holds_one_part_in_memory(s3_env: S3Server) -> None:
    data = random.Random(5).randbytes(40 * MiB)
    spool = new_spool(s3_env)

    async def scenario(spool: S3Spool) -> tuple[int, int]:
        await spool.create("up", b"{}")
        writer = await spool.writer("up", 0)
        view = memoryview(data)
        tracemalloc.start()
        try:
            for start in range(0, len(data), 256 * 1024):
                await writer.write(view[start : start + 256 * 1024])  # type: ignore[arg-type]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return peak, await writer.commit()

    peak, size = run(spool, scenario)
    assert size == len(data)
    # One part (5 MiB and a chunk) buffered, and for an instant its copy as the request body (10.8 MiB measured):
    # never the 40 MiB.
    assert peak < 2 * MIN_PART + 4 * MiB, f"{peak / MiB:.1f} MiB traced at the peak"


def test_a_write_cancelled_during_its_part_upload_keeps_its_bytes(s3_env: S3Server) -> None:
    """What `handed` says is what abort stores: a part cut short is uploaded again under its number."""
    data = random.Random(7).randbytes(12 * MiB)
    spool = new_spool(s3_env)

    async def scenario(spool: S3Spool) -> tuple[int, int, bytes, list[str]]:
        await spool.create("up", b"{}")
        writer = await spool.writer("up", 0)
        await writer.write(data[: 4 * MiB])
        task = asyncio.create_task(writer.write(data[4 * MiB :]))  # fills a part: its upload starts
        while writer._multipart is None:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.005)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        kept = await writer.abort()
        return kept, writer.handed, await read_all(spool, "up"), await open_uploads(s3_env, spool)

    kept, handed, back, uploads = run(spool, scenario)
    assert kept == handed == len(data) and back == data and uploads == []


def test_a_writer_past_max_parts_rolls_over_and_a_discard_drops_every_segment_it_made(s3_env: S3Server) -> None:
    data = random.Random(6).randbytes(44 * MiB)
    spool = new_spool(s3_env, max_parts=2)  # S3 allows 10,000 parts: 2 shows what happens past the limit

    async def scenario(spool: S3Spool) -> tuple[dict[str, int], int, dict[str, int], bytes]:
        await spool.create("up", b"{}")
        await append(spool, "up", 0, data[: 23 * MiB])
        layout = await objects(s3_env, spool)
        writer = await spool.writer("up", 23 * MiB)
        await writer.write(data[23 * MiB :])  # rolls over twice (at 30 and 40 MiB), then a checksum mismatch
        dropped = await writer.discard()
        return layout, dropped, await objects(s3_env, spool), await read_all(spool, "up")

    layout, dropped, after, back = run(spool, scenario)
    assert layout == {
        "up.json": 2,
        seg("up", 0): 10 * MiB,
        seg("up", 10 * MiB): 10 * MiB,
        tail("up", 20 * MiB): 3 * MiB,
    }
    assert dropped == 23 * MiB and after == layout
    assert back == data[: 23 * MiB]


def test_list_takes_only_info_documents_of_upload_ids(s3_env: S3Server) -> None:
    spool = new_spool(s3_env)

    async def scenario(spool: S3Spool) -> tuple[list[str], int | None]:
        await spool.create("one", b"{}")
        await spool.create("two", b"{}")
        async with raw_client(s3_env) as s3:
            for key in ("notes.txt", "bad id!.json", "deeper/three.json", "one/stray.json"):
                await s3.put_object(Bucket=s3_env.bucket, Key=spool.prefix + key, Body=b"{}")
        other = S3Spool(spool.bucket, spool.prefix + "other/", endpoint=spool.endpoint)
        try:
            await other.create("elsewhere", b"{}")
        finally:
            await other.close()
        return await spool.list(), await spool.free_bytes()

    assert run(spool, scenario) == (["one", "two"], None)


def test_a_missing_bucket_or_an_unreachable_server_is_a_one_line_value_error(s3_env: S3Server) -> None:
    async def first_use(spool: S3Spool) -> list[str]:
        return await spool.list()

    missing = S3Spool.from_url("s3://no-such-bucket/spool", endpoint=s3_env.endpoint)
    with pytest.raises(ValueError, match="no-such-bucket") as caught:
        run(missing, first_use)
    assert "no such bucket" in str(caught.value) and "\n" not in str(caught.value)

    closed = S3Spool.from_url(f"s3://{s3_env.bucket}/x", endpoint="http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(ValueError, match="127.0.0.1:9") as caught:
        run(closed, first_use)
    assert "\n" not in str(caught.value)


def test_from_url() -> None:
    spool = S3Spool.from_url("s3://bucket/some/prefix", endpoint="http://127.0.0.1:1")
    assert (spool.bucket, spool.prefix, spool.endpoint) == ("bucket", "some/prefix/", "http://127.0.0.1:1")
    assert S3Spool.from_url("s3://bucket").prefix == ""
    assert S3Spool.from_url("s3://bucket/").prefix == ""
    for bad in ("s3://", "s3:///prefix", "/var/spool", "http://bucket/x"):
        with pytest.raises(ValueError):
            S3Spool.from_url(bad)
    with pytest.raises(ValueError):
        S3Spool("bucket", part_size=MIN_PART - 1)
