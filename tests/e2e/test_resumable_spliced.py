"""The zero-copy cut-through (relay/resumable/spliced.py): the completing append of a resumable upload on the disk
spool spliced from the client's socket to the upstream's and, tee'd, into the spool's data file.

The path is seen from outside: a spliced request's connection is closed after its answer (the HTTP parser never
saw the spliced bytes), so the completing PATCH's answer says `Connection: close`; a copying one keeps it alive.
Every test checks the bytes at the sink by sha256, and that the sink never held a partial file."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from relay.testing import start_relay, start_sink
from tests.e2e.test_resumable_faults import assert_clean, finish, raw_patch
from tests.interop.support import Stack, TinyUpstream, make_stack, sha256, tus_create, tus_head, tus_patch, wait_for

__all__ = ["make_stack"]

MiB = 1024 * 1024
RAW = '[[routes]]\nprefix = "/upload/"\nresumable_forward = "raw"\n'


def raw_stack(make_stack: Callable[..., Stack], tmp_path: Path, *args: str) -> Stack:
    config = tmp_path / "raw.toml"
    config.write_text(RAW)
    return make_stack("--config", str(config), *args)


def spliced(answer: httpx.Response) -> bool:
    return answer.headers.get("connection", "").lower() == "close"


@pytest.mark.parametrize("digest", ["sha256", "none"])
def test_one_append_is_spliced_byte_exact(make_stack: Callable[..., Stack], tmp_path: Path, digest: str) -> None:
    stack = raw_stack(make_stack, tmp_path, "--digest", digest)
    data = os.urandom(24 * MiB + 12345)
    with stack.client() as client:
        location = tus_create(client, "/upload/one.bin", len(data)).headers["location"]
        answer = tus_patch(client, location, 0, data)
        assert answer.status_code == 204, answer.text
        assert answer.headers["x-upstream-status"] == "200"
        assert spliced(answer)
        if digest == "sha256":
            assert answer.headers["x-upload-sha256"] == sha256(data)
    assert_clean(stack, [data])


def test_client_reset_mid_append_keeps_what_the_file_holds(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    """The client resets mid-append: HEAD reports exactly the data file's bytes, the upstream never got a whole
    body (one file at the sink, after the resume), and the resume completes byte-exact."""
    stack = raw_stack(make_stack, tmp_path)
    assert stack.relay is not None
    data = os.urandom(24 * MiB)
    with stack.client() as client:
        location = tus_create(client, "/upload/reset.bin", len(data)).headers["location"]
    upload_id = location.rsplit("/", 1)[1]
    sock = raw_patch(stack.relay.port, location, 0, len(data), data[: 10 * MiB])
    stack.wait_spooled(upload_id, 8 * MiB)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    sock.close()
    with stack.client() as client:

        def interrupted() -> bool:
            return tus_head(client, location).headers.get("upload-offset") not in (None, "0") and (
                stack.record(upload_id)["state"] != "appending"
            )

        wait_for(interrupted, 10)
        offset = int(tus_head(client, location).headers["upload-offset"])
    held = (stack.spool / f"{upload_id}.data").read_bytes()
    assert 0 < offset <= 10 * MiB and len(held) == offset
    assert held == data[:offset]
    assert stack.partial_files() == [] and stack.stored() == []
    answer = finish(stack, location, data)
    assert answer.status_code == 204, answer.text
    assert_clean(stack, [data])


def test_upstream_dies_mid_cut_through_rest_spooled(tmp_path: Path) -> None:
    """The upstream closes mid-body: the rest still goes into the spool (502), the empty PATCH delivers it."""
    upstream = TinyUpstream(read_limit=2 * MiB, die=True)
    stack = Stack(tmp_path, ())
    config = tmp_path / "raw.toml"
    config.write_text(RAW)
    stack.relay = start_relay("--spool", str(stack.spool), "--config", str(config), upstream=upstream.url)
    stack.started.append(stack.relay)
    try:
        data = os.urandom(16 * MiB + 7)
        with stack.client() as client:
            location = tus_create(client, "/upload/die.bin", len(data)).headers["location"]
            upload_id = location.rsplit("/", 1)[1]
            answer = tus_patch(client, location, 0, data)
            assert answer.status_code == 502, answer.text
            assert spliced(answer)
            assert len(upstream.requests) == 1 and len(upstream.requests[0][1]) < len(data)
            assert tus_head(client, location).headers["upload-offset"] == str(len(data))
            assert (stack.spool / f"{upload_id}.data").read_bytes() == data
            assert stack.record(upload_id)["state"] == "forwarding"
            upstream.close()
            stack.sink = start_sink(stack.store, "--port", str(upstream.port))
            stack.started.append(stack.sink)
            delivered = tus_patch(client, location, len(data), b"")
            assert delivered.status_code == 204, delivered.text
            assert delivered.headers["x-upload-sha256"] == sha256(data)
        assert_clean(stack, [data])
    finally:
        stack.stop()
        upstream.close()


def test_relay_killed_mid_spliced_append_resumes(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = raw_stack(make_stack, tmp_path)
    assert stack.relay is not None
    data = os.urandom(24 * MiB)
    with stack.client() as client:
        location = tus_create(client, "/upload/kill.bin", len(data)).headers["location"]
    upload_id = location.rsplit("/", 1)[1]
    sock = raw_patch(stack.relay.port, location, 0, len(data), data[: 12 * MiB])
    stack.wait_spooled(upload_id, 8 * MiB)
    stack.restart_relay(kill=True)
    sock.close()
    assert stack.partial_files() == [] or wait_for(lambda: stack.partial_files() == [], 5)
    with stack.client() as client:
        offset = int(tus_head(client, location).headers["upload-offset"])
    assert offset <= 12 * MiB
    assert (stack.spool / f"{upload_id}.data").read_bytes()[:offset] == data[:offset]
    answer = finish(stack, location, data)
    assert answer.status_code == 204, answer.text
    assert spliced(answer)
    assert_clean(stack, [data])


def test_many_appends_byte_exact(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = raw_stack(make_stack, tmp_path)
    data = os.urandom(22 * MiB + 3)  # the completing append: 2 MiB + 3, over SPLICE_MIN
    step = 4 * MiB
    with stack.client() as client:
        location = tus_create(client, "/upload/many.bin", len(data)).headers["location"]
        for start in range(0, len(data), step):
            answer = tus_patch(client, location, start, data[start : start + step])
            assert answer.status_code == 204, answer.text
            assert spliced(answer) == (start + step >= len(data))  # the completing one only
        assert answer.headers["x-upload-sha256"] == sha256(data)
    assert_clean(stack, [data])


def test_a_newer_request_ends_a_spliced_append(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    """One writer: a PATCH arriving while a spliced completing append waits for bytes ends it; it keeps what its
    file holds (409 at that offset), the upstream never got a whole body, and the upload completes byte-exact."""
    stack = raw_stack(make_stack, tmp_path)
    assert stack.relay is not None
    data = os.urandom(8 * MiB)
    with stack.client() as client:
        location = tus_create(client, "/upload/race.bin", len(data)).headers["location"]
        upload_id = location.rsplit("/", 1)[1]
        first = raw_patch(stack.relay.port, location, 0, len(data), data[: 3 * MiB])
        stack.wait_spooled(upload_id, 2 * MiB)
        second = tus_patch(client, location, 0, data[: 2 * MiB])
        assert second.status_code == 409, second.text
        kept = int(second.headers["upload-offset"])
        assert 2 * MiB < kept <= 3 * MiB
        assert (stack.spool / f"{upload_id}.data").read_bytes() == data[:kept]
        with contextlib.suppress(OSError):
            first.sendall(data[3 * MiB :])
        first.close()
        assert stack.stored() == []
        last = tus_patch(client, location, kept, data[kept:])
        assert last.status_code == 204 and last.headers["x-upload-sha256"] == sha256(data)
        assert spliced(last)
    assert_clean(stack, [data])
