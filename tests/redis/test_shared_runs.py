"""One upload, several relays writing its record: what the shared registry keeps, against a real redis-server.

A resumable upload is written by every relay that takes one of its requests, each from its own write queue
(relay/state/writer.py), so another relay's older view can reach Redis after the upload has ended: it must
neither bring the finished record back to `receiving` nor add events after the terminal one. A resumable upload
is not a relay's upload in flight: its relay stopping never ends it `relay_lost` (only expiry or termination
end it). A plain upload refused under the id of an incomplete resumable upload never replaces its record.
The in-process tests play the relays with `RedisState`s (test_state.py); the last ones run real relays.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from relay.core.events import Completed, Interrupted, Part, ResumableNote, Resumed, Started
from relay.errors import UploadIdInUse
from relay.state import heartbeats
from relay.state.redis import RedisState
from relay.testing import RunningServer
from tests.interop.support import tus_create, tus_patch
from tests.redis.conftest import RedisServer, Relays
from tests.redis.test_state import emit, make_state, until
from tests.webhook_receiver import wait_for

LENGTH = 2_000_000
CREATED = 1_700_000_000.25  # the upload's created_at: every relay's record of it starts there


def note(upload_id: str, offset: int, state: str = "receiving") -> ResumableNote:
    return ResumableNote(
        upload_id, offset, LENGTH, time.time(), state, CREATED + 86400, "/upload/", "/upload/r.bin", CREATED
    )


def created(state: RedisState, upload_id: str) -> None:
    """What the relay that creates a resumable upload tells its registry."""
    emit(state, Started(upload_id, 0, LENGTH, CREATED, "/upload/", "POST", "/upload/r.bin", "127.0.0.1"))
    state.registry.apply(note(upload_id, 0))


def appended(state: RedisState, upload_id: str, start: int, end: int) -> None:
    """An append from `start` to `end` that left the upload incomplete, as a relay's registry and bus see it."""
    state.registry.apply(note(upload_id, start))
    emit(state, Resumed(upload_id, start, LENGTH, time.time(), start))
    state.registry.apply(note(upload_id, end))
    emit(state, Interrupted(upload_id, end, LENGTH, time.time(), end))


def completed(state: RedisState, upload_id: str, start: int) -> None:
    """The append that completes the upload, and its delivery."""
    state.registry.apply(note(upload_id, start))
    emit(state, Resumed(upload_id, start, LENGTH, time.time(), start))
    state.registry.apply(note(upload_id, LENGTH, "forwarding"))
    emit(state, Part(upload_id, LENGTH, LENGTH, time.time(), 0, "file", "r.bin", None, LENGTH, "ab" * 32))
    emit(state, Completed(upload_id, LENGTH, LENGTH, time.time(), 200))


async def stored(state: RedisState, upload_id: str) -> dict[str, Any] | None:
    text = await state.client.hget(state.keys.upload(upload_id), "json")
    return None if text is None else dict(json.loads(text))


async def stream_names(state: RedisState, upload_id: str) -> list[str]:
    entries = await state.client.xrange(state.keys.stream(upload_id))
    return [fields[b"e"].decode() for _, fields in entries]


