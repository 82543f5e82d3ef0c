"""Resumable uploads Redis forgot (it restarted empty) and nobody asks about again: the sweep's occasional listing
of the spool adopts them (relay/resumable/shared.py Rule 6), so they expire, or go on, as any other upload.

Real relay-server processes on one real redis-server, restarted empty (conftest.py: nothing is saved), and one
disk spool directory shared by the relays. No request ever names the forgotten upload until the end: before the
listing, only such a request (a HEAD) brought it back, and its bytes stayed in the spool for ever.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx

from relay.testing import RunningServer, start_relay
from tests.interop.support import tus_create, tus_head, tus_patch, wait_for
from tests.redis.conftest import RedisServer

LENGTH = 1_000_000
SENT = 300_000
ADOPTED_WITHIN = 120.0  # listing (next sweep, 5 s) + grace (12 s) + the adopt lease (6 s) + a sweep, on a busy box


def start(redis: RedisServer, sink: RunningServer, spool: Path, *extra: str) -> RunningServer:
    args = ["--redis", redis.url, "--redis-prefix", "t:", "--spool", str(spool), *extra]
    return start_relay(*args, upstream=sink.url)


def half_sent(relay: RunningServer, data: bytes) -> tuple[str, str]:
    """A tus upload of LENGTH bytes created on `relay` with its first SENT bytes in: its id and its path."""
    with httpx.Client(base_url=relay.url, timeout=60) as client:
        created = tus_create(client, "/upload/orphans/file.bin", LENGTH)
        assert created.status_code == 201, created.text
        path = created.headers["location"].removeprefix(relay.url)
        appended = tus_patch(client, path, 0, data[:SENT])
        assert appended.status_code == 204, appended.text
    return created.headers["x-upload-id"], path


def restart_empty(redis: RedisServer, upload_id: str) -> None:
    redis.kill()
    redis.start()  # nothing was saved: every document, lease and set is gone (relays write their own keys again)
    assert redis.command("EXISTS", f"t:rs:{upload_id}") == b"0"


def expired_in_spool(spool: Path, upload_id: str) -> bool:
    """The upload's bytes are gone and its record (if still there) says it expired."""
    if (spool / f"{upload_id}.data").exists():
        return False
    info = spool / f"{upload_id}.json"
    if not info.exists():
        return True
    record = json.loads(info.read_text())
    return record["state"] == "failed" and (record["error"] or {}).get("code") == "expired"


def no_traceback(*relays: RunningServer) -> None:
    for relay in relays:
        assert "Traceback" not in relay.log()


def test_an_upload_redis_forgot_expires_without_any_request_for_it(
    redis_server: RedisServer, sink: RunningServer, tmp_path: Path
) -> None:
    """Two relays on one spool, Redis restarted empty under them: one of them lists the spool (not both), and the
    upload's data goes at its expiry although nobody sends a request for it; then it answers 404 everywhere."""
    spool = tmp_path / "spool"
    relays = [start(redis_server, sink, spool, "--resumable-expiry", "5") for _ in range(2)]
    try:
        upload_id, path = half_sent(relays[0], os.urandom(SENT))
        assert (spool / f"{upload_id}.data").stat().st_size == SENT
        restart_empty(redis_server, upload_id)
        wait_for(lambda: expired_in_spool(spool, upload_id), ADOPTED_WITHIN, interval=0.5)
        listed = [relay for relay in relays if "are not in redis" in relay.log()]
        assert len(listed) == 1, [relay.log()[-2000:] for relay in relays]
        for relay in relays:
            with httpx.Client(base_url=relay.url, timeout=60) as client:
                assert tus_head(client, path).status_code == 404
        no_traceback(*relays)
    finally:
        for relay in relays:
            relay.stop()


def test_redis_and_the_relay_restarted_the_forgotten_upload_still_expires(
    redis_server: RedisServer, sink: RunningServer, tmp_path: Path
) -> None:
    """The reviewer's case: the relay stopped, Redis restarted empty, the relay started again on the same spool:
    start-up reads no spool with Redis, so only the listing finds the upload; its data goes at its expiry."""
    spool = tmp_path / "spool"
    first = start(redis_server, sink, spool, "--resumable-expiry", "5")
    upload_id, _ = half_sent(first, os.urandom(SENT))
    first.stop()
    restart_empty(redis_server, upload_id)
    again = start(redis_server, sink, spool, "--resumable-expiry", "5")
    try:
        wait_for(lambda: expired_in_spool(spool, upload_id), ADOPTED_WITHIN, interval=0.5)
        assert f"resumable upload {upload_id} was not in redis" in again.log()
        no_traceback(first, again)
    finally:
        again.stop()


def test_a_forgotten_upload_not_yet_expired_is_adopted_and_goes_on(
    redis_server: RedisServer, sink: RunningServer, tmp_path: Path
) -> None:
    """Redis restarted empty, default expiry: the listing puts the upload back into Redis by itself (no request
    for it), and its client later goes on from the offset it had; the upstream gets the file byte-exact."""
    spool = tmp_path / "spool"
    relay = start(redis_server, sink, spool)
    data = os.urandom(LENGTH)
    try:
        upload_id, path = half_sent(relay, data)
        restart_empty(redis_server, upload_id)
        wait_for(lambda: redis_server.command("EXISTS", f"t:rs:{upload_id}") == b"1", ADOPTED_WITHIN, interval=0.5)
        with httpx.Client(base_url=relay.url, timeout=60) as client:
            head = wait_for(lambda: (answer := tus_head(client, path)).status_code == 200 and answer, 30)
            assert head.headers["upload-offset"] == str(SENT)
            last = tus_patch(client, path, SENT, data[SENT:])
            assert last.status_code == 204, last.text
        (stored,) = [path for path in (tmp_path / "received").rglob("*") if path.is_file() and path.name[0] != "."]
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        no_traceback(relay)
    finally:
        relay.stop()
