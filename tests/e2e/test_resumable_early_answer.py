"""An upstream that answers the completing append before the file is complete (relay/resumable/completion.py Rule 6).

The upstream (tests/interop/support.py `TinyUpstream` with `linger`) reads 256 KiB of the body, answers 503 and
goes on reading for a while, as nginx and uvicorn do, so its early answer reaches the client. That answer is the
upload's, as for a plain upload: the record ends `completed` with upstream_status 503, the info document says so,
the data is deleted, the completing request sent again gets the same answer, and a relay killed and restarted on
the spool delivers nothing again (before the fix: `forwarding` in memory, `receiving` on disk, the data kept until
expiry, and a second delivery after a restart).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from relay.testing import start_relay
from tests.interop.support import (
    OCTETS,
    Stack,
    TinyUpstream,
    raw_request,
    read_interim,
    tus_create,
    tus_head,
    tus_patch,
    wait_for,
)

MiB = 1024 * 1024


def info(stack: Stack, upload_id: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((stack.spool / f"{upload_id}.json").read_text())
    return data


@pytest.mark.parametrize("forward", ["raw", "multipart"])
def test_an_early_upstream_answer_ends_the_upload(tmp_path: Path, forward: str) -> None:
    upstream = TinyUpstream(status=503, read_limit=256 * 1024, linger=5.0)
    config = tmp_path / "relay.toml"
    config.write_text('[[routes]]\nprefix = "/upload/"\n' + ('resumable_forward = "raw"\n' if forward == "raw" else ""))
    stack = Stack(tmp_path, ("--config", str(config)))
    stack.relay = start_relay("--spool", str(stack.spool), "--config", str(config), upstream=upstream.url)
    stack.started.append(stack.relay)
    try:
        data = os.urandom(8 * MiB + 5)
        with stack.client() as client:
            location = tus_create(client, "/upload/early.bin", len(data)).headers["location"]
            upload_id = location.rsplit("/", 1)[1]
            answer = tus_patch(client, location, 0, data)
            assert (answer.status_code, answer.content) == (503, b"upstream says no")
            wait_for(lambda: info(stack, upload_id)["state"] == "completed", 10)
            ended = info(stack, upload_id)
            assert (ended["upstream_status"], ended["error"], ended["writer"]) == (503, None, None)
            wait_for(lambda: stack.spool_data() == [], 5)
            record = stack.record(upload_id)
            assert (record["state"], record["upstream_status"]) == ("completed", 503)
            offset = tus_head(client, location).headers["upload-offset"]
            assert offset == str(ended["offset"])
            again = tus_patch(client, location, int(offset), b"")
            assert (again.status_code, again.content) == (503, b"upstream says no")  # the completion's answer, replayed
            assert again.headers["x-tiny"] == "yes"
        stack.relay.stop(signal.SIGKILL)
        stack.relay = start_relay(
            "--spool", str(stack.spool), "--config", str(config), "--port", str(stack.relay.port), upstream=upstream.url
        )
        stack.started.append(stack.relay)
        with stack.client() as client:
            assert tus_head(client, location).status_code == 200
        time.sleep(2.0)  # a restart that took the upload for undelivered would forward it again at once
        assert len(upstream.requests) == 1
        assert info(stack, upload_id)["state"] == "completed" and stack.spool_data() == []
    finally:
        stack.stop()
        upstream.close()


def test_an_early_answer_holds_while_the_client_is_still_there(tmp_path: Path) -> None:
    """The client sent part of the body, got the early 503 and, as a tus client does, asks HEAD on a new connection
    while its first one is still open: that HEAD waits for the append's end (the lingering drain) instead of
    superseding it, so the upload ends `answered`, not as an ordinary break that left it `receiving` under a
    `completed` record (a reviewer's reproduction). The record's bytes are the offset reached, not the length."""
    upstream = TinyUpstream(status=503, read_limit=256 * 1024, linger=10.0)
    stack = Stack(tmp_path, ())
    stack.relay = start_relay("--spool", str(stack.spool), upstream=upstream.url)
    stack.started.append(stack.relay)
    try:
        length = 4 * MiB
        with stack.client() as client:
            location = tus_create(client, "/upload/held.bin", length).headers["location"]
        upload_id = location.rsplit("/", 1)[1]
        head = (
            f"PATCH {location} HTTP/1.1\nHost: relay\nTus-Resumable: 1.0.0\nUpload-Offset: 0\n"
            f"Content-Type: {OCTETS}\nContent-Length: {length}\n"
        )
        sock = raw_request(stack.relay.port, head, os.urandom(MiB))
        try:
            time.sleep(0.5)
            sock.sendall(os.urandom(64 * 1024))  # the relay notices the upstream's answer between two chunks
            status, _ = read_interim(sock, timeout=10)
            assert status == 503
            with stack.client() as client:
                offset = tus_head(client, location).headers["upload-offset"]
            ended = info(stack, upload_id)
            assert (ended["state"], ended["upstream_status"], str(ended["offset"])) == ("completed", 503, offset)
            record = stack.record(upload_id)
            assert (record["state"], record["bytes"], record["offset"]) == ("completed", int(offset), int(offset))
        finally:
            sock.close()
        wait_for(lambda: stack.spool_data() == [], 5)
        assert len(upstream.requests) == 1
    finally:
        stack.stop()
        upstream.close()
