"""Each relay's local view of an upload another relay served (or serves) with several relays on one Redis.

1. A relay that took an earlier append of a resumable upload keeps no stale `receiving` record once another relay
   completed it: its local view does not outlive the request it served (relay/uploads.py `release`), so the id
   is free for a plain upload on that relay too once the upload is delivered.
2. A plain upload refused by a relay's own cap (429, before any Redis call) under the X-Upload-ID of an upload in
   progress on another relay is answered, but the refusal replaces that upload's record nowhere: not in Redis
   (FLUSH fences it), not in the refusing relay's own view (relay/state/redis.py), and it sends no webhook.

Two relay-server processes on one real redis-server share one spool directory (a resumable upload's data is
read by whichever relay takes its next request).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from relay.testing import RunningServer
from relay.uploads import UploadRecord
from tests.interop.support import tus_create, tus_patch
from tests.redis.conftest import RedisServer, Relays
from tests.webhook_receiver import SECRET, Receiver, wait_for

HALF = 100_000
DATA = bytes(range(256)) * (2 * HALF // 256) + b"x" * (2 * HALF % 256)
SETTLE = 1.5  # seconds: many flushes (100 ms) of every relay, for a write that must not come


def record(relay: RunningServer, upload_id: str) -> dict[str, object] | None:
    answer = httpx.get(f"{relay.url}/_relay/uploads/{upload_id}", timeout=5)
    return answer.json() if answer.status_code == 200 else None  # type: ignore[no-any-return]


def state_of(relay: RunningServer, upload_id: str) -> object:
    found = record(relay, upload_id)
    return None if found is None else found["state"]


def listed(relay: RunningServer, upload_id: str) -> list[object]:
    uploads = httpx.get(f"{relay.url}/_relay/uploads", timeout=5).json()["uploads"]
    return [item["state"] for item in uploads if item["id"] == upload_id]


class SlowUpload:
    """A plain POST with X-Upload-ID `upload_id` whose body is half sent until `finish()`."""

    def __init__(self, relay: RunningServer, upload_id: str, size: int = 2 * HALF) -> None:
        self.size = size
        self.sock = socket.create_connection(("127.0.0.1", relay.port), timeout=30)
        head = (
            f"POST /upload/slow.bin HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {size}\r\n"
            f"x-upload-id: {upload_id}\r\ncontent-type: application/octet-stream\r\n\r\n"
        )
        self.sock.sendall(head.encode() + b"s" * (size // 2))

    def close(self) -> None:
        self.sock.close()

    def finish(self) -> int:
        self.sock.sendall(b"s" * (self.size - self.size // 2))
        answer = b""
        while b"\r\n\r\n" not in answer:
            more = self.sock.recv(65536)
            assert more, f"the relay closed the connection: {answer!r}"
            answer += more
        self.sock.close()
        return int(answer.split(b" ", 2)[1])


def test_a_relay_that_took_an_earlier_append_keeps_no_stale_record(relays: Relays, tmp_path: Path) -> None:
    spool = str(tmp_path / "spool")
    a, b = relays.start("--spool", spool), relays.start("--spool", spool)
    with httpx.Client(timeout=30) as client:
        created = tus_create(client, f"{a.url}/upload/multi/r.bin", len(DATA))
        assert created.status_code == 201, created.text
        upload_id, path = created.headers["x-upload-id"], created.headers["location"].removeprefix(a.url)
        assert tus_patch(client, f"{b.url}{path}", 0, DATA[:HALF]).status_code == 204
        assert state_of(b, upload_id) == "receiving"  # b serves nothing now, but its view is current
        assert tus_patch(client, f"{a.url}{path}", HALF, DATA[HALF:]).status_code == 204
    wait_for(lambda: state_of(b, upload_id) == "completed", what="the completion, seen from b")
    assert listed(b, upload_id) == ["completed"]
    # The id is free on b as on a once the upload was delivered: b keeps no `receiving` record of it.
    again = httpx.post(f"{b.url}/upload/plain.bin", content=b"p" * 1000, headers={"x-upload-id": upload_id}, timeout=10)
    assert again.status_code == 200, again.text
    assert state_of(b, upload_id) == "completed" and record(b, upload_id)["bytes"] == 1000  # type: ignore[index]


def test_a_refusal_by_a_relays_own_cap_never_replaces_an_upload_in_progress(
    relays: Relays, receivers: Callable[..., Receiver]
) -> None:
    receiver = receivers().start()
    hooks = ("--webhook", receiver.url, "--webhook-secret", SECRET)
    a = relays.start(*hooks)
    b = relays.start("--max-concurrent-uploads", "1", *hooks)
    in_progress = SlowUpload(a, "held")
    busy = SlowUpload(b, "busy")  # b's own cap of one is full
    try:
        wait_for(lambda: state_of(b, "held") == "receiving", what="a's upload, seen from b")
        wait_for(lambda: state_of(b, "busy") == "receiving", what="b's own upload")
        refused = httpx.post(f"{b.url}/upload/x.bin", content=b"p" * 1000, headers={"x-upload-id": "held"}, timeout=10)
        assert refused.status_code == 429, refused.text
        deadline = time.monotonic() + SETTLE
        while time.monotonic() < deadline:  # the refusal shows nowhere: on b (its own view), nor on a (Redis)
            assert state_of(b, "held") == "receiving" and listed(b, "held") == ["receiving"]
            assert state_of(a, "held") == "receiving"
            time.sleep(0.1)
        assert in_progress.finish() == 200 and busy.finish() == 200
        wait_for(lambda: state_of(b, "held") == "completed", what="a's upload completed, seen from b")
        assert state_of(a, "held") == "completed" and listed(b, "held") == ["completed"]
        wait_for(lambda: len(receiver.delivered()) >= 2, what="the two uploads' webhooks")
        time.sleep(SETTLE)
        sent = sorted((item.payload["type"], item.payload["data"]["id"]) for item in receiver.delivered())
        assert sent == [("upload.completed", "busy"), ("upload.completed", "held")]  # no upload.failed for "held"
        # A refusal under an id no upload holds is recorded as ever (the contract: `rejected`).
        third = SlowUpload(b, "busy2")
        wait_for(lambda: state_of(b, "busy2") == "receiving", what="b's cap full again")
        assert (
            httpx.post(f"{b.url}/upload/y.bin", content=b"q", headers={"x-upload-id": "free"}, timeout=10).status_code
            == 429
        )
        assert state_of(b, "free") == "rejected"
        wait_for(lambda: state_of(a, "free") == "rejected", what="the refusal, seen from a")
        assert third.finish() == 200
        wait_for(
            lambda: (
                ("upload.failed", "free")
                in [(i.payload["type"], i.payload["data"]["id"]) for i in receiver.delivered()]
            ),
            what="the refusal's webhook",
        )
    finally:
        in_progress.close()
        busy.close()


def test_a_relay_lost_ending_carries_its_own_run_not_an_earlier_one_of_the_id(redis_server: RedisServer) -> None:
    """A reviewer's repro: relay B completed run 1 of id job1; run 2 of job1 ran on relay A, which died; B's sweeper
    ended run 2 relay_lost, and its webhook carried B's record of run 1 (completed, 200): the local record won."""
    import asyncio

    from relay.core.events import ErrorInfo, Failed
    from tests.redis.test_state import make_state

    async def main() -> None:
        state = make_state(redis_server)
        first = UploadRecord(id="job1", route="/upload/", total=9, started_at=1000.0)
        first.state, first.bytes = "completed", 9
        state.registry.local._records["job1"] = first  # B's own record of run 1
        second = UploadRecord(id="job1", route="/upload/", total=50, started_at=2000.0)
        second.state = "failed"
        state._lost(Failed("job1", 10, 50, 2001.0, ErrorInfo("relay_lost", "gone")), second)
        assert state.record("job1") is second
        third = UploadRecord(id="job1", route="/upload/", total=1, started_at=3000.0)
        state.registry.local._records["job1"] = third  # run 3 of the id, on this relay: its own record again
        assert state.record("job1") is third

    asyncio.run(main())
