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
from relay.spool import DiskSpool, Spool, SpoolError, disk_writer

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


@pytest.mark.parametrize("batch", [disk_writer.BATCH, 1])
def test_batched_writes_of_two_uploads_at_once_stay_apart_and_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """The worker joins queued chunks of one writer into one writev, and chunks gather into one job while it is
    busy: two uploads written at once, in chunks of every size (bytes, memoryview, bytearray, some over
    MAX_WRITE), each come back byte-exact, and a commit returns every byte handed over before it. With a batch of
    1 byte every chunk is its own job, and the worker finds jobs of both uploads queued one after the other."""
    monkeypatch.setattr(disk_writer, "BATCH", batch)
    rng = random.Random(11)
    pool = rng.randbytes(24 * 1024 * 1024)
    sizes = [rng.choice([1, 4096, 65536, 65536, 262144, 300000, 1 << 20, 3 << 20]) for _ in range(400)]

    def pieces(data: bytes) -> list[bytes | memoryview | bytearray]:
        out: list[bytes | memoryview | bytearray] = []
        at = 0
        for size in sizes:
            if at >= len(data):
                break
            piece = data[at : at + size]
            kinds: list[bytes | memoryview | bytearray] = [piece, memoryview(piece), bytearray(piece)]
            out.append(rng.choice(kinds))
            at += size
        return out

    async def feed(spool: DiskSpool, upload_id: str, data: bytes) -> tuple[int, bytes]:
        await spool.create(upload_id, b"{}")
        writer = await spool.writer(upload_id, 0)
        handed = 0
        for piece in pieces(data):
            handed += len(piece)
            await writer.write(piece)  # type: ignore[arg-type]  # the writer copies what may change
            if rng.random() < 0.5:
                await asyncio.sleep(0)  # the other upload's chunks come in between
        size = await writer.commit()
        assert size == handed
        return size, await read_all(spool, upload_id)

    async def scenario(spool: DiskSpool) -> list[tuple[int, bytes]]:
        busy = asyncio.ensure_future(spool._worker.call(lambda: time.sleep(0.3)))  # the queue fills meanwhile
        both = await asyncio.gather(feed(spool, "one", pool[: 17 << 20]), feed(spool, "two", pool[5 << 20 :]))
        await busy
        return list(both)

    (size_one, one), (size_two, two) = run(scenario, tmp_path, max_queued=8 * 1024 * 1024)
    assert one == pool[:size_one] and two == pool[5 << 20 : (5 << 20) + size_two]


def test_a_mutable_chunk_changed_after_the_hand_over_is_stored_as_it_was(tmp_path: Path) -> None:
    async def scenario(spool: DiskSpool) -> bytes:
        await spool.create("up", b"{}")
        writer = await spool.writer("up", 0)
        buffer = bytearray(b"a" * 1000)
        for _ in range(50):  # the worker is busy: the chunks wait in a batch
            await writer.write(buffer)  # type: ignore[arg-type]
            buffer[:] = b"b" * 1000
        await writer.commit()
        return await read_all(spool, "up")

    data = run(scenario, tmp_path)
    assert data[:1000] == b"a" * 1000 and data[1000:] == b"b" * 49000


@pytest.mark.skipif(disk_writer._fallocate is None, reason="no fallocate here")
def test_reserved_blocks_leave_the_size_the_durable_offset(tmp_path: Path) -> None:
    """`reserve` gives the append its blocks up front; the file's size stays what was written (recovery reads the
    offset from it), for a committed append and for a broken one that brought less than it announced."""

    async def scenario(spool: DiskSpool) -> tuple[int, int, int, bytes]:
        await spool.create("up", b"{}")
        writer = await spool.writer("up", 0)
        writer.reserve(8 * 1024 * 1024)
        await writer.write(b"x" * 100_000)
        await writer.abort()  # broke after 100,000 of the 8 MiB it announced
        path = tmp_path / "up.data"
        size, blocks = path.stat().st_size, path.stat().st_blocks * 512
        again = await spool.writer("up", size)
        await again.write(b"y" * 5)
        committed = await again.commit()
        return size, blocks, committed, await read_all(spool, "up")

    size, blocks, committed, data = run(scenario, tmp_path)
    assert size == 100_000
    assert blocks >= 8 * 1024 * 1024  # the reservation (ext4 and tmpfs keep blocks past the end of the file)
    assert committed == 100_005 and data == b"x" * 100_000 + b"y" * 5


def test_a_read_left_early_closes_its_file(tmp_path: Path) -> None:
    """The read-back reads one chunk ahead: stopping mid-file must close the descriptor once that read ends."""

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def scenario(spool: DiskSpool) -> tuple[int, int, bytes]:
        await spool.create("up", b"{}")
        writer = await spool.writer("up", 0)
        await writer.write(os.urandom(8 * 1024 * 1024))
        await writer.commit()
        before = open_files()
        for _ in range(20):
            reader = spool.read("up", 1000)
            first = await anext(reader)
            await reader.aclose()  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)  # the last read ahead finishes, then its descriptor closes
        return before, open_files(), first

    before, after, first = run(scenario, tmp_path)
    assert after == before
    assert len(first) > 0


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
