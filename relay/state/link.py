"""Whether Redis answers, as every background job of relay/state/redis.py sees it.

A job that gets an error from Redis calls `down(exc)`; from then on the jobs that write wait in `wait_up()`
instead of hammering a dead server, `take_slots` counts per relay without trying, and `/_relay/health` says
`degraded`. `watch()` (one task) PINGs with a backoff from 0.1 s to 2 s until Redis answers again, then calls
`up()`, which wakes everyone. Errors are one line (no traceback), logged once per outage.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["ERRORS", "Link"]

log = logging.getLogger("relay.state")
# What a Redis call raises when the server is gone, slow or restarted mid-command.
ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
PING_TIMEOUT = 1.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0


class Link:
    def __init__(self) -> None:
        self.error: str | None = None
        self._up = asyncio.Event()
        self._up.set()
        self._down = asyncio.Event()

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def down(self, exc: BaseException) -> None:
        if self._up.is_set():
            log.warning("relay-server: redis unreachable (%s); going on with this relay's own state", describe(exc))
        self.error = describe(exc)
        self._up.clear()
        self._down.set()

    def up(self) -> None:
        if not self._up.is_set():
            log.warning("relay-server: redis answers again")
        self.error = None
        self._down.clear()
        self._up.set()

    async def wait_up(self) -> None:
        await self._up.wait()

    async def watch(self, client: Redis) -> None:
        """Until cancelled: once down, PING with backoff until Redis answers."""
        while True:
            await self._down.wait()
            delay = BACKOFF_FIRST
            while not self.is_up:
                try:
                    async with asyncio.timeout(PING_TIMEOUT):
                        await client.ping()
                except ERRORS as exc:
                    self.error = describe(exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX)
                else:
                    self.up()


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
