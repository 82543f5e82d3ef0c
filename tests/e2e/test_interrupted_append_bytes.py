"""An append whose client closes the connection right after sending its head and part of its body keeps that
part (CONTRACT: "the bytes an interrupted PATCH delivered before it broke are kept").

The race: the head and N body bytes arrive in one read, the close a moment later, and the resumable endpoint does
async work (store lookup, lease) before its first `receive()`. uvicorn's `receive()` answers `http.disconnect` as
soon as the connection is gone, dropping the body bytes it already holds; relay/server.py hands them to the app
first. Each case runs RUNS times, as it is a race: without that fix most runs of the sizes up to 64 KiB lost their
bytes (HEAD said 0). The 1 MiB runs kept theirs even then (uvicorn stops reading past 64 KiB of unread body, so the
app is reading before the close is seen): they guard the spliced path of a completing append (relay.take_body).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.interop.support import OCTETS, TUS, Stack, raw_request, read_interim, sha256, tus_create, wait_for

RUNS = 6
SIZES = [6, 1000, 30_000, 65_536, 1024 * 1024]  # the last: a completing append long enough to be spliced


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("interrupted"), ())
    s.start_sink()
    s.start_relay()
    yield s
    s.stop()


def offset_of(stack: Stack, location: str, headers: dict[str, str], sent: int) -> int:
    """The offset HEAD reports once the broken append has taken the `sent` bytes, or 2 s have passed (the record
    is read until then: a HEAD would end an append still open, and this test is about the append, not that)."""
    upload_id = location.rsplit("/", 1)[1]
    try:
        wait_for(lambda: stack.record(upload_id)["offset"] >= sent, timeout=2)
    except AssertionError:
        pass  # the bytes were lost: HEAD says so
    with stack.client() as client:
        head = client.head(location, headers=headers)
    assert head.status_code in (200, 204), head.text
    return int(head.headers["upload-offset"])


def tus_patch_head(location: str, length: int) -> str:
    return (
        f"PATCH {location} HTTP/1.1\nHost: relay\nTus-Resumable: 1.0.0\nUpload-Offset: 0\n"
        f"Content-Type: {OCTETS}\nContent-Length: {length}\n"
    )


def tus_run(stack: Stack, size: int) -> int:
    assert stack.relay is not None
    with stack.client() as client:
        created = tus_create(client, "/upload/interrupted/tus.bin", 2 * size)
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    raw_request(stack.relay.port, tus_patch_head(location, 2 * size), os.urandom(size)).close()  # one sendall
    return offset_of(stack, location, TUS, size)


def ietf_run(stack: Stack, size: int, version: int) -> int:
    assert stack.relay is not None
    head = (
        f"POST /upload/interrupted/ietf.bin HTTP/1.1\nHost: relay\nUpload-Draft-Interop-Version: {version}\n"
        f"Upload-Complete: ?1\nContent-Type: application/octet-stream\nContent-Length: {2 * size}\n"
    )
    sock = raw_request(stack.relay.port, head, os.urandom(size))  # head and body in one sendall
    status, interim = read_interim(sock)
    sock.close()  # right after the 104
    assert status == 104, interim
    return offset_of(stack, interim["location"], {"Upload-Draft-Interop-Version": str(version)}, size)


@pytest.mark.parametrize("size", SIZES)
def test_tus_patch_closed_after_part_of_its_body_keeps_it(stack: Stack, size: int) -> None:
    offsets = [tus_run(stack, size) for _ in range(RUNS)]
    assert offsets == [size] * RUNS


@pytest.mark.parametrize("version", [6, 8])
@pytest.mark.parametrize("size", SIZES)
def test_ietf_creation_closed_after_the_104_keeps_its_bytes(stack: Stack, size: int, version: int) -> None:
    offsets = [ietf_run(stack, size, version) for _ in range(RUNS)]
    assert offsets == [size] * RUNS


def test_the_upload_then_completes_byte_exact(stack: Stack) -> None:
    """The kept bytes are the ones sent: resuming from HEAD's offset gives the file, byte for byte."""
    assert stack.relay is not None
    data = os.urandom(100_000)
    with stack.client() as client:
        created = tus_create(client, "/upload/interrupted/whole.bin", len(data))
        location = created.headers["location"]
        raw_request(stack.relay.port, tus_patch_head(location, len(data)), data[:40_000]).close()
        offset = offset_of(stack, location, TUS, 40_000)
        assert offset == 40_000
        last = client.patch(
            location, content=data[offset:], headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS}
        )
        assert last.status_code == 204, last.text
    assert last.headers["x-upload-sha256"] == sha256(data)


