"""RFC 9530 `Repr-Digest` on resumable uploads (contract, "Digests"): given on the creation or on the last append,
it is checked over the whole file before the file's last bytes go upstream; a mismatch is 400 `digest_mismatch`,
the upload ends `failed` and its data is deleted, and the upstream never holds the file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.testing import start_relay
from tests.e2e.test_resumable_faults import raw_patch
from tests.interop.support import (
    Stack,
    TinyUpstream,
    make_stack,
    sha256,
    tus_create,
    tus_head,
    tus_patch,
    wait_for,
)

__all__ = ["make_stack"]


def repr_digest(data: bytes, algorithm: str = "sha-256") -> str:
    digest = hashlib.new(algorithm.replace("-", ""), data).digest()
    return f"{algorithm}=:{base64.b64encode(digest).decode()}:"


@pytest.mark.parametrize("algorithm", ["sha-256", "sha-512"])
def test_a_right_digest_at_creation_delivers(make_stack: Callable[..., Stack], algorithm: str) -> None:
    stack = make_stack()
    data = os.urandom(600_000)
    with stack.client() as client:
        created = tus_create(client, "/upload/d.bin", len(data), headers={"Repr-Digest": repr_digest(data, algorithm)})
        location = created.headers["location"]
        assert tus_patch(client, location, 0, data[:250_000]).status_code == 204
        done = tus_patch(client, location, 250_000, data[250_000:])
    assert done.status_code == 204, done.text
    assert done.headers["x-upload-sha256"] == sha256(data)
    assert stack.stored_hashes() == [sha256(data)]


@pytest.mark.parametrize("given_on", ["creation", "last-append"])
@pytest.mark.parametrize("appends", [1, 2], ids=["cut-through", "from-the-spool"])
def test_a_wrong_digest_is_400_and_nothing_is_kept(
    make_stack: Callable[..., Stack], given_on: str, appends: int
) -> None:
    stack = make_stack()
    data = os.urandom(600_000)
    wrong = repr_digest(data[:-1] + bytes([data[-1] ^ 1]))  # one flipped bit in the last byte
    creation = {"Repr-Digest": wrong} if given_on == "creation" else {}
    last = {"Repr-Digest": wrong} if given_on == "last-append" else {}
    with stack.client() as client:
        location = tus_create(client, "/upload/bad.bin", len(data), headers=creation).headers["location"]
        upload_id = location.rsplit("/", 1)[1]
        split = 0 if appends == 1 else 300_000
        if split:
            assert tus_patch(client, location, 0, data[:split]).status_code == 204
        refused = tus_patch(client, location, split, data[split:], headers=last)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "digest_mismatch"
        assert tus_head(client, location).status_code == 404
    record = stack.record(upload_id)
    assert record["state"] == "failed" and record["error"]["code"] == "digest_mismatch"
    assert stack.stored_hashes() == [] and stack.partial_files() == []
    wait_for(lambda: stack.spool_data() == [], 5)


def test_a_malformed_digest_is_400_before_anything_is_created(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    with stack.client() as client:
        refused = tus_create(client, "/upload/m.bin", 10, headers={"Repr-Digest": "sha-256=not-a-byte-sequence"})
    assert refused.status_code == 400
    assert stack.spool_data() == []


@pytest.mark.parametrize("retry", ["patch", "head"])
def test_a_last_append_digest_is_still_checked_when_the_forward_is_retried(
    make_stack: Callable[..., Stack], retry: str
) -> None:
    """The completing append's Repr-Digest is recorded with the upload (completion.py Rule 7): when the upstream
    was down, the retry (the empty completing PATCH, which carries no digest, or the redelivery a HEAD sets off)
    still finds the mismatch. Before the fix the retry delivered the file and recorded it `completed`."""
    stack = make_stack()
    assert stack.sink is not None
    data = os.urandom(600_000)
    wrong = repr_digest(data[:-1] + bytes([data[-1] ^ 1]))
    with stack.client() as client:
        location = tus_create(client, "/upload/retry.bin", len(data)).headers["location"]
        upload_id = location.rsplit("/", 1)[1]
        stack.sink.stop()
        assert tus_patch(client, location, 0, data, headers={"Repr-Digest": wrong}).status_code == 502
        stack.start_sink()
        if retry == "patch":
            refused = tus_patch(client, location, len(data), b"")
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "digest_mismatch"
        else:
            assert tus_head(client, location).status_code == 200  # sets the redelivery off
            wait_for(lambda: stack.record(upload_id)["state"] == "failed", 10)
    record = stack.record(upload_id)
    assert record["state"] == "failed" and record["error"]["code"] == "digest_mismatch"
    assert stack.stored_hashes() == [] and stack.partial_files() == []
    wait_for(lambda: stack.spool_data() == [], 5)


def test_a_digest_on_several_header_lines_is_one_list(make_stack: Callable[..., Stack]) -> None:
    """RFC 9110 5.3: two Repr-Digest lines are one list; the second line's wrong sha-512 is checked too."""
    stack = make_stack()
    data = os.urandom(300_000)
    wrong = repr_digest(data[:-1] + bytes([data[-1] ^ 1]), "sha-512")
    headers = [
        ("Tus-Resumable", "1.0.0"),
        ("Upload-Length", str(len(data))),
        ("Repr-Digest", repr_digest(data)),
        ("Repr-Digest", wrong),
    ]
    with stack.client() as client:
        location = client.post("/upload/lines.bin", headers=headers).headers["location"]
        refused = tus_patch(client, location, 0, data)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "digest_mismatch"
    assert stack.stored_hashes() == []


def test_a_last_append_digest_survives_a_kill_9_mid_append(tmp_path: Path) -> None:
    """The completing append's Repr-Digest is written to the info document before its bytes go upstream: the relay
    killed mid-append comes back with it, and the resumed upload's mismatch is still found (before the fix it was
    kept in memory only, and the file went upstream unchecked)."""
    stalled = TinyUpstream(status=200, read_limit=256 * 1024, delay=30.0)
    stack = Stack(tmp_path, ())
    stack.relay = start_relay("--spool", str(stack.spool), upstream=stalled.url)
    stack.started.append(stack.relay)
    try:
        data = os.urandom(24 * 1024 * 1024)
        wrong = repr_digest(data[:-1] + bytes([data[-1] ^ 1]))
        with stack.client() as client:
            location = tus_create(client, "/upload/k9.bin", len(data)).headers["location"]
        upload_id = location.rsplit("/", 1)[1]
        sock = raw_patch(stack.relay.port, location, 0, len(data), data[: 1024 * 1024], f"Repr-Digest: {wrong}\r\n")
        wait_for(lambda: bool(stalled.requests), 10)  # the forward has begun: the upstream stalls, the relay waits
        stack.kill_relay()
        sock.close()
        assert json.loads((stack.spool / f"{upload_id}.json").read_text())["repr_digest"] == wrong
        stack.start_sink()
        stack.start_relay(same_port=True)
        with stack.client() as client:
            offset = int(tus_head(client, location).headers["upload-offset"])
            refused = tus_patch(client, location, offset, data[offset:])
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "digest_mismatch"
        assert stack.stored_hashes() == []
    finally:
        stack.stop()
        stalled.close()
