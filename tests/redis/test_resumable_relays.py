"""Resumable uploads across relays: three relay-server processes on one real redis-server and one S3 spool on a
real SeaweedFS, a sink behind them. Any relay takes any request of any upload, one append at a time per upload
across relays (a lease with a fencing token in Redis), byte-exact at the sink (sha256), delivered once.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from tusclient import client as tus_client

from relay.core import resumable as core
from relay.resumable.shared import RedisUploads
from relay.spool.s3 import S3Spool
from relay.testing import RunningServer, start_relay
from tests.interop.support import OCTETS, tus_create, tus_head, tus_patch, wait_for
from tests.redis.conftest import RedisServer
from tests.s3.conftest import S3Server, s3_server
from tests.s3.test_spool_s3 import objects

__all__ = ["s3_server"]  # the session fixture, imported so pytest finds it here

MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Cluster:
    """Relays on one Redis and one S3 prefix, stopped by PID at the end of the test."""

    def __init__(self, redis: RedisServer, s3: S3Server, upstream: str, store: Path) -> None:
        self.redis, self.s3, self.upstream, self.store = redis, s3, upstream, store
        self.location = s3.location()
        self.relays: list[RunningServer] = []

    def start(self, count: int, *extra: str) -> list[RunningServer]:
        args = ["--redis", self.redis.url, "--redis-prefix", "t:", "--spool", self.location]
        args += ["--s3-endpoint", self.s3.endpoint, "--max-body-size", "200MiB", *extra]
        for _ in range(count):
            self.relays.append(start_relay(*args, upstream=self.upstream, env=self.s3.env()))
        return self.relays

    def stop(self) -> None:
        for relay in self.relays:
            relay.stop()

    def stored(self) -> list[Path]:
        return sorted(path for path in self.store.rglob("*") if path.is_file() and not path.name.startswith("."))


@pytest.fixture
def cluster(redis_server: RedisServer, s3_server: S3Server, sink: RunningServer, tmp_path: Path) -> Iterator[Cluster]:
    group = Cluster(redis_server, s3_server, sink.url, tmp_path / "received")
    yield group
    group.stop()


def create(relay: RunningServer, length: int, name: str = "file.bin") -> tuple[str, str]:
    """A tus upload created on `relay`: its id and its path (the Location, relative)."""
    with httpx.Client(base_url=relay.url, timeout=60) as client:
        created = tus_create(client, f"/upload/multi/{name}", length)
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    return created.headers["x-upload-id"], location.removeprefix(relay.url)


def head_offset(relay: RunningServer, path: str) -> int:
    with httpx.Client(base_url=relay.url, timeout=60) as client:
        answer = tus_head(client, path)
    assert answer.status_code == 200, answer.status_code
    return int(answer.headers["upload-offset"])


def patch(relay: RunningServer, path: str, offset: int, body: bytes) -> httpx.Response:
    with httpx.Client(base_url=relay.url, timeout=120) as client:
        return tus_patch(client, path, offset, body)


def open_patch(relay: RunningServer, path: str, offset: int, length: int, first: bytes) -> socket.socket:
    """A PATCH announcing `length` bytes that sends only `first` and then stays open (a stalled client)."""
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=30)
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: relay\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n"
        f"Content-Type: {OCTETS}\r\nContent-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the relay ended the connection (an answer, then EOF, or a reset) within `timeout`."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def test_appends_round_robin_across_three_relays_reach_the_upstream_once_byte_exact(cluster: Cluster) -> None:
    relays = cluster.start(3)
    data = os.urandom(23 * MiB + 321)
    upload_id, path = create(relays[0], len(data))
    offset, turn = 0, 0
    sizes = [1, 3 * MiB, 6 * MiB, 100, 9 * MiB]
    for size in sizes:
        relay = relays[turn % 3]
        answer = patch(relay, path, offset, data[offset : offset + size])
        assert answer.status_code == 204, (relay.url, answer.status_code, answer.text)
        offset += size
        assert head_offset(relays[(turn + 1) % 3], path) == offset  # any relay sees the new offset
        turn += 1
    last = patch(relays[turn % 3], path, offset, data[offset:])
    assert last.status_code == 204, last.text
    assert last.headers["x-upload-sha256"] == sha256(data)
    assert last.headers["x-upload-id"] == upload_id
    (stored,) = cluster.stored()  # delivered once
    assert sha256(stored.read_bytes()) == sha256(data)
    for relay in relays:  # completed: a PATCH at the full offset on any relay answers as the completion did
        again = patch(relay, path, len(data), b"")
        assert again.status_code == 204 and again.headers["x-upload-sha256"] == sha256(data)
    assert len(cluster.stored()) == 1


def test_tuspy_with_its_requests_spread_across_relays(cluster: Cluster, tmp_path: Path) -> None:
    relays = cluster.start(3)
    data = os.urandom(18 * MiB + 77)
    source = tmp_path / "spread.bin"
    source.write_bytes(data)
    uploader = tus_client.TusClient(f"{relays[0].url}/upload/multi/").uploader(
        str(source), chunk_size=4 * MiB, metadata={"filename": source.name}
    )
    uploader.url = uploader.create_url()  # a POST to relay A
    path = uploader.url.split("://", 1)[1].partition("/")[2]
    turn = 1
    while uploader.offset < len(data):
        uploader.url = f"{relays[turn % 3].url}/{path}"  # the next request goes to the next relay
        uploader.offset = uploader.get_offset()  # a HEAD there
        uploader.upload_chunk()
        turn += 1
    assert uploader.request.status_code == 204
    assert uploader.request.response_headers["x-upload-sha256"] == sha256(data)
    (stored,) = cluster.stored()
    assert stored.name == source.name and sha256(stored.read_bytes()) == sha256(data)


def test_a_head_on_another_relay_ends_an_open_append_promptly(cluster: Cluster) -> None:
    relays = cluster.start(2, "--client-idle-timeout", "60")
    data = os.urandom(4 * MiB)
    _, path = create(relays[0], len(data))
    sock = open_patch(relays[0], path, 0, len(data), data[:MiB])
    time.sleep(1.0)  # the first MiB is in relay A's writer
    began = time.monotonic()
    offset = head_offset(relays[1], path)
    took = time.monotonic() - began
    print(f"HEAD on relay B with relay A's append open: {took * 1000:.0f} ms")
    assert took < 3.0, f"the HEAD on relay B took {took:.1f} s: it waited for a timeout, not for A to let go"
    assert offset == MiB  # what A received is kept, and HEAD says so
    assert closed_by_peer(sock, 5.0)  # A's append was ended
    sock.close()
    rest = patch(relays[1], path, offset, data[offset:])
    assert rest.status_code == 204, rest.text
    (stored,) = cluster.stored()
    assert sha256(stored.read_bytes()) == sha256(data)


def test_a_relay_killed_mid_append_the_upload_goes_on_from_another_relay(cluster: Cluster) -> None:
    relays = cluster.start(3, "--client-idle-timeout", "60")
    data = os.urandom(30 * MiB + 9)
    _, path = create(relays[0], len(data))
    assert patch(relays[1], path, 0, data[: 2 * MiB]).status_code == 204
    sock = open_patch(relays[0], path, 2 * MiB, 20 * MiB, data[2 * MiB : 14 * MiB])
    time.sleep(3.0)  # a part (8 MiB) of it went to S3
    relays[0].proc.send_signal(signal.SIGKILL)
    relays[0].proc.wait()
    sock.close()
    began = time.monotonic()
    offset = head_offset(relays[1], path)  # after the dead relay's lease ran out: what is durable
    print(f"HEAD after the SIGKILL: {time.monotonic() - began:.1f} s, offset {offset} of {14 * MiB} sent")
    assert 2 * MiB <= offset <= 14 * MiB
    again = head_offset(relays[2], path)
    assert again == offset
    rest = patch(relays[2], path, offset, data[offset:])
    assert rest.status_code == 204, rest.text
    assert rest.headers["x-upload-sha256"] == sha256(data)
    (stored,) = cluster.stored()
    assert sha256(stored.read_bytes()) == sha256(data)


def at_once(relays: list[RunningServer], path: str, offset: int, piece: bytes) -> list[int]:
    """The same PATCH sent to every relay at the same time: their statuses (0: the connection was closed)."""
    answers: list[int] = []

    def send(relay: RunningServer) -> None:
        try:
            answers.append(patch(relay, path, offset, piece).status_code)
        except httpx.HTTPError:
            answers.append(0)  # superseded by the other: the relay closed the connection

    threads = [threading.Thread(target=send, args=(relay,)) for relay in relays]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return answers


def test_two_concurrent_patches_on_two_relays_are_never_both_accepted(cluster: Cluster) -> None:
    relays = cluster.start(2)
    data = os.urandom(12 * MiB)
    _, path = create(relays[0], len(data))
    assert patch(relays[0], path, 0, data[:MiB]).status_code == 204
    outcomes: list[list[int]] = []
    for round_ in range(3):
        offset = head_offset(relays[round_ % 2], path)
        piece = data[offset : offset + 2 * MiB]
        answers = at_once(relays, path, offset, piece)
        outcomes.append(answers)
        assert answers.count(204) <= 1, answers  # never both accepted at the same offset
        assert head_offset(relays[0], path) == head_offset(relays[1], path)
    offset = head_offset(relays[1], path)
    assert offset < len(data)
    last = patch(relays[0], path, offset, data[offset:])
    assert last.status_code == 204, last.text
    print("concurrent PATCH outcomes per round:", outcomes)
    (stored,) = cluster.stored()
    assert sha256(stored.read_bytes()) == sha256(data)


def test_resumable_max_incomplete_counts_across_relays(cluster: Cluster) -> None:
    relays = cluster.start(3, "--resumable-max-incomplete", "2")
    create(relays[0], 10)
    create(relays[1], 10)
    with httpx.Client(base_url=relays[2].url, timeout=60) as client:
        third = tus_create(client, "/upload/multi/third.bin", 10)
        assert third.status_code == 429, third.text
        assert third.json()["error"]["code"] == "too_many_uploads"


def test_a_chosen_upload_id_taken_on_another_relay_is_409(cluster: Cluster) -> None:
    relays = cluster.start(2)
    answers = []
    for relay in relays:
        with httpx.Client(base_url=relay.url, timeout=60) as client:
            answers.append(tus_create(client, "/upload/multi/x.bin", 10, headers={"X-Upload-ID": "chosen-id"}))
    assert answers[0].status_code == 201, answers[0].text
    assert answers[1].status_code == 409, answers[1].text


def test_a_commit_under_a_lease_that_was_taken_over_moves_nothing(redis_server: RedisServer) -> None:
    """Fencing, in-process on the real Redis: a holder that paused past its lease wakes up and commits; the
    token it holds is no longer the lease's, so its commit is refused and the newer state stays."""

    async def scenario() -> None:
        client = Redis.from_url(redis_server.url)
        first = RedisUploads(client, "f:", "relay-a", on_lost=lambda upload_id: None)
        second = RedisUploads(client, "f:", "relay-b", on_lost=lambda upload_id: None)
        upload = core.create(
            upload_id="fenced", route="/upload/", target=b"/upload/x", protocol="tus", now=time.time(),
            expiry=3600.0, length=100, metadata={},
        )  # fmt: skip
        assert await first.create(upload, None) == 1
        assert await second.create(upload, None) == -1  # the id is taken, on any relay
        old = await first.take("fenced", "append")
        assert old.token is not None
        assert (await second.take("fenced", "append")).holder == "relay-a"  # one holder at a time
        await client.delete("f:rs:lease:fenced")  # relay A paused: its lease ran out
        new = await second.take("fenced", "append")
        assert new.token is not None and new.token > old.token and new.orphan  # A never let go
        newer = replace(upload, offset=60)
        assert await second.commit(newer, new.token, before=None)
        stale = replace(upload, offset=40)
        assert not await first.commit(stale, old.token, before=None)  # A wakes up: fenced off
        assert not await first.commit(stale, None, before=upload)  # nor without a token while B holds it
        await second.release("fenced", new.token)
        assert not await first.commit(stale, None, before=upload)  # the document is no longer what A saw
        seen = await first.take("fenced", None)
        assert seen.upload() == newer and not seen.orphan
        await client.aclose()

    asyncio.run(scenario())


