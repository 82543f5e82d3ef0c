"""Shared by the resumable end-to-end and interop tests: a relay + sink stack on a spool, tus/IETF requests.

Real processes on loopback (relay.testing), real sockets; the sink's directory is where byte-exactness is
judged (sha256 of what it stored), the spool directory where leftovers are looked for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.testing import RunningServer, start_relay, start_sink

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


def metadata(**values: str) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in values.items())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
        time.sleep(interval)


@dataclass
class Stack:
    """A sink storing under `store`, a relay on `spool` in front of it; restartable on the same port."""

    root: Path
    relay_args: tuple[str, ...]
    sink: RunningServer | None = None
    relay: RunningServer | None = None
    started: list[RunningServer] = field(default_factory=list)

    @property
    def store(self) -> Path:
        return self.root / "received"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def url(self) -> str:
        assert self.relay is not None
        return self.relay.url

    def start_sink(self, *extra: str) -> RunningServer:
        args = list(extra)
        if self.sink is not None:
            args += ["--port", str(self.sink.port)]
        self.sink = start_sink(self.store, *args)
        self.started.append(self.sink)
        return self.sink

    def start_relay(self, *, same_port: bool = False) -> RunningServer:
        assert self.sink is not None
        port = ["--port", str(self.relay.port)] if same_port and self.relay is not None else []
        self.relay = start_relay("--spool", str(self.spool), *self.relay_args, *port, upstream=self.sink.url)
        self.started.append(self.relay)
        return self.relay

    def kill_relay(self) -> None:
        assert self.relay is not None
        self.relay.stop(signal.SIGKILL)

    def restart_relay(self, *, kill: bool = True) -> RunningServer:
        assert self.relay is not None
        self.relay.stop(signal.SIGKILL if kill else signal.SIGTERM)
        return self.start_relay(same_port=True)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 20), **kwargs)

    def stored(self) -> list[Path]:
        if not self.store.exists():
            return []
        return sorted(p for p in self.store.rglob("*") if p.is_file() and ".tmp" not in p.parts)

    def stored_hashes(self) -> list[str]:
        return [sha256(p.read_bytes()) for p in self.stored()]

    def partial_files(self) -> list[Path]:
        """Whatever the sink keeps of an upload it has not finished (it should keep nothing)."""
        tmp = self.store / ".tmp"
        return sorted(p for p in tmp.rglob("*") if p.is_file()) if tmp.exists() else []

    def spool_data(self) -> list[Path]:
        """The spool's data files (info documents stay while HEAD must answer)."""
        if not self.spool.exists():
            return []
        return sorted(p for p in self.spool.iterdir() if p.is_file() and not p.name.endswith(".json"))

    def wait_spooled(self, upload_id: str, more_than: int, timeout: float = 10) -> None:
        """Until the spool's data file of `upload_id` holds more than `more_than` bytes (an append under way)."""
        data = self.spool / f"{upload_id}.data"
        wait_for(lambda: data.exists() and data.stat().st_size > more_than, timeout)

    def record(self, upload_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_relay/uploads/{upload_id}", timeout=10)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    def stop(self) -> None:
        for server in reversed(self.started):
            server.stop(signal.SIGKILL)


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(*relay_args: str, sink_args: tuple[str, ...] = (), name: str = "stack") -> Stack:
        stack = Stack(tmp_path / name, relay_args)
        stack.root.mkdir(parents=True, exist_ok=True)
        stacks.append(stack)
        stack.start_sink(*sink_args)
        stack.start_relay()
        return stack

    yield make
    for stack in stacks:
        stack.stop()


def tus_create(
    client: httpx.Client,
    path: str,
    length: int | None,
    *,
    meta: str | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> httpx.Response:
    out = {**TUS, **(headers or {})}
    if length is None:
        out["Upload-Defer-Length"] = "1"
    else:
        out["Upload-Length"] = str(length)
    if meta is not None:
        out["Upload-Metadata"] = meta
    if body is not None:
        out["Content-Type"] = OCTETS
    return client.post(path, headers=out, content=body)


def tus_patch(
    client: httpx.Client, location: str, offset: int, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return client.patch(
        location, content=body, headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS, **(headers or {})}
    )


def tus_head(client: httpx.Client, location: str) -> httpx.Response:
    return client.head(location, headers=TUS)


def tus_upload(
    client: httpx.Client, path: str, data: bytes, *, chunk: int, meta: str | None = None
) -> tuple[str, httpx.Response]:
    """Create, then PATCH `chunk` bytes at a time; the location and the last answer."""
    created = tus_create(client, path, len(data), meta=meta)
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    answer = created
    for start in range(0, len(data), chunk):
        answer = tus_patch(client, location, start, data[start : start + chunk])
        assert answer.status_code == 204, (answer.status_code, answer.text)
    return location, answer


# -- raw sockets --------------------------------------------------------------------------------------------


def raw_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    """Open a connection and send a request head (and `body`, possibly only part of the declared one)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return sock


def read_interim(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str]]:
    """Read one response head (a 1xx or a final one's head) off the socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(1)
        if not piece:
            raise ConnectionError(f"closed after {data!r}")
        data += piece
    lines = data.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


def sink_answer(response: httpx.Response) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.text)
    return data


class TinyUpstream:
    """A one-purpose upstream on a thread: reads each request (head, then `read_limit` body bytes at most),
    then answers `status` with `body` after `delay` seconds or, with `die=True`, closes without answering.
    With `linger`, it goes on reading (and dropping) the body for that many seconds after answering, as nginx
    and uvicorn do, so that an early answer reaches the client. Records what it read."""

    def __init__(
        self,
        status: int = 500,
        body: bytes = b"upstream says no",
        *,
        read_limit: int | None = None,
        die: bool = False,
        delay: float = 0.0,
        linger: float = 0.0,
    ) -> None:
        import threading

        self.status, self.body, self.read_limit, self.die, self.delay = status, body, read_limit, die, delay
        self.linger = linger
        self.requests: list[tuple[bytes, bytes]] = []  # (head, the body bytes read)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(20)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    data += piece
                head, _, rest = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                want = length if self.read_limit is None else min(length, self.read_limit)
                body = rest
                while len(body) < want:
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    body += piece
                self.requests.append((head, body))
                time.sleep(self.delay)
                if self.die:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return
                conn.sendall(
                    f"HTTP/1.1 {self.status} Whatever\r\nContent-Type: text/plain\r\nX-Tiny: yes\r\n"
                    f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n".encode()
                    + self.body
                )
                self._linger(conn)
            except OSError:
                return

    def _linger(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + self.linger
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            try:
                if not conn.recv(65536):
                    return
            except TimeoutError:
                return

    def close(self) -> None:
        import contextlib

        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread, so the port is free at once
        self.server.close()
        self._thread.join(5)
