"""Caps across relays as leases: a slot is a member of a sorted set whose score is when it expires.

The upload's id is claimed the same way, as a cap of one: `<p>id:<upload id>` holds the lease of the one
upload in progress under that id on any relay, so a client-chosen `X-Upload-ID` already in progress on another
relay gets 409 `upload_id_in_use` (UploadIdInUse) from the same single await, before any cap is counted (a
refusal recorded under that id would replace the other upload's record). A resumable upload holds its id too,
from its creation until it is completed or failed, across its requests and whichever relay takes them: TAKE
refuses the id while `<p>rs:<id>` (its shared state, relay/resumable/shared.py) is there and not finished; the
resumable side checks the other way round (a creation looks for a lease on `<p>id:<id>`). A lease this relay
gave back but has not written yet (the write queue flushes in batches) is dropped by TAKE itself, in every set
it is in: the same id, and uploads that follow each other under a cap of one, follow each other on one relay at
once; on another relay a slot is free once that release is written (the queue flushes an ended upload's writes
within URGENT_GAP, relay/state/writer.py).

Why leases and not INCR/DECR: a relay that dies between the two leaks its slot forever. A lease runs out by
itself (LEASE_SECONDS after its last renewal), so a dead relay's slots come back within 25 s (the contract
says 30), while a live relay renews every lease it holds every RENEW_EVERY seconds.

TAKE (one Lua script, registered once, EVALSHA) does, atomically: refuse the id if a resumable upload not
finished holds it; for the id and each cap that is set (the global one and the client's), drop expired
members and compare the count with the cap; and only if every one has room add the new lease to each set.
Times are Redis's own (`TIME`), so relays' clocks never compare with each other; the lease is generous against
a server clock step. RENEW re-adds (ZADD, not XX) every lease still held, so after a Redis restart that lost
the sets the counts are right again within one renewal.

The check is one await on the head of a request (before the body is read), never per chunk. While Redis is
down (or slower than TAKE_TIMEOUT) the caps fall back to this relay's own count, which the proxy checks in any
case; the lease is kept locally and written at the next renewal once Redis is back. Releases go through the
write queue (relay/state/writer.py), so `give_back` never waits.
"""

from __future__ import annotations

import asyncio
import itertools

from redis.asyncio import Redis

from relay.errors import TooManyUploads, UploadIdInUse
from relay.state.link import ERRORS, Link
from relay.state.writer import OPEN_RESUMABLE, Keys, WriteQueue

__all__ = ["LEASE_SECONDS", "RENEW_EVERY", "Leases"]

LEASE_SECONDS = 25  # renewed every 10 s: a dead relay's slots come back 15-25 s after it died
RENEW_EVERY = 10.0
TAKE_TIMEOUT = 0.5

# KEYS: the n sorted sets (the id's first, when an id is claimed), then that id's resumable document, if any.
# ARGV: the member, the lease's seconds, n, the n caps, then (the set's index, a member) pairs to drop first.
TAKE = (
    OPEN_RESUMABLE
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease, n = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4 + n, #ARGV, 2 do redis.call('ZREM', KEYS[tonumber(ARGV[i])], ARGV[i + 1]) end
if #KEYS > n and open_resumable(KEYS[n + 1]) then return 1 end
for k = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now)
  if redis.call('ZCARD', KEYS[k]) >= tonumber(ARGV[3 + k]) then return k end
end
for k = 1, n do
  redis.call('ZADD', KEYS[k], now + lease, ARGV[1])
  redis.call('EXPIRE', KEYS[k], lease * 2)
end
return 0
"""
)

IN_USE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""

RENEW = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('ZADD', ARGV[i], until_, ARGV[i + 1])
  redis.call('EXPIRE', ARGV[i], tonumber(ARGV[1]) * 2)
end
return 0
"""