def test_redis_gone_is_503_then_an_empty_redis_takes_the_uploads_back_from_the_spool(cluster: Cluster) -> None:
    """Redis stopped mid-upload: resumable requests are refused with 503 (no relay can know who writes), never a
    traceback; Redis back empty: the upload's state comes back from the spool's info document and durable bytes,
    and it completes byte-exact."""
    relays = cluster.start(2)
    data = os.urandom(9 * MiB + 3)
    _, path = create(relays[0], len(data))
    assert patch(relays[1], path, 0, data[: 3 * MiB]).status_code == 204
    cluster.redis.kill()
    with httpx.Client(base_url=relays[0].url, timeout=60) as client:
        head = tus_head(client, path)
        assert head.status_code == 503
        refused = tus_patch(client, path, 3 * MiB, data[3 * MiB : 4 * MiB])
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "spool_unavailable"
    cluster.redis.start()  # empty: nothing was saved
    with httpx.Client(base_url=relays[1].url, timeout=60) as client:  # the first call on an old connection may
        back = wait_for(lambda: (answer := tus_head(client, path)).status_code != 503 and answer, 30)  # fail: 503
    assert back.status_code == 200 and back.headers["upload-offset"] == str(3 * MiB)
    last = patch(relays[0], path, 3 * MiB, data[3 * MiB :])
    assert last.status_code == 204, last.text
    (stored,) = cluster.stored()
    assert sha256(stored.read_bytes()) == sha256(data)
    assert any("taken back from the spool" in relay.log() for relay in relays)
    for relay in relays:
        assert "Traceback" not in relay.log()


def test_an_idle_upload_expires_once_across_relays(cluster: Cluster) -> None:
    """Every relay sweeps; the lease per upload lets one of them expire it: its data goes, every relay says 404."""
    relays = cluster.start(3, "--resumable-expiry", "2")
    data = os.urandom(MiB)
    upload_id, path = create(relays[0], 3 * MiB)
    assert patch(relays[1], path, 0, data).status_code == 204
    assert data_objects(cluster)  # the MiB waits in the bucket

    def gone() -> bool:
        with httpx.Client(timeout=60) as client:
            return all(tus_head(client, f"{relay.url}{path}").status_code == 404 for relay in relays)

    wait_for(gone, 30, interval=0.5)
    wait_for(lambda: not data_objects(cluster), 10)
    with httpx.Client(base_url=relays[2].url, timeout=60) as client:
        record = client.get(f"/_relay/uploads/{upload_id}").json()
    assert record["state"] == "failed" and record["error"]["code"] == "expired"


def data_objects(cluster: Cluster) -> list[str]:
    spool = S3Spool.from_url(cluster.location, endpoint=cluster.s3.endpoint)
    return [key for key in asyncio.run(objects(cluster.s3, spool)) if not key.endswith(".json")]
