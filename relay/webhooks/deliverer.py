"""The deliverer: terminal upload events become outbox entries; a task sends them, retrying with backoff.

Theory of operation
-------------------
Two tasks, both off the upload's path (an upload only publishes its terminal event on the bus, as always):

- `_consume` follows the event bus like an SSE stream does (with `--redis`: only the events this relay
  published, and the `relay_lost` endings its sweeper wrote, so each ending is added once, by its relay).
  For each `completed` or `failed` upload it builds the message once (`{"type", "timestamp", "data": <the
  upload's record>}`), adds one outbox entry per endpoint that wants that type (its id derived from the
  upload's run, the endpoint and the type: relay/webhooks/base.py), and wakes the sender. The outbox write
  (an fsync, or a Redis call) happens here, so a slow disk, Redis or receiver delays only webhooks, never an
  upload. The record itself is taken when the ending is published, not when `_consume` reads it (Rule 5).
- `_dispatch` asks the outbox for what is due (relay/webhooks/base.py `OutboxStore.due`: with Redis, claimed
  for this relay alone), starts an attempt for each, at most MAX_IN_FLIGHT at once, and sleeps until the
  next one is due, the outbox says to ask again, or a new one arrives.

Rules:
1. An attempt is a POST of the stored body, signed afresh (relay/webhooks/signer.py), with a total timeout
   (10 s) and redirects not followed (a 3xx is a failure: a receiver cannot send the relay elsewhere).
   A 2xx is `delivered`. Anything else (network error, timeout, another status) schedules the next attempt
   after BACKOFF[attempts - 1] seconds, or gives up (`failed`) once the schedule is spent.
2. The outcome of an attempt is written to the outbox before the next attempt can start, so an attempt
   is made again after a restart only if it had not finished (at least once, same webhook-id).
3. Every upload that ends sends its webhook, refused ones too (the contract: a refused upload also ends with
   `failed`), except those refused for want of the route's token (401 `unauthorized`): with --token set, only
   clients that may upload can make the relay post (without a token anyone may, by uploading anything).
4. At `stop`, events still queued are written to the outbox before the tasks end (SIGTERM loses none);
   attempts in flight are cancelled and stay pending (released: with Redis another relay may take them).
5. A webhook carries the upload's record as it was at its ending. An X-Upload-ID may be used again as soon as
   its upload ended, so by the time `_consume` reads an ending the registry may already hold the next run's
   record under that id (a new object: a finished record is never changed again, relay/uploads.py). So the
   subscription keeps a reference to the record when the bus puts the ending into it (`_keep_records`: a
   dict look-up, on the upload's path), and the body and the run (its start time, hence the delivery id)
   come from that reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from relay import __version__
from relay.bus import Subscription
from relay.cancel import cancel_and_wait
from relay.core.events import Completed, Event, Failed
from relay.webhooks.base import BACKOFF, DELIVERED, FAILED, PENDING, Delivery, OutboxStore, delivery_id
from relay.webhooks.endpoints import WebhookEndpoint
from relay.webhooks.signer import signed_headers

if TYPE_CHECKING:
    from relay.uploads import UploadRecord

__all__ = ["BACKOFF", "MAX_IN_FLIGHT", "TIMEOUT", "Deliverer", "WebhookMetrics"]

TIMEOUT = 10.0
MAX_IN_FLIGHT = 16  # attempts at once: a slow receiver holds at most these, the rest wait their turn
BATCH = 256  # events written to the outbox together
log = logging.getLogger("relay.webhooks")


class WebhookMetrics:
    """relay_webhook_deliveries_total{outcome}, relay_webhook_queue_depth, relay_webhook_oldest_pending_seconds."""

    OUTCOMES = ("delivered", "retried", "failed")

    def __init__(self, registry: CollectorRegistry, outbox: OutboxStore) -> None:
        self.registry = registry
        self.deliveries = Counter(
            "relay_webhook_deliveries", "Webhook attempts by outcome", ["outcome"], registry=registry
        )
        for outcome in self.OUTCOMES:
            self.deliveries.labels(outcome=outcome)
        self.queue_depth = Gauge("relay_webhook_queue_depth", "Webhook deliveries pending", registry=registry)
        self.queue_depth.set_function(outbox.pending_count)
        self.oldest = Gauge(
            "relay_webhook_oldest_pending_seconds", "Age of the oldest pending webhook delivery", registry=registry
        )
        self.oldest.set_function(outbox.oldest_pending_age)

    def close(self) -> None:
        for collector in (self.deliveries, self.queue_depth, self.oldest):
            self.registry.unregister(collector)


class Deliverer:
    """Sends the outbox's deliveries to the configured endpoints (see the module docstring)."""

    def __init__(
        self,
        *,
        outbox: OutboxStore,
        endpoints: Sequence[WebhookEndpoint],
        follow: Callable[[], Subscription],
        leave: Callable[[Subscription], None],
        record: Callable[[str], UploadRecord | None],
        metrics: WebhookMetrics,
        backoff: Sequence[float] = BACKOFF,
        timeout: float = TIMEOUT,
    ) -> None:
        self.outbox = outbox
        self.endpoints = {endpoint.url: endpoint for endpoint in endpoints}
        self.follow = follow
        self.leave = leave
        self.record = record
        self.metrics = metrics
        self.backoff = tuple(backoff)
        self.timeout = timeout
        self.client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=timeout,
            headers={"user-agent": f"upload-relay/{__version__} (webhooks)"},
        )
        self._subscription: Subscription | None = None
        # Each queued ending's record as it was when the ending was published, keyed by id(event) (Rule 5).
        self._records: dict[int, tuple[Completed | Failed, UploadRecord | None]] = {}
        self._wake = asyncio.Event()
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._attempting: dict[str, Delivery] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        self._subscription = self._keep_records(self.follow())
        self._tasks = [asyncio.create_task(self._consume()), asyncio.create_task(self._dispatch())]

    async def stop(self) -> None:
        self._stopping = True
        subscription = self._subscription
        if subscription is not None:
            self.leave(subscription)  # its consumer sees the end, after what is queued (Rule 4)
        consumer, dispatcher = self._tasks or (None, None)
        if consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer, 10)
        running = [*self._sending.values(), *([dispatcher] if dispatcher else [])]
        await cancel_and_wait(running)  # not cancel() + gather: a cancel can be lost in redis-py (relay/cancel.py)
        await cancel_and_wait(list(self._sending.values()))  # attempts a dispatcher that lost a cancel had started
        with contextlib.suppress(Exception):
            await self.outbox.release(list(self._attempting.values()))
        await self.outbox.close()
        await self.client.aclose()
        self.metrics.close()

    # -- events into the outbox --------------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            subscription = self._subscription
            assert subscription is not None
            event = await subscription.get()
            if event is None:
                if self._stopping:
                    return
                # Cut off for falling more than the bus's bound behind (relay/bus.py Rule 3): follow again.
                log.warning("webhooks: the event stream overflowed; some terminal events were not queued")
                self.leave(subscription)
                self._records.clear()  # the endings they were kept for went with the old subscription
                self._subscription = self._keep_records(self.follow())
                continue
            # What else has arrived goes into the same outbox write (one directory fsync for all of them).
            events = [event]
            while len(events) < BATCH and (more := subscription.get_nowait()) is not None:
                events.append(more)
            try:
                await self.enqueue(events)
            except Exception:  # a full or read-only disk: say so, and keep following
                log.exception("webhooks: could not write outbox entries for %d events", len(events))

    def _keep_records(self, subscription: Subscription) -> Subscription:
        """The subscription, made to keep each ending's record as the bus puts the ending in (Rule 5).

        The bus puts an event right after the registry applied it (RelayContext.emit), on the upload's path, so
        this only takes a reference."""

        def keep(event: Event) -> None:
            if isinstance(event, Completed | Failed):
                self._records[id(event)] = (event, self.record(event.upload_id))

        subscription.on_put = keep
        return subscription

    def _record_at(self, event: Completed | Failed) -> UploadRecord | None:
        """The upload's record when `event` was published (taken off the kept ones); the registry's record now
        for an ending that did not come through the subscription (a test feeding `enqueue` directly)."""
        kept = self._records.pop(id(event), None)
        if kept is not None and kept[0] is event:
            return kept[1]
        return self.record(event.upload_id)

    async def enqueue(self, events: list[Event]) -> list[Delivery]:
        """Add the deliveries these events make (terminal events only, not refused uploads: Rule 3)."""
        now = time.time()
        made = [
            Delivery(
                delivery_id(event.upload_id, run, endpoint.url, kind),
                kind,
                event.upload_id,
                endpoint.url,
                body,
                now,
                next_attempt_at=now,
            )  # fmt: skip
            for event in events
            for kind, run, body in self._message(event)
            for endpoint in self.endpoints.values()
            if kind in endpoint.events
        ]
        if not made:
            return []
        await self.outbox.add(made)
        self._wake.set()
        return made

    def _message(self, event: Event) -> list[tuple[str, str, str]]:
        """`[(type, run, body)]` for a terminal event, `[]` for any other; `run` is the upload's start time,
        which tells apart two uploads that used the same client-chosen id one after the other."""
        if not isinstance(event, Completed | Failed):
            return []
        found = self._record_at(event)
        if isinstance(event, Failed) and _unauthorized(event):
            return []
        kind = "upload.completed" if isinstance(event, Completed) else "upload.failed"
        record = found.to_dict() if found is not None else _bare(event)
        message = {"type": kind, "timestamp": _iso8601(event.ts), "data": record}
        return [(kind, repr(record.get("started_at")), json.dumps(message, separators=(",", ":")))]

    # -- sending ---------------------------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            self._wake.clear()
            try:
                ready, wait = await self.outbox.due(MAX_IN_FLIGHT - len(self._sending), set(self._sending))
            except Exception:  # a bug or a disk error: one line, and the loop goes on
                log.exception("webhooks: reading the outbox")
                ready, wait = [], 1.0
            for delivery in ready:
                self._attempting[delivery.id] = delivery
                self._sending[delivery.id] = asyncio.create_task(self._attempt(delivery))
            if len(self._sending) >= MAX_IN_FLIGHT:
                wait = None  # an attempt that ends wakes us
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            endpoint = self.endpoints.get(delivery.url)
            if endpoint is None:
                # Only configured URLs are ever contacted, whatever an old outbox entry says.
                await self._record(delivery, None, "the URL is no longer configured", give_up=True)
                return
            status, error = await self._post(endpoint, delivery)
            await self._record(delivery, status, error)
        except Exception:
            log.exception("webhooks: delivery %s", delivery.id)
        finally:
            self._sending.pop(delivery.id, None)
            self._attempting.pop(delivery.id, None)
            self._wake.set()

    async def _post(self, endpoint: WebhookEndpoint, delivery: Delivery) -> tuple[int | None, str | None]:
        body = delivery.body.encode()
        headers = signed_headers(endpoint.key, delivery.id, int(time.time()), body)
        try:
            async with asyncio.timeout(self.timeout):  # the whole attempt, however slowly bytes trickle
                request = self.client.build_request("POST", delivery.url, content=body, headers=headers)
                response = await self.client.send(request, stream=True)
                await response.aclose()  # the answer's body is never read: only its status counts
        except TimeoutError:
            return None, f"no answer within {self.timeout:g} s"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        status = response.status_code
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}" + (" (redirects are not followed)" if 300 <= status < 400 else "")

    async def _record(self, delivery: Delivery, status: int | None, error: str | None, give_up: bool = False) -> None:
        attempts = delivery.attempts + 1
        retry_in: float | None = None
        if error is None:
            state, outcome = DELIVERED, "delivered"
        elif give_up or attempts > len(self.backoff):
            state, outcome = FAILED, "failed"
        else:
            state, outcome, retry_in = PENDING, "retried", self.backoff[attempts - 1]
        next_at = delivery.next_attempt_at if retry_in is None else time.time() + retry_in
        updated = replace(
            delivery, state=state, attempts=attempts, next_attempt_at=next_at, last_status=status, last_error=error
        )
        await self.outbox.finish(updated, retry_in)
        self.metrics.deliveries.labels(outcome=outcome).inc()
        if state == FAILED:
            log.warning(
                "webhooks: gave up on %s to %s after %d attempts: %s", delivery.id, delivery.url, attempts, error
            )


def _iso8601(ts: float) -> str:
    """The event's time as Standard Webhooks' payload has it: `2026-12-02T15:27:32.123456Z`."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _bare(event: Completed | Failed) -> dict[str, Any]:
    """The record's fields the event itself carries, for an upload the registry no longer holds."""
    error = {"code": event.error.code, "message": event.error.message} if isinstance(event, Failed) else None
    return {
        "id": event.upload_id,
        "state": "completed" if isinstance(event, Completed) else "failed",
        "bytes": event.bytes,
        "total": event.total,
        "finished_at": event.ts,
        "upstream_status": event.upstream_status,
        "error": error,
    }


def _unauthorized(event: Failed) -> bool:
    """Refused for want of the route's token: no webhook (Rule 3)."""
    return event.rejected and event.error.code == "unauthorized"
