"""relay/resumable/filehash.py: when a running sha256 may be carried on, and what PrefixHashed hashes."""

from __future__ import annotations

import hashlib

from hypothesis import given, strategies as st

from relay.resumable import filehash
from relay.resumable.filehash import PrefixHashed, RunningHashes


def fed(hashes: RunningHashes, upload_id: str, start: int, data: bytes) -> object:
    digest = hashes.begin(upload_id, start)
    assert digest is not None
    digest.update(data)
    return digest


def test_appends_carry_the_hash_to_the_forward() -> None:
    hashes = RunningHashes(enabled=True)
    digest = fed(hashes, "u", 0, b"abc")
    hashes.end("u", digest, 3, 3)
    digest = fed(hashes, "u", 3, b"def")
    hashes.end("u", digest, 6, 6)
    seed = hashes.take("u", 6)
    assert seed is not None
    seed.update(b"abcdef")  # the forward feeds the spooled bytes again: dropped
    seed.update(b"gh")
    assert seed.hexdigest() == hashlib.sha256(b"abcdefgh").hexdigest()
    assert hashes.take("u", 6) is None  # taken once


def test_a_hash_that_does_not_cover_the_offset_is_dropped() -> None:
    hashes = RunningHashes(enabled=True)
    digest = fed(hashes, "u", 0, b"abcdef")
    hashes.end("u", digest, 6, 3)  # the decision kept 3 bytes (a refused checksum: the append's start)
    assert hashes.begin("u", 3) is None
    assert hashes.take("u", 3) is None
    assert hashes.begin("v", 5) is None  # never seen here (a restart, another relay's appends)


def test_an_append_elsewhere_than_the_hash_ends_gets_none() -> None:
    hashes = RunningHashes(enabled=True)
    digest = fed(hashes, "u", 0, b"abc")
    hashes.end("u", digest, 3, 3)
    assert hashes.begin("u", 4) is None
    assert hashes.begin("u", 3) is None  # the mismatched begin dropped it


def test_disabled_keeps_nothing() -> None:
    hashes = RunningHashes(enabled=False)
    assert hashes.begin("u", 0) is None


def test_the_table_is_bounded() -> None:
    hashes = RunningHashes(enabled=True)
    for n in range(filehash.MAX_UPLOADS + 5):
        digest = fed(hashes, str(n), 0, b"x")
        hashes.end(str(n), digest, 1, 1)
    assert hashes.take("0", 1) is None
    assert hashes.take(str(filehash.MAX_UPLOADS + 4), 1) is not None


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
