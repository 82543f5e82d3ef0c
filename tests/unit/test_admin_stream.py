"""The per-upload SSE stream of relay/admin.py, driven through its ASGI app with scripted receive/send.

The race under test: events published between the subscription (made in the endpoint) and the first step of
the stream generator (which reads the registry for a late subscriber's catch-up). A real relay hits it when an
upload starts while the events request is being answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest

from relay.admin import create_admin_app
from relay.bus import InMemoryEventBus
from relay.core.events import Completed, Event, Part, Progress, Started
from relay.metrics import RelayMetrics
from relay.proxy_context import RelayContext
from relay.settings import Settings
from relay.uploads import InMemoryUploadRegistry


def context() -> RelayContext:
    return RelayContext(
        settings=Settings(),
        bus=InMemoryEventBus(),
        registry=InMemoryUploadRegistry(),
        metrics=RelayMetrics(),
        upstreams={},
    )


def parse_sse(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = None, None
        for line in block.decode().split("\n"):
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data = json.loads(line.removeprefix("data:").strip())
        if name and data is not None:
            events.append((name, data))
    return events


def stream(ctx: RelayContext, upload_id: str, on_headers: list[Event], after: list[Event]) -> list[tuple[str, Any]]:
    """GET /_relay/uploads/{id}/events; `on_headers` are emitted as the response starts, `after` once it streams."""

    async def scenario() -> bytes:
        app = create_admin_app(ctx)
        body = bytearray()
        disconnect = asyncio.Event()
        path = f"/_relay/uploads/{upload_id}/events"
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
            "root_path": "",
        }

        async def receive() -> dict[str, Any]:
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                assert message["status"] == 200
                for event in on_headers:
                    ctx.emit(event)
                loop = asyncio.get_running_loop()
                for index, event in enumerate(after):
                    loop.call_later(0.01 * (index + 1), ctx.emit, event)
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    disconnect.set()

        await asyncio.wait_for(app(scope, receive, send), 5)
        return bytes(body)

    return parse_sse(asyncio.run(scenario()))


def events_of(upload_id: str) -> list[Event]:
    return [
        Started(upload_id, 0, 1000, 1.0, "/upload/", "POST", "/upload/x"),
        Progress(upload_id, 100, 1000, 1.1),
        Part(upload_id, 150, 1000, 1.2, 0, "a", None, None, 10, "0" * 64),
        Progress(upload_id, 400, 1000, 1.3),
        Part(upload_id, 450, 1000, 1.4, 1, "b", None, None, 10, "1" * 64),
        Progress(upload_id, 900, 1000, 1.5),
        Completed(upload_id, 1000, 1000, 1.6, 200),
    ]


def assert_consistent(events: list[tuple[str, Any]]) -> None:
    """One upload's stream: counts never go back (a late subscriber's replayed parts carry the current count,
    as the contract says), each part once and in order, one terminal event last."""
    names = [name for name, _ in events]
    counts = [(name, data["bytes"]) for name, data in events]
    assert [count for _, count in counts] == sorted(count for _, count in counts), f"counts go back: {counts}"
    indexes = [data["index"] for name, data in events if name == "part"]
    assert indexes == sorted(set(indexes)), f"parts repeated or out of order: {indexes}"
    assert names.count("completed") + names.count("failed") == 1 and names[-1] in ("completed", "failed")
    assert "started" not in names[1:], f"started after other events: {names}"


def test_subscriber_before_the_upload_gets_everything_in_order() -> None:
    ctx = context()
    events = stream(ctx, "u1", on_headers=[], after=events_of("u1"))
    assert [name for name, _ in events] == ["started", "progress", "part", "progress", "part", "progress", "completed"]
    assert_consistent(events)


def test_late_subscriber_after_the_end() -> None:
    ctx = context()
    for event in events_of("u1"):
        ctx.emit(event)
    events = stream(ctx, "u1", on_headers=[], after=[])
    assert [name for name, _ in events] == ["progress", "part", "part", "completed"]
    assert [data["bytes"] for _, data in events] == [1000, 1000, 1000, 1000]
    assert [data["size"] for name, data in events if name == "part"] == [10, 10]  # the rest of each part kept
    assert_consistent(events)


def test_subscriber_joining_mid_upload() -> None:
    ctx = context()
    upload = events_of("u1")
    for event in upload[:3]:
        ctx.emit(event)
    events = stream(ctx, "u1", on_headers=[], after=upload[3:])
    assert [name for name, _ in events] == ["progress", "part", "progress", "part", "progress", "completed"]
    assert_consistent(events)


@pytest.mark.parametrize("gap", [2, 3, 5])
def test_events_in_the_gap_between_subscribe_and_snapshot(gap: int) -> None:
    ctx = context()
    upload = events_of("u1")
    events = stream(ctx, "u1", on_headers=upload[:gap], after=upload[gap:])
    assert_consistent(events)
    assert [name for name, _ in events][0] == "started"


@pytest.mark.parametrize("path", ["/_relay/uploads/x/events", "/_relay/events"])
def test_a_stream_that_never_starts_leaves_no_subscription(path: str) -> None:
    ctx = context()

    async def scenario() -> None:
        app = create_admin_app(ctx)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": b"", "headers": [],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "root_path": ""}  # fmt: skip

        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            raise OSError("the client is gone")

        with contextlib.suppress(Exception):
            await asyncio.wait_for(app(scope, receive, send), 5)
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert ctx.bus.subscriber_count == 0
