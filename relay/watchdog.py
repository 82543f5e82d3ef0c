"""An idle timeout for one task's waits, at the price of two attribute stores per wait.

`asyncio.timeout()` around every body `receive()` built a Timeout, scheduled and cancelled a timer handle
and looked up the running loop each time: about 16 % of the relay's CPU on a 1 GiB upload (py-spy, see
benchmarks/RESULTS.md). `IdleWatch` keeps one timer per upload instead. The task marks when it starts
and stops waiting; the timer, when it fires, either finds the current wait older than the limit and
cancels the task, or re-arms itself for when the current wait would reach the limit.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["IdleWatch"]


class IdleWatch:
    """Cancels `task` when one wait (between `begin()` and `end()`) lasts `seconds` or more (None: never)."""

    __slots__ = ("_handle", "_loop", "_seconds", "_task", "fired", "waiting_since")

    def __init__(self, seconds: float | None, task: asyncio.Task[Any] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = task or asyncio.current_task()
        self._seconds = seconds
        self.waiting_since: float | None = None
        self.fired = False
        self._handle = None if seconds is None else self._loop.call_at(self._loop.time() + seconds, self._check)

    def begin(self) -> None:
        self.waiting_since = self._loop.time()

    def end(self) -> None:
        self.waiting_since = None

    def claim(self) -> bool:
        """Called on CancelledError: True when the cancel was this watch's alone (and is now undone).

        False when it did not fire, or when another cancel (uvicorn's shutdown) is pending as well: that
        one must propagate, as asyncio.timeout() does.
        """
        if not self.fired or self._task is None:
            return False
        return self._task.uncancel() == 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _check(self) -> None:
        assert self._seconds is not None
        now = self._loop.time()
        since = self.waiting_since
        if since is not None and now - since >= self._seconds and self._task is not None:
            self.fired = True
            self._task.cancel()
            return
        self._handle = self._loop.call_at((since if since is not None else now) + self._seconds, self._check)
