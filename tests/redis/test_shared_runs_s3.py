"""A resumable upload's record across relays, end to end: relays on one real redis-server and one S3 spool (a real
SeaweedFS), a sink behind them. The reviewer's two sequences: appends that alternate between relays must leave
the record `completed` with `completed` as the last event (the relay that took the earlier append writes on its
own timer, possibly after the end); and a relay that stops (SIGTERM) with an incomplete upload never ends it
`relay_lost`: the upload goes on from another relay and ends once.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from tests.redis.conftest import RedisServer
from tests.redis.test_resumable_relays import Cluster, cluster, create, head_offset, patch, s3_server, sha256
from tests.webhook_receiver import wait_for

__all__ = ["cluster", "s3_server"]  # the fixtures, imported so pytest finds them here

MB = 1_000_000


def stored(server: RedisServer, upload_id: str) -> dict[str, Any]:
    """The record in Redis, its events' names and whether it is in `active` (what the relay_lost sweeper ends)."""
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        text = client.hget(f"t:upload:{upload_id}", "json")
        names = [fields[b"e"].decode() for _, fields in client.xrange(f"t:events:{upload_id}")]
        active = client.hget("t:active", upload_id)
    finally:
        client.close()
    assert isinstance(text, bytes)
    return {**json.loads(text), "events": names, "active": active}


def test_appends_alternating_between_relays_end_completed_with_completed_last(cluster: Cluster) -> None:
    """Small appends, so that A's completion often reaches Redis before B's earlier append does (B flushes on
    its 100 ms timer): without the fencing, about 1 round in 3 ended `receiving` here; 8 rounds."""
    a, b = cluster.start(2)
    data = os.urandom(20_000)
    ids = []
    for _ in range(8):
        upload_id, path = create(a, len(data))
        assert patch(b, path, 0, data[:10_000]).status_code == 204
        assert patch(a, path, 10_000, data[10_000:]).status_code == 204  # completes, right after B's append
        ids.append(upload_id)
    wait_for(lambda: all("completed" in stored(cluster.redis, one)["events"] for one in ids), what="the ends")
    time.sleep(1.0)  # B's and A's queues are flushed every 100 ms: anything late would be written by now
    for upload_id in ids:
        record = stored(cluster.redis, upload_id)
        assert record["state"] == "completed" and record["bytes"] == len(data), record
        assert record["active"] is None
        assert record["events"][-1] == "completed" and record["events"].count("completed") == 1, record["events"]
        assert "failed" not in record["events"]
    assert len(cluster.stored()) == 8


def test_a_relay_that_stops_leaves_its_incomplete_upload_to_the_others(cluster: Cluster) -> None:
    a, b = cluster.start(2)
    data = os.urandom(2 * MB)
    upload_id, path = create(a, len(data))
    assert patch(a, path, 0, data[:MB]).status_code == 204
    a.stop()  # SIGTERM: a plain restart would do the same
    # The sweeper confirms a relay gone CONFIRM (6 s) after it first misses its heartbeat, sweeping every 2 s.
    time.sleep(12.0)
    record = stored(cluster.redis, upload_id)
    assert record["state"] == "receiving" and record["bytes"] == MB, record
    assert "failed" not in record["events"], record["events"]
    assert head_offset(b, path) == MB
    done = patch(b, path, MB, data[MB:])
    assert done.status_code == 204 and done.headers["x-upload-sha256"] == sha256(data)
    wait_for(lambda: stored(cluster.redis, upload_id)["state"] == "completed", what="completed in redis")
    events = stored(cluster.redis, upload_id)["events"]
    assert events[-1] == "completed" and "failed" not in events, events
