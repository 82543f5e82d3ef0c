"""Webhooks through a real relay: signed as Standard Webhooks (checked with the standardwebhooks package, not
our own code), retried from a durable outbox, never on the upload's path.

The receiver is a small HTTP server on 127.0.0.1 in a thread of the test. RELAY_WEBHOOK_BACKOFF shortens the
retry schedule so the retries happen in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.testing import RunningServer, start_relay, start_sink
from tests.webhook_receiver import FAST, RAW_SECRET, SECRET, Receiver, wait_for


def deliveries(relay: RunningServer) -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = httpx.get(f"{relay.url}/_relay/webhooks", timeout=5).json()["webhooks"]
    return answer


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_sink(None)
    yield server
    server.stop()


def relay_with(
    sink: RunningServer, spool: Path, *urls: str, env: dict[str, str] | None = None, **flags: str
) -> RunningServer:
    """A relay sending webhooks to `urls`; the values of `flags` are extra command-line arguments."""
    hooks = [arg for url in urls for arg in ("--webhook", url)]
    return start_relay(
        *hooks, "--webhook-secret", SECRET, "--spool", str(spool), *flags.values(), upstream=sink.url, env=env
    )


def test_signed_deliveries_of_both_events(
    sink: RunningServer, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    both = receivers().start()
    failures = receivers(secret=RAW_SECRET.encode()).start()
    config = tmp_path / "relay.toml"
    config.write_text(f'[[webhooks]]\nurl = "{failures.url}"\nevents = ["upload.failed"]\nsecret = "{RAW_SECRET}"\n')
    relay = start_relay(
        "--webhook", both.url, "--webhook-secret", SECRET, "--spool", str(tmp_path / "spool"),
        "--config", str(config), upstream=sink.url,
    )  # fmt: skip
    try:
        ok = httpx.post(f"{relay.url}/upload/a.bin", content=b"x" * 1000, timeout=10)
        bad = httpx.post(
            f"{relay.url}/upload/b.bin", content=b"y" * 1000, headers={"content-digest": "sha-256=:" + "A" * 43 + "=:"}
        )
        assert (ok.status_code, bad.status_code) == (200, 400)
        wait_for(lambda: len(both.delivered()) == 2 and len(failures.delivered()) == 1, what="3 deliveries")
        records = {
            upload_id: httpx.get(f"{relay.url}/_relay/uploads/{upload_id}").json()
            for upload_id in (ok.headers["x-upload-id"], bad.headers["x-upload-id"])
        }
        listing = wait_for(
            lambda: [d for d in deliveries(relay) if d["state"] == "delivered"][2:] and deliveries(relay)
        )
        metrics = httpx.get(f"{relay.url}/_relay/metrics").text
    finally:
        relay.stop()
    for item in both.delivered() + failures.delivered():
        assert item.error is None, item.error  # standardwebhooks verified it
        assert item.headers["webhook-id"].startswith("msg_")
        assert item.headers["content-type"] == "application/json"
        assert abs(int(item.headers["webhook-timestamp"]) - time.time()) < 60
    by_type = {item.payload["type"]: item.payload for item in both.delivered()}
    assert set(by_type) == {"upload.completed", "upload.failed"}
    completed, failed = by_type["upload.completed"], by_type["upload.failed"]
    assert completed["data"] == records[ok.headers["x-upload-id"]]
    assert failed["data"] == records[bad.headers["x-upload-id"]]
    assert failed["data"]["error"]["code"] == "digest_mismatch"
    assert completed["timestamp"].endswith("Z") and completed["timestamp"][:4].isdigit()
    assert [item.payload["type"] for item in failures.delivered()] == ["upload.failed"]
    assert {(d["type"], d["url"], d["state"], d["attempts"], d["last_status"]) for d in listing} == {
        ("upload.completed", both.url, "delivered", 1, 200),
        ("upload.failed", both.url, "delivered", 1, 200),
        ("upload.failed", failures.url, "delivered", 1, 200),
    }
    assert set(listing[0]) >= {"id", "type", "upload_id", "url", "attempts", "state", "last_status", "last_error"}
    assert 'relay_webhook_deliveries_total{outcome="delivered"} 3.0' in metrics
    assert "relay_webhook_queue_depth 0.0" in metrics
    assert "relay_webhook_oldest_pending_seconds 0.0" in metrics


def test_down_then_500_then_200_is_delivered_exactly_once(
    sink: RunningServer, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(script=[500])  # not started yet: the first attempt finds nobody listening
    relay = relay_with(sink, tmp_path / "spool", receiver.url, env=FAST)
    try:
        ok = httpx.post(f"{relay.url}/upload/r.bin", content=b"r" * 100, timeout=10)
        assert ok.status_code == 200
        first = wait_for(lambda: [d for d in deliveries(relay) if d["attempts"] >= 1], what="a failed attempt")
        assert first[0]["state"] == "pending" and first[0]["last_status"] is None and first[0]["last_error"]
        receiver.start()
        wait_for(lambda: receiver.delivered(), what="the delivery")
        time.sleep(1.0)  # long enough for two more retries, were any still scheduled
        (listed,) = deliveries(relay)
        metrics = httpx.get(f"{relay.url}/_relay/metrics").text
    finally:
        relay.stop()
    assert [item.status for item in receiver.requests] == [500, 200]
    assert len({item.headers["webhook-id"] for item in receiver.requests}) == 1  # the same message, retried
    assert all(item.error is None for item in receiver.requests)
    assert (listed["state"], listed["last_status"], listed["last_error"]) == ("delivered", 200, None)
    # One or more attempts found nobody listening (0.3 s apart), then the 500, then the 200.
    assert listed["attempts"] >= 3
    assert f'relay_webhook_deliveries_total{{outcome="retried"}} {listed["attempts"] - 1}.0' in metrics
    assert 'relay_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics


def test_gives_up_after_the_schedule(sink: RunningServer, tmp_path: Path, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers(script=[503] * 10).start()
    relay = relay_with(sink, tmp_path / "spool", receiver.url, env={"RELAY_WEBHOOK_BACKOFF": "0.1,0.1"})
    try:
        httpx.post(f"{relay.url}/upload/g.bin", content=b"g", timeout=10)
        (listed,) = wait_for(lambda: [d for d in deliveries(relay) if d["state"] == "failed"], what="giving up")
    finally:
        relay.stop()
    assert (listed["attempts"], listed["last_status"], listed["last_error"]) == (3, 503, "HTTP 503")
    assert len(receiver.requests) == 3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_pending_deliveries_survive_a_restart(
    sink: RunningServer, tmp_path: Path, receivers: Callable[..., Receiver], sig: int
) -> None:
    receiver = receivers()
    spool = tmp_path / "spool"
    # The next attempt 2 s after a failed one: the relay is stopped in between, the receiver comes up, and the
    # restarted relay finds the deliveries in the outbox and makes that attempt.
    backoff = {"RELAY_WEBHOOK_BACKOFF": "2,2,2,2,2,2"}
    relay = relay_with(sink, spool, receiver.url, env=backoff)
    try:
        ids = [httpx.post(f"{relay.url}/upload/p{n}", content=b"p", timeout=10).headers["x-upload-id"] for n in "12"]
        wait_for(lambda: len([d for d in deliveries(relay) if d["attempts"] >= 1]) == 2, what="two failed attempts")
    finally:
        relay.stop(sig)
    assert len(list((spool / "webhooks").glob("msg_*.json"))) == 2
    receiver.start()
    relay = relay_with(sink, spool, receiver.url, env=backoff)
    try:
        wait_for(lambda: len(receiver.delivered()) == 2, what="the pending deliveries after the restart")
        listing = wait_for(lambda: all(d["state"] == "delivered" for d in deliveries(relay)) and deliveries(relay))
    finally:
        relay.stop()
    assert sorted(item.payload["data"]["id"] for item in receiver.delivered()) == sorted(ids)
    assert all(item.payload["type"] == "upload.completed" for item in receiver.delivered())
    assert {d["attempts"] for d in listing} <= {2, 3}
    assert len(receiver.requests) == 2  # each delivered once


def test_a_slow_receiver_never_slows_uploads(
    sink: RunningServer, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers(sleep=5.0).start()
    relay = relay_with(sink, tmp_path / "spool", receiver.url)
    try:
        started = time.monotonic()
        with httpx.Client(timeout=10) as client:
            answers = [client.post(f"{relay.url}/upload/s{n}", content=b"s" * 10_000) for n in range(20)]
        took = time.monotonic() - started
        listed = wait_for(lambda: len(deliveries(relay)) == 20 and deliveries(relay), what="20 outbox entries")
    finally:
        relay.stop()
    assert [answer.status_code for answer in answers] == [200] * 20
    # 20 uploads while the receiver holds every webhook for 5 s: any wait on a webhook would show here.
    assert took < 3.0, f"20 small uploads took {took:.2f} s with a receiver that sleeps 5 s"
    assert {d["state"] for d in listed} == {"pending"}  # the receiver was still asleep on them


def test_webhook_flags_are_checked_at_start_up(tmp_path: Path) -> None:
    for args, message in [
        (["--webhook", "http://127.0.0.1:1/h"], "needs --webhook-secret"),
        (["--webhook", "ftp://127.0.0.1/h", "--webhook-secret", "s"], "http:// or https://"),
        (["--webhook", "http://127.0.0.1:1/h", "--webhook-secret", "whsec_!!!"], "base64"),
    ]:
        with pytest.raises(RuntimeError, match=message):
            start_relay(*args, "--spool", str(tmp_path / "spool"), upstream="http://127.0.0.1:1")


def test_listing_needs_the_admin_token(sink: RunningServer, tmp_path: Path, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers().start()
    relay = relay_with(sink, tmp_path / "spool", receiver.url, admin=("--admin-token=adm"))
    try:
        refused = httpx.get(f"{relay.url}/_relay/webhooks")
        allowed = httpx.get(f"{relay.url}/_relay/webhooks", headers={"authorization": "Bearer adm"})
    finally:
        relay.stop()
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert allowed.status_code == 200 and allowed.json() == {"webhooks": []}
    assert json.dumps(allowed.json())


def test_signer_agrees_with_standardwebhooks() -> None:
    from relay.webhooks import backoff_schedule
    from relay.webhooks.signer import parse_secret, signed_headers

    body = b'{"type":"upload.completed"}'
    now = int(time.time())
    for secret, verifier in [(SECRET, Webhook(SECRET)), (RAW_SECRET, Webhook(RAW_SECRET.encode()))]:
        headers = signed_headers(parse_secret(secret), "msg_" + "0" * 32, now, body)
        assert verifier.verify(body, headers) == {"type": "upload.completed"}
        with pytest.raises(WebhookVerificationError):
            verifier.verify(body + b" ", headers)
    assert backoff_schedule({}) == (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
    assert backoff_schedule({"RELAY_WEBHOOK_BACKOFF": "0.5, 1,2"}) == (0.5, 1.0, 2.0)
    for bad in ("soon", "1,nan", "inf", "-1"):  # nan passed the negative check: retries at once, then given up
        with pytest.raises(ValueError, match="RELAY_WEBHOOK_BACKOFF"):
            backoff_schedule({"RELAY_WEBHOOK_BACKOFF": bad})


def test_refused_uploads_send_upload_failed_but_not_without_the_token(
    sink: RunningServer, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    """A refused upload also ends with `failed` (the contract), so it sends `upload.failed` with its `rejected`
    record; one refused for want of the route's token sends nothing (only clients that may upload make the relay
    post)."""
    receiver = receivers().start()
    relay = relay_with(sink, tmp_path / "spool", receiver.url, limit="--max-body-size=100", token="--token=tok")
    try:
        auth = {"authorization": "Bearer tok"}
        too_big = httpx.post(f"{relay.url}/upload/big", content=b"x" * 500, headers=auth, timeout=10)
        assert too_big.status_code == 413
        anonymous = httpx.post(f"{relay.url}/upload/anon", content=b"x" * 5, timeout=10)
        assert anonymous.status_code == 401
        fine = httpx.post(f"{relay.url}/upload/fine", content=b"x" * 5, headers=auth, timeout=10)
        assert fine.status_code == 200
        wait_for(lambda: len(receiver.delivered()) >= 2, what="two deliveries")
        time.sleep(1.0)  # the anonymous one would be queued by now
    finally:
        relay.stop()
    got = {item.payload["data"]["id"]: item.payload for item in receiver.delivered()}
    assert set(got) == {too_big.headers["x-upload-id"], fine.headers["x-upload-id"]}, got
    refused = got[too_big.headers["x-upload-id"]]
    assert refused["type"] == "upload.failed" and refused["data"]["state"] == "rejected"
    assert refused["data"]["error"]["code"] == "body_too_large"
    assert all(item.error is None for item in receiver.requests)  # every one verified by standardwebhooks


def test_a_reused_upload_id_sends_one_webhook_per_run(
    sink: RunningServer, tmp_path: Path, receivers: Callable[..., Receiver]
) -> None:
    """An X-Upload-ID used again right after its upload ended (the contract allows it) is a new run: each run's
    ending sends its own webhook, with that run's record. Back-to-back on one connection, the second run starts
    before the deliverer has read the first one's ending, so the body must come from the record as it was at
    that ending, not from what the registry holds by the time the deliverer gets to it."""
    receiver = receivers().start()
    relay = relay_with(sink, tmp_path / "spool", receiver.url)
    pairs = 40
    try:
        with httpx.Client(timeout=10) as client:
            statuses = [
                client.post(
                    f"{relay.url}/upload/dup", content=b"x" * 1000, headers={"x-upload-id": f"dup{n}"}
                ).status_code
                for n in range(pairs)
                for _ in range(2)
            ]
        assert statuses == [200] * (2 * pairs)
        # Every run's ending is in the outbox once the last one is: they are queued in order.
        wait_for(lambda: len(receiver.delivered()) >= 2 * pairs, timeout=30, what=f"{2 * pairs} webhooks")
        time.sleep(0.5)  # room for a duplicate, were one to be sent
        listing = deliveries(relay)
    finally:
        relay.stop()
    payloads = [item.payload for item in receiver.delivered()]
    assert len(payloads) == 2 * pairs and len(listing) == 2 * pairs
    assert len({item.headers["webhook-id"] for item in receiver.delivered()}) == 2 * pairs
    assert {(p["type"], p["data"]["state"], p["data"]["bytes"]) for p in payloads} == {
        ("upload.completed", "completed", 1000)
    }
    runs: dict[str, set[float]] = {}
    for payload in payloads:
        runs.setdefault(payload["data"]["id"], set()).add(payload["data"]["started_at"])
    assert runs == {f"dup{n}": runs[f"dup{n}"] for n in range(pairs)}
    assert all(len(started) == 2 for started in runs.values()), runs  # each run's own record


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (["--spool", "s3://bucket/spool", "--s3-endpoint", "http://127.0.0.1:1"], {}, "use --redis or a directory"),
        ([], {"RELAY_WEBHOOK_BACKOFF": "abc"}, "RELAY_WEBHOOK_BACKOFF must be comma-separated seconds"),
        ([], {"RELAY_WEBHOOK_BACKOFF": "1,-2"}, "RELAY_WEBHOOK_BACKOFF must hold finite, non-negative delays"),
    ],
    ids=["s3-spool-without-redis", "backoff-not-numbers", "backoff-negative"],
)
def test_webhooks_that_could_not_start_are_a_usage_error(
    tmp_path: Path, flags: list[str], env: dict[str, str], message: str
) -> None:
    """Checked before the server starts: one line and exit 2 (the contract's configuration error), not uvicorn's
    failed start-up (exit 3 and a traceback)."""
    args = ["--port", "0", "--upstream", "http://127.0.0.1:1", "--webhook", "http://127.0.0.1:1/h"]
    args += ["--webhook-secret", "s", "--spool", str(tmp_path / "spool"), *flags]
    done = subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("relay-server: error: "), done.stderr
    assert message in done.stderr
    assert done.stdout == ""
