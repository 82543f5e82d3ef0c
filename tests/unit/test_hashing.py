"""relay.hashing: sha256 on the worker thread gives hashlib's digest, whatever the mix of updates."""

from __future__ import annotations

import hashlib
import random
import threading
import time

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


class _SlowHash:
    """sha256 that takes 2 ms per update, so the worker falls behind and the submitting thread must wait."""

    def __init__(self) -> None:
        self.inner = hashlib.sha256()

    def update(self, data: bytes) -> None:
        time.sleep(0.002)
        self.inner.update(data)

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


class _CountingCondition(threading.Condition):
    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.wakeups = 0

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        self.wakeups += 1
        return woken


def test_a_thread_held_back_by_a_full_queue_is_woken_once_per_low_water_not_per_chunk(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    worker = hashing._Worker()
    counting = _CountingCondition(worker.lock)
    worker.progress = counting
    monkeypatch.setattr(hashing, "_worker", worker)
    chunk = random.Random(9).randbytes(256 * 1024)
    count = 64  # 16 MiB, eight times MAX_QUEUED
    offloaded, plain = OffloadedSha256(), hashlib.sha256()
    offloaded._hash = _SlowHash()
    for _ in range(count):
        offloaded.update(chunk)
        plain.update(chunk)
    assert offloaded.hexdigest() == plain.hexdigest()
    # Each wait for room lasts until LOW_WATER: MAX_QUEUED - LOW_WATER bytes, 4 chunks, per wake-up. Woken after
    # every chunk (the lockstep this replaced), it would be about one wake-up per chunk past the first 2 MiB.
    per_wakeup = (hashing.MAX_QUEUED - hashing.LOW_WATER) // len(chunk)
    assert counting.wakeups <= count // per_wakeup + 2, counting.wakeups
