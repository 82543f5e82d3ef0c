"""relay.spool.disk.DiskSpool: appends, durability, read-back, recovery, and a real kill -9 mid-append.

Design under test (relay/spool/base.py Rules 2 and 3): `commit` and `abort` keep every byte handed
over, durably; `discard` truncates back to where the writer started; a writer opened at an offset drops
whatever lies past it. The durable offset is the data file's size.

What every spool must do (appends, read-back, abort/discard, truncate, restart) is tested once for the disk and
the S3 spool alike in tests/s3/test_spool_contract.py; here is what only the disk spool has (its writer thread's
backpressure, the loop kept free, free space, a kill -9 mid-append, a cancelled commit).
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
from relay.spool import DiskSpool, Spool, SpoolError

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
