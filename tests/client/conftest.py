"""Fixtures for the client tests: the CLI as a subprocess, real relay/sink processes, and a stand-in relay.

The stand-in is a tiny ASGI app run by uvicorn in a thread. It accepts any upload on /upload/..., answers like
the sink (sizes and sha256 of a raw body), and serves /_relay/uploads/{id}/events reporting a sha256 that can be
made wrong on purpose: that is how the client's --events mismatch check is tested without breaking the relay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from relay.testing import RunningServer, start_relay, start_sink

ROOT = Path(__file__).resolve().parents[2]


def run_client(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m client ARGS`, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_sink(tmp_path_factory.mktemp("received"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def relay(sink: RunningServer) -> Iterator[RunningServer]:
    server = start_relay(upstream=sink.url)
    yield server
    server.stop()


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """Three files of different sizes, one over the 1 MiB chunk size."""
    made = []
    for name, size in (("a.bin", 3 * 1024 * 1024 + 7), ("b.txt", 1000), ("empty.dat", 0)):
        path = tmp_path / name
        path.write_bytes(os.urandom(size))
        made.append(path)
    return made


# --- stand-in relay --------------------------------------------------------------------------------------------


@dataclass
class StandIn:
    """What the stand-in saw, and what it should claim on the events stream."""

    url: str = ""
    wrong_sha256: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, asyncio.Event] = field(default_factory=dict)
    parts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def finished(self, upload_id: str) -> asyncio.Event:
        return self.done.setdefault(upload_id, asyncio.Event())


def stand_in_app(state: StandIn) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path.startswith("/_relay/uploads/") and path.endswith("/events"):
            await serve_events(state, path.split("/")[3], send)
        else:
            await accept_upload(state, scope, receive, send)

    return app


async def accept_upload(state: StandIn, scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    digest, size = hashlib.sha256(), 0
    while True:
        message = await receive()
        digest.update(message.get("body", b""))
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    upload_id = headers.get("x-upload-id", "standin-id")
    names = [k.decode().lower() for k, _ in scope["headers"]]
    state.requests.append(
        {"path": scope["path"], "headers": headers, "names": names, "bytes": size, "sha256": digest.hexdigest()}
    )
    sha = "0" * 64 if state.wrong_sha256 else digest.hexdigest()
    state.parts[upload_id] = [{"field": None, "filename": None, "size": size, "sha256": sha}]
    state.finished(upload_id).set()
    body = json.dumps({"bytes": size, "files": [{"size": size, "sha256": digest.hexdigest()}]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"x-upload-id", upload_id.encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def serve_events(state: StandIn, upload_id: str, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": b": hello\n\n", "more_body": True})
    await asyncio.wait_for(state.finished(upload_id).wait(), 30)
    ts = time.time()
    events = []
    for part in state.parts[upload_id]:
        events.append(("part", {"upload_id": upload_id, "bytes": part["size"], "total": None, "ts": ts, **part}))
    events.append(("completed", {"upload_id": upload_id, "bytes": 0, "total": None, "ts": ts, "upstream_status": 200}))
    text = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
    await send({"type": "http.response.body", "body": text.encode(), "more_body": False})


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    state = StandIn()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(stand_in_app(state), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield state
    server.should_exit = True
    thread.join(10)
    sock.close()
