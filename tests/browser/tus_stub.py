"""A stand-in relay for the upload panel's own tests: the real dashboard app plus a minimal tus 1.0.0 server.

    python -m tests.browser.tus_stub DIR [PORT]
    STUB_SYNTHETIC_UPLOADS=200 python -m tests.browser.tus_stub DIR   # /_relay/events plays 200 uploads

It serves /_relay/ui/ with relay.ui (the code under test), a /_relay/health listing `/upload/`, an idle
/_relay/events stream, and tus creation at any path under /upload/ (Location /resumable/<id>), HEAD and
PATCH there. Each upload is DIR/<id>.bin (its bytes, appended and flushed as they come, so a kill keeps
what was written) and DIR/<id>.json (length, metadata, and the Authorization headers seen). Restarted on
the same DIR and PORT it carries on where it was, as the real relay does on its spool.

The real relay's tus endpoints are tested the same way in test_panel.py when they exist; this stub lets the
panel (tus-js-client, pause/resume, URL storage, retries) be tested before and beside them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn

from relay.server import bind_socket
from relay.settings import Settings
from relay.types import Receive, Scope, Send
from relay.ui import create_ui_app

TUS = [(b"tus-resumable", b"1.0.0")]


class Stub:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ui = create_ui_app(Settings())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/_relay/ui"):
            await self.ui(scope, receive, send)
        elif path == "/_relay/health":
            await answer(send, 200, [], {"status": "ok", "routes": [{"prefix": "/upload/", "upstream": None}]})
        elif path == "/_relay/uploads":
            await answer(send, 200, [], {"uploads": []})
        elif path == "/_relay/metrics":
            await answer(send, 200, [(b"content-type", b"text/plain")])
        elif path == "/_relay/events":
            await event_stream(receive, send, int(os.environ.get("STUB_SYNTHETIC_UPLOADS", "0")))
        elif path.startswith("/upload/") and method == "OPTIONS":
            await answer(send, 204, [*TUS, (b"tus-version", b"1.0.0"), (b"tus-extension", b"creation")])
        elif path.startswith("/upload/") and method == "POST":
            await self.create(scope, send)
        elif path.startswith("/resumable/") and method in ("HEAD", "PATCH"):
            await self.resume(scope, receive, send, path.removeprefix("/resumable/"))
        else:
            await answer(send, 404, [], {"error": "not found"})

    async def create(self, scope: Scope, send: Send) -> None:
        headers = dict(scope["headers"])
        upload_id = secrets.token_hex(8)
        info = {
            "length": int(headers[b"upload-length"]),
            "metadata": headers.get(b"upload-metadata", b"").decode(),
            "path": scope["path"],
            "authorization": [headers.get(b"authorization", b"").decode()],
        }
        (self.folder / f"{upload_id}.bin").write_bytes(b"")
        (self.folder / f"{upload_id}.json").write_text(json.dumps(info))
        await answer(send, 201, [*TUS, (b"location", f"/resumable/{upload_id}".encode())])

    async def resume(self, scope: Scope, receive: Receive, send: Send, upload_id: str) -> None:
        data, meta = self.folder / f"{upload_id}.bin", self.folder / f"{upload_id}.json"
        if not meta.exists():
            await answer(send, 404, TUS)
            return
        info = json.loads(meta.read_text())
        headers = dict(scope["headers"])
        info["authorization"].append(headers.get(b"authorization", b"").decode())
        meta.write_text(json.dumps(info))
        offset = data.stat().st_size
        if scope["method"] == "HEAD":
            extra = [(b"upload-offset", str(offset).encode()), (b"upload-length", str(info["length"]).encode())]
            await answer(send, 200, [*TUS, *extra, (b"cache-control", b"no-store")])
            return
        if int(headers.get(b"upload-offset", b"-1")) != offset:
            await answer(send, 409, [*TUS, (b"upload-offset", str(offset).encode())])
            return
        with data.open("ab") as out:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                out.write(message.get("body", b""))
                out.flush()
                if not message.get("more_body", False):
                    break
        offset = data.stat().st_size
        extra = [(b"upload-offset", str(offset).encode())]
        if offset == info["length"]:
            sha256 = hashlib.sha256(data.read_bytes()).hexdigest()
            extra += [(b"x-upload-sha256", sha256.encode()), (b"x-upstream-status", b"200")]
        await answer(send, 204, [*TUS, *extra])


async def answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: Any = None) -> None:
    payload = b"" if body is None else json.dumps(body).encode()
    if body is not None:
        headers = [*headers, (b"content-type", b"application/json")]
    headers = [*headers, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def event_stream(receive: Receive, send: Send, synthetic: int) -> None:
    """An event stream open until the browser leaves; with `synthetic` > 0, that many uploads first move for
    SYNTHETIC_SECONDS (progress for each every 100 ms, as the relay's fastest) and then complete."""
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b": hello\n\n", "more_body": True})
    if synthetic:
        await synthetic_uploads(send, synthetic)
    while (await receive())["type"] != "http.disconnect":
        pass
    await send({"type": "http.response.body", "body": b""})


SYNTHETIC_SECONDS = 6.0
SYNTHETIC_TOTAL = 1000 * 1024 * 1024


async def synthetic_uploads(send: Send, count: int) -> None:
    async def emit(name: str, **fields: Any) -> None:
        data = json.dumps({"total": SYNTHETIC_TOTAL, "ts": time.time(), **fields})
        await send(
            {"type": "http.response.body", "body": f"event: {name}\ndata: {data}\n\n".encode(), "more_body": True}
        )

    ids = [f"synthetic-{n:03d}" for n in range(count)]
    for n, upload_id in enumerate(ids):
        await emit("started", upload_id=upload_id, bytes=0, route="/upload/", path=f"/upload/many/{n}.bin")
    rounds = int(SYNTHETIC_SECONDS / 0.1)
    for step in range(1, rounds + 1):
        for n, upload_id in enumerate(ids):
            # Each upload at its own pace, so rows differ and all keep moving.
            done = min(SYNTHETIC_TOTAL, SYNTHETIC_TOTAL * step * (1 + n % 7) // (rounds * 7))
            await emit("progress", upload_id=upload_id, bytes=done)
        await asyncio.sleep(0.1)
    for upload_id in ids:
        await emit("completed", upload_id=upload_id, bytes=SYNTHETIC_TOTAL, upstream_status=200)


async def main(folder: Path, port: int) -> None:
    sock = bind_socket("127.0.0.1", port)
    # A short graceful shutdown: the dashboard's event stream stays open until the browser leaves.
    config = uvicorn.Config(
        Stub(folder), log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1
    )
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0))
