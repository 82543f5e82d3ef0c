"""Shared state for one relay process: the in-memory registry and bus, nothing to start, never degraded.

Caps are counted by the proxy itself (`RelayContext.in_flight` and `per_client`), so `take_slots` has nothing
to add; `follow` is None, so the admin endpoints serve SSE from the in-process bus with their own catch-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from relay.bus import EventBus, InMemoryEventBus
from relay.state.base import FeedEntry
from relay.uploads import InMemoryUploadRegistry, UploadRecord, UploadRegistry

__all__ = ["MemoryState"]


class MemoryState:
    def __init__(self, bus: EventBus | None = None, registry: UploadRegistry | None = None) -> None:
        self._bus = bus or InMemoryEventBus()
        self._registry = registry or InMemoryUploadRegistry()

    @property
    def bus(self) -> EventBus:
        return self._bus

    @property
    def registry(self) -> UploadRegistry:
        return self._registry

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def problem(self) -> str | None:
        return None

    async def lookup(self, upload_id: str) -> UploadRecord | None:
        return self._registry.get(upload_id)

    async def listing(self, limit: int) -> list[UploadRecord]:
        return self._registry.recent(limit)

    def follow(
        self, upload_id: str | None, last_event_id: str | None, *, unknown_wait: float
    ) -> AsyncIterator[FeedEntry] | None:
        return None

    async def take_slots(self, upload_id: str, client: str, *, chosen: bool = True) -> str | None:
        return None

    def give_back(self, lease: str | None) -> None:
        return None

    async def id_in_use(self, upload_id: str) -> bool:
        return self.registry.is_active(upload_id)
