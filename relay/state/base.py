"""What the rest of the relay asks of shared state, whichever implementation was chosen at start-up.

`SharedState` bundles the registry and the bus (their interfaces stay in relay/uploads.py and relay/bus.py,
unchanged: `apply` and `publish` are synchronous and never wait) with what only the admin endpoints and the
head of a request may await:
  - `lookup` / `listing`: records as every relay sees them (the admin endpoints);
  - `follow`: an SSE feed of `(entry id, event)` with replay after `Last-Event-ID`, or None when the in-process
    bus is all there is (the admin endpoints then use their own catch-up);
  - `take_slots` / `give_back`: the upload's id and the caps, one await before a body is read (raising
    UploadIdInUse or TooManyUploads), a synchronous release at the end; `id_in_use`, the same id check
    without taking anything;
  - `problem`: None while healthy, else why `/_relay/health` says `degraded`.
relay/state/memory.py keeps everything in this process (the relay without --redis); relay/state/redis.py shares
it between every relay on one Redis. relay/app.py chooses one, once, at start-up (`open_state`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from relay.bus import EventBus
from relay.core.events import Event
from relay.uploads import UploadRecord, UploadRegistry

__all__ = ["FeedEntry", "SharedState"]

FeedEntry = tuple[str, Event]  # (the SSE `id:`, the event)


class SharedState(Protocol):
    @property
    def bus(self) -> EventBus: ...

    @property
    def registry(self) -> UploadRegistry: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def problem(self) -> str | None: ...

    async def lookup(self, upload_id: str) -> UploadRecord | None: ...

    async def listing(self, limit: int) -> list[UploadRecord]: ...

    def follow(
        self, upload_id: str | None, last_event_id: str | None, *, unknown_wait: float
    ) -> AsyncIterator[FeedEntry] | None: ...

    async def take_slots(self, upload_id: str, client: str, *, chosen: bool = True) -> str | None:
        """The id's lease (unless `chosen` is False: an id the relay drew itself, 128 random bits, cannot be in
        use anywhere) and the caps' leases; UploadIdInUse or TooManyUploads."""
        ...

    def give_back(self, lease: str | None) -> None: ...

    async def id_in_use(self, upload_id: str) -> bool:
        """Whether an upload under this id is in progress on any relay (for a check without taking the id,
        such as a resumable upload's creation); one await, never on the data path."""
        ...
