"""relay/state/redis.py in-process, against a real redis-server: two `RedisState`s play two relays.

What one relay writes (records, events) the other reads (`lookup`, `listing`, `follow` with and without
`Last-Event-ID`); caps are leases shared by both; a relay whose heartbeat is gone has its uploads ended
`relay_lost` by the other's sweeper; fencing keeps a lost relay from writing over that end; Redis trouble is
never an exception, only `problem()` and `relay_state_errors_total`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from relay.core.events import Completed, ErrorInfo, Event, Failed, Part, Progress, Started
from relay.errors import TooManyUploads
from relay.state import heartbeats
from relay.state.base import FeedEntry
from relay.state.redis import RedisState, ping
from tests.redis.conftest import RedisServer


def make_state(server: RedisServer, **caps: int | None) -> RedisState:
    return RedisState(server.url, prefix="t:", metrics=CollectorRegistry(), **caps)


def run(server: RedisServer, body: Callable[..., Awaitable[None]], count: int = 2, **caps: int | None) -> None:
    async def main() -> None:
        states = [make_state(server, **caps) for _ in range(count)]
        for state in states:
            await state.start()
        try:
            await body(*states)
        finally:
            for state in states:
                await state.stop()

    asyncio.run(main())


def emit(state: RedisState, event: Event) -> None:
    state.registry.apply(event)
    state.bus.publish(event)


def started(upload_id: str, ts: float = 1000.0) -> Started:
    return Started(upload_id, 0, 100, ts, "/upload/", "POST", "/upload/x", "127.0.0.1")


def part(upload_id: str, index: int, size: int) -> Part:
    return Part(upload_id, size, 100, 1001.0, index, None, None, None, size, "ab" * 32)


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def take(feed: AsyncIterator[FeedEntry] | None, count: int, timeout: float = 5.0) -> list[FeedEntry]:
    assert feed is not None
    out: list[FeedEntry] = []
    async with asyncio.timeout(timeout):
        async for entry in feed:
            out.append(entry)
            if len(out) == count:
                break
    return out


def test_one_relay_writes_the_other_reads(redis_server: RedisServer) -> None:
    async def body(a: RedisState, b: RedisState) -> None:
        emit(a, started("u1"))
        emit(a, Progress("u1", 40, 100, 1000.5))
        emit(a, part("u1", 0, 40))

        async def seen() -> bool:
            record = await b.lookup("u1")
            return record is not None and len(record.parts) == 1

        await until(seen)
        record = await b.lookup("u1")
        assert record is not None and record.state == "receiving" and record.bytes == 40
        assert record.to_dict()["parts"][0]["size"] == 40
        assert [r.id for r in await b.listing(10)] == ["u1"]
        # B follows an upload that runs on A: the catch-up, then live events until the terminal one.
        feed = b.follow("u1", None, unknown_wait=5)
        first = await take(feed, 2)
        assert [event.name for _, event in first] == ["progress", "part"]
        emit(a, Completed("u1", 100, 100, 1002.0, 200))
        rest = await take(feed, 1)
        assert rest[0][1].name == "completed"
        assert rest[0][0] > first[-1][0] or first[-1][0] == "0-0" or rest[0][0] != first[-1][0]
        record = await b.lookup("u1")
        assert record is not None and record.state == "completed" and record.finished

    run(redis_server, body)


def test_last_event_id_replays_what_was_missed(redis_server: RedisServer) -> None:
    async def body(a: RedisState, b: RedisState) -> None:
        emit(a, started("u2"))
        await asyncio.sleep(0.15)
        emit(a, part("u2", 0, 10))
        await asyncio.sleep(0.15)
        emit(a, part("u2", 1, 20))
        await asyncio.sleep(0.15)
        everything = await take(b.follow("u2", "0-0", unknown_wait=1), 3)
        assert [event.name for _, event in everything] == ["started", "part", "part"]
        # Reconnect after the first part: only what came later, then live to the end.
        later = b.follow("u2", everything[1][0], unknown_wait=1)
        missed = await take(later, 1)
        assert missed == [everything[2]]
        emit(a, Failed("u2", 30, 100, 1003.0, ErrorInfo("client_disconnected", "gone")))
        end = await take(later, 1)
        assert end[0][1].name == "failed"
        # The stream of every upload replays too, with the same ids.
        every = await take(b.follow(None, everything[0][0], unknown_wait=1), 3)
        assert [entry_id for entry_id, _ in every] == [everything[1][0], everything[2][0], end[0][0]]

    run(redis_server, body)


def test_caps_are_shared_leases(redis_server: RedisServer) -> None:
    async def body(a: RedisState, b: RedisState) -> None:
        leases = [await a.take_slots("x", "10.0.0.1"), await b.take_slots("y", "10.0.0.2")]
        with pytest.raises(TooManyUploads, match="2 uploads are in progress"):
            await a.take_slots("z", "10.0.0.3")
        b.give_back(leases[1])
        await until(lambda: _can_take(a, "10.0.0.3"))

    run(redis_server, body, max_concurrent=2, max_per_client=None)


async def _can_take(state: RedisState, client: str) -> bool:
    try:
        lease = await state.take_slots("w", client)
    except TooManyUploads:
        return False
    state.give_back(lease)
    return True


def test_per_client_cap_across_relays(redis_server: RedisServer) -> None:
    async def body(a: RedisState, b: RedisState) -> None:
        await a.take_slots("x", "10.0.0.1")
        with pytest.raises(TooManyUploads, match="from 10.0.0.1"):
            await b.take_slots("y", "10.0.0.1")
        assert await b.take_slots("y", "10.0.0.2") is not None

    run(redis_server, body, max_concurrent=None, max_per_client=1)


def test_a_lost_relays_uploads_end_relay_lost_once(redis_server: RedisServer, monkeypatch: Any) -> None:
    monkeypatch.setattr(heartbeats, "CONFIRM", 0.0)

    async def body(a: RedisState, b: RedisState, c: RedisState) -> None:
        emit(a, started("u3"))
        emit(a, Progress("u3", 7, 100, 1000.5))
        await until(lambda: _has(b, "u3"))
        feed = b.follow("u3", None, unknown_wait=1)
        assert [event.name for _, event in await take(feed, 1)] == ["progress"]
        # A "dies": its jobs stop and its heartbeat goes (as its key would expire).
        for task in a._tasks:
            task.cancel()
        await a.client.delete(a.keys.heartbeat(a.relay_id))
        ended = [await b.sweeper.sweep_once(), await c.sweeper.sweep_once()]
        assert ended == [1, 0]  # the second sweeper is fenced off: one `failed`, not two
        end = await take(feed, 1)
        assert end[0][1].name == "failed" and end[0][1].error.code == "relay_lost"  # type: ignore[union-attr]
        record = await c.lookup("u3")
        assert (
            record is not None
            and record.state == "failed"
            and record.error
            == {
                "code": "relay_lost",
                "message": heartbeats.RELAY_LOST.message,
            }
        )
        # A comes back and writes its (stale) view: the record stays failed, its late events are dropped.
        emit(a, Completed("u3", 100, 100, 1002.0, 200))
        assert await a.flusher.flush_once()
        stored = await c.client.hget(c.keys.upload("u3"), "json")
        assert stored is not None and b'"relay_lost"' in stored
        assert await c.client.xlen(c.keys.stream("u3")) == 3  # started, progress, failed

    run(redis_server, body, count=3)


async def _has(state: RedisState, upload_id: str) -> bool:
    return await state.lookup(upload_id) is not None


def test_redis_gone_then_back(redis_server: RedisServer) -> None:
    async def body(a: RedisState, b: RedisState) -> None:
        emit(a, started("u4"))
        await until(lambda: _has(b, "u4"))
        redis_server.kill()
        emit(a, part("u4", 0, 50))
        emit(a, Completed("u4", 50, 100, 1002.0, 200))
        await until(lambda: _true(a.problem() is not None))
        assert a.problem() is not None and "redis unreachable" in (a.problem() or "")
        assert (await a.lookup("u4")) is not None  # the local view answers meanwhile
        redis_server.start()
        await until(lambda: _true(a.problem() is None), timeout=10)
        record = None

        async def completed() -> bool:
            nonlocal record
            record = await b.lookup("u4")
            return record is not None and record.state == "completed"

        await until(completed, timeout=10)
        assert a.errors._value.get() > 0

    run(redis_server, body)


async def _true(value: bool) -> bool:
    return value


def test_ping_fails_fast_when_nothing_listens(redis_server: RedisServer) -> None:
    redis_server.stop()
    with pytest.raises(Exception) as caught:
        asyncio.run(ping(redis_server.url, timeout=2))
    assert "Connect" in type(caught.value).__name__ or "Error" in type(caught.value).__name__
