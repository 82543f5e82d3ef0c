"""The outbox in Redis (`--redis`): one outbox for every relay on one Redis, each delivery made once.

Theory of operation
-------------------
Keys (under the prefix): `wh:<id>` (the delivery as JSON, the `Delivery` fields), `wh:due` (sorted set: the
pending ids scored by when one may next be taken), `wh:owner` (hash: id -> the relay attempting it),
`wh:born` (sorted set: pending ids by when they were added, for the listing and the oldest-pending gauge),
`wh:done` (sorted set: finished ids by when they finished, KEEP_FINISHED of them).

Rules:
1. ADD is `SET NX` per delivery: its id is derived from the upload's run, the endpoint and the type
   (relay/webhooks/base.py `delivery_id`), so when several relays add the same ending (the sweeper's
   `relay_lost`, or a write retried after a timeout that had in fact succeeded) only the first one counts.
2. CLAIM pops what is due as a lease: the ids scored at or before now are re-scored now + CLAIM_SECONDS and
   owned by this relay. Nobody else takes them until the lease runs out, so each delivery is attempted by one
   relay at a time; a relay that dies mid-attempt (SIGKILL) leaves its claims to expire, and another relay
   takes them then. CLAIM_SECONDS is longer than an attempt can last (10 s, relay/webhooks/deliverer.py).
3. FINISH writes the outcome only while this relay still owns the claim (a relay paused past its lease
   cannot overwrite what the relay that took over recorded): a retry is re-scored now + its backoff, a
   finished one moves to `wh:done`. RELEASE (at a clean stop) makes attempts cut short due again at once.
4. Every time is Redis's own (`TIME`): relays' clocks are never compared.
5. Redis trouble never fails or slows an upload (nothing here is on its path) and is never an exception out
   of here: deliveries that could not be added are kept in memory (MAX_UNSENT) and added when Redis answers
   again; outcomes that could not be written are retried the same way (meanwhile the claim may run out and
   another relay attempt it again: at least once, with the same webhook-id). The shared `Link` says degraded.
6. The listing and the gauges read a snapshot, refreshed at most every REFRESH_EVERY seconds by the
   dispatcher's calls to `due` (the admin route is synchronous), so `GET /_relay/webhooks` on any relay shows
   every relay's deliveries within about a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Collection
from dataclasses import asdict, fields
from typing import Any

from redis.asyncio import Redis

from relay.state.link import ERRORS, Link
from relay.state.writer import Keys
from relay.webhooks.base import PENDING, Delivery

__all__ = ["CLAIM_SECONDS", "KEEP_FINISHED", "RedisOutbox"]

log = logging.getLogger("relay.webhooks")
CLAIM_SECONDS = 20.0
KEEP_FINISHED = 1000
POLL_EVERY = 0.5  # another relay may add or free a delivery at any time: ask again at least this often
REFRESH_EVERY = 1.0
OP_TIMEOUT = 2.0
MAX_UNSENT = 10_000
LISTED = 200

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

ADD = (
    _NOW
    + """
local p, added = ARGV[1], 0
for i = 2, #ARGV, 2 do
  if redis.call('SET', p .. 'wh:' .. ARGV[i], ARGV[i + 1], 'NX') then
    redis.call('ZADD', p .. 'wh:due', now, ARGV[i])
    redis.call('ZADD', p .. 'wh:born', now, ARGV[i])
    added = added + 1
  end
end
return added
"""
)

CLAIM = (
    _NOW
    + """
