"""Shared by the hostile-input tests: one relay in front of the `recorder` upstream, raw-socket helpers.

The relay and the recorder are started once per module (a relay process takes about half a second to start);
each test measures what it caused through the relay's own registry (`GET /_relay/uploads`) and the recorder's
echo, so tests do not depend on each other's leftovers.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from relay.testing import RunningServer, start_relay
from tests.conftest import start_test_upstream


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class Exchange:
    """What came back on one raw connection: the parsed responses, the raw bytes, and how it ended."""

    responses: list[Response]
    raw: bytes
    closed: bool  # the relay closed (FIN or reset) rather than us giving up waiting

    @property
    def statuses(self) -> list[int]:
        return [response.status for response in self.responses]


def parse_responses(data: bytes) -> list[Response]:
    """Split a byte stream into HTTP/1.1 responses (Content-Length framed; what the relay and uvicorn send)."""
    out: list[Response] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
        length = int(headers.get("content-length", "0"))
        if 100 <= status < 200:
            data = rest
            continue
        out.append(Response(status, headers, rest[:length]))
        data = rest[length:]
    return out


def exchange(
    port: int, request: bytes, *, first_timeout: float = 10.0, idle: float = 0.15, min_responses: int = 1
) -> Exchange:
    """Send `request` on a fresh connection; read until the relay closes, or `idle` seconds of quiet once at least
    `min_responses` complete responses are in (a keep-alive connection is never closed by the relay)."""
    raw = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=first_timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        while not closed:
            sock.settimeout(idle if len(parse_responses(raw)) >= min_responses else first_timeout)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            raw += chunk
    return Exchange(parse_responses(raw), raw, closed)


class RelayUnderTest:
    """A relay process and the recorder behind it."""

    def __init__(self, relay: RunningServer, recorder: RunningServer) -> None:
        self.relay = relay
        self.recorder = recorder
        self.port = relay.port
        self.url = relay.url

    def uploads(self) -> list[dict[str, object]]:
        return httpx.get(f"{self.url}/_relay/uploads", timeout=10).json()["uploads"]

    def upload_ids(self) -> set[str]:
        return {str(upload["id"]) for upload in self.uploads()}

    def healthy(self) -> bool:
        return httpx.get(f"{self.url}/_relay/health", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def recorder() -> Iterator[RunningServer]:
    server = start_test_upstream("recorder")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hostile_relay(recorder: RunningServer) -> Iterator[RelayUnderTest]:
    relay = start_relay("--max-body-size", "1MiB", upstream=recorder.url)
    yield RelayUnderTest(relay, recorder)
    relay.stop()
