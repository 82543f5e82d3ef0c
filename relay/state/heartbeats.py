"""Relay liveness: a heartbeat key per relay, and a sweeper that ends the uploads of a relay that died.

Each relay `SET <p>relay:<relay id> EX 15` every BEAT_EVERY seconds (and with every flush: a relay writing
records is alive, so its uploads never show up in `<p>active` without its heartbeat after a Redis restart).

Every relay sweeps every SWEEP_EVERY seconds: `<p>active` maps each upload in flight to its relay; a relay
(other than this one) whose heartbeat key is missing on sweeps at least CONFIRM seconds apart is lost, and
each of its uploads is ended `failed` with code `relay_lost`: the record and a `failed` event go through the
same FLUSH script as any write, with the record's stored `gen`, so when several relays sweep at once the
fencing in FLUSH lets only the first one write the record and publish the event. Timing from a kill -9: the
key expires within 15 s, the sweeper sees it at most SWEEP_EVERY later and confirms CONFIRM later: about
15 + 2 + 6 = 23 s, under the 30 s of the contract.

Resumable uploads are never ended here: the contract ends them only by expiry or termination, and between its
requests (or when the relay that took one dies) another relay goes on with the upload from the shared state
(relay/resumable/shared.py: its own leases, takeover and expiry sweep). FLUSH keeps their records out of
`<p>active`; one found there anyway (written by an earlier version) is taken out of it, and left as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from relay.core import state
from relay.core.events import ErrorInfo, Failed
from relay.state.codec import decode_record
from relay.state.link import ERRORS, Link
from relay.state.writer import HEARTBEAT_TTL, Batch, Keys
from relay.uploads import UploadRecord

__all__ = ["Heartbeat", "Sweeper"]

log = logging.getLogger("relay.state")
BEAT_EVERY = 5.0
SWEEP_EVERY = 2.0
CONFIRM = 6.0
RELAY_LOST = ErrorInfo("relay_lost", "the relay that received this upload stopped answering")


class Heartbeat:
    def __init__(self, client: Redis, keys: Keys, link: Link, relay_id: str) -> None:
        self.client = client
        self.key = keys.heartbeat(relay_id)
        self.link = link

    async def beat_once(self) -> None:
        await self.client.set(self.key, "1", ex=HEARTBEAT_TTL)

    async def run(self) -> None:
        while True:
            await self.link.wait_up()
            try:
                await self.beat_once()
            except ERRORS as exc:
                self.link.down(exc)
                continue
            await asyncio.sleep(BEAT_EVERY)

    async def forget(self) -> None:
        """At a clean stop: this relay is gone now, not in 15 s (its uploads have all ended by then)."""
        await self.client.delete(self.key)


class Sweeper:
    def __init__(
        self,
        client: Redis,
        keys: Keys,
        link: Link,
        relay_id: str,
        flush: AsyncScript,
        args: Callable[[Batch], list[str | int | float]],
        on_lost: Callable[[Failed, UploadRecord], None] | None = None,
    ) -> None:
        self.on_lost = on_lost
        self.client = client
        self.keys = keys
        self.link = link
        self.relay_id = relay_id
        self.flush = flush
        self.args = args
        self.missing_since: dict[str, float] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            await self.link.wait_up()
            try:
                await self.sweep_once()
            except ERRORS as exc:
                self.link.down(exc)
                self.missing_since.clear()  # what was seen before the outage proves nothing now

    async def sweep_once(self) -> int:
        """One pass; the number of uploads ended `relay_lost`."""
        active = {_text(k): _text(v) for k, v in (await self.client.hgetall(self.keys.active)).items()}
        relays = sorted({relay for relay in active.values() if relay != self.relay_id})
        if not relays:
            self.missing_since.clear()
            return 0
        lost = await self._lost_relays(relays)
        ended = 0
        for upload_id, relay in active.items():
            if relay in lost:
                ended += await self._lose(upload_id)
        return ended

    async def _lost_relays(self, relays: list[str]) -> set[str]:
        async with self.client.pipeline(transaction=False) as pipe:
            for relay in relays:
                pipe.exists(self.keys.heartbeat(relay))
            present = await pipe.execute()
        now = time.monotonic()
        lost = set()
        for relay, here in zip(relays, present, strict=True):
            if here:
                self.missing_since.pop(relay, None)
                continue
            since = self.missing_since.setdefault(relay, now)
            if now - since >= CONFIRM:
                lost.add(relay)
        for relay in set(self.missing_since) - set(relays):
            del self.missing_since[relay]
        return lost

    async def _lose(self, upload_id: str) -> int:
        text, fin, gen = await self.client.hmget(self.keys.upload(upload_id), ["json", "fin", "gen"])
        record = decode_record(text)
        if record is None or gen is None:  # expired, or unreadable: nothing to end
            await self.client.hdel(self.keys.active, upload_id)
            return 0
        if fin == b"1":
            return 0
        if record.resumable:  # see the module docstring: not this sweeper's to end
            await self.client.hdel(self.keys.active, upload_id)
            return 0
        now = time.time()
        event = Failed(upload_id, record.bytes, record.total, now, RELAY_LOST)
        record.state = state.FAILED
        record.error = {"code": RELAY_LOST.code, "message": RELAY_LOST.message}
        record.finished_at = now
        record.terminal = event
        batch = Batch(records=[(record, _text(gen))], events=[event])
        await self.flush(args=self.args(batch))
        if self.on_lost is not None:  # several relays may sweep the same upload: the webhooks dedupe (by id)
            self.on_lost(event, record)
        log.warning("relay-server: upload %s ended relay_lost (its relay's heartbeat is gone)", upload_id)
        return 1


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
