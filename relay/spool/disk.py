"""`DiskSpool`: resumable uploads on a local disk, written by one thread so the event loop never waits on it.

Layout: `<root>/<id>.data` (the bytes, appended at the end) and `<root>/<id>.json` (the info document,
replaced atomically: temporary file, fsync, rename, fsync of the directory). Temporary files start
with a dot, are never listed, and those a crash left behind are removed when the spool opens.

The writing side (the spool's writer thread, its queue and backpressure, and `DiskWriter`: batched writes,
early writeback, spliced appends, reserved blocks) is relay/spool/disk_writer.py; here are the layout, the info
documents, read-back, deletion, listing and free space.

Read-back (`read`) reads one chunk ahead on a thread, under the pinned mmap threshold (READ_CHUNK).

Durability (relay/spool/base.py, Rules 2 and 3): the durable offset is the data file's size after an
fsync. A writer opens at the offset the caller asserts and drops anything past it; bytes handed over
before an `abort` are written and kept; `discard` truncates back to where the writer started. A
`kill -9` in the middle of an append leaves a data file whose bytes are a prefix of what was handed
over (the kernel keeps what `write()` returned for); recovery reads its size (relay.core.resumable.recover).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

from relay.spool.base import SpoolDataLost, SpoolError
from relay.spool.disk_writer import MAX_QUEUED, DiskWriter, _Worker

__all__ = ["READ_CHUNK", "DiskSpool"]

# Under the 1 MiB mmap threshold relay/tuning.py pins: a 1 MiB read buffer was mmapped and unmapped each time,
# 259,000 page faults per GiB forwarded from the spool (benchmarks/RESULTS.md, run 8); 1 MiB - 64 KiB: a few.
READ_CHUNK = 1024 * 1024 - 64 * 1024
SHRINK_STEP = 16 * 1024 * 1024  # a deleted data file is freed in steps of this size (`_shrink`)
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the relay's upload ids (relay/headers.py); never a path


def _close_after(read: asyncio.Future[bytes], fd: int) -> None:
    if not read.cancelled():
        read.exception()  # retrieved: a read nobody waits for any more fails quietly
    os.close(fd)


def _shrink(path: Path) -> None:
    """Free a data file's blocks from its end, SHRINK_STEP at a time, before it is unlinked. On ext4 mounted
    with `discard` (this machine's root), freeing the blocks of a file written to the disk (direct writes, or
    written back) holds the journal: every fsync on the file system, other uploads' 204s and creations among
    them, waited up to 80 ms while a 1 GiB file was unlinked at once, and 10 ms in 16 MiB steps (same total)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return  # gone already, or not ours to shrink: the unlink says
    try:
        size = os.fstat(fd).st_size
        while size > SHRINK_STEP:
            size -= SHRINK_STEP
            os.ftruncate(fd, size)
    finally:
        os.close(fd)


