"""relay/cancel.py: a task that loses a cancellation (as redis-py's commands do on Python 3.11, whose wait_for drops
a cancel that arrives just as the awaited write finishes: cpython gh-86296) is still stopped by `cancel_and_wait`.

The lost cancel is made deterministic here: the task swallows the first two CancelledErrors, as the webhooks'
dispatcher did when its CLAIM command's write had just finished, and goes on looping. One cancel() and a gather
would wait for it forever (the relay's stop then took until SIGKILL)."""

from __future__ import annotations

import asyncio
import time

from relay.cancel import cancel_and_wait


def test_a_task_that_loses_cancellations_is_stopped() -> None:
    lost: list[int] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if len(lost) == 2:
                    raise
                lost.append(1)
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  # as 3.11's wait_for leaves it

    async def main() -> float:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0.05)
        began = time.monotonic()
        async with asyncio.timeout(5):  # one cancel() and a wait would never end
            await cancel_and_wait([task], again_after=0.05)
        assert task.cancelled()
        return time.monotonic() - began

    took = asyncio.run(main())
    assert len(lost) == 2 and took < 2.0


def test_failed_and_finished_tasks_are_fine() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        failed, done = asyncio.create_task(fails()), asyncio.create_task(asyncio.sleep(0))
        await asyncio.sleep(0.01)
        await cancel_and_wait([failed, done])  # retrieves the exception: no "never retrieved" warning

    asyncio.run(main())
