"""Delivering again what the upstream did not take: a finished upload whose forward failed (502/504).

Why. The contract lets the client send the completing request again (an empty PATCH at the full offset), and
until then HEAD shows the full offset. But a tus client that got a 502 on its last PATCH and retries asks HEAD
first, sees the offset equal to the length, and reports success (tus-js-client does): nobody would send that
PATCH, and the file would sit in the spool until it expires. So the relay retries the forward itself:

- right after a HEAD of such an upload (the client is back, so the upstream may be too), and
- from the sweeper, with backoff (RETRY_DELAYS after the last failure, then the last delay again), until the
  upload is delivered, expires or is terminated.

A retry goes through `Appends.forward` with a made-up request that nobody reads the answer of, so it takes the
same path and the same per-upload forward lock as a client's completing request: never two deliveries at once,
and a client's own retry still works.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from relay.core import resumable as core
from relay.core.resumable import ResumableUpload
from relay.core.resumable_headers import ResumableRequest
from relay.resumable.answers import Request
from relay.resumable.appends import Appends
from relay.settings import Route
from relay.types import Message

__all__ = ["RETRY_DELAYS", "Redelivery"]

log = logging.getLogger("relay.resumable")
RETRY_DELAYS = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)


class Redelivery:
    """Background forwards of finished uploads that the upstream has not answered yet."""

    def __init__(self, appends: Appends, routes: dict[str, Route]) -> None:
        self._appends = appends
        self._routes = routes
        self._failures: dict[str, tuple[int, float]] = {}  # upload id -> (retries so far, next attempt at)
        self._running: dict[str, asyncio.Task[None]] = {}

    def wanted(self, upload: ResumableUpload) -> bool:
        """Finished, not delivered, and its last forward failed (a forward never tried is the client's own)."""
        return upload.state == core.FORWARDING and upload.error is not None

    def kick(self, upload: ResumableUpload) -> None:
        """Try now (after a HEAD), unless a retry is already under way."""
        if self.wanted(upload):
            self._start(upload)

    def due(self, uploads: list[ResumableUpload], now: float) -> None:
        """The sweeper's turn: start the retries whose time has come."""
        for upload in uploads:
            if not self.wanted(upload):
                self._failures.pop(upload.id, None)
                continue
            retries, next_at = self._failures.get(upload.id, (0, 0.0))
            if next_at == 0.0:  # first seen failing: wait the first delay
                self._failures[upload.id] = (retries, now + RETRY_DELAYS[0])
            elif now >= next_at:
                self._start(upload)

    def _start(self, upload: ResumableUpload) -> None:
        running = self._running.get(upload.id)
        if running is not None and not running.done():
            return
        task = asyncio.create_task(self._retry(upload))
        self._running[upload.id] = task
        task.add_done_callback(lambda _: self._running.pop(upload.id, None))

    async def _retry(self, upload: ResumableUpload) -> None:
        request = self._request(upload)
        try:
            await self._appends.forward(request, upload)
        except Exception as exc:  # a background retry must never take the relay down; the sweeper tries again
            log.warning("redelivery of upload %s failed: %s", upload.id, exc)
        current = self._appends.store.get(upload.id) or upload  # with Redis, memory keeps no copy after a request
        if self.wanted(current):
            retries, _ = self._failures.get(upload.id, (0, 0.0))
            delay = RETRY_DELAYS[min(retries, len(RETRY_DELAYS) - 1)]
            self._failures[upload.id] = (retries + 1, time.time() + delay)
        else:
            self._failures.pop(upload.id, None)

    def _request(self, upload: ResumableUpload) -> Request:
        """A completing request as a client would send it, whose answer goes nowhere."""
        route = self._routes.get(upload.route) or next(iter(self._routes.values()))
        scope: dict[str, Any] = {
            "type": "http",
            "method": "PATCH",
            "path": upload.target.split(b"?", 1)[0].decode("latin-1"),
            "headers": [],
            "client": None,
            "scheme": "http",
            "extensions": {},
        }
        req = ResumableRequest(method="PATCH", protocol=upload.protocol, upload_offset=upload.length, content_length=0)

        async def receive() -> Message:
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            return None

        return Request(scope, receive, send, route, req, [], "relay", body_read=True)

    async def stop(self) -> None:
        for task in list(self._running.values()):
            task.cancel()
        for task in list(self._running.values()):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
