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
before its body, and one read per refusal, off the request's path (`Refusals`). Redis trouble is never an
exception out of here: jobs mark the link down, reads fall back to the local view, caps to the relay's own count,
and health says `degraded` until Redis answers again.

Rules of the local view (several relays serve one upload's requests, or one upload's id):
1. A resumable upload between requests here is detached (`RedisUploadRegistry.release`, called by
   relay/resumable/endpoints.py `note`): not in progress on this relay any more (`is_active`: TAKE still refuses
   its id everywhere while it is open), shown from Redis when Redis has it (`choose`), and gone `ttl` seconds
   later. The relay that completes it emits the end there: the one that took an earlier request never hears of
   it, and must not keep the id "in progress" for good.
2. A refusal never hides an upload in progress under its id (`choose`), and one whose id Redis says an upload
   in progress holds (FLUSH fences it out of Redis) leaves the local view and sends no webhook (`Refusals`):
   this relay's own cap refuses before any Redis call, so under another relay's upload's id too.

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
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from relay.bus import Subscription
from relay.cancel import cancel_and_wait
from relay.core import state
from relay.core.events import Event, Failed, ResumableNote, Started
from relay.state.base import FeedEntry
from relay.state.codec import decode_record
from relay.state.feed import Fanout, follow_all, follow_upload, fresher
from relay.state.heartbeats import Heartbeat, Sweeper
from relay.state.leases import Leases
from relay.state.link import ERRORS, Link, describe
from relay.state.writer import FLUSH, OPEN_RESUMABLE, Batch, Flusher, Keys, WriteQueue, flush_args
from relay.uploads import InMemoryUploadRegistry, UploadRecord

__all__ = ["RedisEventBus", "RedisState", "RedisUploadRegistry", "choose", "connect", "ping"]

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
    """The local view plus the write queue (see the module docstring).

    A resumable upload between requests here (`release`) is "detached": its local copy is kept (the next request
    that comes here goes on from it) but is not an upload in progress on this relay any more (`is_active`; TAKE
    still refuses its id on every relay while Redis holds it open), the reads prefer Redis's record to it (`view`),
    and it goes `ttl` seconds after its last request here (or beyond `max_detached` of them): any relay may take
    the next request, and the one that ends it emits the end there, not here."""

    def __init__(self, local: InMemoryUploadRegistry, queue: WriteQueue, *, ttl: float, max_detached: int) -> None:
        self.local = local
        self.queue = queue
        self._ttl = ttl
        self._max_detached = max_detached
        self._detached: OrderedDict[str, float] = OrderedDict()  # id -> monotonic time of its release, oldest first

    def apply(self, event: Event | ResumableNote) -> None:
        self.local.apply(event)
        record = self.local.get(event.upload_id)
        # Served here again (`release` follows if between requests), a new upload under that id, or ended here.
        if isinstance(event, ResumableNote | Started) or (record is not None and record.finished):
            self._detached.pop(event.upload_id, None)
        if record is not None:
            self.queue.record(record)

    def release(self, upload_id: str) -> None:
        record = self.local.get(upload_id)
        if record is not None and record.resumable and not record.finished:
            self._detached[upload_id] = time.monotonic()
            self._detached.move_to_end(upload_id)
        self._prune()

    def _prune(self) -> None:
        cutoff = time.monotonic() - self._ttl
        while self._detached:
            upload_id, released = next(iter(self._detached.items()))
            if released >= cutoff and len(self._detached) <= self._max_detached:
                break
            del self._detached[upload_id]
            record = self.local.get(upload_id)
            if record is not None and not record.finished:
                self.local.forget(upload_id)

    def drop(self, record: UploadRecord) -> None:
        """A refusal fenced out of Redis (Refusals) leaves this view too, unless the id was used again since."""
        if self.local.get(record.id) is record:
            self.local.forget(record.id)

    def detached(self, upload_id: str) -> bool:
        return upload_id in self._detached

    def get(self, upload_id: str) -> UploadRecord | None:
        return self.local.get(upload_id)

    def is_active(self, upload_id: str) -> bool:
        self._prune()
        return upload_id not in self._detached and self.local.is_active(upload_id)

    def recent(self, limit: int = 100) -> list[UploadRecord]:
        self._prune()
        return self.local.recent(limit)

    def view(self, upload_id: str) -> UploadRecord | None:
        """This relay's record where it is the one to show (`follow`): not a detached copy, nor a refusal (Redis
        has the refusal once written, and a refusal fenced there must not show here either: `choose`)."""
        record = self.local.get(upload_id)
        if record is None or upload_id in self._detached or record.state == state.REJECTED:
            return None
        return record


