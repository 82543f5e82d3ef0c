"""The durable outbox: one JSON file per delivery under `<spool>/webhooks/`, indexed in memory.

Theory of operation
-------------------
A delivery is written here before anything tries to send it, and rewritten after every attempt, so a relay
stopped at any moment (SIGTERM or SIGKILL) finds every pending delivery again when it starts (`open`), and
sends it then. Delivery is therefore at least once: an attempt cut short by a crash after the receiver got it
is sent again, with the same `webhook-id`, which is what receivers deduplicate on.

Rules:
1. A file is written whole or not at all: a temporary (dot-prefixed) file, fsync, rename over the old one,
   fsync of the directory. Temporaries a crash left behind are removed at `open`.
2. Every file operation runs in a worker thread (`asyncio.to_thread`): an fsync can take milliseconds and the
   event loop carries the uploads.
3. One writer per delivery at a time (the deliverer never runs two attempts of one delivery at once), so
   the writes of one file never race.
4. Finished deliveries (`delivered`, `failed`) are kept for `GET /_relay/webhooks`, at most KEEP_FINISHED of
   them: the oldest files go first. Pending ones are kept however many there are.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Collection
from dataclasses import asdict, fields, replace
from pathlib import Path

from relay.webhooks.base import DELIVERED, FAILED, PENDING, Delivery

__all__ = ["DELIVERED", "FAILED", "KEEP_FINISHED", "PENDING", "Delivery", "Outbox"]

KEEP_FINISHED = 1000
_ID = re.compile(r"msg_[0-9a-f]{32}")


class Outbox:
    """The deliveries of one directory (an `OutboxStore`, relay/webhooks/base.py); `open()` before use."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.deliveries: dict[str, Delivery] = {}

    async def open(self) -> None:
        self.deliveries = await asyncio.to_thread(self._load)

    async def close(self) -> None:
        """Nothing to close: every write was durable when it returned."""

    def _load(self) -> dict[str, Delivery]:
        self.directory.mkdir(parents=True, exist_ok=True)
        found: dict[str, Delivery] = {}
        known = {item.name for item in fields(Delivery)}
        for entry in os.scandir(self.directory):
            if entry.name.startswith("."):
                os.unlink(entry.path)  # Rule 1: a write a crash cut short; the previous version stands
                continue
            if not entry.name.endswith(".json") or not _ID.fullmatch(entry.name[:-5]):
                continue
            try:
                data = json.loads(Path(entry.path).read_bytes())
                delivery = Delivery(**{key: value for key, value in data.items() if key in known})
            except (ValueError, TypeError, OSError):
                continue  # not ours, or damaged by hand: never worth stopping the relay for
            found[delivery.id] = delivery
        return found

    # -- reading ------------------------------------------------------------------------------------------------

    def pending(self) -> list[Delivery]:
        return [delivery for delivery in self.deliveries.values() if delivery.state == PENDING]

    def pending_count(self) -> int:
        return len(self.pending())

    def oldest_pending_age(self, now: float | None = None) -> float:
        created = [delivery.created_at for delivery in self.pending()]
        return max(0.0, (now or time.time()) - min(created)) if created else 0.0

    def recent(self, limit: int = 100) -> list[Delivery]:
        newest_first = sorted(self.deliveries.values(), key=lambda delivery: delivery.created_at, reverse=True)
        return newest_first[:limit]

    async def due(self, limit: int, busy: Collection[str]) -> tuple[list[Delivery], float | None]:
        now = time.time()
        ready: list[Delivery] = []
        next_due: float | None = None
        for delivery in sorted(self.pending(), key=lambda item: item.next_attempt_at):
            if delivery.id in busy:
                continue
            if delivery.next_attempt_at > now:
                next_due = delivery.next_attempt_at if next_due is None else min(next_due, delivery.next_attempt_at)
            elif len(ready) < limit:
                ready.append(delivery)
        return ready, None if next_due is None else max(0.0, next_due - now)

    # -- writing (Rules 1-3) --------------------------------------------------------------------------------------

    async def add(self, deliveries: list[Delivery]) -> None:
        """Write the deliveries this outbox does not hold yet (an id it knows keeps its state)."""
        fresh = [delivery for delivery in deliveries if delivery.id not in self.deliveries]
        if fresh:
            await self.save_all(fresh)

    async def finish(self, delivery: Delivery, retry_in: float | None) -> None:
        if retry_in is not None:
            delivery = replace(delivery, next_attempt_at=time.time() + retry_in)
        await self.save(delivery)

    async def release(self, deliveries: list[Delivery]) -> None:
        """Attempts cut short stay pending as they are on disk: nothing to do (Rule 3 of the deliverer)."""

    async def save(self, delivery: Delivery) -> Delivery:
        """Write `delivery` durably, then index it; returns it with `updated_at` set."""
        (saved,) = await self.save_all([delivery])
        return saved

    async def save_all(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Write several at once: one thread hand-over and one directory fsync for all (group commit)."""
        now = time.time()
        deliveries = [replace(delivery, updated_at=now) for delivery in deliveries]
        await asyncio.to_thread(self._write, deliveries)
        for delivery in deliveries:
            self.deliveries[delivery.id] = delivery
        if any(delivery.state != PENDING for delivery in deliveries):
            await self._prune()
        return deliveries

    def _write(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            path = self._path(delivery.id)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            data = json.dumps(asdict(delivery), separators=(",", ":")).encode()
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
        _fsync_directory(self.directory)  # the renames are durable from here

    async def _prune(self) -> None:
        finished = [delivery for delivery in self.deliveries.values() if delivery.state != PENDING]
        if len(finished) <= KEEP_FINISHED:
            return
        finished.sort(key=lambda delivery: delivery.updated_at)
        doomed = [delivery.id for delivery in finished[: len(finished) - KEEP_FINISHED]]
        for delivery_id in doomed:
            del self.deliveries[delivery_id]
        await asyncio.to_thread(self._remove, doomed)

    def _remove(self, delivery_ids: list[str]) -> None:
        for delivery_id in delivery_ids:
            self._path(delivery_id).unlink(missing_ok=True)

    def _path(self, delivery_id: str) -> Path:
        if not _ID.fullmatch(delivery_id):
            raise ValueError(f"not a delivery id: {delivery_id!r}")
        return self.directory / f"{delivery_id}.json"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
