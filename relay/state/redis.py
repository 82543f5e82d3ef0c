"""Shared state in Redis (`--redis URL`): the registry, the events and the caps of every relay on one Redis.

Theory of operation
-------------------
The data path does not change: `RedisUploadRegistry.apply` updates this relay's own in-memory registry (its
"local view", which `get`, `is_active` and `recent` read synchronously, as before) and marks the record dirty;
`RedisEventBus.publish` queues the event. Neither waits. Background jobs, started by `start()` in the app's
lifespan, do the talking:
  - Flusher (relay/state/writer.py): everything queued, one EVALSHA per FLUSH_INTERVAL (100 ms) at most;
  - Fanout (relay/state/feed.py): XREAD BLOCK on the stream of every upload while this relay has SSE clients;
  - Leases (relay/state/leases.py): renews the leases this relay holds (the ids of its uploads, the caps);
  - Heartbeat and Sweeper (relay/state/heartbeats.py): liveness, and `relay_lost` for a dead relay's uploads;
  - Link.watch (relay/state/link.py): after an error, PING with backoff until Redis answers again.
What may await Redis: the admin endpoints (`lookup`, `listing`, `follow`) and `take_slots`, once per request
before its body. Redis trouble is never an exception out of here: jobs mark the link down, reads fall back to
the local view, caps to the relay's own count, and health says `degraded` until Redis answers again.

Keys (all under the prefix, default `relay:`): `upload:<id>` (hash: json, fin, gen, relay; key TTL),
`index` (sorted set by start time), `active` (hash id -> relay: uploads in flight, not resumable ones),
`events` and `events:<id>` (streams), `relay:<relay id>` (heartbeat), `cap:uploads`, `cap:client:<address>` and
`id:<upload id>` (leases), `wh:*` (the webhooks' outbox, relay/webhooks/redis_outbox.py), `rs:*` (the resumable
uploads' state, relay/resumable/shared.py; TAKE and FLUSH read `rs:<id>`: an incomplete one holds its id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from relay.bus import Subscription
from relay.cancel import cancel_and_wait
from relay.core.events import Event, Failed, ResumableNote
from relay.state.base import FeedEntry
from relay.state.codec import decode_record
from relay.state.feed import Fanout, follow_all, follow_upload, fresher
from relay.state.heartbeats import Heartbeat, Sweeper
from relay.state.leases import Leases
from relay.state.link import ERRORS, Link, describe
from relay.state.writer import FLUSH, Batch, Flusher, Keys, WriteQueue, flush_args
from relay.uploads import InMemoryUploadRegistry, UploadRecord

__all__ = ["RedisEventBus", "RedisState", "RedisUploadRegistry", "connect", "ping"]

log = logging.getLogger("relay.state")
READ_TIMEOUT = 2.0
STOP_TIMEOUT = 2.0
BLOCK_SLACK = 3.0  # the fan-out's XREAD BLOCK (1 s) must never look like a dead socket
LOST_KEPT = 1000


def connect(url: str, *, read_timeout: float = READ_TIMEOUT) -> Redis:
    """A client that fails fast: no retries of its own (the jobs retry, with backoff, through Link)."""
    return Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=read_timeout + BLOCK_SLACK,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


async def ping(url: str, timeout: float = 3.0) -> None:
    """Raise (ConnectionError, TimeoutError, a RedisError, ValueError for a bad URL) unless Redis answers."""
    client = connect(url)
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
    finally:
        await client.aclose()


class RedisUploadRegistry:
    """The local view plus the write queue (see the module docstring)."""

    def __init__(self, local: InMemoryUploadRegistry, queue: WriteQueue) -> None:
        self.local = local
        self.queue = queue

    def apply(self, event: Event | ResumableNote) -> None:
        self.local.apply(event)
        record = self.local.get(event.upload_id)
        if record is not None:
            self.queue.record(record)

    def get(self, upload_id: str) -> UploadRecord | None:
        return self.local.get(upload_id)

    def is_active(self, upload_id: str) -> bool:
        return self.local.is_active(upload_id)

    def recent(self, limit: int = 100) -> list[UploadRecord]:
        return self.local.recent(limit)


class RedisEventBus:
    """`publish` queues for Redis; subscribers get every relay's events back from the stream (the fan-out).

    `subscribe_own` is for who must act once per ending across all relays (the webhooks' deliverer): it gets
    only the events this relay published, and the `relay_lost` endings its sweeper wrote (`own`), straight
    from here, never through Redis."""

    def __init__(self, queue: WriteQueue, fanout: Fanout) -> None:
        self.queue = queue
        self.fanout = fanout
        self.own_subscriptions: set[Subscription] = set()

    def publish(self, event: Event) -> None:
        self.queue.event(event)
        self.own(event)

    def own(self, event: Event) -> None:
        for subscription in self.own_subscriptions:
            subscription.put(event)

    def subscribe_own(self) -> Subscription:
        subscription = Subscription(None)
        self.own_subscriptions.add(subscription)
        return subscription

    def subscribe(self, upload_id: str | None = None) -> Subscription:
        subscription = Subscription(upload_id)
        self.fanout.subscriptions.add(subscription)
        self.fanout.wake()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.close()
        self.fanout.subscriptions.discard(subscription)
        self.own_subscriptions.discard(subscription)


class RedisState:
    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        metrics: CollectorRegistry,
        max_concurrent: int | None = None,
        max_per_client: int | None = None,
        registry_size: int = 1000,
        registry_ttl: float = 3600.0,
    ) -> None:
        self.relay_id = secrets.token_hex(6)
        self.keys = Keys(prefix)
        self.ttl = registry_ttl
        self.link = Link()
        self.client = connect(url)
        self.reader = connect(url)  # the fan-out's blocking XREAD gets a connection of its own
        self.errors = Counter(
            "relay_state_errors", "Records and events that could not be written to Redis", registry=metrics
        )
        self.queue = WriteQueue(self.relay_id, self.errors.inc)
        self._flush = self.client.register_script(FLUSH)
        self.flusher = Flusher(self.queue, self._flush, self.link, self.flush_args, self.errors.inc)
        self.fanout = Fanout(self.reader, self.keys, self.link)
        self.leases = Leases(
            self.client,
            self.keys,
            self.link,
            self.queue,
            self.relay_id,
            max_concurrent=max_concurrent,
            max_per_client=max_per_client,
        )
        self.heartbeat = Heartbeat(self.client, self.keys, self.link, self.relay_id)
        self.sweeper = Sweeper(
            self.client, self.keys, self.link, self.relay_id, self._flush, self.flush_args, on_lost=self._lost
        )
        # Records of other relays' uploads this relay's sweeper ended `relay_lost` (for the webhooks' body).
        self.lost: dict[str, UploadRecord] = {}
        self._registry = RedisUploadRegistry(
            InMemoryUploadRegistry(max_finished=registry_size, ttl=registry_ttl), self.queue
        )
        self._bus = RedisEventBus(self.queue, self.fanout)
        self._tasks: list[asyncio.Task[None]] = []

    def _lost(self, event: Failed, record: UploadRecord) -> None:
        self.lost[record.id] = record
        while len(self.lost) > LOST_KEPT:
            del self.lost[next(iter(self.lost))]
        self._bus.own(event)

    def record(self, upload_id: str) -> UploadRecord | None:
        """This relay's record of an upload, or one its sweeper ended: what an ending's webhook carries."""
        return self._registry.local.get(upload_id) or self.lost.get(upload_id)

    @property
    def bus(self) -> RedisEventBus:
        return self._bus

    @property
    def registry(self) -> RedisUploadRegistry:
        return self._registry

    def flush_args(self, batch: Batch) -> list[str | int | float]:
        return flush_args(self.keys, batch, relay_id=self.relay_id, finished_ttl=self.ttl)

    async def start(self) -> None:
        jobs: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "the redis watch": lambda: self.link.watch(self.client),
            "the state writer": self.flusher.run,
            "the event reader": self.fanout.run,
            "the heartbeat": self.heartbeat.run,
            "the relay_lost sweeper": self.sweeper.run,
            "the lease renewal": self.leases.run,
        }
        self._tasks = [asyncio.create_task(_kept(name, job)) for name, job in jobs.items()]

    async def stop(self) -> None:
        """Write what is still queued (bounded), give back the leases, say goodbye, close."""
        for member in list(self.leases.held):
            self.leases.give_back(member)
        await cancel_and_wait(self._tasks)  # a single cancel() can be lost in redis-py (relay/cancel.py)
        if self.link.is_up:
            with contextlib.suppress(*ERRORS):
                await self.flusher.flush_once(timeout=STOP_TIMEOUT)
                async with asyncio.timeout(STOP_TIMEOUT):
                    await self.heartbeat.forget()
        for client in (self.client, self.reader):
            with contextlib.suppress(*ERRORS):
                await client.aclose()

    def problem(self) -> str | None:
        return None if self.link.is_up else f"redis unreachable ({self.link.error})"

    async def lookup(self, upload_id: str) -> UploadRecord | None:
        local = self._registry.local.get(upload_id)
        if not self.link.is_up:
            return local
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                text = await self.client.hget(self.keys.upload(upload_id), "json")
        except ERRORS as exc:
            self.link.down(exc)
            return local
        return fresher(local, decode_record(text))

    async def listing(self, limit: int) -> list[UploadRecord]:
        local = self._registry.local.recent(limit)
        if not self.link.is_up:
            return local
        try:
            stored = await self._stored_recent(limit)
        except ERRORS as exc:
            self.link.down(exc)
            return local
        merged = {record.id: record for record in stored}
        for record in local:
            merged[record.id] = fresher(record, merged.get(record.id)) or record
        return sorted(merged.values(), key=lambda record: record.started_at, reverse=True)[:limit]

    async def _stored_recent(self, limit: int) -> list[UploadRecord]:
        async with asyncio.timeout(READ_TIMEOUT):
            ids: list[bytes] = list(await self.client.zrevrange(self.keys.index, 0, limit - 1))  # type: ignore[arg-type]
            if not ids:
                return []
            async with self.client.pipeline(transaction=False) as pipe:
                for upload_id in ids:
                    pipe.hget(self.keys.upload(upload_id.decode()), "json")
                texts = await pipe.execute()
            gone = [upload_id for upload_id, text in zip(ids, texts, strict=True) if text is None]
            if gone:  # expired records: their index entries go too
                await self.client.zrem(self.keys.index, *gone)
        return [record for text in texts if (record := decode_record(text)) is not None]

    def follow(
        self, upload_id: str | None, last_event_id: str | None, *, unknown_wait: float
    ) -> AsyncIterator[FeedEntry] | None:
        if upload_id is None:
            return follow_all(self.client, self.keys, self.fanout, last_event_id)
        local = self._registry.local.get
        return follow_upload(self.client, self.keys, self.fanout, local, upload_id, last_event_id, unknown_wait)

    async def take_slots(self, upload_id: str, client: str, *, chosen: bool = True) -> str | None:
        return await self.leases.take(client, upload_id if chosen else None)

    def give_back(self, lease: str | None) -> None:
        self.leases.give_back(lease)

    async def id_in_use(self, upload_id: str) -> bool:
        return self._registry.local.is_active(upload_id) or await self.leases.in_use(upload_id)


async def _kept(name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a background job until cancelled; a bug in it is one line in the log and a restart, never a dead
    job or a traceback (Redis's own errors never get here: each job handles them through Link)."""
    while True:
        try:
            await job()
        except Exception as exc:
            log.error("relay-server: %s stopped (%s); restarting it", name, describe(exc))
            await asyncio.sleep(1.0)
