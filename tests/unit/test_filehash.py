"""relay/resumable/filehash.py: what the background hash of a resumable upload's spooled bytes covers, and when the
completing forward may start from it."""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import replace
from pathlib import Path

from hypothesis import given, strategies as st

from relay.core import resumable as core
from relay.core.resumable import ResumableUpload
from relay.resumable import filehash
from relay.resumable.filehash import PrefixHashed, RunningHashes


def up(upload_id: str, offset: int = 0, created: float = 1000.0) -> ResumableUpload:
    made = core.create(
        upload_id=upload_id, route="/", target=b"/", protocol="tus", now=created, expiry=60, length=None, metadata={}
    )
    return replace(made, offset=offset)


def spool(tmp_path: Path) -> tuple[RunningHashes, Path]:
    return RunningHashes(True, lambda upload_id: tmp_path / f"{upload_id}.data"), tmp_path / "u.data"


def test_the_forward_gets_the_hash_of_every_appended_byte(tmp_path: Path) -> None:
    hashes, data = spool(tmp_path)
    content = os.urandom(3 * filehash.READ_SIZE + 5)
    data.write_bytes(content[:1000])
    hashes.appended(up("u", 1000))
    data.write_bytes(content)
    hashes.appended(up("u", len(content)))

    async def take() -> PrefixHashed | None:
        return await hashes.take(up("u"), len(content))

    seed = asyncio.run(take())
    assert seed is not None
    seed.update(content)  # the copying forward feeds the spooled bytes again: dropped
    seed.update(b"tail")
    assert seed.hexdigest() == hashlib.sha256(content + b"tail").hexdigest()
    assert asyncio.run(take()) is None  # taken once


def test_a_hash_that_ends_elsewhere_is_no_use(tmp_path: Path) -> None:
    hashes, data = spool(tmp_path)
    data.write_bytes(b"abcdef")
    hashes.appended(up("u", 6))
    assert asyncio.run(hashes.take(up("u"), 5)) is None
    assert asyncio.run(hashes.take(up("v"), 6)) is None  # never seen here (a restart, another relay's appends)


def test_a_failed_read_drops_the_hash(tmp_path: Path) -> None:
    hashes, data = spool(tmp_path)
    data.write_bytes(b"abc")
    hashes.appended(up("u", 10))  # the file is shorter than the saved offset says
    assert asyncio.run(hashes.take(up("u"), 10)) is None
    hashes.appended(up("u", 3))  # a broken hash starts again from byte 0
    seed = asyncio.run(hashes.take(up("u"), 3))
    assert seed is not None and seed.hexdigest() == hashlib.sha256(b"abc").hexdigest()


def test_disabled_or_without_files_keeps_nothing(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_bytes(b"abc")
    for hashes in (RunningHashes(False, lambda upload_id: tmp_path / "u.data"), RunningHashes(True, None)):
        hashes.appended(up("u", 3))
        assert asyncio.run(hashes.take(up("u"), 3)) is None


def test_the_table_is_bounded(tmp_path: Path) -> None:
    hashes = RunningHashes(True, lambda upload_id: tmp_path / "x.data")
    (tmp_path / "x.data").write_bytes(b"x")
    for n in range(filehash.MAX_UPLOADS + 5):
        hashes.appended(up(str(n), 1))
    assert asyncio.run(hashes.take(up("0"), 1)) is None
    assert asyncio.run(hashes.take(up(str(filehash.MAX_UPLOADS + 4)), 1)) is not None


@given(st.binary(max_size=300), st.integers(0, 300), st.lists(st.integers(1, 64), max_size=20))
def test_prefix_hashed_hashes_the_file_whatever_the_chunks(data: bytes, cut: int, sizes: list[int]) -> None:
    cut = min(cut, len(data))
    seed = PrefixHashed(hashlib.sha256(data[:cut]), cut)
    position = 0
    for size in [*sizes, len(data)]:
        seed.update(memoryview(data)[position : position + size])
        position += size
    assert seed.hexdigest() == hashlib.sha256(data).hexdigest()


def test_rest_hash_skips_the_prefix() -> None:
    seed = PrefixHashed(hashlib.sha256(b"head"), 4)
    seed.rest_hash().update(b"tail")
    assert seed.hexdigest() == hashlib.sha256(b"headtail").hexdigest()


def test_a_reused_id_never_continues_the_old_uploads_hash(tmp_path: Path) -> None:
    """Rule 5: X-Upload-ID may name a new upload after the old one expired; its hash starts from its own bytes."""
    hashes, data = spool(tmp_path)
    data.write_bytes(b"old bytes")
    hashes.appended(up("u", 9, created=1000.0))
    data.write_bytes(b"new bytes, more of them")
    hashes.appended(up("u", 23, created=2000.0))
    seed = asyncio.run(hashes.take(up("u", created=2000.0), 23))
    assert seed is not None and seed.hexdigest() == hashlib.sha256(b"new bytes, more of them").hexdigest()
