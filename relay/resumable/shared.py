"""The resumable uploads' state shared by every relay on one Redis (`--redis`): documents, leases, fencing tokens.

Theory of operation
-------------------
With `--redis`, Redis holds the authoritative state document of every resumable upload
(`ResumableUpload.to_json()`), so any relay takes any request of any upload. Per upload, under the prefix:
  - `rs:<id>` (hash): `doc` (the state document), `fence` (the last fencing token given out), `held` (the token
    of the lease that has not been let go: still there while its lease is gone means its holder died);
  - `rs:lease:<id>` (string, with an expiry): `<relay id> <token> <mode>`, mode `append`, `forward` or `sweep`;
  - `rs:incomplete`, `rs:expiry`, `rs:undelivered` (sorted sets of ids, scored by `expires_at`): what
    `--resumable-max-incomplete` counts, what the sweepers look at, what redelivery retries.

Rules:
1. One holder per upload: TAKE gives a lease only when none is there, with a new token (HINCRBY `fence`). The
   relay renews what it holds every RENEW_EVERY seconds, so a dead relay's lease runs out in LEASE_MS.
2. Fencing: every change of a document goes through COMMIT, which writes only if the lease named by the token is
   still there with that token (or, without a token, when no lease is there at all and the document is still the
   one the request decided on), and keeps the sorted sets in step in the same script. A holder that paused past
   its lease can never move the offset or overwrite newer state.
3. Ending another relay's append: PUBLISH the upload id on that relay's channel (`rs:supersede:<relay id>`); the
   holder's append ends (keeping what it received) and lets go. Pub/sub may lose a message: the asker repeats it
   every second while it waits, and the lease's expiry is the fallback when the holder is dead.
4. Creation is one script: the id must be free (409 otherwise) and, when a cap is given, fewer than that many
   uploads incomplete across relays (429 otherwise).
5. Redis may restart empty (it needs no persistence): the spool's info documents are still written after every
   commit, and an id Redis does not know is looked up there and adopted (ADOPT), then recovered from the spool's
   durable bytes by whoever takes it first, as after a restart.
6. An upload nobody asks about again is found by listing the spool (relay/resumable/holding.py `_find_orphans`):
   at most one relay lists it per ORPHAN_SCAN_EVERY (holding.py), by claiming `rs:orphan-scan` (SET NX with an
   expiry), a key that goes with everything else when Redis restarts empty, so that the next sweep of any relay
   lists the spool then. The ids it finds that Redis does not know (`unknown`: one EXISTS each, pipelined) are
   adopted as in Rule 5 once they are still unknown ORPHAN_GRACE later; the claim is then stretched to the period.
Every call is bounded (CALL_TIMEOUT); Redis trouble is `StateUnavailable`, answered 503 `spool_unavailable`:
with the shared state gone a relay cannot know who writes, and two writers could lose acknowledged bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from relay.cancel import cancel_and_wait
from relay.core import resumable as core
from relay.core.resumable import ResumableUpload
from relay.resumable.unavailable import Seen, StateUnavailable
from relay.state.link import ERRORS, describe

__all__ = ["LEASE_MS", "RENEW_EVERY", "RedisUploads", "Seen", "StateUnavailable"]

log = logging.getLogger("relay.resumable")
LEASE_MS = 6000  # renewed every 2 s: a dead relay's upload is free 4-6 s after it died
RENEW_EVERY = 2.0
CALL_TIMEOUT = 2.0
KEEP_AFTER_EXPIRY = 24 * 3600  # a document outlives its expiry by this much (the sweeper forgets it before)
UNKNOWN_BATCH = 500  # ids per pipelined round trip when the spool's listing is checked against Redis (Rule 6)

TAKE = """
local doc = redis.call('HGET', KEYS[1], 'doc')
if not doc then return {0, false, false, false} end
local cur = redis.call('GET', KEYS[2])
if cur then return {0, doc, cur, false} end
if ARGV[2] == '' then return {0, doc, false, redis.call('HGET', KEYS[1], 'held') or false} end
local orphan = redis.call('HGET', KEYS[1], 'held') or false
local token = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. token .. ' ' .. ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[1], 'held', token)
return {token, doc, false, orphan}
"""

COMMIT = """
local cur = redis.call('GET', KEYS[2])
if ARGV[1] == '' then
  if cur then return 0 end
  if ARGV[8] ~= '' and redis.call('HGET', KEYS[1], 'doc') ~= ARGV[8] then return 0 end
