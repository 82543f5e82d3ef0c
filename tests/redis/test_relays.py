"""Several relay-server processes on one real redis-server (`--redis`): what the contract's "Several relays, one
state" section promises, end to end.

Three relays share the registry and the events (SSE on one relay for an upload on another, any relay lists all);
`Last-Event-ID` replays what a reconnecting client missed, on any relay; caps hold across relays under
concurrent load; a relay killed with SIGKILL gives its slot back and its upload ends `failed` `relay_lost`
within 30 s, seen by a subscriber on another relay; Redis stopped mid-upload: the upload completes, health goes
`degraded` then `ok`, `relay_state_errors_total` counts what could not be written; Redis unreachable at
start-up is one line and exit 2; and a 64 MiB upload costs a bounded number of Redis commands, not one per chunk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from relay.testing import RunningServer, start_relay
from tests.redis.conftest import RedisServer, Relays, free_port


def sse(url: str, *, last_event_id: str | None = None, timeout: float = 40.0) -> Iterator[dict[str, Any]]:
    """Each event of an SSE stream as {"id", "event", "data"}, until the stream ends."""
    headers = {"last-event-id": last_event_id} if last_event_id else {}
    with httpx.stream("GET", url, headers=headers, timeout=timeout) as response:
        assert response.status_code == 200
        current: dict[str, Any] = {}
        for line in response.iter_lines():
            if not line:
                if "event" in current:
                    yield current
                current = {}
            elif line.startswith(("id: ", "event: ")):
                key, _, value = line.partition(": ")
                current[key] = value
            elif line.startswith("data: "):
                current["data"] = json.loads(line[len("data: ") :])


def slow_body(chunks: int, size: int = 64 * 1024, pause: float = 0.05) -> Iterator[bytes]:
    for index in range(chunks):
        yield bytes([index % 251]) * size
        time.sleep(pause)


def upload(relay: RunningServer, upload_id: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{relay.url}/upload/{upload_id}", content=body, headers={"x-upload-id": upload_id, **headers}, timeout=60
    )


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds it took for `check()` to hold."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - began


def record(relay: RunningServer, upload_id: str) -> dict[str, Any] | None:
    response = httpx.get(f"{relay.url}/_relay/uploads/{upload_id}", timeout=10)
    return response.json() if response.status_code == 200 else None


def metric(relay: RunningServer, name: str) -> float:
    text = httpx.get(f"{relay.url}/_relay/metrics", timeout=10).text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


def test_three_relays_share_uploads_and_events(relays: Relays) -> None:
    a, b, c = relays.start_many(3)
    with ThreadPoolExecutor(1) as pool:
        # Subscribed on A before the upload exists; the upload runs on B.
        seen = pool.submit(lambda: list(sse(f"{a.url}/_relay/uploads/shared-1/events")))
        time.sleep(0.5)
        body = os.urandom(3 * 1024 * 1024)
        response = upload(b, "shared-1", body)
        assert response.status_code == 200
        events = seen.result(timeout=30)
    names = [event["event"] for event in events]
    # "started" live, or the catch-up's "progress" when the subscription was slower than the upload's start.
    assert names[0] in ("started", "progress") and names[-1] == "completed" and "part" in names
    ids = [event["id"] for event in events]
    assert all(ids) and ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert events[-1]["data"]["bytes"] == len(body)
    for relay in (a, b, c):
        listed = httpx.get(f"{relay.url}/_relay/uploads", timeout=10).json()["uploads"]
        assert "shared-1" in [item["id"] for item in listed]
        got = record(relay, "shared-1")
        assert got is not None and got["state"] == "completed" and got["bytes"] == len(body)
        assert got["parts"][0]["sha256"] == hashlib.sha256(body).hexdigest()
    # The stream of every upload on C carries B's events too.
    every = sse(f"{c.url}/_relay/events", last_event_id="0-0")
    assert next(every)["data"]["upload_id"] == "shared-1"


def test_last_event_id_replays_on_another_relay(relays: Relays) -> None:
    a, b, c = relays.start_many(3)
    done: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: done.append(upload(b, "replay-1", slow_body(30, pause=0.1))))
    thread.start()
    first: list[dict[str, Any]] = []
    for event in sse(f"{a.url}/_relay/uploads/replay-1/events"):
        first.append(event)
        if len(first) == 3:
            break  # the client goes away mid-upload
    resumed = list(sse(f"{c.url}/_relay/uploads/replay-1/events", last_event_id=first[-1]["id"]))
    thread.join(60)
    assert done and done[0].status_code == 200
    key = lambda event: tuple(map(int, event["id"].split("-")))  # noqa: E731
    assert resumed and resumed[-1]["event"] == "completed"
    assert all(key(event) > key(first[-1]) for event in resumed)
    byte_counts = [event["data"]["bytes"] for event in first + resumed]
    assert byte_counts == sorted(byte_counts) and byte_counts[-1] == 30 * 64 * 1024


def test_caps_hold_across_relays_under_load(relays: Relays) -> None:
    caps = ("--max-concurrent-uploads", "3", "--max-uploads-per-client", "2", "--trust-forwarded")
    group = relays.start_many(3, *caps)

    def one(index: int) -> int:
        client = "10.0.0.1" if index < 6 else f"10.0.1.{index}"
        response = upload(group[index % 3], f"cap-{index}", slow_body(60), **{"x-forwarded-for": client})
        return response.status_code

    with ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(one, range(12)))
    assert statuses.count(200) == 3, statuses
    assert statuses.count(429) == 9, statuses
    assert statuses[:6].count(200) <= 2  # the one client's own cap, across relays
    # Every slot came back (a release is written with the next flush, within 100 ms): three more fit at once.
    time.sleep(0.5)
    with ThreadPoolExecutor(3) as pool:
        again = pool.map(lambda i: upload(group[i], f"again-{i}", b"x", **{"x-forwarded-for": f"10.0.2.{i}"}), range(3))
        assert [response.status_code for response in again] == [200] * 3


def test_uploads_one_after_another_under_a_cap_of_one(relays: Relays) -> None:
    """`--max-concurrent-uploads 1` counts uploads in progress: each upload sent once the previous one was answered
    is taken, on a kept-alive connection and on new ones (the ended upload's release, not yet written to Redis,
    is dropped by the next TAKE of the same relay). Another relay sees the ended upload `completed` soon after its
    answer (the write queue flushes an ended upload's writes at once, not at the next 100 ms tick)."""
    a, b = relays.start_many(2, "--max-concurrent-uploads", "1")
    with httpx.Client(timeout=10) as client:
        kept = [client.post(f"{a.url}/upload/seq", content=b"k" * 1000).status_code for _ in range(30)]
    fresh = [upload(a, f"fresh-{index}", b"f" * 1000).status_code for index in range(30)]
    assert kept == [200] * 30 and fresh == [200] * 30, (kept, fresh)
    waits = []
    for index in range(10):
        answered = upload(a, f"seen-{index}", b"s" * 1000)
        assert answered.status_code == 200
        began = time.monotonic()
        seen = f"seen-{index}"
        wait_for(lambda: (record(b, seen) or {}).get("state") == "completed", 5, "completed on B")  # noqa: B023
        waits.append(time.monotonic() - began)
    print("seconds until B saw completed:", sorted(round(wait, 3) for wait in waits))


@pytest.mark.slow
def test_kill_9_of_a_relay_mid_upload(relays: Relays) -> None:
    a = relays.start("--max-concurrent-uploads", "1")
    b = relays.start("--max-concurrent-uploads", "1")
    thread = threading.Thread(target=lambda: _ignore_errors(lambda: upload(a, "doomed-1", slow_body(2000, pause=0.1))))
    thread.daemon = True
    thread.start()
    wait_for(lambda: (record(b, "doomed-1") or {}).get("state") == "receiving", 10, "the upload on A shows on B")
    assert upload(b, "refused-1", b"x" * 100).status_code == 429  # the one slot is A's
    with ThreadPoolExecutor(1) as pool:
        seen = pool.submit(lambda: list(sse(f"{b.url}/_relay/uploads/doomed-1/events", timeout=60)))
        time.sleep(0.5)
        a.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        events = seen.result(timeout=45)
        lost_after = time.monotonic() - killed_at
    assert events[-1]["event"] == "failed" and events[-1]["data"]["error"]["code"] == "relay_lost"
    assert lost_after < 30, lost_after
    got = record(b, "doomed-1")
    assert got is not None and got["state"] == "failed" and got["error"]["code"] == "relay_lost"
    tries = iter(range(1000))
    took = wait_for(lambda: upload(b, f"after-{next(tries)}", b"x" * 100).status_code == 200, 35, "slot back")
    assert time.monotonic() - killed_at < 30, took


def _ignore_errors(call: Callable[[], object]) -> None:
    try:
        call()
    except httpx.HTTPError:
        pass


def test_redis_stopped_mid_upload_and_restarted(relays: Relays, redis_server: RedisServer) -> None:
    a, b = relays.start_many(2)
    done: list[httpx.Response] = []
    body_chunks = 60
    thread = threading.Thread(target=lambda: done.append(upload(a, "outage-1", slow_body(body_chunks, pause=0.1))))
    thread.start()
    wait_for(lambda: record(b, "outage-1") is not None, 10, "the upload shows on B")
    redis_server.stop()
    health = lambda relay: httpx.get(f"{relay.url}/_relay/health", timeout=10)  # noqa: E731
    wait_for(lambda: health(a).status_code == 503, 10, "health degraded")
    assert health(a).json()["status"] == "degraded"
    thread.join(60)
    assert done and done[0].status_code == 200, done  # the upload went on and was relayed
    assert done[0].json()["bytes"] == body_chunks * 64 * 1024
    redis_server.start()
    wait_for(lambda: health(a).status_code == 200 and health(b).status_code == 200, 15, "health ok again")
    assert health(a).json()["status"] == "ok"
    assert metric(a, "relay_state_errors_total") > 0
    # What could not be written meanwhile is written now: B (a Redis that lost everything) sees it completed.
    wait_for(lambda: (record(b, "outage-1") or {}).get("state") == "completed", 10, "the record on B")
    assert upload(b, "after-outage", b"y" * 1000).status_code == 200


def test_redis_unreachable_at_start_is_one_line_and_exit_2() -> None:
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "--port", "0", "--redis", f"redis://127.0.0.1:{port}/0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "redis" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert "listening on" not in proc.stdout


def test_no_redis_round_trip_per_chunk(relays: Relays, redis_server: RedisServer) -> None:
    relay = relays.start()
    upload(relay, "warm-up", b"w" * 1000)
    time.sleep(0.5)
    redis_server.command("CONFIG", "RESETSTAT")
    size, chunk = 64 * 1024 * 1024, 64 * 1024
    began = time.monotonic()
    response = upload(relay, "big-1", (b"z" * chunk for _ in range(size // chunk)))
    seconds = time.monotonic() - began
    assert response.status_code == 200 and response.json()["bytes"] == size
    time.sleep(0.3)  # the last flush
    stats = redis_server.command("INFO", "commandstats").decode()
    calls = {name: int(count) for name, count in re.findall(r"cmdstat_(\w+):calls=(\d+)", stats)}
    chunks = size // chunk
    # One EVALSHA per flush, at most every 100 ms, whatever the number of chunks; the commands inside the
    # scripts, the fan-out's reads and the relay's timers included, far fewer commands than chunks.
    assert calls.get("evalsha", 0) <= 10 * seconds + 5, (calls, seconds)
    assert sum(calls.values()) < chunks / 4, (calls, seconds)


def test_without_redis_events_carry_ids_too(sink: RunningServer) -> None:
    relay = start_relay(upstream=sink.url)
    try:
        assert upload(relay, "plain-1", b"p" * 5000).status_code == 200
        events = list(sse(f"{relay.url}/_relay/uploads/plain-1/events"))
        assert [event["event"] for event in events][-1] == "completed"
        ids = [int(event["id"]) for event in events]  # a counter of the relay process
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        health = httpx.get(f"{relay.url}/_relay/health", timeout=10).json()
        assert health["status"] == "ok" and "shared_state" not in health
    finally:
        relay.stop()
