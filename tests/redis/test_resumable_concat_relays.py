"""tus concatenation across relays: three relay-server processes on one real redis-server and one S3 spool on a
real SeaweedFS. Partial uploads created and appended on relays A and B (appends spread over both), the final
upload POSTed on relay C: C reads the partial uploads' state from Redis and their bytes from the bucket, and
forwards the file once, byte-exact; the partial uploads' objects are gone afterwards.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from relay.spool.s3 import S3Spool
from relay.testing import RunningServer
from tests.interop.support import TUS, tus_create, tus_head, tus_patch, wait_for
from tests.redis.conftest import RedisServer
from tests.redis.test_resumable_relays import Cluster, sha256
from tests.s3.conftest import S3Server, s3_server
from tests.s3.test_spool_s3 import objects

__all__ = ["s3_server"]  # the session fixture, imported so pytest finds it here

MiB = 1024 * 1024


@pytest.fixture
def cluster(redis_server: RedisServer, s3_server: S3Server, sink: RunningServer, tmp_path: Path) -> Iterator[Cluster]:
    group = Cluster(redis_server, s3_server, sink.url, tmp_path / "received")
    yield group
    group.stop()


def partial_on(relays: list[RunningServer], data: bytes, chunk: int) -> str:
    """A partial upload created on relays[0], its appends alternating over `relays`; its path."""
    with httpx.Client(base_url=relays[0].url, timeout=60) as client:
        created = tus_create(client, "/upload/multi/parts", len(data), headers={"Upload-Concat": "partial"})
    assert created.status_code == 201, created.text
    path = str(created.headers["location"]).removeprefix(relays[0].url)
    for turn, start in enumerate(range(0, len(data), chunk)):
        with httpx.Client(base_url=relays[turn % len(relays)].url, timeout=60) as client:
            answer = tus_patch(client, path, start, data[start : start + chunk], {"Upload-Concat": "partial"})
        assert answer.status_code == 204, answer.text
    return path


def test_partials_on_two_relays_final_on_a_third(cluster: Cluster, s3_server: S3Server) -> None:
    a, b, c = cluster.start(3)
    pieces = [os.urandom(7 * MiB + 5), os.urandom(3 * MiB), os.urandom(999)]
    data = b"".join(pieces)
    paths = [
        partial_on([a, b], pieces[0], 2 * MiB),
        partial_on([b, a], pieces[1], MiB),
        partial_on([a], pieces[2], 500),
    ]
    assert cluster.stored() == []  # nothing delivered on its own
    with httpx.Client(base_url=c.url, timeout=120) as client:
        for path, piece in zip(paths, pieces, strict=True):
            head = tus_head(client, path)  # relay C sees every partial upload, whoever wrote it
            assert head.headers["upload-concat"] == "partial" and head.headers["upload-offset"] == str(len(piece))
        urls = [a.url + paths[0], paths[1], b.url + paths[2]]  # the host in a URL does not matter: one spool
        done = client.post("/upload/multi/joined.bin", headers={**TUS, "Upload-Concat": "final;" + " ".join(urls)})
        assert done.status_code == 201, done.text
        assert done.headers["x-upload-sha256"] == sha256(data)
        location = done.headers["location"]
    (stored,) = cluster.stored()
    assert sha256(stored.read_bytes()) == sha256(data)
    ids = [path.rsplit("/", 1)[1] for path in paths]
    with httpx.Client(base_url=a.url, timeout=60) as client:  # relay A: the final upload is delivered
        head = tus_head(client, location.removeprefix(c.url))
        assert head.status_code == 200 and head.headers["upload-concat"].startswith("final;")
        wait_for(lambda: all(tus_head(client, path).status_code == 404 for path in paths), 10)
    spool = S3Spool.from_url(cluster.location, endpoint=s3_server.endpoint)
    left = lambda: [key for key in asyncio.run(objects(s3_server, spool)) if any(i in key for i in ids)]  # noqa: E731
    wait_for(lambda: not left(), 10)  # the partial uploads' objects (data and info) are gone
    assert len(cluster.stored()) == 1
