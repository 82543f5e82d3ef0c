"""Stopping background tasks for good: `cancel_and_wait`.

One `task.cancel()` is not always enough on Python 3.11: `asyncio.wait_for` there loses a cancellation that
arrives while what it waits for has just finished (cpython gh-86296; 3.12 rewrote wait_for on
`asyncio.timeout`). redis-py puts one around every command's write (`send_packed_command`, since our clients
set socket_timeout), so a job cancelled at that moment gets its command's answer instead and goes on looping,
and a stop that awaits it after a single cancel() waits forever (the webhooks' dispatcher held SIGTERM until
SIGKILL). Cancelling again until the task has ended is safe on every version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["cancel_and_wait"]

AGAIN_AFTER = 0.5  # seconds a cancelled task has to end before it is cancelled again


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], *, again_after: float = AGAIN_AFTER) -> None:
    """Cancel `tasks` and return once every one has ended (cancelled again while one is still running); their
    exceptions are retrieved and dropped."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after)
    for task in tasks:
        if not task.cancelled():
            task.exception()
