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


def fired_after(limit: float | None, waits: list[float], busy_first: float = 0.0) -> bool:
    """Run `waits` (seconds each, between begin() and end()) under one IdleWatch; did it fire?"""

    async def main() -> bool:
        watch = IdleWatch(limit)
        try:
            time.sleep(busy_first)  # busy, not waiting: a timer that fires late must re-arm, not cancel
            await asyncio.sleep(0)
            for seconds in waits:
                watch.begin()
                await asyncio.sleep(seconds)
                watch.end()
        finally:
            watch.close()
        return watch.fired

    return run(main())


def test_many_short_waits_never_fire_however_long_they_add_up() -> None:
    assert fired_after(0.15, [0.05] * 10) is False  # 0.5 s of waiting in all


def test_time_outside_a_wait_does_not_count() -> None:
    assert fired_after(0.1, [0.05], busy_first=0.3) is False


def test_no_limit_never_fires() -> None:
    assert fired_after(None, [0.2]) is False


def test_a_watch_that_fired_does_not_swallow_another_cancel() -> None:
    async def outcome(also_cancelled_elsewhere: bool) -> bool:
        watch = IdleWatch(10)
        task = asyncio.current_task()
        assert task is not None

        def fire() -> None:  # what _check does when the limit passes, plus uvicorn's shutdown at the same moment
            watch.fired = True
            task.cancel()
            if also_cancelled_elsewhere:
                task.cancel()

        asyncio.get_running_loop().call_soon(fire)
        watch.begin()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return watch.claim()
        finally:
            watch.close()
        return False

    async def main() -> tuple[bool, bool]:
        alone = await asyncio.create_task(outcome(False))
        both = asyncio.create_task(outcome(True))
        return alone, await both

    alone, both = run(main())
    assert alone is True  # the idle timeout's own cancel: claimed, becomes ClientTimeout
    assert both is False  # another cancel pending: it must propagate
