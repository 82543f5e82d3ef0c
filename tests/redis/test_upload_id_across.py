"""`409 upload_id_in_use` across relays: a client-chosen X-Upload-ID in progress on relay A is refused on B.

The claim is a lease on `<p>id:<upload id>` taken in the same single await as the caps (relay/state/leases.py),
so these tests run without any cap set: the id alone must be claimed. The slow upload is a raw socket that
sends its head and part of its body, then waits, so the test decides when it ends.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import time
from typing import Any

import httpx
import pytest

from relay.errors import UploadIdInUse
from relay.state.redis import RedisState
from relay.testing import RunningServer
from tests.redis.conftest import RedisServer, Relays
from tests.redis.test_state import run, until
from tests.webhook_receiver import wait_for

BODY = b"".join(bytes([n]) * 1000 for n in range(100))  # 100 kB, every byte position distinct enough


class SlowUpload:
    """A POST of BODY with X-Upload-ID `upload_id` whose first half is sent at once, the rest on `finish()`."""

    def __init__(self, relay: RunningServer, upload_id: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", relay.port), timeout=30)
        head = (
            f"POST /upload/slow.bin HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(BODY)}\r\n"
            f"x-upload-id: {upload_id}\r\ncontent-type: application/octet-stream\r\n\r\n"
        )
        self.sock.sendall(head.encode() + BODY[: len(BODY) // 2])

    def finish(self) -> int:
        self.sock.sendall(BODY[len(BODY) // 2 :])
        answer = b""
        while b"\r\n\r\n" not in answer:
            more = self.sock.recv(65536)
            assert more, f"the relay closed the connection: {answer!r}"
            answer += more
        self.sock.close()
        return int(answer.split(b" ", 2)[1])


def post(relay: RunningServer, upload_id: str) -> httpx.Response:
    return httpx.post(f"{relay.url}/upload/again.bin", content=BODY, headers={"x-upload-id": upload_id}, timeout=10)


def state_of(relay: RunningServer, upload_id: str) -> str | None:
    answer = httpx.get(f"{relay.url}/_relay/uploads/{upload_id}", timeout=5)
    return str(answer.json()["state"]) if answer.status_code == 200 else None


def test_an_id_in_progress_on_a_is_refused_on_b(relays: Relays) -> None:
    a, b = relays.start_many(2)
    slow = SlowUpload(a, "shared-id")
    wait_for(lambda: state_of(b, "shared-id") == "receiving", what="the upload in progress, seen from b")
    refused = post(b, "shared-id")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "upload_id_in_use"
    assert refused.headers["x-upload-id"] == "shared-id"
    assert state_of(b, "shared-id") == "receiving"  # the refusal wrote nothing over a's upload
    assert slow.finish() == 200
    wait_for(lambda: state_of(b, "shared-id") == "completed", what="a's upload completed, seen from b")
    first = httpx.get(f"{b.url}/_relay/uploads/shared-id", timeout=5).json()
    assert first["parts"][0]["sha256"] == hashlib.sha256(BODY).hexdigest()  # a's bytes, whole
    # Once a's upload ended, its lease is given back (written within ~100 ms): b takes the id.
    again = wait_for(lambda: (answer := post(b, "shared-id")).status_code != 409 and answer, what="b accepts it")
    assert again.status_code == 200, again.text
    record = httpx.get(f"{b.url}/_relay/uploads/shared-id", timeout=5).json()
    assert record["state"] == "completed" and record["parts"][0]["sha256"] == hashlib.sha256(BODY).hexdigest()
    # The same relay may reuse an id as soon as its upload ended (its own release is not waited for).
    assert post(b, "shared-id").status_code == 200
    assert post(b, "shared-id").status_code == 200


def test_an_id_held_by_a_killed_relay_comes_back(relays: Relays) -> None:
    a, b = relays.start_many(2)
    held = SlowUpload(a, "orphan")  # kept open (a socket collected would end the upload)
    wait_for(lambda: state_of(b, "orphan") == "receiving", what="the upload in progress, seen from b")
    a.stop(signal.SIGKILL)
    assert post(b, "orphan").status_code == 409  # a's lease has not run out yet
    started = time.monotonic()
    again = wait_for(lambda: (answer := post(b, "orphan")).status_code != 409 and answer, timeout=60)
    assert again.status_code == 200
    assert time.monotonic() - started < 30  # the lease (25 s) runs out: the id is not lost forever
    held.sock.close()


def test_the_id_lease_in_process(redis_server: RedisServer) -> None:
    async def body(a: RedisState, b: RedisState) -> None:
        lease = await a.take_slots("x", "10.0.0.1")
        assert await b.id_in_use("x") and not await b.id_in_use("y")
        with pytest.raises(UploadIdInUse, match="upload x is in progress"):
            await b.take_slots("x", "10.0.0.2")
        # An id the relay drew itself is not claimed: no cap set, nothing to take, no round trip.
        assert await b.take_slots("x", "10.0.0.2", chosen=False) is None
        a.give_back(lease)
        # On the relay that gave it back, at once: TAKE drops its own release, not written yet.
        again = await a.take_slots("x", "10.0.0.1")
        a.give_back(again)

        async def free() -> bool:
            return not await b.id_in_use("x")

        await until(free)  # on another relay, once the release is written (the next flush)
        b.give_back(await b.take_slots("x", "10.0.0.2"))

    run(redis_server, body, max_concurrent=None, max_per_client=None)


def test_a_renewal_during_take_never_counts_the_take_against_itself(redis_server: RedisServer) -> None:
    """A renewal (at start-up, after an outage, every 10 s) that runs while a TAKE is on its way must not add that
    TAKE's own member to the sets first: the id would be refused by its own lease (CI met it under load)."""

    async def body(a: RedisState, b: RedisState) -> None:
        take = a.leases._take

        async def renewal_first(**kwargs: Any) -> Any:
            await a.leases.renew_once()  # what the renewal task did, at the worst moment
            return await take(**kwargs)

        a.leases._take = renewal_first  # type: ignore[method-assign]
        lease = await a.take_slots("x", "10.0.0.1")
        assert lease is not None
        a.give_back(lease)

    run(redis_server, body, max_concurrent=1, max_per_client=None)