elseif not cur or string.match(cur, '^%S+ (%d+) ') ~= ARGV[1] then
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
if ARGV[6] == '1' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3]) else redis.call('ZREM', KEYS[3], ARGV[3]) end
if ARGV[7] == '1' then redis.call('ZADD', KEYS[5], ARGV[4], ARGV[3]) else redis.call('ZREM', KEYS[5], ARGV[3]) end
return 1
"""

CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if ARGV[5] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[6])
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return -2 end
end
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'fence', 0)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return 1
"""

RELEASE = """
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^%S+ (%d+) ') == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('HGET', KEYS[2], 'held') == ARGV[1] then redis.call('HDEL', KEYS[2], 'held') end
return 0
"""

MODE = """
local cur = redis.call('GET', KEYS[1])
if not cur or string.match(cur, '^%S+ (%d+) ') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""

RENEW = """
local lost = {}
for i = 1, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if cur and string.match(cur, '^%S+ (%d+) ') == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

ADOPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'fence', 1, 'held', 'adopted')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], '- 1 adopt', 'PX', ARGV[7])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
if ARGV[5] == '1' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2]) end
if ARGV[6] == '1' then redis.call('ZADD', KEYS[5], ARGV[3], ARGV[2]) end
return 1
"""

FORGET = """
redis.call('DEL', KEYS[1])
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 0
"""


class RedisUploads:
    """The Redis side of the resumable uploads' state for one relay (see the module docstring)."""

    def __init__(self, client: Redis, prefix: str, relay_id: str, *, on_lost: Callable[[str], None]) -> None:
        self.client = client
        self.prefix = prefix
        self.relay_id = relay_id
        self.held: dict[str, int] = {}  # upload id -> the token of the lease this relay holds
        self._on_lost = on_lost  # a lease this relay held is gone (expired, taken over): end what runs under it
        self._scripts = {name: client.register_script(text) for name, text in _SCRIPTS.items()}
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()

    # -- keys ---------------------------------------------------------------------------------------------------

    def _doc(self, upload_id: str) -> str:
        return f"{self.prefix}rs:{upload_id}"

    def _lease(self, upload_id: str) -> str:
        return f"{self.prefix}rs:lease:{upload_id}"

    def _channel(self, relay_id: str) -> str:
        return f"{self.prefix}rs:supersede:{relay_id}"

    @property
    def _scan(self) -> str:
        return f"{self.prefix}rs:orphan-scan"

    @property
    def _sets(self) -> tuple[str, str, str]:
        return f"{self.prefix}rs:incomplete", f"{self.prefix}rs:expiry", f"{self.prefix}rs:undelivered"

    # -- start and stop ---------------------------------------------------------------------------------------

    async def start(self, on_supersede: Callable[[str], None]) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(on_supersede)),
            asyncio.create_task(self._renew_forever()),
        ]
        with contextlib.suppress(TimeoutError):  # Redis answered the start-up PING: this is quick
            async with asyncio.timeout(CALL_TIMEOUT):
                await self._listening.wait()

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)  # a single cancel() can be lost in redis-py (relay/cancel.py)
        # Leases still held are not given back: they run out, and whoever takes the upload next recovers it
        # from the spool's durable bytes (an append cut by the stop keeps what it got).

    async def _listen(self, on_supersede: Callable[[str], None]) -> None:
        """Rule 3, the holder's side: this relay's channel, resubscribed after any Redis trouble."""
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self._channel(self.relay_id))
                self._listening.set()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        on_supersede(bytes(message["data"]).decode("ascii", "replace"))
            except ERRORS as exc:
                log.debug("resumable supersede channel: %s", describe(exc))
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(*ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            held = list(self.held.items())
            if not held:
                continue
            try:
                lost = await self._call(
                    "renew", [self._lease(upload_id) for upload_id, _ in held], [LEASE_MS, *(t for _, t in held)]
                )
            except StateUnavailable:
                continue  # tried again in RENEW_EVERY; the lease runs longer than that
            for index in lost or ():
                upload_id, token = held[int(index) - 1]
                if self.held.get(upload_id) == token:
                    del self.held[upload_id]
                    log.warning("the lease on resumable upload %s was lost; its append ends", upload_id)
                    self._on_lost(upload_id)

    # -- the calls ----------------------------------------------------------------------------------------------

    async def _call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                return await self._scripts[script](keys=keys, args=args)
        except ERRORS as exc:
            raise StateUnavailable(f"the shared state (redis) did not answer: {describe(exc)}") from None

    async def take(self, upload_id: str, mode: str | None) -> Seen:
        """A lease in `mode` if the upload is free (Rule 1); with mode None only a look (no lease taken)."""
        keys = [self._doc(upload_id), self._lease(upload_id)]
        token, doc, lease, orphan = await self._call("take", keys, [self.relay_id, mode or "", LEASE_MS])
        text = doc.decode() if isinstance(doc, bytes) else None
        if token:
            self.held[upload_id] = int(token)
            return Seen(text, token=int(token), orphan=bool(orphan))
        if isinstance(lease, bytes):
            holder, _, rest = lease.decode().partition(" ")
            return Seen(text, holder=holder, mode=rest.partition(" ")[2], orphan=False)
        return Seen(text, orphan=bool(orphan))

    async def commit(self, upload: ResumableUpload, token: int | None, *, before: ResumableUpload | None) -> bool:
        """Rule 2: write the document if `token` still holds the lease; without a token, only if nobody holds one
        and the document is still `before` (compare-and-set: what this request decided on)."""
        incomplete = upload.state in core.INCOMPLETE
        undelivered = upload.state == core.FORWARDING and upload.error is not None
        ttl = max(int(upload.expires_at - time.time()), 0) + KEEP_AFTER_EXPIRY
        keys = [self._doc(upload.id), self._lease(upload.id), *self._sets]
        args = [
            "" if token is None else token,
            upload.to_json(),
            upload.id,
            upload.expires_at,
            ttl,
            int(incomplete),
            int(undelivered),
            "" if before is None else before.to_json(),
        ]
        return bool(await self._call("commit", keys, args))

    async def create(self, upload: ResumableUpload, max_incomplete: int | None) -> int:
        """Rule 4: 1 created, -1 the id is taken, -2 too many incomplete uploads."""
        incomplete, expiry, _ = self._sets
        ttl = max(int(upload.expires_at - time.time()), 0) + KEEP_AFTER_EXPIRY
        cap = "" if max_incomplete is None else max_incomplete
        args = [upload.to_json(), upload.id, upload.expires_at, ttl, cap, time.time()]
        return int(await self._call("create", [self._doc(upload.id), incomplete, expiry], args))

    async def adopt(self, upload: ResumableUpload) -> None:
        """Rule 5: a document Redis lost, back from the spool's info document, orphaned (so that whoever takes it
        first recovers it from the durable bytes) and held for one lease's time by nobody (so that a relay still
        appending to it notices its lease is gone, and ends that append, before anyone recovers it)."""
        incomplete = upload.state in core.INCOMPLETE
        undelivered = upload.state == core.FORWARDING
        ttl = max(int(upload.expires_at - time.time()), 0) + KEEP_AFTER_EXPIRY
        keys = [self._doc(upload.id), self._lease(upload.id), *self._sets]
        args = [upload.to_json(), upload.id, upload.expires_at, ttl, int(incomplete), int(undelivered), LEASE_MS]
        await self._call("adopt", keys, args)

    async def release(self, upload_id: str, token: int) -> None:
        if self.held.get(upload_id) == token:
            del self.held[upload_id]
        await self._call("release", [self._lease(upload_id), self._doc(upload_id)], [token])

    async def switch(self, upload_id: str, token: int, mode: str) -> bool:
        """The lease `token` holds goes on in another mode (an append that completed the upload: `forward`)."""
        value = f"{self.relay_id} {token} {mode}"
        return bool(await self._call("mode", [self._lease(upload_id)], [token, value]))

    async def forget(self, upload_id: str) -> None:
        self.held.pop(upload_id, None)
        await self._call("forget", [self._doc(upload_id), self._lease(upload_id), *self._sets], [upload_id])

    async def supersede(self, holder: str, upload_id: str) -> None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await self.client.publish(self._channel(holder), upload_id)
        except ERRORS as exc:
            raise StateUnavailable(f"the shared state (redis) did not answer: {describe(exc)}") from None

    async def incomplete(self) -> int:
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                return int(await self.client.zcount(self._sets[0], time.time(), "+inf"))
        except ERRORS as exc:
            raise StateUnavailable(f"the shared state (redis) did not answer: {describe(exc)}") from None

    async def due(self, now: float) -> list[str]:
        """Ids the sweeper looks at: past their expiry, or finished and not delivered (redelivery)."""
        _, expiry, undelivered = self._sets
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                expired = await self.client.zrangebyscore(expiry, "-inf", now)
                waiting = await self.client.zrange(undelivered, 0, -1)
        except ERRORS as exc:
            raise StateUnavailable(f"the shared state (redis) did not answer: {describe(exc)}") from None
        return sorted({bytes(member).decode() for member in [*expired, *waiting]})

    # -- uploads Redis lost (Rule 6) -------------------------------------------------------------------------------

    async def claim_scan(self, seconds: float) -> bool:
        """Whether this relay lists the spool now: no relay claimed it in the last period (or Redis restarted)."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                return bool(await self.client.set(self._scan, self.relay_id, nx=True, px=int(seconds * 1000)))
        except ERRORS as exc:
            raise StateUnavailable(f"the shared state (redis) did not answer: {describe(exc)}") from None

    async def scanned(self, seconds: float) -> None:
        """This relay's listing is dealt with: the next one is due in `seconds`, on whichever relay claims it."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                await self.client.set(self._scan, self.relay_id, px=int(seconds * 1000))
        except ERRORS as exc:
            raise StateUnavailable(f"the shared state (redis) did not answer: {describe(exc)}") from None

    async def unknown(self, upload_ids: list[str]) -> list[str]:
        """The ids among `upload_ids` that have no document in Redis."""
        missing: list[str] = []
        for start in range(0, len(upload_ids), UNKNOWN_BATCH):
            batch = upload_ids[start : start + UNKNOWN_BATCH]
            try:
                async with asyncio.timeout(CALL_TIMEOUT), self.client.pipeline(transaction=False) as pipe:
                    for upload_id in batch:
                        pipe.exists(self._doc(upload_id))
                    found = await pipe.execute()
            except ERRORS as exc:
                raise StateUnavailable(f"the shared state (redis) did not answer: {describe(exc)}") from None
            missing += [upload_id for upload_id, exists in zip(batch, found, strict=True) if not exists]
        return missing


_SCRIPTS = {
    "take": TAKE,
    "commit": COMMIT,
    "create": CREATE,
    "release": RELEASE,
    "mode": MODE,
    "renew": RENEW,
    "forget": FORGET,
    "adopt": ADOPT,
}
