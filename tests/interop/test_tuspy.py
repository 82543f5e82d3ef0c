"""tuspy (the tus project's Python client) against the relay: a 20 MiB file in 4 MiB chunks (chunk_size is
always set: tuspy's default is one chunk of sys.maxsize bytes, read whole into memory), with and without its
Upload-Checksum, and uploads that go on after the relay was killed and restarted on the same spool and port."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tusclient import client as tus_client

from tests.interop.support import Stack, make_stack, sha256

__all__ = ["make_stack"]

MiB = 1024 * 1024


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(20 * MiB + 777)
    path = tmp_path / "tuspy.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "upload-checksum"])
def test_tuspy_uploads_in_chunks(
    make_stack: Callable[..., Stack], data_file: tuple[Path, bytes], checksum: bool
) -> None:
    stack = make_stack()
    path, data = data_file
    client = tus_client.TusClient(f"{stack.url}/upload/tuspy/")
    uploader = client.uploader(
        str(path), chunk_size=4 * MiB, metadata={"filename": path.name, "owner": "py"}, upload_checksum=checksum
    )
    uploader.upload()
    assert uploader.offset == len(data)
    assert uploader.request.status_code == 204
    assert uploader.request.response_headers["x-upload-sha256"] == sha256(data)
    (stored,) = stack.stored()
    assert stored.name == "tuspy.bin" and sha256(stored.read_bytes()) == sha256(data)


def test_tuspy_resumes_after_a_relay_restart(make_stack: Callable[..., Stack], data_file: tuple[Path, bytes]) -> None:
    stack = make_stack()
    path, data = data_file
    client = tus_client.TusClient(f"{stack.url}/upload/tuspy/")
    uploader = client.uploader(
        str(path), chunk_size=4 * MiB, metadata={"filename": path.name}, retries=10, retry_delay=1
    )
    uploader.upload_chunk()
    uploader.upload_chunk()
    assert uploader.offset == 8 * MiB
    url = uploader.url
    stack.kill_relay()
    restarted = threading.Timer(0.5, lambda: stack.start_relay(same_port=True))
    restarted.start()
    try:
        uploader.upload()  # the next PATCH meets no relay: tuspy waits, asks the offset (HEAD), goes on
    finally:
        restarted.join()
    assert uploader.url == url and uploader.offset == len(data)
    assert stack.stored_hashes() == [sha256(data)]


def test_a_new_tuspy_uploader_resumes_from_the_url(
    make_stack: Callable[..., Stack], data_file: tuple[Path, bytes]
) -> None:
    """A process that died after two chunks: a new uploader given the URL asks the offset and goes on."""
    stack = make_stack()
    path, data = data_file
    first = tus_client.TusClient(f"{stack.url}/upload/tuspy/").uploader(str(path), chunk_size=4 * MiB)
    first.upload(stop_at=8 * MiB)
    stack.restart_relay(kill=True)
    time.sleep(0.1)
    second = tus_client.TusClient(f"{stack.url}/upload/tuspy/").uploader(str(path), chunk_size=4 * MiB, url=first.url)
    assert second.offset == 8 * MiB
    second.upload()
    assert stack.stored_hashes() == [sha256(data)]
