"""A spool that cannot write (relay/resumable/live.py Rule 7): 503 spool_unavailable, never a 500 or a traceback,
and the upload keeps exactly what its data file durably holds.

The relay runs under `ulimit -f 4096`: its files cannot grow past 4 MiB, and a write past that fails with EFBIG
(Python ignores SIGXFSZ), standing in for ENOSPC or EIO. Before the fix the append's SpoolError escaped to uvicorn:
a plain-text 500, a traceback in the log, the writer left open.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.testing import RunningServer, start_process
from tests.interop.support import TinyUpstream, tus_create, tus_head, tus_patch

MiB = 1024 * 1024
CAP = 4 * MiB  # ulimit -f 4096 (KiB)


def capped_relay(tmp_path: Path, upstream: str, forward: str) -> RunningServer:
    config = tmp_path / "relay.toml"
    config.write_text('[[routes]]\nprefix = "/upload/"\n' + ('resumable_forward = "raw"\n' if forward == "raw" else ""))
    relay = f'"{sys.executable}" -m relay --port 0 --upstream {upstream} --spool {tmp_path / "spool"} --config {config}'
    return start_process(["bash", "-c", f"ulimit -f {CAP // 1024}; exec {relay}"])


def pieces(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def assert_refused(answer: httpx.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["error"]["code"] == "spool_unavailable"


@pytest.mark.parametrize("forward", ["raw", "multipart"])
def test_a_spool_write_error_is_a_503_and_keeps_what_the_disk_holds(tmp_path: Path, forward: str) -> None:
    upstream = TinyUpstream(status=200, body=b"ok")
    relay = capped_relay(tmp_path, upstream.url, forward)
    spool = tmp_path / "spool"
    try:
        data = os.urandom(8 * MiB)
        with httpx.Client(base_url=relay.url, timeout=30) as client:
            # A chunked append (no Content-Length: nothing reserved up front) that does not complete the upload.
            location = tus_create(client, "/upload/a.bin", 16 * MiB).headers["location"]
            upload_id = location.rsplit("/", 1)[1]
            headers = {
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            }
            assert_refused(client.patch(location, headers=headers, content=pieces(data)))
            offset = int(tus_head(client, location).headers["upload-offset"])
            assert 0 <= offset <= CAP
            assert (spool / f"{upload_id}.data").read_bytes()[:offset] == data[:offset]
            # The completing append, with a Content-Length: the cut-through (spliced on the raw route).
            other = tus_create(client, "/upload/b.bin", len(data)).headers["location"]
            assert_refused(tus_patch(client, other, 0, data))
            kept = int(tus_head(client, other).headers["upload-offset"])
            assert kept <= CAP
            assert (spool / f"{other.rsplit('/', 1)[1]}.data").read_bytes()[:kept] == data[:kept]
        assert all(len(body) < len(data) for _, body in upstream.requests)  # the upstream never got a whole file
        assert "Traceback" not in relay.log()
    finally:
        relay.stop()
        upstream.close()
