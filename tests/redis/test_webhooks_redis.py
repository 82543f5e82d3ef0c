"""Webhooks with several relays on one redis-server: one outbox in Redis, each delivery made once.

Every relay names the same `--webhook`; the receiver (tests/e2e/test_webhooks.py's, which verifies each
signature with the standardwebhooks package) counts what arrives. "Once" is checked after waiting long enough
for a duplicate: several retry intervals, and several of the outbox's polls on every relay.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from relay.testing import RunningServer, start_relay
from tests.redis.conftest import RedisServer, Relays
from tests.webhook_receiver import FAST, SECRET, Receiver, wait_for

SETTLE = 3.0  # seconds to wait for a duplicate that should not come: six polls of every relay's outbox


def hooked(relays: Relays, receiver: Receiver, env: dict[str, str] | None = None) -> RunningServer:
    """One more relay on the test's Redis sending webhooks to `receiver` (no --spool: the outbox is Redis)."""
    relay = start_relay(
        "--redis", relays.redis.url, "--redis-prefix", "t:", "--webhook", receiver.url, "--webhook-secret", SECRET,
        upstream=relays.upstream, env=env,
    )  # fmt: skip
    relays.started.append(relay)
    return relay


def deliveries(relay: RunningServer) -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = httpx.get(f"{relay.url}/_relay/webhooks", timeout=5).json()["webhooks"]
    return answer


def upload(relay: RunningServer, name: str, body: bytes = b"x" * 1000) -> str:
    answer = httpx.post(f"{relay.url}/upload/{name}", content=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.headers["x-upload-id"]


def test_three_relays_deliver_each_upload_once(relays: Relays, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers().start()
    a, b, c = (hooked(relays, receiver) for _ in range(3))
    ids = [upload(relay, f"f{n}.bin") for n, relay in enumerate([a, a, b, c])]
    wait_for(lambda: len(receiver.delivered()) >= 4, what="four deliveries")
    time.sleep(SETTLE)
    listed = wait_for(
        lambda: [d for d in deliveries(b) if d["state"] == "delivered"][3:] and deliveries(b), what="b's listing"
    )
    assert sorted(item.payload["data"]["id"] for item in receiver.delivered()) == sorted(ids)
    assert len(receiver.requests) == 4  # each upload once, across three relays following one Redis
    assert all(item.error is None for item in receiver.requests)  # standardwebhooks verified every one
    assert all(item.payload["type"] == "upload.completed" for item in receiver.requests)
    assert len({item.headers["webhook-id"] for item in receiver.requests}) == 4
    # Relay b lists what relays a and c delivered too.
    assert sorted(d["upload_id"] for d in listed) == sorted(ids)
    assert {(d["state"], d["attempts"], d["last_status"]) for d in listed} == {("delivered", 1, 200)}
    assert {d["id"] for d in listed} == {item.headers["webhook-id"] for item in receiver.requests}


def test_down_then_500_then_200_is_delivered_once(relays: Relays, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers(script=[500])  # not started: the first attempts find nobody listening
    a, b = hooked(relays, receiver, FAST), hooked(relays, receiver, FAST)
    upload_id = upload(a, "r.bin")
    wait_for(lambda: [d for d in deliveries(b) if d["attempts"] >= 2], what="failed attempts, seen from b")
    receiver.start()
    wait_for(receiver.delivered, what="the delivery")
    time.sleep(SETTLE)
    (listed,) = wait_for(lambda: [d for d in deliveries(b) if d["state"] == "delivered"], what="b's listing")
    assert [item.status for item in receiver.requests] == [500, 200]
    assert len({item.headers["webhook-id"] for item in receiver.requests}) == 1  # the same message, retried
    assert receiver.delivered()[0].payload["data"]["id"] == upload_id
    assert (listed["upload_id"], listed["last_status"], listed["last_error"]) == (upload_id, 200, None)
    assert listed["attempts"] >= 4  # two or more with nobody listening, the 500, the 200


def test_a_relay_killed_mid_attempt_leaves_it_to_another(relays: Relays, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers(sleep=120.0).start()  # holds relay a's attempt until a is gone
    a = hooked(relays, receiver, FAST)
    upload_id = upload(a, "k.bin")
    time.sleep(1.5)  # a claims the delivery at once and waits on the receiver
    assert not receiver.requests and [d["attempts"] for d in deliveries(a)] == [0]
    a.stop(signal.SIGKILL)
    receiver.sleep = 0.0
    b = hooked(relays, receiver, FAST)
    started = time.monotonic()
    # a's claim runs out (20 s after it was taken), then b takes the delivery.
    (item,) = wait_for(receiver.delivered, timeout=60, what="b's delivery")
    took = time.monotonic() - started
    time.sleep(SETTLE)
    (listed,) = deliveries(b)
    assert item.error is None and item.payload["data"]["id"] == upload_id
    assert len(receiver.requests) == 1  # a's attempt never finished; b's is the one delivery
    assert listed["state"] == "delivered" and listed["id"] == item.headers["webhook-id"]
    assert took < 30, f"b delivered {took:.1f} s after a was killed"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_pending_deliveries_outlive_every_relay(relays: Relays, receivers: Callable[..., Receiver], sig: int) -> None:
    receiver = receivers()
    # Retries every second for 40 s: a relay told to stop keeps delivering while it drains. Its stop once took the
    # fixture's full 10 s (a cancel lost in redis-py on Python 3.11: relay/cancel.py), and with six retries the
    # deliveries then ran out of attempts before the new relays came; the margin stays.
    backoff = {"RELAY_WEBHOOK_BACKOFF": ",".join(["1"] * 40)}
    first = [hooked(relays, receiver, backoff) for _ in range(2)]
    ids = [upload(relay, f"p{n}.bin") for n, relay in enumerate(first)]
    wait_for(lambda: len([d for d in deliveries(first[0]) if d["attempts"] >= 1]) == 2, what="failed attempts")
    for relay in first:
        relay.stop(sig)
    receiver.start()
    later = [hooked(relays, receiver, backoff) for _ in range(2)]
    wait_for(lambda: len(receiver.delivered()) == 2, timeout=60, what="the pending deliveries, by new relays")
    time.sleep(SETTLE)
    assert sorted(item.payload["data"]["id"] for item in receiver.requests) == sorted(ids)
    assert len(receiver.requests) == 2
    assert {d["state"] for d in deliveries(later[1])} == {"delivered"}


def test_an_upload_that_ends_while_redis_is_down_is_delivered_later(
    relays: Relays, redis_server: RedisServer, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers().start()
    a = hooked(relays, receiver, FAST)
    redis_server.stop()
    started = time.monotonic()
    upload_id = upload(a, "d.bin")  # relayed all the same
    took = time.monotonic() - started
    time.sleep(1.0)
    assert not receiver.requests
    redis_server.start()  # an empty Redis: the delivery waited in a's memory
    (item,) = wait_for(receiver.delivered, timeout=30, what="the delivery once Redis is back")
    time.sleep(SETTLE)
    assert item.payload["data"]["id"] == upload_id and len(receiver.requests) == 1
    assert took < 2.0, f"the upload took {took:.2f} s while Redis was down"