local p, owner, lease, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local due, out = p .. 'wh:due', {}
if limit > 0 then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)) do
    local body = redis.call('GET', p .. 'wh:' .. id)
    if body then
      redis.call('ZADD', due, now + lease, id)
      redis.call('HSET', p .. 'wh:owner', id, owner)
      out[#out + 1] = body
    else
      redis.call('ZREM', due, id)
      redis.call('ZREM', p .. 'wh:born', id)
      redis.call('HDEL', p .. 'wh:owner', id)
    end
  end
end
local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
local wait = ''
if first[2] then wait = tostring(tonumber(first[2]) - now) end
return {wait, out}
"""
)

FINISH = (
    _NOW
    + """
local p, owner, id, body, pending = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local delay, keep = tonumber(ARGV[6]), tonumber(ARGV[7])
if redis.call('HGET', p .. 'wh:owner', id) ~= owner then return 0 end
redis.call('HDEL', p .. 'wh:owner', id)
redis.call('SET', p .. 'wh:' .. id, body)
if pending == '1' then
  redis.call('ZADD', p .. 'wh:due', now + delay, id)
  return 1
end
redis.call('ZREM', p .. 'wh:due', id)
redis.call('ZREM', p .. 'wh:born', id)
local done = p .. 'wh:done'
redis.call('ZADD', done, now, id)
local extra = redis.call('ZCARD', done) - keep
if extra > 0 then
  for _, old in ipairs(redis.call('ZRANGE', done, 0, extra - 1)) do redis.call('DEL', p .. 'wh:' .. old) end
  redis.call('ZREMRANGEBYRANK', done, 0, extra - 1)
end
return 1
"""
)

RELEASE = (
    _NOW
    + """
local p, owner = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  if redis.call('HGET', p .. 'wh:owner', ARGV[i]) == owner then
    redis.call('HDEL', p .. 'wh:owner', ARGV[i])
    redis.call('ZADD', p .. 'wh:due', now, ARGV[i])
  end
end
return 0
"""
)


class RedisOutbox:
    """An `OutboxStore` (relay/webhooks/base.py) shared by every relay on one Redis; see the module docstring."""

    def __init__(self, client: Redis, keys: Keys, link: Link, relay_id: str) -> None:
        self.client = client
        self.keys = keys
        self.link = link
        self.owner = relay_id
        self._add = client.register_script(ADD)
        self._claim = client.register_script(CLAIM)
        self._finish = client.register_script(FINISH)
        self._release = client.register_script(RELEASE)
        self.unsent: list[Delivery] = []  # Rule 5
        self.unfinished: list[tuple[Delivery, float | None]] = []
        self._snapshot: list[Delivery] = []
        self._pending = 0
        self._oldest_age = 0.0
        self._refreshed = -REFRESH_EVERY
        self._known = {item.name for item in fields(Delivery)}

    async def open(self) -> None:
        if self.link.is_up:
            await self._refresh()

    async def close(self) -> None:
        if self.unsent or self.unfinished:
            log.warning(
                "webhooks: redis did not take %d deliveries and %d outcomes before the stop; they are lost",
                len(self.unsent),
                len(self.unfinished),
            )

    # -- writing ------------------------------------------------------------------------------------------------

    async def add(self, deliveries: list[Delivery]) -> None:
        if not deliveries:
            return
        if self.link.is_up:
            args: list[str] = [self.keys.prefix]
            for delivery in deliveries:
                args += [delivery.id, self._encode(delivery)]
            if await self._call(self._add, args) is not None:
                self._refreshed = -REFRESH_EVERY
                return
        self.unsent.extend(deliveries)
        excess = len(self.unsent) - MAX_UNSENT
        if excess > 0:
            del self.unsent[:excess]
            log.warning("webhooks: redis unreachable; %d deliveries dropped from the in-memory queue", excess)

    async def finish(self, delivery: Delivery, retry_in: float | None) -> None:
        pending = "1" if delivery.state == PENDING else "0"
        args = [self.keys.prefix, self.owner, delivery.id, self._encode(delivery), pending]
        args += [f"{retry_in or 0.0:.3f}", str(KEEP_FINISHED)]
        if not self.link.is_up or await self._call(self._finish, args) is None:
            self.unfinished.append((delivery, retry_in))
        self._refreshed = -REFRESH_EVERY

    async def release(self, deliveries: list[Delivery]) -> None:
        if deliveries and self.link.is_up:
            await self._call(self._release, [self.keys.prefix, self.owner, *(item.id for item in deliveries)])

    async def _call(self, script: Any, args: list[str]) -> Any:
        """The script's answer, or None when Redis did not give one (the link is then down)."""
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                return await script(args=args)
        except ERRORS as exc:
            self.link.down(exc)
            return None

    # -- claiming -----------------------------------------------------------------------------------------------

    async def due(self, limit: int, busy: Collection[str]) -> tuple[list[Delivery], float | None]:
        if not self.link.is_up:
            return [], POLL_EVERY
        if self.unsent:  # Rule 5: what the outage held back, first
            held, self.unsent = self.unsent, []
            await self.add(held)
        while self.unfinished and self.link.is_up:
            delivery, retry_in = self.unfinished.pop(0)
            await self.finish(delivery, retry_in)
        if time.monotonic() - self._refreshed >= REFRESH_EVERY and self.link.is_up:
            await self._refresh()
        answer = await self._call(self._claim, [self.keys.prefix, self.owner, str(CLAIM_SECONDS), str(limit)])
        if answer is None:
            return [], POLL_EVERY
        wait_text, bodies = answer
        claimed = [found for body in bodies if (found := self._decode(body)) is not None]
        wait = float(wait_text) if wait_text else POLL_EVERY
        return [item for item in claimed if item.id not in busy], min(max(0.0, wait), POLL_EVERY)

    # -- reading (a snapshot: Rule 6) ----------------------------------------------------------------------------

    def recent(self, limit: int = 100) -> list[Delivery]:
        return self._snapshot[:limit]

    def pending_count(self) -> int:
        return self._pending + len(self.unsent)

    def oldest_pending_age(self) -> float:
        return self._oldest_age

    async def _refresh(self) -> None:
        prefix = self.keys.prefix
        try:
            async with asyncio.timeout(OP_TIMEOUT):
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.time()
                    pipe.zcard(prefix + "wh:born")
                    pipe.zrange(prefix + "wh:born", 0, 0, withscores=True)
                    pipe.zrevrange(prefix + "wh:born", 0, LISTED - 1)
                    pipe.zrevrange(prefix + "wh:done", 0, LISTED - 1)
                    (seconds, micros), pending, oldest, born, done = await pipe.execute()
                ids = [*born, *done]
                bodies = await self.client.mget(*[prefix + "wh:" + _text(item) for item in ids]) if ids else []
        except ERRORS as exc:
            self.link.down(exc)
            return
        now = seconds + micros / 1e6
        self._pending = int(pending)
        self._oldest_age = max(0.0, now - oldest[0][1]) if oldest else 0.0
        found = [delivery for body in bodies if body is not None and (delivery := self._decode(body)) is not None]
        self._snapshot = sorted(found, key=lambda item: item.created_at, reverse=True)
        self._refreshed = time.monotonic()

    # -- encoding -----------------------------------------------------------------------------------------------

    def _encode(self, delivery: Delivery) -> str:
        return json.dumps(asdict(delivery), separators=(",", ":"))

    def _decode(self, body: bytes | str) -> Delivery | None:
        """None for something this relay cannot read (never an exception: the key space is shared)."""
        try:
            data = json.loads(body)
            return Delivery(**{key: value for key, value in data.items() if key in self._known})
        except (ValueError, TypeError):
            return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
