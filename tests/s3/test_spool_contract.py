"""The `Spool` contract (relay/spool/base.py Rules 1-4), run against every implementation: DiskSpool and S3Spool.

The S3 runs use 5 MiB parts (S3's minimum), so the sizes below cross part, segment and tail boundaries: appends of
1 byte, 3 MiB, 5 MiB and 12 MiB in different orders, cuts inside a tail, inside a segment (what is kept under
5 MiB, and over it) and exactly on a boundary. Backend-specific behaviour (the objects S3 is left with, a writer's
memory, a crash mid-append) is in test_spool_s3.py; the disk's own in tests/unit/test_spool_disk.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from relay.spool import DiskSpool, Spool, SpoolDataLost, SpoolError
from relay.spool.s3 import MIN_PART, S3Spool

T = TypeVar("T")
MiB = 1024 * 1024
MakeSpool = Callable[[], Spool]


@pytest.fixture(params=["disk", "s3"])
def make_spool(request: pytest.FixtureRequest, tmp_path: Path) -> MakeSpool:
    """A factory of spools on one location: calling it twice is a restart."""
    if request.param == "disk":
        return lambda: DiskSpool(tmp_path / "spool")
    server = request.getfixturevalue("s3_env")
    location = server.location()
    return lambda: S3Spool.from_url(location, endpoint=server.endpoint, part_size=MIN_PART)


def run(make_spool: MakeSpool, scenario: Callable[[Spool], Awaitable[T]]) -> T:
    async def main() -> T:
        spool = make_spool()
        try:
            return await scenario(spool)
        finally:
            await spool.close()

    return asyncio.run(main())


async def read_all(spool: Spool, upload_id: str, start: int = 0) -> bytes:
    return b"".join([chunk async for chunk in spool.read(upload_id, start)])


async def append(spool: Spool, upload_id: str, offset: int, data: bytes, chunk: int = 256 * 1024) -> int:
    """One append, handed over in chunks as a request body arrives (mutable buffers among them), committed."""
    writer = await spool.writer(upload_id, offset)
    view = memoryview(data)
    for index, start in enumerate(range(0, len(data), chunk)):
        piece = view[start : start + chunk]
        await writer.write(bytearray(piece) if index % 2 else piece)  # type: ignore[arg-type]
    return await writer.commit()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "sizes",
    [[1, 3 * MiB, 5 * MiB, 12 * MiB], [12 * MiB, 5 * MiB, 1, 3 * MiB + 7]],
    ids=["small-first", "large-first"],
)
def test_appends_commit_and_read_back_byte_exact(make_spool: MakeSpool, sizes: list[int]) -> None:
    data = random.Random(len(sizes) + sizes[0]).randbytes(sum(sizes))

    async def scenario(spool: Spool) -> tuple[list[int], int, bytes, bytes]:
        await spool.create("up", b'{"v": 1}')
        offsets, offset = [], 0
        for size in sizes:
            offset = await append(spool, "up", offset, data[offset : offset + size])
            offsets.append(offset)
        middle = 5 * MiB - 3  # a read that starts inside the first part
        return offsets, await spool.offset("up"), await read_all(spool, "up"), await read_all(spool, "up", middle)

    offsets, durable, back, from_middle = run(make_spool, scenario)
    assert offsets == [sum(sizes[: index + 1]) for index in range(len(sizes))]
    assert durable == len(data)
    assert sha(back) == sha(data)
    assert sha(from_middle) == sha(data[5 * MiB - 3 :])


def test_abort_keeps_what_was_handed_over_and_discard_drops_it(make_spool: MakeSpool) -> None:
    data = random.Random(2).randbytes(25 * MiB)

    async def scenario(spool: Spool) -> tuple[list[int], bytes]:
        await spool.create("up", b"{}")
        seen = [await append(spool, "up", 0, data[: 6 * MiB])]
        broken = await spool.writer("up", 6 * MiB)
        await broken.write(data[6 * MiB : 13 * MiB])
        seen.append(await broken.abort())  # the append broke: its bytes stay
        bad = await spool.writer("up", 13 * MiB)
        await bad.write(data[13 * MiB : 25 * MiB])  # parts uploaded, then a checksum mismatch
        seen.append(await bad.discard())
        small = await spool.writer("up", 13 * MiB)
        await small.write(b"x" * 1000)  # a tail's worth, dropped too: the old tail is back
        seen.append(await small.discard())
        seen.append(await spool.offset("up"))
        seen.append(await append(spool, "up", 13 * MiB, data[13 * MiB : 14 * MiB]))
        return seen, await read_all(spool, "up")

    seen, back = run(make_spool, scenario)
    assert seen == [6 * MiB, 13 * MiB, 13 * MiB, 13 * MiB, 13 * MiB, 14 * MiB]
    assert sha(back) == sha(data[: 14 * MiB])


def test_a_writer_drops_bytes_past_its_offset_and_truncate_cuts_anywhere(make_spool: MakeSpool) -> None:
    data = random.Random(3).randbytes(20 * MiB)
    new = random.Random(4).randbytes(4 * MiB)

    async def scenario(spool: Spool) -> list[tuple[int, str]]:
        await spool.create("up", b"{}")
        await append(spool, "up", 0, data[: 6 * MiB])
        await append(spool, "up", 6 * MiB, data[6 * MiB : 13 * MiB])
        await append(spool, "up", 13 * MiB, data[13 * MiB : 15 * MiB])  # a tail of 2 MiB
        states = []

        async def state() -> None:
            states.append((await spool.offset("up"), sha(await read_all(spool, "up"))))

        await spool.truncate("up", 14 * MiB)  # inside the tail
        await state()
        await spool.truncate("up", 12 * MiB + 5)  # inside a segment, 6 MiB + 5 of it kept
        await state()
        writer = await spool.writer("up", 9 * MiB)  # Rule 2, inside a segment, 3 MiB of it kept
        await writer.write(new)
        await writer.commit()
        await state()
        await spool.truncate("up", 6 * MiB)  # on a boundary
        await state()
        await spool.truncate("up", 2 * MiB)  # inside the first segment
        await state()
        await spool.truncate("up", 2 * MiB)  # nothing to cut
        await state()
        await append(spool, "up", 2 * MiB, new)
        await state()
        return states

    cut = data[: 9 * MiB] + new
    assert run(make_spool, scenario) == [
        (14 * MiB, sha(data[: 14 * MiB])),
        (12 * MiB + 5, sha(data[: 12 * MiB + 5])),
        (13 * MiB, sha(cut)),
        (6 * MiB, sha(data[: 6 * MiB])),
        (2 * MiB, sha(data[: 2 * MiB])),
        (2 * MiB, sha(data[: 2 * MiB])),
        (6 * MiB, sha(data[: 2 * MiB] + new)),
    ]


def test_a_gap_is_data_lost_and_unknown_or_closed_is_refused(make_spool: MakeSpool) -> None:
    async def scenario(spool: Spool) -> None:
        await spool.create("up", b"{}")
        await append(spool, "up", 0, b"0123456789")
        with pytest.raises(SpoolDataLost):
            await spool.writer("up", 11)
        with pytest.raises(FileExistsError):
            await spool.create("up", b"{}")
        for bad in ["../x", "a/b", "", ".hidden", "x" * 65]:
            with pytest.raises(SpoolError):
                await spool.create(bad, b"{}")
        with pytest.raises(SpoolError):
            await spool.offset("unknown")
        with pytest.raises(SpoolError):
            await spool.writer("unknown", 0)
        writer = await spool.writer("up", 10)
        await writer.commit()
        with pytest.raises(SpoolError):
            await writer.write(b"x")
        with pytest.raises(SpoolError):
            await writer.commit()
        assert await read_all(spool, "up") == b"0123456789"

    run(make_spool, scenario)


def test_restart_lists_uploads_and_reports_offsets(make_spool: MakeSpool) -> None:
    sizes = {"a": 0, "b": 1000, "c": 6 * MiB + 5}

    async def first(spool: Spool) -> None:
        for index, (upload_id, size) in enumerate(sizes.items()):
            await spool.create(upload_id, f'{{"n": {index}}}'.encode())
            await append(spool, upload_id, 0, b"z" * size)
        await spool.save_info("b", b'{"n": 42}')

    async def second(spool: Spool) -> tuple[list[str], list[int], bytes | None, bytes | None, bytes]:
        ids = await spool.list()
        offsets = [await spool.offset(upload_id) for upload_id in ids]
        return ids, offsets, await spool.load_info("b"), await spool.load_info("nope"), await read_all(spool, "c")

    run(make_spool, first)
    ids, offsets, info, nope, back = run(make_spool, second)
    assert (ids, offsets, info, nope) == (["a", "b", "c"], [0, 1000, 6 * MiB + 5], b'{"n": 42}', None)
    assert back == b"z" * (6 * MiB + 5)


def test_delete_and_delete_data(make_spool: MakeSpool) -> None:
    async def scenario(spool: Spool) -> tuple[list[str], bytes | None, list[str]]:
        for upload_id in ("a", "b"):
            await spool.create(upload_id, b"{}")
            await append(spool, upload_id, 0, b"y" * (7 * MiB))
        await spool.delete_data("b")  # delivered: the record stays, the bytes go
        listed = await spool.list()
        info = await spool.load_info("b")
        await spool.delete("a")
        await spool.delete("b")
        await spool.delete("never-was")
        return listed, info, await spool.list()

    assert run(make_spool, scenario) == (["a", "b"], b"{}", [])
