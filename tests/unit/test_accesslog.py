"""relay/accesslog.py with scripted ASGI callables: what the wrapper counts and notes, what it logs when the
app fails or is cancelled, client text escaped, and the JSON formatter's lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from relay.accesslog import AccessLog, JsonFormatter, TextFormatter
from relay.types import Message, Receive, Scope, Send


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def scope(**extra: Any) -> Scope:
    base: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/upload/x",
        "raw_path": b"/upload/x",
        "query_string": b"a=1",
        "client": ("10.0.0.1", 5555),
        "headers": [(b"user-agent", b"agent\r\nforged: yes")],
    }
    return {**base, **extra}


def logger() -> tuple[logging.Logger, Capture]:
    log = logging.getLogger("test.access")
    log.setLevel(logging.INFO)
    log.propagate = False
    capture = Capture()
    log.handlers = [capture]
    return log, capture


def scripted(messages: list[Message]) -> Receive:
    async def receive() -> Message:
        return messages.pop(0)

    return receive


async def discard(message: Message) -> None:
    return None


def run(app: Any, receive: Receive, send: Send = discard, the_scope: Scope | None = None) -> dict[str, Any]:
    log, capture = logger()
    with contextlib.suppress(RuntimeError, asyncio.CancelledError):  # what the apps below raise
        asyncio.run(AccessLog(app, log)(the_scope or scope(), receive, send))
    assert len(capture.records) == 1
    access: dict[str, Any] = capture.records[0].access  # type: ignore[attr-defined]
    return access


async def echo_app(the_scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if not message.get("more_body"):
            break
    headers = [(b"X-Upload-ID", b"abc"), (b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def test_counts_body_bytes_and_notes_status_and_upload_id() -> None:
    body = [
        {"type": "http.request", "body": b"12345", "more_body": True},
        {"type": "http.request", "body": b"678", "more_body": False},
    ]
    access = run(echo_app, scripted(body))
    assert access["bytes"] == 8 and access["status"] == 201 and access["upload_id"] == "abc"
    assert access["client"] == "10.0.0.1:5555" and access["method"] == "POST" and access["path"] == "/upload/x?a=1"
    assert access["user_agent"] == "agent\\x0d\\x0aforged: yes"  # no forged log lines
    assert access["seconds"] >= 0


def test_an_app_that_raises_before_answering_is_logged_500() -> None:
    async def broken(the_scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise RuntimeError("boom")

    access = run(broken, scripted([{"type": "http.request", "body": b"x", "more_body": False}]))
    assert access["status"] == 500 and access["bytes"] == 1


def test_a_cancelled_request_is_logged_with_status_0() -> None:
    async def stuck(the_scope: Scope, receive: Receive, send: Send) -> None:
        raise asyncio.CancelledError

    access = run(stuck, scripted([]))
    assert access["status"] == 0 and access["upload_id"] == "-"


def test_lifespan_passes_through_unlogged() -> None:
    seen: list[str] = []

    async def app(the_scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(the_scope["type"])

    log, capture = logger()
    asyncio.run(AccessLog(app, log)({"type": "lifespan"}, scripted([]), discard))
    assert seen == ["lifespan"] and capture.records == []


def test_json_formatter_one_object_per_line() -> None:
    record = logging.LogRecord("relay.access", logging.INFO, __file__, 1, "%s", ("text",), None)
    record.access = {"client": "c", "status": 200, "path": "/a\nb"}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "info" and data["status"] == 200 and data["path"] == "/a\nb" and "ts" in data
    plain = logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    assert json.loads(JsonFormatter().format(plain))["message"] == "hello you"
    assert "WARNING uvicorn.error: hello you" in TextFormatter().format(plain)
