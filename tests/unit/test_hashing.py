"""relay.hashing: sha256 on the worker thread gives hashlib's digest, whatever the mix of updates."""

from __future__ import annotations

import hashlib
import random
import threading

from relay import hashing
from relay.hashing import MAX_QUEUED, OFFLOAD_MIN, OffloadedSha256


def pieces(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [rng.choice([1, 100, OFFLOAD_MIN - 1, OFFLOAD_MIN, 300_000, 1 << 20]) for _ in range(40)]
    return [rng.randbytes(size) for size in sizes]


def test_the_digest_is_hashlibs_for_any_mix_of_small_and_large_updates() -> None:
    for seed in range(5):
        data = pieces(seed)
        offloaded = OffloadedSha256()
        for piece in data:
            offloaded.update(memoryview(piece)[1:] if len(piece) > 1 else piece)
        expected = hashlib.sha256(b"".join(piece[1:] if len(piece) > 1 else piece for piece in data))
        assert offloaded.hexdigest() == expected.hexdigest()


def test_a_buffer_that_changes_after_update_is_hashed_as_it_was() -> None:
    buffer = bytearray(b"a" * (2 * OFFLOAD_MIN))
    offloaded = OffloadedSha256()
    offloaded.update(memoryview(buffer))
    buffer[:] = b"b" * len(buffer)  # the caller reuses its buffer at once
    assert offloaded.hexdigest() == hashlib.sha256(b"a" * (2 * OFFLOAD_MIN)).hexdigest()


def test_many_hashes_from_many_threads_stay_apart_and_memory_stays_bounded() -> None:
    results: dict[int, tuple[str, str]] = {}
    most_queued: list[int] = []

    def upload(n: int) -> None:
        offloaded, plain = OffloadedSha256(), hashlib.sha256()
        for piece in pieces(100 + n):
            offloaded.update(piece)
            plain.update(piece)
            assert hashing._worker is not None
            most_queued.append(hashing._worker.queued)
        results[n] = (offloaded.hexdigest(), plain.hexdigest())

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 6
    assert all(offloaded == plain for offloaded, plain in results.values())
    # submit() waits while more than MAX_QUEUED is queued, so at most one piece per thread goes over it.
    assert max(most_queued) <= MAX_QUEUED + 6 * (1 << 20)


def test_a_strided_view_is_hashed_as_its_bytes_and_the_worker_lives_on() -> None:
    data = random.Random(7).randbytes(4 * OFFLOAD_MIN)
    offloaded = OffloadedSha256()
    offloaded.update(memoryview(data)[::2])  # not contiguous: hashlib itself would refuse it
    assert offloaded.hexdigest() == hashlib.sha256(data[::2]).hexdigest()
    after = OffloadedSha256()
    after.update(data)
    assert after.hexdigest() == hashlib.sha256(data).hexdigest()
