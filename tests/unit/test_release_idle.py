"""relay/tuning.py release_when_idle: a burst's heap goes back once the relay is idle, never during an upload."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from relay.tuning import release_when_idle

MiB = 1024 * 1024


def _run(busy: list[bool], rss: list[int], *, looks: int) -> list[int]:
    """Drive the job for at least `looks` looks (counted, not timed: a loaded machine only makes it slower); `rss`
    is read in order (its last value repeats); the RSS at each trim."""
    trims: list[int] = []
    reads = iter(rss)
    last = [rss[0]]
    done = [0]

    def read() -> int:
        last[0] = next(reads, last[0])
        return last[0]

    def trim() -> bool:
        trims.append(last[0])
        return True

    def looked() -> bool:  # asked once per look, before anything else
        done[0] += 1
        return busy[0]

    async def main() -> None:
        job = asyncio.ensure_future(release_when_idle(looked, every=0.01, above=4 * MiB, rss=read, trim=trim))
        for _ in range(1000):  # 10 s at most
            if done[0] >= looks:
                break
            await asyncio.sleep(0.01)
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)

    asyncio.run(main())
    assert done[0] >= looks, f"the job looked {done[0]} times in 10 s"
    return trims


def test_trims_once_idle_after_growth_and_not_again_without_new_growth() -> None:
    # start 60; a burst leaves 78; the trim brings 61; it stays there: one trim only
    trims = _run([False], [60 * MiB, 78 * MiB, 61 * MiB, 61 * MiB, 61 * MiB], looks=6)
    assert trims == [78 * MiB]


def test_small_growth_is_left_alone() -> None:
    assert _run([False], [60 * MiB, 62 * MiB, 63 * MiB], looks=5) == []


def test_never_while_an_upload_is_in_flight() -> None:
    # the RSS would call for a trim at every look, but an upload is in flight throughout
    assert _run([True], [60 * MiB, 90 * MiB], looks=5) == []


def test_what_a_trim_cannot_give_back_is_the_new_floor() -> None:
    # 60 -> 70 (trim; live objects: still 70) -> 72 (only +2 over the new floor): one trim
    trims = _run([False], [60 * MiB, 70 * MiB, 70 * MiB, 72 * MiB, 72 * MiB], looks=6)
    assert trims == [70 * MiB]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_malloc_trim_gives_back_a_burst_left_by_the_pinned_trim_threshold() -> None:
    # A real process, tuned as relay-server is: 32 MiB of 256 KiB blocks freed stay resident (the 64 MiB trim
    # threshold); malloc_trim gives them back.
    code = """
import sys
from relay.tuning import malloc_trim, rss_bytes, tune_malloc
assert tune_malloc()
base = rss_bytes()
blocks = [bytearray(256 * 1024) for _ in range(128)]
del blocks
kept = rss_bytes() - base
assert malloc_trim()
left = rss_bytes() - base
print(kept // 2**20, left // 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    kept, left = int(out[0]), int(out[1])
    assert kept >= 24 and left <= 4, (kept, left)
