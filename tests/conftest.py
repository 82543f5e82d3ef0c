from __future__ import annotations

import hashlib
import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.testing import RunningServer, start_process
from tests.webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
# The fields of GET /_relay/uploads/{id} and of each of its parts, as CONTRACT.md lists them.
CONTRACT_FIELDS = {
    "id",
    "state",
    "route",
    "bytes",
    "total",
    "parts",
    "started_at",
    "finished_at",
    "upstream_status",
    "error",
}
PART_FIELDS = {"field", "filename", "content_type", "size", "sha256"}


def start_test_upstream(mode: str, env: dict[str, str] | None = None) -> RunningServer:
    return start_process(
        [sys.executable, "-m", "tests.e2e.upstreams", mode],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})},
    )


@pytest.fixture
def test_upstream() -> Iterator:
    started: list[RunningServer] = []

    def start(mode: str, env: dict[str, str] | None = None) -> RunningServer:
        server = start_test_upstream(mode, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def tricky_bytes(size: int, seed: int = 0) -> bytes:
    """Seeded random bytes sprinkled with CRLFs and boundary-like runs, the shapes that trip parsers."""
    rng = random.Random(seed)
    out = bytearray(rng.randbytes(size))
    traps = [b"\r\n", b"\r\n--", b"--", b"\r\n\r\n", b"------------------------boundary", b"\r\n--relay-"]
    for _ in range(size // 997):
        trap = rng.choice(traps)
        at = rng.randrange(0, max(1, size - len(trap)))
        out[at : at + len(trap)] = trap
    return bytes(out[:size])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def multipart_body(
    files: list[tuple[str, str, bytes]], fields: dict[str, str] | None = None, *, boundary: str
) -> bytes:
    """A multipart/form-data body: plain fields first, then (field, filename, content) file parts."""
    out = []
    for name, value in (fields or {}).items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for field, filename, content in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        out.append(head.encode() + content + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Webhook receivers (tests/webhook_receiver.py) made by the test, each stopped at its end."""
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.stop()
