"""The running sha256 of resumable uploads (relay/resumable/filehash.py): once an append has ended, its bytes are
hashed back from the spool in the background, and the completing forward starts from that hash instead of hashing
the spooled bytes again.

Seen from outside by the relay's debug log ("carried over") and checked by the sha256 the relay reports against
the file's; the sink must hold the file byte-exact. After a break, a refused checksum or a restart, the relay must
still report the right sha256."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_resumable_faults import assert_clean, finish, raw_patch
from tests.interop.support import Stack, make_stack, sha256, tus_create, tus_head, tus_patch, wait_for

__all__ = ["make_stack"]

MiB = 1024 * 1024
RAW = '[[routes]]\nprefix = "/upload/"\nresumable_forward = "raw"\n'
CARRIED = "carried over from its appends"


def stack_for(make_stack: Callable[..., Stack], tmp_path: Path, forward: str, *args: str) -> Stack:
    if forward == "raw":
        config = tmp_path / "raw.toml"
        config.write_text(RAW)
        args = ("--config", str(config), *args)
    return make_stack("--log-level", "debug", *args)


def carried(stack: Stack, spooled: int) -> bool:
    assert stack.relay is not None
    return f"the {spooled} spooled bytes {CARRIED}" in stack.relay.log()


@pytest.mark.parametrize("forward", ["raw", "multipart"])
@pytest.mark.parametrize("last", [3 * MiB, 1000], ids=["spliced-last", "copied-last"])
def test_the_completing_forward_starts_from_the_appends_hash(
    make_stack: Callable[..., Stack], tmp_path: Path, forward: str, last: int
) -> None:
    stack = stack_for(make_stack, tmp_path, forward)
    data = os.urandom(2 * MiB + 3 * MiB + 17 + last)
    cuts = [0, 2 * MiB, 5 * MiB + 17, len(data)]
    with stack.client() as client:
        location = tus_create(client, "/upload/hashed.bin", len(data)).headers["location"]
        for start, end in zip(cuts, cuts[1:], strict=False):
            answer = tus_patch(client, location, start, data[start:end])
            assert answer.status_code == 204, answer.text
    assert answer.headers["x-upload-sha256"] == sha256(data)
    # the spliced forward hashes only pipe bytes after the carried hash (relay/resumable/spliced.py)
    assert (answer.headers.get("connection", "").lower() == "close") == (forward == "raw" and last > MiB)
    assert carried(stack, cuts[-2])
    assert_clean(stack, [data])


def test_digest_none_keeps_no_hash(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = stack_for(make_stack, tmp_path, "raw", "--digest", "none")
    data = os.urandom(3 * MiB)
    with stack.client() as client:
        location = tus_create(client, "/upload/none.bin", len(data)).headers["location"]
        assert tus_patch(client, location, 0, data[:MiB]).status_code == 204
        answer = tus_patch(client, location, MiB, data[MiB:])
    assert answer.status_code == 204, answer.text
    assert "x-upload-sha256" not in answer.headers
    assert not carried(stack, MiB)
    assert_clean(stack, [data])


def test_a_restart_hashes_the_spool_again(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    """The hash lived in the killed relay's memory: the new one, completing at once, hashes the spool itself."""
    stack = stack_for(make_stack, tmp_path, "raw")
    data = os.urandom(4 * MiB + 5)
    with stack.client() as client:
        location = tus_create(client, "/upload/restart.bin", len(data)).headers["location"]
        assert tus_patch(client, location, 0, data[: 2 * MiB]).status_code == 204
    stack.restart_relay()
    answer = finish(stack, location, data)
    assert answer.status_code == 204, answer.text
    assert answer.headers["x-upload-sha256"] == sha256(data)
    assert not carried(stack, 2 * MiB)
    assert_clean(stack, [data])


def test_a_break_keeps_the_hash_going(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    """An append cut mid-body keeps what arrived, and the hash covers exactly that: it goes on from there."""
    stack = stack_for(make_stack, tmp_path, "raw")
    assert stack.relay is not None
    data = os.urandom(6 * MiB + 99)
    with stack.client() as client:
        location = tus_create(client, "/upload/breaks.bin", len(data)).headers["location"]
        upload_id = location.rsplit("/", 1)[1]
        assert tus_patch(client, location, 0, data[:MiB]).status_code == 204
        sock = raw_patch(stack.relay.port, location, MiB, 4 * MiB, data[MiB : 3 * MiB])
        stack.wait_spooled(upload_id, 2 * MiB)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset mid-body
        offset = wait_for(lambda: _settled_offset(client, location, MiB))
        answer = tus_patch(client, location, offset, data[offset:])
    assert answer.status_code == 204, answer.text
    assert answer.headers["x-upload-sha256"] == sha256(data)
    assert carried(stack, offset)
    assert_clean(stack, [data])


def test_after_a_restart_an_append_starts_the_hash_again(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    """After a restart, the first append's end starts a hash from byte 0: the completion carries it over."""
    stack = stack_for(make_stack, tmp_path, "raw")
    data = os.urandom(5 * MiB + 5)
    with stack.client() as client:
        location = tus_create(client, "/upload/again.bin", len(data)).headers["location"]
        assert tus_patch(client, location, 0, data[: 2 * MiB]).status_code == 204
    stack.restart_relay()
    with stack.client() as client:
        assert tus_patch(client, location, 2 * MiB, data[2 * MiB : 3 * MiB]).status_code == 204
        answer = tus_patch(client, location, 3 * MiB, data[3 * MiB :])
    assert answer.status_code == 204, answer.text
    assert answer.headers["x-upload-sha256"] == sha256(data)
    assert carried(stack, 3 * MiB)
    assert_clean(stack, [data])


def test_a_checksum_failure_keeps_the_hash_true(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    """An append refused for its checksum (460) keeps none of its bytes: the hash, read from what the spool kept,
    goes on from the offset before it."""
    stack = stack_for(make_stack, tmp_path, "raw")
    data = os.urandom(3 * MiB + 99)
    with stack.client() as client:
        location = tus_create(client, "/upload/checksum.bin", len(data)).headers["location"]
        assert tus_patch(client, location, 0, data[:MiB]).status_code == 204
        wrong = base64.b64encode(hashlib.sha1(b"not these bytes").digest()).decode()
        refused = tus_patch(client, location, MiB, data[MiB : 2 * MiB], {"Upload-Checksum": f"sha1 {wrong}"})
        assert refused.status_code == 460, refused.text
        assert int(tus_head(client, location).headers["upload-offset"]) == MiB
        answer = tus_patch(client, location, MiB, data[MiB:])
    assert answer.status_code == 204, answer.text
    assert answer.headers["x-upload-sha256"] == sha256(data)
    assert carried(stack, MiB)
    assert_clean(stack, [data])


def _settled_offset(client: httpx.Client, location: str, above: int) -> int | None:
    """The offset HEAD reports once the broken append has ended (a HEAD also ends it: one writer)."""
    head = tus_head(client, location)
    if head.status_code != 200:
        return None
    offset = int(head.headers["upload-offset"])
    return offset if offset > above else None