class DiskSpool:
    """The `Spool` on a local directory (relay/spool/base.py)."""

    def __init__(self, root: str | os.PathLike[str], *, max_queued: int = MAX_QUEUED) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(".*.json.tmp"):  # a crash during save_info; the old document stands
            leftover.unlink(missing_ok=True)
        self._temporaries = itertools.count(os.getpid() * 1_000_000)
        self._worker = _Worker(max_queued)

    def data_path(self, upload_id: str) -> Path:
        """Where an upload's bytes are, for a thread that reads them back (relay/resumable/filehash.py)."""
        return self._path(upload_id, ".data")

    def _path(self, upload_id: str, suffix: str) -> Path:
        if not _ID.fullmatch(upload_id):
            raise SpoolError(f"not an upload id: {upload_id!r}")
        return self.root / f"{upload_id}{suffix}"

    async def create(self, upload_id: str, info: bytes) -> None:
        data = self._path(upload_id, ".data")

        def create() -> None:
            os.close(os.open(data, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # FileExistsError if taken
            try:
                self._write_info(upload_id, info)
            except BaseException:
                data.unlink(missing_ok=True)  # no half-created upload keeps the id taken
                raise

        await asyncio.to_thread(create)

    async def writer(self, upload_id: str, offset: int) -> DiskWriter:
        path = self._path(upload_id, ".data")

        def open_at() -> int:
            fd = os.open(path, os.O_WRONLY)
            try:
                size = os.fstat(fd).st_size
                if size < offset:
                    raise SpoolDataLost(f"{upload_id}: {size} bytes stored, {offset} expected")
                if size > offset:
                    os.ftruncate(fd, offset)  # Rule 2: the append starts where the caller believes it ends
                os.lseek(fd, offset, os.SEEK_SET)
                return fd
            except BaseException:
                os.close(fd)
                raise

        try:
            fd = await self._worker.call(open_at)
        except FileNotFoundError as exc:
            raise SpoolError(f"unknown upload {upload_id!r}") from exc
        return DiskWriter(self._worker, fd, offset, path)

    async def offset(self, upload_id: str) -> int:
        path = self._path(upload_id, ".data")
        try:
            return (await asyncio.to_thread(os.stat, path)).st_size
        except FileNotFoundError as exc:
            raise SpoolError(f"unknown upload {upload_id!r}") from exc

    async def truncate(self, upload_id: str, size: int) -> None:
        path = self._path(upload_id, ".data")

        def truncate() -> None:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)

        await self._worker.call(truncate)

    async def read(self, upload_id: str, start: int = 0) -> AsyncIterator[bytes]:
        """The bytes from `start`, read one chunk ahead on a thread: the next pread runs while the caller sends
        the chunk it has (a forward from the spool never waits for a read it could have started earlier)."""
        path = self._path(upload_id, ".data")
        try:
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise SpoolError(f"unknown upload {upload_id!r}") from exc
        loop = asyncio.get_running_loop()
        ahead = loop.run_in_executor(None, os.pread, fd, READ_CHUNK, start)
        try:
            position = start
            while chunk := await ahead:
                position += len(chunk)
                ahead = loop.run_in_executor(None, os.pread, fd, READ_CHUNK, position)
                yield chunk
        finally:
            # The read ahead may still run: the descriptor is closed after it, never under it.
            ahead.add_done_callback(lambda done: _close_after(done, fd))

    def _write_info(self, upload_id: str, info: bytes) -> None:
        """Atomic and durable: a crash leaves the old document or the new one (Rule 4)."""
        final = self._path(upload_id, ".json")
        # Unique per call: two saves of one upload in flight must not write into one temporary file. Which
        # of them lands last is the caller's business (it records an upload's moves one at a time).
        temporary = self.root / f".{upload_id}.{next(self._temporaries)}.json.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(info)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, final)
        self._fsync_root()

    def _fsync_root(self) -> None:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # makes the rename (or unlink) itself durable
        finally:
            os.close(fd)

    async def save_info(self, upload_id: str, info: bytes) -> None:
        await asyncio.to_thread(self._write_info, upload_id, info)

    async def load_info(self, upload_id: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self._path(upload_id, ".json").read_bytes)
        except FileNotFoundError:
            return None

    async def delete(self, upload_id: str) -> None:
        await asyncio.to_thread(self._unlink, upload_id, (".data", ".json"))

    async def delete_data(self, upload_id: str) -> None:
        await asyncio.to_thread(self._unlink, upload_id, (".data",))

    async def sync(self, upload_id: str) -> None:
        path = self._path(upload_id, ".data")

        def fsync() -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        await asyncio.to_thread(fsync)

    def _unlink(self, upload_id: str, suffixes: tuple[str, ...]) -> None:
        for suffix in suffixes:
            path = self._path(upload_id, suffix)
            if suffix == ".data":
                _shrink(path)
            path.unlink(missing_ok=True)
        self._fsync_root()

    async def list(self) -> list[str]:
        def scan() -> list[str]:
            names = (entry.name for entry in os.scandir(self.root))
            return sorted(name[:-5] for name in names if name.endswith(".json") and _ID.fullmatch(name[:-5]))

        return await asyncio.to_thread(scan)

    async def free_bytes(self) -> int | None:
        stat = await asyncio.to_thread(os.statvfs, self.root)
        return stat.f_bavail * stat.f_frsize

    async def close(self) -> None:
        await asyncio.to_thread(self._worker.stop)
