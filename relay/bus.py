"""The event bus: publish never blocks the data path; each subscriber has its own bounded queue.

`EventBus` is the interface (a Redis-backed bus for several relay instances implements the same two
methods); `InMemoryEventBus` is the one-process implementation.

Delivery rules, per subscriber:
  Rule 1. `publish()` is synchronous and O(1): it appends to each matching subscriber's queue and wakes it.
  Rule 2. Progress events of one upload are merged while they wait: a slow subscriber gets the newest
          counts, not every tick. A merge never jumps over a later event of the same upload, so what a
          subscriber sees of one upload stays in publication order and its byte counts never go back.
  Rule 3. `part`, `completed` and `failed` are never dropped or merged. A subscriber that lets more than
          `max_pending` of them pile up is cut off (its stream ends) rather than growing without bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from relay.core.events import Event, Progress

__all__ = ["EventBus", "InMemoryEventBus", "Subscription"]

DEFAULT_MAX_PENDING = 10_000


class Subscription:
    """One subscriber's queue. Iterate it (async) for events; `close()` to leave."""

    def __init__(self, upload_id: str | None, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.upload_id = upload_id
        self._max_pending = max_pending
        # Each slot is a one-item list so a waiting progress event can be replaced in place (Rule 2).
        self._slots: deque[list[Event]] = deque()
        self._open_progress: dict[str, list[Event]] = {}
        self._wakeup = asyncio.Event()
        self.closed = False
        self.overflowed = False
        # Told of each event as it is put, on the publisher's path (keep it to a look-up): the webhooks take the
        # upload's record as it is at its ending here (relay/webhooks/deliverer.py Rule 5).
        self.on_put: Callable[[Event], None] | None = None

    def matches(self, event: Event) -> bool:
        return self.upload_id is None or self.upload_id == event.upload_id

    def put(self, event: Event) -> None:
        if self.closed:
            return
        if self.on_put is not None:
            self.on_put(event)
        if isinstance(event, Progress):
            slot = self._open_progress.get(event.upload_id)
            if slot is not None:
                slot[0] = event
                return
            slot = [event]
            self._open_progress[event.upload_id] = slot
        else:
            self._open_progress.pop(event.upload_id, None)
            if len(self._slots) >= self._max_pending:
                self.overflowed = True
                self.close()
                return
            slot = [event]
        self._slots.append(slot)
        self._wakeup.set()

    def get_nowait(self) -> Event | None:
        if not self._slots:
            return None
        slot = self._slots.popleft()
        event = slot[0]
        if isinstance(event, Progress) and self._open_progress.get(event.upload_id) is slot:
            del self._open_progress[event.upload_id]
        return event

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event; None when closed or after `timeout` seconds without one."""
        while True:
            event = self.get_nowait()
            if event is not None or self.closed:
                return event
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return None

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while (event := await self.get()) is not None:
            yield event


class EventBus(Protocol):
    def publish(self, event: Event) -> None: ...

    def subscribe(self, upload_id: str | None = None) -> Subscription: ...

    def unsubscribe(self, subscription: Subscription) -> None: ...


class InMemoryEventBus:
    """Fan-out to the subscribers of this process."""

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self._max_pending = max_pending
        self._subscribers: set[Subscription] = set()

    def publish(self, event: Event) -> None:
        for subscription in tuple(self._subscribers):
            if subscription.matches(event):
                subscription.put(event)
                if subscription.closed:
                    self._subscribers.discard(subscription)

    def subscribe(self, upload_id: str | None = None) -> Subscription:
        subscription = Subscription(upload_id, self._max_pending)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.close()
        self._subscribers.discard(subscription)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