def choose(local: UploadRecord | None, stored: UploadRecord | None, *, detached: bool) -> UploadRecord | None:
    """The record to show of an upload, from this relay's view and Redis's (`fresher`), except that:
    - a detached copy (RedisUploadRegistry) yields to Redis's record of the same run unless it holds more bytes
      (its own last write still queued): another relay may have taken the upload on, or ended it;
    - a refusal never hides an upload in progress (Redis's record not finished), as FLUSH's fence keeps it out of
      Redis (relay/state/writer.py): refused by this relay's own cap (before any Redis call) under the id of an
      upload another relay serves, it is answered, not recorded over that upload."""
    if local is None or stored is None:
        return local or stored
    if local.state == state.REJECTED and not stored.finished:
        return stored
    if detached and stored.started_at >= local.started_at and (stored.finished or stored.bytes >= local.bytes):
        return stored
    return fresher(local, stored)


class RedisEventBus:
    """`publish` queues for Redis; subscribers get every relay's events back from the stream (the fan-out).

    `subscribe_own` is for who must act once per ending across all relays (the webhooks' deliverer): it gets
    only the events this relay published, and the `relay_lost` endings its sweeper wrote (`own`), straight
    from here, never through Redis."""

    def __init__(self, queue: WriteQueue, fanout: Fanout, refusals: Refusals | None = None) -> None:
        self.queue = queue
        self.fanout = fanout
        self.refusals = refusals
        self.own_subscriptions: set[Subscription] = set()

    def publish(self, event: Event) -> None:
        self.queue.event(event)
        if self.refusals is not None and isinstance(event, Failed) and event.rejected:
            self.refusals.check(event)  # own() once Redis said the id is no other upload's in progress
            return
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


# Lua: whether an upload in progress holds the id (FLUSH's fence of a refusal: relay/state/writer.py).
# KEYS: `<p>upload:<id>`, `<p>rs:<id>`.
IN_PROGRESS = (
    OPEN_RESUMABLE
    + """
if redis.call('HGET', KEYS[1], 'fin') == '0' or open_resumable(KEYS[2]) then return 1 end
return 0
"""
)


