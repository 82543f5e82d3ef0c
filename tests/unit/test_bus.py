"""InMemoryEventBus and Subscription: the delivery rules of relay/bus.py, without a server."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.bus import InMemoryEventBus, Subscription
from relay.core.events import Completed, ErrorInfo, Event, Failed, Part, Progress, Started


def started(upload_id: str, ts: float = 1.0) -> Started:
    return Started(upload_id, 0, 1000, ts, "/upload/", "POST", "/upload/x")


def progress(upload_id: str, nbytes: int) -> Progress:
    return Progress(upload_id, nbytes, 1000, float(nbytes))


def part(upload_id: str, index: int, nbytes: int) -> Part:
    return Part(
        upload_id, nbytes, 1000, float(nbytes), index, "file", f"{index}.bin", "application/octet-stream", 10, "0" * 64
    )


def completed(upload_id: str, nbytes: int = 1000) -> Completed:
    return Completed(upload_id, nbytes, 1000, 99.0, 200)


def failed(upload_id: str, nbytes: int = 10) -> Failed:
    return Failed(upload_id, nbytes, 1000, 99.0, ErrorInfo("body_too_large", "too big"))


def drain(subscription: Subscription) -> list[Event]:
    out = []
    while (event := subscription.get_nowait()) is not None:
        out.append(event)
    return out


def test_per_upload_subscription_gets_only_its_upload() -> None:
    bus = InMemoryEventBus()
    mine = bus.subscribe("a")
    every = bus.subscribe(None)
    for event in (started("a"), started("b"), part("b", 0, 10), part("a", 0, 20), completed("b"), completed("a")):
        bus.publish(event)
    assert [(e.name, e.upload_id) for e in drain(mine)] == [("started", "a"), ("part", "a"), ("completed", "a")]
    assert [e.upload_id for e in drain(every)] == ["a", "b", "b", "a", "b", "a"]


def test_slow_subscriber_gets_newest_progress_only() -> None:
    bus = InMemoryEventBus()
    subscription = bus.subscribe("a")
    bus.publish(started("a"))
    for nbytes in range(1, 1001):
        bus.publish(progress("a", nbytes))
    events = drain(subscription)
    assert [e.name for e in events] == ["started", "progress"]
    assert events[1].bytes == 1000


def test_merging_never_jumps_over_a_later_event() -> None:
    """Progress, part, progress: the second progress must not be merged into the first (before the part)."""
    bus = InMemoryEventBus()
    subscription = bus.subscribe("a")
    bus.publish(progress("a", 10))
    bus.publish(progress("a", 20))
    bus.publish(part("a", 0, 30))
    bus.publish(progress("a", 40))
    bus.publish(progress("a", 50))
    bus.publish(part("a", 1, 60))
    bus.publish(progress("a", 70))
    events = drain(subscription)
    assert [(e.name, e.bytes) for e in events] == [
        ("progress", 20),
        ("part", 30),
        ("progress", 50),
        ("part", 60),
        ("progress", 70),
    ]


def test_byte_counts_never_decrease_per_upload_with_interleaved_uploads() -> None:
    bus = InMemoryEventBus()
    every = bus.subscribe(None)
    seen: list[Event] = []
    parts_published = 0
    for step in range(1, 600):
        upload_id = "abc"[step % 3]
        if step % 17 == 0:
            bus.publish(part(upload_id, step // 17, step))
            parts_published += 1
        else:
            bus.publish(progress(upload_id, step))
        if step % 50 == 0:  # the follower reads one event now and then
            got = every.get_nowait()
            assert got is not None
            seen.append(got)
    seen.extend(drain(every))
    for upload_id in "abc":
        counts = [e.bytes for e in seen if e.upload_id == upload_id]
        assert counts == sorted(counts)
        assert counts[-1] == max(step for step in range(1, 600) if "abc"[step % 3] == upload_id)
    assert sum(isinstance(e, Part) for e in seen) == parts_published


def test_progress_of_other_uploads_does_not_reorder() -> None:
    bus = InMemoryEventBus()
    every = bus.subscribe(None)
    bus.publish(progress("a", 1))
    bus.publish(progress("b", 1))
    bus.publish(progress("a", 2))
    bus.publish(completed("a", 3))
    bus.publish(progress("b", 2))
    events = drain(every)
    assert [(e.upload_id, e.name, e.bytes) for e in events] == [
        ("a", "progress", 2),
        ("b", "progress", 2),
        ("a", "completed", 3),
    ]


def test_part_completed_and_failed_are_never_dropped() -> None:
    bus = InMemoryEventBus(max_pending=10_000)
    subscription = bus.subscribe(None)
    for n in range(500):
        bus.publish(progress(f"u{n}", 1))
        bus.publish(part(f"u{n}", 0, 2))
        bus.publish(progress(f"u{n}", 3))
        bus.publish(completed(f"u{n}") if n % 2 else failed(f"u{n}"))
    events = drain(subscription)
    assert sum(e.name == "part" for e in events) == 500
    assert sum(e.name == "completed" for e in events) == 250
    assert sum(e.name == "failed" for e in events) == 250


def test_overflow_cuts_the_subscriber_off() -> None:
    bus = InMemoryEventBus(max_pending=5)
    slow = bus.subscribe(None)
    fast = bus.subscribe(None)
    for index in range(8):
        bus.publish(part("a", index, index))
        assert fast.get_nowait() is not None
    assert slow.overflowed and slow.closed
    assert not fast.closed
    assert bus.subscriber_count == 1
    # What had been queued before the cut is still readable, then the stream ends.
    assert [e.index for e in drain(slow)] == [0, 1, 2, 3, 4]
    assert asyncio.run(slow.get(timeout=1)) is None
    bus.publish(completed("a"))
    assert slow.get_nowait() is None


def test_progress_alone_never_overflows() -> None:
    bus = InMemoryEventBus(max_pending=3)
    subscription = bus.subscribe("a")
    for nbytes in range(10_000):
        bus.publish(progress("a", nbytes))
    assert not subscription.closed
    assert [e.bytes for e in drain(subscription)] == [9999]


def test_publish_is_sync_and_never_blocks() -> None:
    bus = InMemoryEventBus()
    subscribers = [bus.subscribe(None) for _ in range(100)]  # none of them ever reads
    started_at = time.perf_counter()
    for nbytes in range(5_000):
        assert bus.publish(progress("a", nbytes)) is None
    assert time.perf_counter() - started_at < 5
    assert all(len(drain(s)) == 1 for s in subscribers)


def test_publish_without_a_running_loop_or_subscribers() -> None:
    bus = InMemoryEventBus()
    bus.publish(completed("nobody-listens"))
    assert bus.subscriber_count == 0


def test_unsubscribe_ends_the_iteration() -> None:
    async def scenario() -> list[Event]:
        bus = InMemoryEventBus()
        subscription = bus.subscribe("a")
        got: list[Event] = []

        async def follow() -> None:
            async for event in subscription:
                got.append(event)

        task = asyncio.create_task(follow())
        bus.publish(started("a"))
        await asyncio.sleep(0.01)
        bus.unsubscribe(subscription)
        await asyncio.wait_for(task, 1)
        bus.publish(completed("a"))
        assert bus.subscriber_count == 0
        return got

    assert [e.name for e in asyncio.run(scenario())] == ["started"]


def test_get_wakes_on_publish_and_times_out() -> None:
    async def scenario() -> tuple[Event | None, Event | None, float]:
        bus = InMemoryEventBus()
        subscription = bus.subscribe("a")
        asyncio.get_running_loop().call_later(0.05, bus.publish, completed("a"))
        first = await subscription.get(timeout=2)
        began = time.monotonic()
        second = await subscription.get(timeout=0.1)
        return first, second, time.monotonic() - began

    first, second, waited = asyncio.run(scenario())
    assert isinstance(first, Completed)
    assert second is None and 0.05 < waited < 1


@pytest.mark.parametrize("upload_id", ["a", None])
def test_a_closed_subscription_ignores_events(upload_id: str | None) -> None:
    subscription = Subscription(upload_id)
    subscription.close()
    subscription.put(completed("a"))
    assert subscription.get_nowait() is None