@pytest.mark.parametrize("size", [6, 60_000])
def test_a_completing_append_sent_whole_then_closed_is_delivered(stack: Stack, size: int) -> None:
    """The whole body arrived before the close: the request is complete, so the upload completes and is forwarded
    (its answer has nowhere to go). Handed on as a broken append it stayed `receiving` with every byte in: HEAD
    said done, and no client would send the completing request again."""
    assert stack.relay is not None
    for _ in range(RUNS):
        data = os.urandom(size)
        with stack.client() as client:
            location = tus_create(client, "/upload/interrupted/sent-whole.bin", size).headers["location"]
        raw_request(stack.relay.port, tus_patch_head(location, size), data).close()  # head and body, then close
        record = wait_for(functools.partial(finished, stack, location.rsplit("/", 1)[1]), timeout=10)
        assert (record["state"], record["upstream_status"]) == ("completed", 200), record
        assert sha256(data) in stack.stored_hashes()


@pytest.mark.parametrize("version", [6, 8])
def test_an_empty_completing_append_sent_then_closed_is_delivered(stack: Stack, version: int) -> None:
    """IETF: the last request may carry no byte (`Upload-Complete: ?1`, Content-Length 0). Sent and closed at once,
    nothing is left unread, yet the body did end: the app must get that end, not only `http.disconnect` (which
    left the upload `receiving` with every byte in)."""
    assert stack.relay is not None
    draft = {"Upload-Draft-Interop-Version": str(version)}
    for _ in range(RUNS):
        data = os.urandom(1000)
        with stack.client() as client:
            created = client.post(
                "/upload/interrupted/empty-last.bin", headers={**draft, "Upload-Complete": "?0"}, content=data
            )
        assert created.status_code == 201, created.text
        location = created.headers["location"]
        head = (
            f"PATCH {location} HTTP/1.1\nHost: relay\nUpload-Draft-Interop-Version: {version}\n"
            f"Upload-Offset: {len(data)}\nUpload-Complete: ?1\nContent-Type: application/partial-upload\n"
            "Content-Length: 0\n"
        )
        raw_request(stack.relay.port, head, b"").close()
        record = wait_for(functools.partial(finished, stack, location.rsplit("/", 1)[1]), timeout=10)
        assert (record["state"], record["upstream_status"]) == ("completed", 200), record
        assert sha256(data) in stack.stored_hashes()


@pytest.mark.parametrize("size", [6, 65_536])
def test_a_plain_upload_cut_short_still_fails(stack: Stack, size: int) -> None:
    """Nothing changes for a plain upload but that the app sees the bytes before the disconnect: it fails
    (`client_disconnected`) and the upstream keeps nothing."""
    assert stack.relay is not None
    for run in range(RUNS):
        upload_id = f"plain-cut-{size}-{run}"
        head = (
            f"POST /upload/interrupted/plain.bin HTTP/1.1\nHost: relay\nX-Upload-ID: {upload_id}\n"
            f"Content-Type: application/octet-stream\nContent-Length: {2 * size}\n"
        )
        raw_request(stack.relay.port, head, os.urandom(size)).close()
        record = wait_for(functools.partial(ended, stack, upload_id))
        assert record["state"] == "failed" and record["error"]["code"] == "client_disconnected", record
        assert record["bytes"] in (0, size)
        assert not (stack.store / upload_id).exists()
    assert stack.partial_files() == []


def finished(stack: Stack, upload_id: str) -> dict[str, Any] | None:
    """A resumable upload's record once it is completed or failed; None before."""
    record = stack.record(upload_id)
    return record if record["state"] in ("completed", "failed") else None


def ended(stack: Stack, upload_id: str) -> dict[str, Any] | None:
    """A plain upload's record once it has ended; None before (it may not even exist yet)."""
    response = httpx.get(f"{stack.url}/_relay/uploads/{upload_id}", timeout=10)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()
    return None if record["state"] in ("receiving", "forwarding") else record
