"""The uploads registry: one record per upload id, built from the events the bus carries.

`UploadRegistry` is the interface (relay/state/redis.py's `RedisUploadRegistry` implements it for several
relays); `InMemoryUploadRegistry` keeps records in this process. Records change only through `apply(event)`, and
state changes follow the transition table in relay/core/state.py. Finished records stay for `ttl` seconds
and at most `max_finished` of them, so memory stays bounded however many uploads pass.

`release(id)` says a resumable upload is between requests on this relay (no request of it runs here). One relay
keeps its record as it is: that record is the upload's only one. With Redis the record in Redis is the truth
and any relay may take the next request, so the local copy stops counting as an upload in progress here
(relay/state/redis.py); `forget(id)` is how that copy goes in the end.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from relay.core import state
from relay.core.events import Completed, Event, Failed, Part, ResumableNote, Started

__all__ = ["InMemoryUploadRegistry", "UploadRecord", "UploadRegistry"]


@dataclass(slots=True)
class UploadRecord:
    id: str
    route: str
    total: int | None
    started_at: float
    state: str = state.RECEIVING
    bytes: int = 0
    parts: list[Part] = field(default_factory=list)
    finished_at: float | None = None
    upstream_status: int | None = None
    error: dict[str, str] | None = None
    terminal: Completed | Failed | None = None
    client: str = ""  # the client's address
    path: str = ""  # the request's path
    resumable: bool = False
    expires_at: float | None = None  # resumable only: when it expires without another append

    @property
    def finished(self) -> bool:
        return self.terminal is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "route": self.route,
            "bytes": self.bytes,
            "total": self.total,
            "parts": [part.describe() for part in self.parts],
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "upstream_status": self.upstream_status,
            "error": self.error,
            "client": self.client,
            "path": self.path,
            # A resumable upload adds these; its `bytes` is the offset and its `total` the upload length.
            **({"resumable": True, "offset": self.bytes, "expires_at": self.expires_at} if self.resumable else {}),
        }


class UploadRegistry(Protocol):
    def apply(self, event: Event | ResumableNote) -> None: ...

    def get(self, upload_id: str) -> UploadRecord | None: ...

    def is_active(self, upload_id: str) -> bool: ...

    def recent(self, limit: int = 100) -> list[UploadRecord]: ...

    def release(self, upload_id: str) -> None: ...


class InMemoryUploadRegistry:
    def __init__(self, *, max_finished: int = 1000, ttl: float = 3600.0) -> None:
        self._max_finished = max_finished
        self._ttl = ttl
        self._records: OrderedDict[str, UploadRecord] = OrderedDict()  # oldest first
        self._finished: OrderedDict[str, float] = OrderedDict()  # id -> monotonic finish time, oldest first

    def apply(self, event: Event | ResumableNote) -> None:
        if isinstance(event, Started):
            self._start(event)
            return
        if isinstance(event, ResumableNote):
            self._note(event)
            return
        record = self._records.get(event.upload_id)
        if record is None or record.finished:
            return
        record.bytes = max(record.bytes, event.bytes)
        if isinstance(event, Part):
            record.parts.append(event)
        elif isinstance(event, Completed):
            record.upstream_status = event.upstream_status
            record.error = None  # a resumable upload's earlier failed forward is history once it is delivered
            self._finish(record, event, state.COMPLETED)
        elif isinstance(event, Failed):
            record.upstream_status = event.upstream_status
            record.error = {"code": event.error.code, "message": event.error.message}
            self._finish(record, event, state.REJECTED if event.rejected else state.FAILED)

    def _start(self, event: Started) -> None:
        self._expire()
        old = self._records.pop(event.upload_id, None)
        if old is not None:
            self._finished.pop(event.upload_id, None)
        self._records[event.upload_id] = UploadRecord(
            id=event.upload_id,
            route=event.route,
            total=event.total,
            started_at=event.ts,
            state=state.transition(None, state.RECEIVING),
            client=event.client,
            path=event.path,
        )

    def _note(self, note: ResumableNote) -> None:
        """A resumable upload between requests; recreates its record when this relay has none (a restart)."""
        record = self._records.get(note.upload_id)
        if record is None:
            record = UploadRecord(
                id=note.upload_id, route=note.route, total=note.total, started_at=note.started_at, path=note.path
            )
            self._records[note.upload_id] = record
        if record.finished:
            return
        record.resumable = True
        record.bytes = note.bytes  # the offset: a discarded append (460) may move it back
        record.total = note.total
        record.expires_at = note.expires_at
        record.error = None if note.error is None else {"code": note.error.code, "message": note.error.message}
        if note.state != record.state:
            record.state = state.transition(record.state, note.state)

    def _finish(self, record: UploadRecord, event: Completed | Failed, new_state: str) -> None:
        if new_state == state.REJECTED:
            record.state = state.transition(None, state.REJECTED)
        else:
            record.state = state.transition(record.state, new_state)
        record.finished_at = event.ts
        record.terminal = event
        self._finished[record.id] = time.monotonic()
        self._expire()

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._ttl
        while self._finished:
            upload_id, finished = next(iter(self._finished.items()))
            if finished >= cutoff and len(self._finished) <= self._max_finished:
                break
            del self._finished[upload_id]
            self._records.pop(upload_id, None)

    def get(self, upload_id: str) -> UploadRecord | None:
        self._expire()
        return self._records.get(upload_id)

    def is_active(self, upload_id: str) -> bool:
        record = self._records.get(upload_id)
        return record is not None and not record.finished

    def release(self, upload_id: str) -> None:
        """One relay: the record of a resumable upload between requests is its only one, kept until it ends."""
        return None

    def forget(self, upload_id: str) -> None:
        """Drop the record whatever its state (the Redis registry's stale local copies, relay/state/redis.py)."""
        self._records.pop(upload_id, None)
        self._finished.pop(upload_id, None)

    def recent(self, limit: int = 100) -> list[UploadRecord]:
        self._expire()
        # Newest start time first; ties (same clock tick) go to the later insertion. sorted() is stable even
        # with reverse=True, so sorting the newest-inserted-first list keeps that order among equal times.
        newest_inserted_first = list(reversed(self._records.values()))
        return sorted(newest_inserted_first, key=lambda record: record.started_at, reverse=True)[:limit]

    def __len__(self) -> int:
        return len(self._records)
