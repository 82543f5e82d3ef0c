"""tus-js-client 4.x (Node.js) with `parallelUploads: 3` against the relay: tus concatenation, unmodified client.

The client cuts the file in three partial uploads (`Upload-Concat: partial`), sends them at once in 4 MiB
chunks, then POSTs the final upload (`Upload-Concat: final;<absolute urls>`); the upstream must get the whole
file once, byte-exact, and nothing of the partial uploads on their own. Once more with the relay killed
(SIGKILL) and restarted while one partial upload is paused mid-way (the client's retryDelays carry it over).
The Node setup is tests/interop/test_tus_js.py's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.interop.support import Stack, make_stack, sha256, wait_for
from tests.interop.test_tus_js import NodeUpload, node_modules

__all__ = ["make_stack", "node_modules"]  # the fixtures, imported so pytest finds them here

MiB = 1024 * 1024
PARALLEL = {"TUS_PARALLEL": "3"}


@pytest.fixture
def big_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(30 * MiB + 4321)
    path = tmp_path / "parallel.bin"
    path.write_bytes(data)
    return path, data


def check_delivered(stack: Stack, done: dict[str, object], data: bytes) -> None:
    assert done["event"] == "success"
    assert stack.stored_hashes() == [sha256(data)]  # one file, the whole of it
    (stored,) = stack.stored()
    assert stored.name == "parallel.bin"
    upload_id = str(done["url"]).rsplit("/", 1)[1]
    record = stack.record(upload_id)
    assert record["state"] == "completed" and record["total"] == len(data)
    assert record["parts"][0]["sha256"] == sha256(data)
    uploads = httpx.get(f"{stack.url}/_relay/uploads", timeout=10).json()["uploads"]
    assert [u["id"] for u in uploads] == [upload_id]  # the partial uploads never show
    wait_for(lambda: stack.spool_data() == [], 7)  # their bytes go once the final upload is delivered
    assert stack.partial_files() == []


def test_tus_js_client_parallel_uploads(
    node_modules: Path, make_stack: Callable[..., Stack], big_file: tuple[Path, bytes]
) -> None:
    stack = make_stack()
    path, data = big_file
    upload = NodeUpload(node_modules, f"{stack.url}/upload/js/", str(path), "tus-v1", str(4 * MiB), env=PARALLEL)
    try:
        done = upload.finish(timeout=120)
    finally:
        upload.stop()
    chunks = [event for event in upload.events if event["event"] == "chunk"]
    assert len(chunks) == 9  # three partial uploads of 10 MiB, each in 4 + 4 + 2 MiB
    check_delivered(stack, done, data)


def test_tus_js_client_parallel_uploads_resume_after_a_relay_restart(
    node_modules: Path, make_stack: Callable[..., Stack], big_file: tuple[Path, bytes], tmp_path: Path
) -> None:
    stack = make_stack()
    path, data = big_file
    go = tmp_path / "go"
    upload = NodeUpload(
        node_modules,
        f"{stack.url}/upload/js/",
        str(path),
        "tus-v1",
        str(4 * MiB),
        str(4 * MiB),
        str(go),
        env=PARALLEL,
    )
    try:
        paused = upload.wait_event("paused", timeout=60)
        assert paused["offset"] == 4 * MiB
        stack.kill_relay()
        go.touch()  # the paused PATCH goes out against a relay that is not there
        time.sleep(0.8)
        stack.start_relay(same_port=True)
        done = upload.finish(timeout=120)
    finally:
        upload.stop()
    check_delivered(stack, done, data)
