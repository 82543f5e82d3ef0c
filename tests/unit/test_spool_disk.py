"""relay.spool.disk.DiskSpool: appends, durability, read-back, recovery, and a real kill -9 mid-append.

Design under test (relay/spool/base.py Rules 2 and 3): `commit` and `abort` keep every byte handed
over, durably; `discard` truncates back to where the writer started; a writer opened at an offset drops
whatever lies past it. The durable offset is the data file's size.
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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from relay.core.resumable import RECEIVING, create, recover
from relay.spool import DiskSpool, Spool, SpoolDataLost, SpoolError

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def run(scenario: Callable[[DiskSpool], Awaitable[T]], root: Path, **options: int) -> T:
    async def main() -> T:
        spool = DiskSpool(root, **options)
        try:
            return await scenario(spool)
        finally:
            await spool.close()

    return asyncio.run(main())


async def read_all(spool: Spool, upload_id: str, start: int = 0) -> bytes:
    chunks = [chunk async for chunk in spool.read(upload_id, start)]
    return b"".join(chunks)


def test_appends_commit_and_read_back_byte_exact(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(5 * 1024 * 1024 + 123)
    pieces = [data[:1], data[1:300_000], data[300_000:3_000_000], data[3_000_000:]]

    async def scenario(spool: DiskSpool) -> tuple[int, bytes, int]:
        await spool.create("up", b'{"v": 1}')
        offset = 0
        for piece in pieces:
            writer = await spool.writer("up", offset)
            view = memoryview(piece)
            for start in range(0, len(piece), 256 * 1024):
                chunk = view[start : start + 256 * 1024]
                await writer.write(chunk if start % 2 else bytearray(chunk))  # type: ignore[arg-type]
            offset = await writer.commit()
        return offset, await read_all(spool, "up"), await spool.offset("up")

    offset, back, durable = run(scenario, tmp_path)
    assert offset == durable == len(data)
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()


def test_read_from_an_offset(tmp_path: Path) -> None:
    async def scenario(spool: DiskSpool) -> bytes:
        await spool.create("up", b"{}")
        writer = await spool.writer("up", 0)
        await writer.write(bytes(range(256)) * 10_000)
        await writer.commit()
        return await read_all(spool, "up", 2_000_000)

    assert run(scenario, tmp_path) == (bytes(range(256)) * 10_000)[2_000_000:]


def test_abort_keeps_what_was_handed_over_and_discard_drops_it(tmp_path: Path) -> None:
    async def scenario(spool: DiskSpool) -> tuple[int, int, int, bytes]:
        await spool.create("up", b"{}")
        first = await spool.writer("up", 0)
        await first.write(b"a" * 1000)
        await first.commit()
        broken = await spool.writer("up", 1000)
        await broken.write(b"b" * 500)
        kept = await broken.abort()  # the append broke: its bytes stay
        bad = await spool.writer("up", kept)
        await bad.write(b"c" * 700)
        dropped = await bad.discard()  # checksum mismatch: back to where it started
        return kept, dropped, await spool.offset("up"), await read_all(spool, "up")

    kept, dropped, durable, back = run(scenario, tmp_path)
    assert (kept, dropped, durable) == (1500, 1500, 1500)
    assert back == b"a" * 1000 + b"b" * 500


def test_writer_drops_bytes_past_its_offset_and_refuses_a_gap(tmp_path: Path) -> None:
    async def scenario(spool: DiskSpool) -> tuple[int, bytes]:
        await spool.create("up", b"{}")
        writer = await spool.writer("up", 0)
        await writer.write(b"0123456789")
        await writer.commit()
        with pytest.raises(SpoolDataLost):
            await spool.writer("up", 11)
        again = await spool.writer("up", 4)  # the caller's committed offset was 4: 4..9 were never acknowledged
        await again.write(b"xy")
        return await again.commit(), await read_all(spool, "up")

    assert run(scenario, tmp_path) == (6, b"0123xy")


def test_closed_writer_refuses(tmp_path: Path) -> None:
    async def scenario(spool: DiskSpool) -> None:
        await spool.create("up", b"{}")
        writer = await spool.writer("up", 0)
        await writer.commit()
        with pytest.raises(SpoolError):
            await writer.write(b"x")
        with pytest.raises(SpoolError):
            await writer.commit()

    run(scenario, tmp_path)


def test_backpressure_with_a_small_queue(tmp_path: Path) -> None:
    chunk = os.urandom(64 * 1024)

    async def scenario(spool: DiskSpool) -> tuple[int, int]:
        await spool.create("up", b"{}")
        writer = await spool.writer("up", 0)
        for _ in range(200):
            await writer.write(chunk)
        return writer.handed, await writer.commit()

    assert run(scenario, tmp_path, max_queued=128 * 1024) == (200 * len(chunk), 200 * len(chunk))


def test_the_loop_keeps_running_while_the_spool_writes(tmp_path: Path) -> None:
    """Another task on the loop is served between chunks: hand-overs and waits never block it."""
    chunk = os.urandom(256 * 1024)

    async def scenario(spool: DiskSpool) -> int:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await spool.create("up", b"{}")
        writer = await spool.writer("up", 0)
        for _ in range(256):  # 64 MiB
            await writer.write(chunk)
        await writer.commit()
        done.set()
        await task
        return ticks

    assert run(scenario, tmp_path) > 10


def test_restart_lists_uploads_and_reports_offsets(tmp_path: Path) -> None:
    async def first(spool: DiskSpool) -> None:
        for index, upload_id in enumerate(["a", "b", "c"]):
            await spool.create(upload_id, f'{{"n": {index}}}'.encode())
            writer = await spool.writer(upload_id, 0)
            await writer.write(b"z" * (index * 1000))
            await writer.commit()
        await spool.save_info("b", b'{"n": 42}')
        (tmp_path / ".c.json.tmp").write_bytes(b"half")  # a crash during save_info leaves only this behind

    async def second(spool: DiskSpool) -> tuple[list[str], list[int], bytes | None, bytes | None]:
        ids = await spool.list()
        offsets = [await spool.offset(upload_id) for upload_id in ids]
        return ids, offsets, await spool.load_info("b"), await spool.load_info("nope")

    run(first, tmp_path)
    assert run(second, tmp_path) == (["a", "b", "c"], [0, 1000, 2000], b'{"n": 42}', None)
    assert not list(tmp_path.glob(".*")), "the crash's temporary file is swept when the spool opens"


def test_create_refuses_a_taken_id_and_non_ids(tmp_path: Path) -> None:
    async def scenario(spool: DiskSpool) -> None:
        await spool.create("up", b"{}")
        with pytest.raises(FileExistsError):
            await spool.create("up", b"{}")
        for bad in ["../x", "a/b", "", ".hidden", "x" * 65]:
            with pytest.raises(SpoolError):
                await spool.create(bad, b"{}")
        with pytest.raises(SpoolError):
            await spool.offset("unknown")
        with pytest.raises(SpoolError):
            await spool.writer("unknown", 0)

    run(scenario, tmp_path)


def test_delete_removes_both_files(tmp_path: Path) -> None:
    async def scenario(spool: DiskSpool) -> tuple[list[str], list[str], list[str]]:
        await spool.create("a", b"{}")
        await spool.create("b", b"{}")
        await spool.delete_data("b")  # delivered: the record stays, the bytes go
        after_data = sorted(p.name for p in tmp_path.iterdir())
        await spool.delete("a")
        await spool.delete("b")
        await spool.delete("never-was")
        return after_data, sorted(p.name for p in tmp_path.iterdir()), await spool.list()

    after_data, after, listed = run(scenario, tmp_path)
    assert after_data == ["a.data", "a.json", "b.json"]
    assert after == [] and listed == []


def test_truncate(tmp_path: Path) -> None:
    async def scenario(spool: DiskSpool) -> bytes:
        await spool.create("up", b"{}")
        writer = await spool.writer("up", 0)
        await writer.write(b"abcdef")
        await writer.commit()
        await spool.truncate("up", 2)
        return await read_all(spool, "up")

    assert run(scenario, tmp_path) == b"ab"


def test_free_bytes(tmp_path: Path) -> None:
    async def scenario(spool: DiskSpool) -> int | None:
        return await spool.free_bytes()

    free = run(scenario, tmp_path)
    stat = os.statvfs(tmp_path)
    assert free is not None and 0 < free <= stat.f_blocks * stat.f_frsize


CHILD = textwrap.dedent(
    """
    import asyncio, random, sys
    from relay.spool import DiskSpool

    POOL = random.Random(7).randbytes(64 * 1024 * 1024)

    async def main():
        spool = DiskSpool(sys.argv[1])
        await spool.create("victim", b"{}")
        writer = await spool.writer("victim", 0)
        await writer.write(POOL[: 1 << 20])
        print("committed", await writer.commit(), flush=True)
        writer = await spool.writer("victim", 1 << 20)
        print("appending", flush=True)
        for start in range(1 << 20, len(POOL), 64 * 1024):
            await writer.write(POOL[start : start + 64 * 1024])
            await asyncio.sleep(0.002)  # a slow client: the kill lands mid-append
        await writer.commit()
        print("finished", flush=True)

    asyncio.run(main())
    """
)


def test_kill_9_mid_append_leaves_a_consistent_prefix(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        committed = int(child.stdout.readline().split()[1])
        assert child.stdout.readline().strip() == "appending"
        time.sleep(0.3)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert committed == 1 << 20 and child.returncode == -signal.SIGKILL

    pool = random.Random(7).randbytes(64 * 1024 * 1024)

    async def reopen(spool: DiskSpool) -> tuple[list[str], int, bytes]:
        return await spool.list(), await spool.offset("victim"), await read_all(spool, "victim")

    ids, durable, data = run(reopen, tmp_path)
    assert ids == ["victim"]
    assert committed < durable < len(pool)  # the interrupted append's bytes are kept as far as written
    assert data == pool[:durable]

    # The info file still says offset 0 + committed (the glue records at append ends): recover adopts the spool.
    upload = create(
        upload_id="victim", route="/", target=b"/", protocol="tus", now=0, expiry=60, length=len(pool), metadata={}
    )
    recovered, keep = recover(upload, durable, now=1)
    assert (recovered.state, recovered.offset, keep) == (RECEIVING, durable, durable)

    async def resume(spool: DiskSpool) -> bytes:
        writer = await spool.writer("victim", keep)
        await writer.write(pool[keep:])
        await writer.commit()
        return await read_all(spool, "victim")

    assert hashlib.sha256(run(resume, tmp_path)).digest() == hashlib.sha256(pool).digest()


def test_a_cancelled_commit_still_runs_and_the_worker_survives(tmp_path: Path) -> None:
    """A task cancelled while it awaits the worker (a superseded append) must not kill the writer thread:
    the job still runs (the fsync, the close) and every later spool call still answers."""

    async def scenario(spool: DiskSpool) -> tuple[int, bytes]:
        await spool.create("up", b'{"v": 1}')
        writer = await spool.writer("up", 0)
        await writer.write(b"x" * 1000)
        for _ in range(20):  # cancel at different moments of the worker's job
            task = asyncio.create_task(spool.save_info("up", b'{"v": 1}'))
            await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        commit = asyncio.create_task(writer.commit())
        await asyncio.sleep(0)
        commit.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await commit
        size = await asyncio.wait_for(spool.offset("up"), 5)  # hangs if the worker thread died
        return size, await asyncio.wait_for(read_all(spool, "up"), 5)

    size, data = run(scenario, tmp_path)
    assert (size, data) == (1000, b"x" * 1000)