class Leases:
    def __init__(
        self,
        client: Redis,
        keys: Keys,
        link: Link,
        queue: WriteQueue,
        relay_id: str,
        *,
        max_concurrent: int | None,
        max_per_client: int | None,
    ) -> None:
        self.keys = keys
        self.link = link
        self.queue = queue
        self.relay_id = relay_id
        self.max_concurrent = max_concurrent
        self.max_per_client = max_per_client
        self._take = client.register_script(TAKE)
        self._renew = client.register_script(RENEW)
        self._in_use = client.register_script(IN_USE)
        self._numbers = itertools.count()
        self.held: dict[str, list[str]] = {}  # lease (the member) -> the sorted sets it is in

    async def take(self, client_key: str, upload_id: str | None) -> str | None:
        """A lease on the upload's id (unless None) and on every cap that is set, or UploadIdInUse, or
        TooManyUploads; None, without a word to Redis, when there is nothing to take."""
        caps = self._caps(client_key, upload_id)
        if not caps:
            return None
        member = f"{self.relay_id}:{next(self._numbers)}"
        keys = [key for key, _, _ in caps]
        if not self.link.is_up:
            self.held[member] = keys
            return member  # per relay until Redis is back: the proxy's own count applies
        id_key = self.keys.claim(upload_id) if upload_id is not None else None
        # This relay's own ended leases not written yet (the queue flushes in batches): TAKE drops them first, so
        # an upload that follows another on this relay never finds the slot the first one left still taken.
        stale = [(index, old) for index, key in enumerate(keys, 1) for old in self.queue.take_releases(key)]
        pairs = [item for pair in stale for item in pair]  # TAKE's ARGV: the key's index, then the member
        script_keys = keys if upload_id is None else [*keys, self.keys.resumable(upload_id)]
        args = [member, LEASE_SECONDS, len(keys), *(cap for _, cap, _ in caps), *pairs]
        try:
            async with asyncio.timeout(TAKE_TIMEOUT):
                full = await self._take(keys=script_keys, args=args)
        except ERRORS as exc:
            self.link.down(exc)
            for index, old in stale:
                self.queue.release(keys[index - 1], old)
            self.held[member] = keys  # written by the next renewal once Redis is back
            return member
        if full:
            key, _, what = caps[int(full) - 1]
            if key == id_key:
                raise UploadIdInUse(f"{what} in progress")
            raise TooManyUploads(f"{what} in progress; try again shortly")
        # Held (and so renewed) only now: a renewal that ran while TAKE was on its way would have added the
        # member to the sets first, and TAKE would have counted the request against itself (a cap of one, an id:
        # refused by its own lease).
        self.held[member] = keys
        return member

    def _caps(self, client_key: str, upload_id: str | None) -> list[tuple[str, int, str]]:
        """(sorted set, cap, what a refusal says) for each lease to take; the id first (TAKE's KEYS[1])."""
        caps: list[tuple[str, int, str]] = []
        if upload_id is not None:
            caps.append((self.keys.claim(upload_id), 1, f"upload {upload_id} is"))
        if self.max_concurrent is not None:
            caps.append((self.keys.cap("uploads"), self.max_concurrent, f"{self.max_concurrent} uploads are"))
        if self.max_per_client is not None:
            what = f"{self.max_per_client} uploads from {client_key} are"
            caps.append((self.keys.cap(f"client:{client_key}"), self.max_per_client, what))
        return caps

    async def in_use(self, upload_id: str) -> bool:
        """Whether a live lease holds this id on any relay (one read; False while Redis is down)."""
        if not self.link.is_up:
            return False
        try:
            async with asyncio.timeout(TAKE_TIMEOUT):
                return bool(await self._in_use(keys=[self.keys.claim(upload_id)]))
        except ERRORS as exc:
            self.link.down(exc)
            return False

    def give_back(self, member: str | None) -> None:
        keys = self.held.pop(member, None) if member is not None else None
        for key in keys or ():
            assert member is not None
            self.queue.release(key, member)

    async def renew_once(self) -> None:
        args: list[str | int] = [LEASE_SECONDS]
        for member, keys in self.held.items():
            for key in keys:
                args += [key, member]
        if len(args) > 1:
            await self._renew(args=args)

    async def run(self) -> None:
        """Renew every RENEW_EVERY seconds, and at once when Redis is back after an outage."""
        while True:
            await self.link.wait_up()
            try:
                await self.renew_once()
            except ERRORS as exc:
                self.link.down(exc)
                continue
            await asyncio.sleep(RENEW_EVERY)
