"""IdleWatch: one timer per upload instead of asyncio.timeout() around every receive()."""

from __future__ import annotations

import asyncio
import time

from relay.watchdog import IdleWatch


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_wait_longer_than_the_limit_cancels_the_task() -> None:
    async def main() -> tuple[bool, float]:
        watch = IdleWatch(0.2)
        started = time.monotonic()
        watch.begin()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return watch.fired, time.monotonic() - started
        finally:
            watch.close()
        return False, 0.0

    fired, elapsed = run(main())
    assert fired and 0.2 <= elapsed < 1.0


def test_many_short_waits_never_fire_however_long_they_add_up() -> None:
    async def main() -> bool:
        watch = IdleWatch(0.15)
        try:
            for _ in range(10):  # 10 x 0.05 s of waiting, 0.5 s in all
                watch.begin()
                await asyncio.sleep(0.05)
                watch.end()
        finally:
            watch.close()
        return watch.fired

    assert run(main()) is False


def test_time_outside_a_wait_does_not_count() -> None:
    async def main() -> bool:
        watch = IdleWatch(0.1)
        try:
            time.sleep(0.3)  # busy, not waiting: the timer fires late and must re-arm, not cancel
            await asyncio.sleep(0)
            watch.begin()
            await asyncio.sleep(0.05)
            watch.end()
        finally:
            watch.close()
        return watch.fired

    assert run(main()) is False


def test_no_limit_never_fires() -> None:
    async def main() -> bool:
        watch = IdleWatch(None)
        try:
            watch.begin()
            await asyncio.sleep(0.2)
            watch.end()
        finally:
            watch.close()
        return watch.fired

    assert run(main()) is False
