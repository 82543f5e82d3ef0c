"""What the deliverer asks of an outbox, whichever one was chosen at start-up.

Two outboxes implement `OutboxStore`: relay/webhooks/outbox.py (files under `<spool>/webhooks/`, one relay)
and relay/webhooks/redis_outbox.py (with `--redis`: one outbox shared by every relay, each delivery attempted
by one relay at a time). relay/webhooks/__init__.py chooses, once, in `start_webhooks`.

Rules every outbox keeps:
1. `add` is idempotent on the delivery id: a delivery already known is left as it is (its state and attempts
   stand), so an event seen twice, or by two relays, makes one delivery.
2. `due` hands out each pending delivery to one attempt at a time; `finish` records the outcome (and, if it
   is to be retried, in how many seconds); `release` gives back attempts cut short by a stop.
3. `recent`, `pending_count` and `oldest_pending_age` never wait: they answer `GET /_relay/webhooks` and the
   metrics' gauges from what the outbox last read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["BACKOFF", "DELIVERED", "FAILED", "PENDING", "Delivery", "OutboxStore", "delivery_id"]

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# Seconds before retries 1..6 (the contract's schedule). Here, not in deliverer.py, so that reading the schedule
# (relay/webhooks/__init__.py backoff_schedule) does not import the deliverer and httpx.
BACKOFF = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message to one endpoint. `body` is the exact JSON sent on every attempt (the signature covers it)."""

    id: str
    type: str
    upload_id: str
    url: str
    body: str
    created_at: float
    state: str = PENDING
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_status: int | None = None
    last_error: str | None = None
    updated_at: float = 0.0

    def describe(self) -> dict[str, Any]:
        """The delivery as `GET /_relay/webhooks` lists it."""
        return {
            "id": self.id,
            "type": self.type,
            "upload_id": self.upload_id,
            "url": self.url,
            "attempts": self.attempts,
            "state": self.state,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "created_at": self.created_at,
            "next_attempt_at": self.next_attempt_at if self.state == PENDING else None,
        }


def delivery_id(upload_id: str, run: str, url: str, kind: str) -> str:
    """The `webhook-id` of one message about one run of an upload to one endpoint: derived, not drawn, so every
    relay that sees the same ending names the same delivery (Rule 1). `run` tells apart two uploads that used
    the same client-chosen id one after the other (their start times)."""
    digest = hashlib.sha256("\n".join((upload_id, run, url, kind)).encode()).hexdigest()
    return "msg_" + digest[:32]


class OutboxStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, deliveries: list[Delivery]) -> None: ...

    async def due(self, limit: int, busy: Collection[str]) -> tuple[list[Delivery], float | None]:
        """Up to `limit` deliveries to attempt now (none of `busy`), and in how many seconds to ask again
        (None: only when woken)."""
        ...

    async def finish(self, delivery: Delivery, retry_in: float | None) -> None: ...

    async def release(self, deliveries: list[Delivery]) -> None: ...

    def recent(self, limit: int = 100) -> list[Delivery]: ...

    def pending_count(self) -> int: ...

    def oldest_pending_age(self) -> float: ...
