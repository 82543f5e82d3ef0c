"""A webhook receiver for the tests: a small HTTP server on 127.0.0.1 in a thread of the test, which verifies every
request with the standardwebhooks package (not the relay's own code) and answers a scripted list of statuses.
Used by tests/e2e/test_webhooks.py and tests/redis/test_webhooks_redis.py; the `receivers` fixture that starts
and stops them lives in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = "whsec_" + base64.b64encode(b"a test secret of thirty-two bytes").decode()
RAW_SECRET = "a plain passphrase"
FAST = {"RELAY_WEBHOOK_BACKOFF": "0.3,0.3,0.3,0.3,0.3,0.3"}


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    payload: Any  # what standardwebhooks verified, or None
    error: str | None
    status: int  # what the receiver answered


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1: answers `script` statuses in turn, then 200; verifies every request."""

    secret: str | bytes = SECRET
    port: int = 0
    script: list[int] = field(default_factory=list)
    sleep: float = 0.0
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closing: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> Receiver:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._closing = asyncio.Event()
            server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
            ready.set()
            loop.run_forever()
            server.close()
            # Handlers still asleep wake up, answer and end here. Left pending for the garbage collector, a task's
            # finaliser runs in whatever the main thread is doing (CPython 3.11 then broke an ast.parse).
            loop.run_until_complete(self._finish_handlers())
            loop.run_until_complete(server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(5)
        return self

    async def _finish_handlers(self) -> None:
        assert self._closing is not None
        self._closing.set()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        await asyncio.gather(*others, return_exceptions=True)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        try:
            payload, error = Webhook(self.secret).verify(body, headers), None
        except WebhookVerificationError as exc:
            payload, error = None, str(exc)
        with self._lock:
            status = self.script.pop(0) if self.script else 200
        if self.sleep and self._closing is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.sleep)
        with self._lock:
            self.requests.append(Received(headers, body, payload, error, status))
        try:
            writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".encode())
            await writer.drain()
        except ConnectionError:
            pass  # the relay gave up on this attempt (its timeout, or it stopped)
        finally:
            writer.close()

    def delivered(self) -> list[Received]:
        with self._lock:
            return [item for item in self.requests if 200 <= item.status < 300]


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