def run_pair(server: RedisServer, body: Callable[[RedisState, RedisState], Awaitable[None]]) -> None:
    """Relay A runs its jobs; relay B's writes reach Redis only when the test flushes them (`flush_once`)."""

    async def main() -> None:
        a, b = make_state(server), make_state(server)
        await a.start()
        try:
            await body(a, b)
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_another_relays_older_view_never_reopens_a_finished_upload(redis_server: RedisServer) -> None:
    """The reviewer's sequence: created on A, first half appended on B, the rest (completing) on A; B's write
    queue reaches Redis last. The record stays completed, out of `active`, and `completed` ends its stream."""

    async def body(a: RedisState, b: RedisState) -> None:
        created(a, "r1")
        await until(lambda: _exists(a, "r1"))
        appended(b, "r1", 0, LENGTH // 2)  # queued on B, not written yet (B's timer has not fired)
        completed(a, "r1", LENGTH // 2)

        async def finished() -> bool:
            return (await stored(a, "r1") or {}).get("state") == "completed"

        await until(finished)
        assert await b.flusher.flush_once()  # B's older view arrives now
        record = await stored(a, "r1")
        assert record is not None and record["state"] == "completed" and record["bytes"] == LENGTH
        assert await a.client.hget(a.keys.active, "r1") is None
        names = await stream_names(a, "r1")
        assert names[-1] == "completed" and names.count("completed") == 1, names
        found = await b.lookup("r1")
        assert found is not None and found.state == "completed"

    run_pair(redis_server, body)


def test_an_older_view_written_first_is_simply_superseded(redis_server: RedisServer) -> None:
    """The same writes in the order they happened: B's append lands before A's completion, and nothing is lost."""

    async def body(a: RedisState, b: RedisState) -> None:
        created(a, "r2")
        await until(lambda: _exists(a, "r2"))
        appended(b, "r2", 0, LENGTH // 2)
        assert await b.flusher.flush_once()
        completed(a, "r2", LENGTH // 2)

        async def finished() -> bool:
            return (await stored(a, "r2") or {}).get("state") == "completed"

        await until(finished)
        assert await stream_names(a, "r2") == ["started", "resumed", "interrupted", "resumed", "part", "completed"]

    run_pair(redis_server, body)


def test_a_resumable_upload_is_not_ended_relay_lost_when_its_relay_goes(
    redis_server: RedisServer, monkeypatch: Any
) -> None:
    """Contract: a resumable upload fails only when it expires or is terminated. Its last writer stopping (a
    restart, or kill -9) leaves it `receiving`: another relay goes on with it from the shared state."""
    monkeypatch.setattr(heartbeats, "CONFIRM", 0.0)

    async def body(a: RedisState, b: RedisState) -> None:
        created(b, "r3")
        appended(b, "r3", 0, LENGTH // 2)
        emit(b, Started("p3", 0, 100, time.time(), "/upload/", "POST", "/upload/p.bin", "127.0.0.1"))
        assert await b.flusher.flush_once()
        assert await b.client.hget(b.keys.active, "r3") is None  # only uploads in flight are there
        assert await b.client.hget(b.keys.active, "p3") is not None
        await b.client.delete(b.keys.heartbeat(b.relay_id))  # B is gone (its heartbeat key expired)
        assert await a.sweeper.sweep_once() == 1  # the plain upload in flight on B, not the resumable one
        record = await stored(a, "r3")
        assert record is not None and record["state"] == "receiving" and record["bytes"] == LENGTH // 2
        assert "failed" not in await stream_names(a, "r3")
        lost = await stored(a, "p3")
        assert lost is not None and lost["error"]["code"] == "relay_lost"

    run_pair(redis_server, body)


def test_a_resumable_record_left_in_active_by_an_older_relay_is_not_ended(
    redis_server: RedisServer, monkeypatch: Any
) -> None:
    """Relays of an earlier version put resumable records in `active`: the sweeper leaves them alone too."""
    monkeypatch.setattr(heartbeats, "CONFIRM", 0.0)

    async def body(a: RedisState, b: RedisState) -> None:
        created(b, "r4")
        assert await b.flusher.flush_once()
        await b.client.hset(b.keys.active, "r4", b.relay_id)  # what an older relay wrote
        await b.client.delete(b.keys.heartbeat(b.relay_id))  # and that relay is gone
        assert await a.sweeper.sweep_once() == 0
        record = await stored(a, "r4")
        assert record is not None and record["state"] == "receiving"
        assert await a.client.hget(a.keys.active, "r4") is None

    run_pair(redis_server, body)


def test_take_refuses_the_id_of_an_incomplete_resumable_upload(redis_server: RedisServer) -> None:
    """`rs:<id>` is the resumable upload's shared state (relay/resumable/shared.py): while it is there and not
    finished, the id is in use for plain uploads too, on every relay; once finished, the id may be reused."""

    async def body(a: RedisState, b: RedisState) -> None:
        doc = a.keys.prefix + "rs:r5"
        await a.client.hset(doc, mapping={"doc": json.dumps({"v": 1, "id": "r5", "state": "receiving"})})
        with pytest.raises(UploadIdInUse, match="upload r5 is in progress"):
            await b.take_slots("r5", "10.0.0.1")
        await a.client.hset(doc, "doc", json.dumps({"v": 1, "id": "r5", "state": "forwarding"}))
        with pytest.raises(UploadIdInUse):
            await b.take_slots("r5", "10.0.0.1")
        await a.client.hset(doc, "doc", json.dumps({"v": 1, "id": "r5", "state": "completed"}))
        b.give_back(await b.take_slots("r5", "10.0.0.1"))

    run_pair(redis_server, body)


async def _exists(state: RedisState, upload_id: str) -> bool:
    return bool(await state.client.exists(state.keys.upload(upload_id)))


# -- real relays ----------------------------------------------------------------------------------------------

BODY = bytes(range(256)) * 400  # 100 kB


def redis_record(server: RedisServer, upload_id: str) -> dict[str, Any]:
    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        text = client.hget(f"t:upload:{upload_id}", "json")
        names = [fields[b"e"].decode() for _, fields in client.xrange(f"t:events:{upload_id}")]
    finally:
        client.close()
    assert isinstance(text, bytes)
    return {**json.loads(text), "events": names}


def resumable_half_done(relay: RunningServer, upload_id: str) -> str:
    """A tus upload of 2 * len(BODY) created on `relay` under `upload_id`, its first half appended; its path."""
    with httpx.Client(base_url=relay.url, timeout=30) as client:
        made = tus_create(client, "/upload/r.bin", 2 * len(BODY), headers={"X-Upload-ID": upload_id})
        assert made.status_code == 201, made.text
        path = made.headers["location"].removeprefix(relay.url)
        assert tus_patch(client, path, 0, BODY).status_code == 204
    return path


class Held:
    """A plain upload whose body is only half sent: it holds a slot until `close()`."""

    def __init__(self, relay: RunningServer, upload_id: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", relay.port), timeout=30)
        head = (
            f"POST /upload/held.bin HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(BODY)}\r\n"
            f"x-upload-id: {upload_id}\r\ncontent-type: application/octet-stream\r\n\r\n"
        )
        self.sock.sendall(head.encode() + BODY[:1000])

    def close(self) -> None:
        self.sock.close()


def plain(relay: RunningServer, upload_id: str) -> httpx.Response:
    return httpx.post(f"{relay.url}/upload/plain.bin", content=BODY, headers={"x-upload-id": upload_id}, timeout=10)


def state_on(relay: RunningServer, upload_id: str) -> str | None:
    answer = httpx.get(f"{relay.url}/_relay/uploads/{upload_id}", timeout=5)
    return str(answer.json()["state"]) if answer.status_code == 200 else None


def test_a_plain_upload_under_an_incomplete_resumable_uploads_id_is_refused_on_every_relay(
    relays: Relays, tmp_path: Path
) -> None:
    a = relays.start("--spool", str(tmp_path / "spool-a"))
    b = relays.start("--spool", str(tmp_path / "spool-b"))
    resumable_half_done(a, "rs-id")
    assert plain(a, "rs-id").status_code == 409  # on the relay that created it (its registry knows it)
    refused = plain(b, "rs-id")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "upload_id_in_use"
    time.sleep(0.3)  # anything B queued would be written by now (100 ms flushes)
    record = redis_record(relays.redis, "rs-id")
    assert record["resumable"] and record["state"] == "receiving" and record["bytes"] == len(BODY)
    assert record["events"][-1] == "interrupted", record["events"]
    assert state_on(a, "rs-id") == "receiving"


def test_a_refusal_under_an_incomplete_resumable_uploads_id_never_replaces_its_record(
    relays: Relays, tmp_path: Path
) -> None:
    """The caps refuse first (429), before the id is looked at across relays: the refusal is answered, but it
    must not replace the resumable upload's record, nor end its event stream. Both ways: the cap counted
    across relays (the id check comes first there: 409), and the relay's own count (429, nothing written)."""
    a = relays.start("--spool", str(tmp_path / "spool-a"), "--max-concurrent-uploads", "1")
    b = relays.start("--spool", str(tmp_path / "spool-b"), "--max-concurrent-uploads", "1")
    resumable_half_done(a, "rs-cap")
    held = Held(a, "holder")  # the one slot, across relays
    try:
        wait_for(lambda: state_on(b, "holder") == "receiving", what="the held upload, seen from b")
        assert plain(b, "rs-cap").status_code == 409
    finally:
        held.close()
    wait_for(lambda: state_on(b, "holder") == "failed", what="the held upload ended")
    held = Held(b, "holder-b")  # B's own slot: B refuses from its own count, before any Redis call
    try:
        wait_for(lambda: state_on(b, "holder-b") == "receiving", what="the held upload on b")
        assert plain(b, "rs-cap").status_code == 429
        time.sleep(0.3)  # B's refusal record, had it been written, would be there by now
        record = redis_record(relays.redis, "rs-cap")
        assert record["resumable"] and record["state"] == "receiving", record
        assert "failed" not in record["events"], record["events"]
        assert state_on(a, "rs-cap") == "receiving"
    finally:
        held.close()


def test_an_idle_resumable_uploads_record_lives_as_long_as_the_upload(redis_server: RedisServer) -> None:
    """An unfinished resumable record is kept until its expires_at (24 h by default), not the hour a plain
    upload's unfinished record gets: idle between appends, it used to vanish from every relay's registry."""

    async def body(a: RedisState, b: RedisState) -> None:
        now = time.time()
        a.registry.apply(ResumableNote("r9", 0, LENGTH, now, "receiving", now + 86400, "/upload/", "/upload/r", now))
        await until(lambda: _exists(a, "r9"))
        ttl = await a.client.ttl(a.keys.upload("r9"))
        assert 86400 - 120 < ttl <= 86400 + 60, ttl

    run_pair(redis_server, body)


def test_a_finished_record_is_fenced_against_a_run_written_the_old_way(redis_server: RedisServer) -> None:
    """Relays before the run fix wrote gen as '<relay id>:<start time>': the run is the part after the last ':',
    so an unfinished view of the same run never reopens a finished record stored that way."""

    async def body(a: RedisState, b: RedisState) -> None:
        created(a, "r8")
        completed(a, "r8", 0)

        async def finished() -> bool:
            return (await stored(a, "r8") or {}).get("state") == "completed"

        await until(finished)
        key = a.keys.upload("r8")
        gen = (await a.client.hget(key, "gen")).decode()
        await a.client.hset(key, "gen", f"oldrelay:{gen}")  # as a relay of the previous version stored it
        appended(b, "r8", 0, LENGTH // 2)
        assert await b.flusher.flush_once()
        record = await stored(a, "r8")
        assert record is not None and record["state"] == "completed"

    run_pair(redis_server, body)