class Refusals:
    """The ending of a refusal goes to `own` subscribers (the webhooks) only once Redis said no upload in
    progress holds its id. A plain upload refused by this relay's own cap is refused before any Redis call, so
    its id may be another relay's upload in progress: FLUSH keeps the refusal out of Redis (its record and its
    events), so its `upload.failed` is not sent either, and its record leaves this relay's view (`drop`), as
    that upload goes on. One read per refusal, off the request's path; while Redis cannot answer, the ending goes
    on as before (nothing known against it). Until the read is answered, `choose` keeps the refusal from hiding
    the upload in progress."""

    def __init__(
        self,
        client: Redis,
        keys: Keys,
        link: Link,
        record: Callable[[str], UploadRecord | None],
        hand_over: Callable[[Failed, UploadRecord | None], None],
        drop: Callable[[UploadRecord], None],
    ) -> None:
        self.keys = keys
        self.link = link
        self.record = record
        self.hand_over = hand_over
        self.drop = drop
        self._in_progress = client.register_script(IN_PROGRESS)
        self.tasks: set[asyncio.Task[None]] = set()

    def check(self, event: Failed) -> None:
        record = self.record(event.upload_id)  # as it is now (webhooks Rule 5: the id may be used again soon)
        if not self.link.is_up:
            self.hand_over(event, record)
            return
        task = asyncio.create_task(self._check(event, record))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _check(self, event: Failed, record: UploadRecord | None) -> None:
        keys = [self.keys.upload(event.upload_id), self.keys.resumable(event.upload_id)]
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                held = bool(await self._in_progress(keys=keys))
        except ERRORS as exc:
            self.link.down(exc)
            held = False
        if not held:
            self.hand_over(event, record)
        elif record is not None:
            self.drop(record)  # fenced out of Redis (or about to be): not this relay's view of that id either


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
            InMemoryUploadRegistry(max_finished=registry_size, ttl=registry_ttl),
            self.queue,
            ttl=registry_ttl,
            max_detached=registry_size,
        )
        # The record a refusal's ending is handed over with (own subscribers read it through `record`).
        self._handing: tuple[str, UploadRecord | None] | None = None
        self.refusals = Refusals(
            self.client, self.keys, self.link, self._registry.local.get, self._hand_over, self._registry.drop
        )
        self._bus = RedisEventBus(self.queue, self.fanout, self.refusals)
        self._tasks: list[asyncio.Task[None]] = []

    def _lost(self, event: Failed, record: UploadRecord) -> None:
        self.lost[record.id] = record
        while len(self.lost) > LOST_KEPT:
            del self.lost[next(iter(self.lost))]
        self._bus.own(event)

    def _hand_over(self, event: Failed, record: UploadRecord | None) -> None:
        self._handing = (event.upload_id, record)
        try:
            self._bus.own(event)
        finally:
            self._handing = None

    def record(self, upload_id: str) -> UploadRecord | None:
        """This relay's record of an upload, or one its sweeper ended: what an ending's webhook carries."""
        if self._handing is not None and self._handing[0] == upload_id:
            return self._handing[1]  # a refusal's, as it was when it was refused (Refusals)
        local, lost = self._registry.local.get(upload_id), self.lost.get(upload_id)
        if lost is not None and (local is None or local.started_at < lost.started_at):
            return lost  # a later run of the id than this relay's own (a reused id), ended by the sweeper
        return local

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
        await cancel_and_wait([*self._tasks, *self.refusals.tasks])  # a single cancel() can be lost (relay/cancel.py)
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
        local = self._registry.get(upload_id)
        if not self.link.is_up:
            return local
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                text = await self.client.hget(self.keys.upload(upload_id), "json")
        except ERRORS as exc:
            self.link.down(exc)
            return local
        return choose(local, decode_record(text), detached=self._registry.detached(upload_id))

    async def listing(self, limit: int) -> list[UploadRecord]:
        local = self._registry.recent(limit)
        if not self.link.is_up:
            return local
        try:
            stored = await self._stored_recent(limit)
        except ERRORS as exc:
            self.link.down(exc)
            return local
        merged = {record.id: record for record in stored}
        for record in local:
            merged[record.id] = (
                choose(record, merged.get(record.id), detached=self._registry.detached(record.id)) or record
            )
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
        local = self._registry.view
        return follow_upload(self.client, self.keys, self.fanout, local, upload_id, last_event_id, unknown_wait)

    async def take_slots(self, upload_id: str, client: str, *, chosen: bool = True) -> str | None:
        return await self.leases.take(client, upload_id if chosen else None)

    def give_back(self, lease: str | None) -> None:
        self.leases.give_back(lease)

    async def id_in_use(self, upload_id: str) -> bool:
        return self._registry.is_active(upload_id) or await self.leases.in_use(upload_id)


async def _kept(name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a background job until cancelled; a bug in it is one line in the log and a restart, never a dead
    job or a traceback (Redis's own errors never get here: each job handles them through Link)."""
    while True:
        try:
            await job()
        except Exception as exc:
            log.error("relay-server: %s stopped (%s); restarting it", name, describe(exc))
            await asyncio.sleep(1.0)
