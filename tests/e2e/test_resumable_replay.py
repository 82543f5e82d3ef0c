"""The completing request sent again to a delivered upload gets the completion's answer again (contract: "answers
as its completion did"), body included, also after a `kill -9` of the relay (relay/core/resumable_completion.py
`keep_answer`, `_replay`).

A tus completion the upstream refused (500 with a body) and an IETF completion (the upstream's own 2xx and body)
are the upstream's answers: the replay has their status, headers and body. Before the fix the replay had the
status and the upload's headers only: an IETF client that lost the completion's answer (the stored file's URL,
say) could never get it again. A body over 8 KiB (ANSWER_BODY_CAP) is not kept: the replay then has no body
(Content-Length 0).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.core.resumable_completion import ANSWER_BODY_CAP
from relay.testing import start_relay
from tests.interop.support import Stack, TinyUpstream, sink_answer, tus_create, tus_patch

MiB = 1024 * 1024
PARTIAL = "application/partial-upload"


@pytest.fixture
def tiny() -> Iterator[TinyUpstream]:
    upstream = TinyUpstream(status=500, body=b'{"error": "quota exceeded"}')
    yield upstream
    upstream.close()


def relay_for(tmp_path: Path, upstream: TinyUpstream, *, port: int | None = None) -> Stack:
    stack = Stack(tmp_path, ())
    extra = () if port is None else ("--port", str(port))
    stack.relay = start_relay("--spool", str(stack.spool), *extra, upstream=upstream.url)
    stack.started.append(stack.relay)
    return stack


def same_answer(first: httpx.Response, again: httpx.Response) -> None:
    assert (again.status_code, again.content) == (first.status_code, first.content)
    for name in ("content-type", "x-tiny", "x-upload-id", "x-upstream-status"):
        assert again.headers.get(name) == first.headers.get(name), name


def test_a_refused_tus_completion_is_replayed_with_its_body_also_after_kill_9(
    tmp_path: Path, tiny: TinyUpstream
) -> None:
    stack = relay_for(tmp_path, tiny)
    try:
        data = os.urandom(3 * MiB + 7)
        with stack.client() as client:
            location = tus_create(client, "/upload/refused.bin", len(data)).headers["location"]
            first = tus_patch(client, location, 0, data)
            assert (first.status_code, first.content) == (500, b'{"error": "quota exceeded"}')
            assert first.headers["x-tiny"] == "yes"
            same_answer(first, tus_patch(client, location, len(data), b""))
        port = stack.relay.port
        stack.relay.stop(signal.SIGKILL)
        stack.relay = start_relay("--spool", str(stack.spool), "--port", str(port), upstream=tiny.url)
        stack.started.append(stack.relay)
        with stack.client() as client:
            same_answer(first, tus_patch(client, location, len(data), b""))
        assert len(tiny.requests) == 1  # replayed, never forwarded again
    finally:
        stack.stop()


def test_a_completion_forwarded_from_the_spool_is_replayed_with_its_body(tmp_path: Path, tiny: TinyUpstream) -> None:
    tiny.die = True  # the first forward fails: the file stays, and the retry goes from the spool
    stack = relay_for(tmp_path, tiny)
    try:
        data = os.urandom(MiB)
        with stack.client() as client:
            location = tus_create(client, "/upload/retried.bin", len(data)).headers["location"]
            assert tus_patch(client, location, 0, data).status_code == 502
            tiny.die = False
            first = tus_patch(client, location, len(data), b"")
            assert (first.status_code, first.content) == (500, b'{"error": "quota exceeded"}')
            same_answer(first, tus_patch(client, location, len(data), b""))
        assert len(tiny.requests) == 2
    finally:
        stack.stop()


def test_a_body_over_the_cap_is_not_replayed(tmp_path: Path) -> None:
    upstream = TinyUpstream(status=500, body=os.urandom(ANSWER_BODY_CAP + 1))
    stack = relay_for(tmp_path, upstream)
    try:
        with stack.client() as client:
            location = tus_create(client, "/upload/large.bin", 10).headers["location"]
            first = tus_patch(client, location, 0, b"0123456789")
            assert (first.status_code, first.content) == (500, upstream.body)
            again = tus_patch(client, location, 10, b"")
            assert (again.status_code, again.content, again.headers["content-length"]) == (500, b"", "0")
            assert "x-tiny" not in again.headers and again.headers["x-upstream-status"] == "500"
    finally:
        stack.stop()
        upstream.close()


@pytest.mark.parametrize("version", [6, 8])
def test_an_ietf_completion_is_replayed_with_the_upstream_body(tmp_path: Path, version: int) -> None:
    stack = Stack(tmp_path, ())
    stack.start_sink()
    stack.start_relay()
    try:
        data = os.urandom(2 * MiB + 3)
        interop = {"Upload-Draft-Interop-Version": str(version)}
        with stack.client() as client:
            first = client.post("/upload/ietf.bin", headers={**interop, "Upload-Complete": "?1"}, content=data)
            assert first.status_code == 200, first.text
            assert sink_answer(first)["files"][0]["size"] == len(data)
            location = first.headers["location"]
            headers = {**interop, "Upload-Offset": str(len(data)), "Upload-Complete": "?1", "Content-Type": PARTIAL}
            again = client.patch(location, headers=headers, content=b"")
            assert (again.status_code, again.content) == (200, first.content)
            assert again.headers["content-type"] == first.headers["content-type"]
            assert again.headers["upload-complete"] == "?1" and again.headers["upload-offset"] == str(len(data))
    finally:
        stack.stop()
