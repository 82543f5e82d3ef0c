"""Writes to Redis without the data path ever waiting: a queue filled synchronously, one flush per 100 ms.

Theory of operation
-------------------
`RedisUploadRegistry.apply` and `RedisEventBus.publish` (relay/state/redis.py) run on the data path: they
only mark a record dirty or append an event here, O(1), no await. `Flusher.run` takes everything queued and
sends it as **one** EVALSHA of FLUSH (registered once; redis-py loads it again after a Redis restart), at most
every FLUSH_INTERVAL, so a 64 MiB upload costs a handful of round trips, not one per chunk. An upload that
ends (its finished record, the release of its leases) cuts the wait short to URGENT_GAP: another relay must see
it finished and its slots free about when its client has the answer, not up to 100 ms later.

What FLUSH does, atomically (a Lua script runs alone on the server):
  - each dirty record: `HSET <p>upload:<id> json fin gen relay`, key-level EXPIRE (an hour once finished:
    Redis 7.0 has no per-field TTL), its score in the `<p>index` sorted set (start time, for `recent`), and
    an unfinished resumable upload's record kept until its `expires_at` at least (it lives 24 h by default
    between appends, not an hour), its place in the `<p>active` hash (upload id -> relay) while it is an upload
    in flight: not finished, and not resumable (a resumable upload outlives any request and any relay: its own
    machinery, with its leases and expiry, relay/resumable/shared.py, ends it, never the `relay_lost` sweeper);
  - fencing, where a record is dropped with that upload's events of the same batch:
    1. a record already stored finished with the same `gen` (same run of that id, `record_gen`: its start time,
       whichever relay wrote it) is never overwritten: a relay declared lost (relay/state/heartbeats.py) that
       comes back cannot resurrect an upload another relay already ended `relay_lost`, and a relay that took an
       earlier request of a resumable upload cannot write its older view (and events) after the relay that
       completed it wrote the end: each relay flushes on its own timer, so their writes arrive in any order.
       The terminal event stays the last of its run;
    2. a refusal (a `rejected` record: refused from its headers, before the id was claimed across relays, e.g.
       by this relay's own cap) never replaces an upload in progress under that id: a stored record not
       finished, or a resumable upload not finished (`<p>rs:<id>`, OPEN_RESUMABLE);
  - each event: XADD to `<p>events` (every upload) with MAXLEN ~, then XADD **with the same entry id** to
    `<p>events:<id>`, so an SSE `id:` means the same thing in both streams; entries older than KEEP_MS are
    trimmed (so at least 10 minutes are kept unless the MAXLEN safety bound is reached first);
  - lease releases (ZREM) of the caps, and the relay's heartbeat (a relay writing records is alive).

Coalescing: a queued progress event of an upload is replaced by a newer one until something else of that
upload is queued after it (same rule as relay/bus.py, so per-upload order is kept); `part`, `completed`,
`failed` are never dropped. When a flush fails (Redis gone), its records stay dirty (the newest state is
written when Redis is back), its progress events are dropped (the record carries the count), its other events
go back to the front of the queue. While Redis is known to be down, the flusher does not try: every 100 ms it
does the same with what was queued. Each record or event that could not be written when it was due counts
once in `relay_state_errors_total` (so does anything pushed out of a full queue, MAX_PENDING).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from relay.core import state
from relay.core.events import Event, Progress
from relay.state.codec import encode_event, encode_record, record_gen
from relay.state.link import ERRORS, Link
from relay.uploads import UploadRecord

__all__ = ["FLUSH", "OPEN_RESUMABLE", "Batch", "Flusher", "Keys", "WriteQueue", "flush_args", "record_kind"]

log = logging.getLogger("relay.state")
FLUSH_INTERVAL = 0.1
URGENT_GAP = 0.002  # between two flushes at least, even for ended uploads: a burst of small ones still batches
FLUSH_TIMEOUT = 5.0
MAX_PENDING = 10_000
ALL_MAXLEN = 200_000
ONE_MAXLEN = 10_000
KEEP_MS = 600_000  # 10 minutes of events, at least
INDEX_MAX = 10_000
HEARTBEAT_TTL = 15

# Lua: whether the resumable upload under an id (its document in `<p>rs:<id>`, relay/resumable/shared.py: a JSON
# state document with `state`) is there and not finished. A document this relay cannot read counts as there.
OPEN_RESUMABLE = """
local function open_resumable(doc_key)
  local doc = redis.call('HGET', doc_key, 'doc')
  if not doc then return false end
  local ok, fields = pcall(cjson.decode, doc)
  if not ok or type(fields) ~= 'table' then return true end
  return fields.state ~= 'completed' and fields.state ~= 'failed'
end
"""

FLUSH = (
    OPEN_RESUMABLE
    + """
local p, fin_ttl, live_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local nrec, nev, nrel = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local all_max, one_max, keep_ms = ARGV[7], ARGV[8], tonumber(ARGV[9])
local relay, index_max, beat_ttl = ARGV[10], tonumber(ARGV[11]), ARGV[12]
local i, fenced = 13, {}
for _ = 1, nrec do
  local id, gen, fin, kind, keep = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  local json, score = ARGV[i + 5], ARGV[i + 6]
  i = i + 7
  local key = p .. 'upload:' .. id
  local cur = redis.call('HMGET', key, 'fin', 'gen')
  -- a relay before this version wrote gen as '<relay id>:<start time>': the run is what follows the last ':'
  if (cur[1] == '1' and cur[2] and string.match(cur[2], '([^:]*)$') == string.match(gen, '([^:]*)$'))
    or (kind == 'refusal' and (cur[1] == '0' or open_resumable(p .. 'rs:' .. id))) then
    fenced[id] = true
  else
    redis.call('HSET', key, 'json', json, 'fin', fin, 'gen', gen, 'relay', relay)
    if fin == '1' then
      redis.call('EXPIRE', key, fin_ttl)
      redis.call('HDEL', p .. 'active', id)
    elseif kind == 'resumable' then
      redis.call('EXPIRE', key, math.max(live_ttl, keep))
      redis.call('HDEL', p .. 'active', id)
    else
      redis.call('EXPIRE', key, live_ttl)
      redis.call('HSET', p .. 'active', id, relay)
    end
    redis.call('ZADD', p .. 'index', score, id)
  end
end
if nrec > 0 then redis.call('ZREMRANGEBYRANK', p .. 'index', 0, -index_max - 1) end
for _ = 1, nev do
  local id, name, data = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  if not fenced[id] then
    local eid = redis.call('XADD', p .. 'events', 'MAXLEN', '~', all_max, '*', 'e', name, 'd', data)
    local one = p .. 'events:' .. id
    -- pcall: should this stream ever be ahead of the other (deleted by hand), skip it rather than fail all
    redis.pcall('XADD', one, 'MAXLEN', '~', one_max, eid, 'e', name, 'd', data)
    redis.call('EXPIRE', one, fin_ttl)
  end
end
if nev > 0 then
  local t = redis.call('TIME')
  local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - keep_ms
  redis.call('XTRIM', p .. 'events', 'MINID', '~', oldest)
end
for _ = 1, nrel do
  redis.call('ZREM', ARGV[i], ARGV[i + 1])
  i = i + 2
end
if relay ~= '' then redis.call('SET', p .. 'relay:' .. relay, '1', 'EX', beat_ttl) end
return 0
"""
)


@dataclass(frozen=True, slots=True)
class Keys:
    """Every key name, from the prefix (`--redis-prefix`)."""

    prefix: str

    def upload(self, upload_id: str) -> str:
        return f"{self.prefix}upload:{upload_id}"

    def stream(self, upload_id: str | None) -> str:
        return f"{self.prefix}events" if upload_id is None else f"{self.prefix}events:{upload_id}"

    def heartbeat(self, relay_id: str) -> str:
        return f"{self.prefix}relay:{relay_id}"

    @property
    def index(self) -> str:
        return f"{self.prefix}index"

    @property
    def active(self) -> str:
        return f"{self.prefix}active"

    def cap(self, name: str) -> str:
        return f"{self.prefix}cap:{name}"

    def claim(self, upload_id: str) -> str:
        """The lease of the one upload in progress under this id (relay/state/leases.py)."""
        return f"{self.prefix}id:{upload_id}"

    def resumable(self, upload_id: str) -> str:
        """The resumable upload's shared state document under this id (written by relay/resumable/shared.py)."""
        return f"{self.prefix}rs:{upload_id}"


@dataclass
class Batch:
    """What one flush writes. Records carry their `gen` (a sweeper writes another relay's record)."""

    records: list[tuple[UploadRecord, str]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    releases: list[tuple[str, str]] = field(default_factory=list)
    carried: int = 0  # records and events already counted as not written (given back by an earlier try)

    @property
    def size(self) -> int:
        return len(self.records) + len(self.events)


def flush_args(keys: Keys, batch: Batch, *, relay_id: str, finished_ttl: float) -> list[str | int | float]:
    """FLUSH's ARGV for one batch (see the script for the layout)."""
    ttl = max(1, round(finished_ttl))
    args: list[str | int | float] = [
        keys.prefix, ttl, max(ttl, 3600), len(batch.records), len(batch.events), len(batch.releases),
        ALL_MAXLEN, ONE_MAXLEN, KEEP_MS, relay_id, INDEX_MAX, HEARTBEAT_TTL,
    ]  # fmt: skip
    now = time.time()
    for record, gen in batch.records:
        fin = "1" if record.finished else "0"
        keep = math.ceil(max(0.0, (record.expires_at or now) - now))  # an unfinished resumable record's time to live
        args += [record.id, gen, fin, record_kind(record), keep, encode_record(record), record.started_at]
    for event in batch.events:
        args += [event.upload_id, *encode_event(event)]
    for key, member in batch.releases:
        args += [key, member]
    return args


def record_kind(record: UploadRecord) -> str:
    """What FLUSH needs to know of a record besides `fin`: `refusal` (never replaces an upload in progress),
    `resumable` (never in `<p>active`), else `plain`."""
    if record.state == state.REJECTED:
        return "refusal"
    return "resumable" if record.resumable else "plain"


class WriteQueue:
    """Filled synchronously on the data path, emptied by `Flusher`; see the module docstring."""

    def __init__(self, relay_id: str, on_drop: Callable[[int], None]) -> None:
        self.relay_id = relay_id
        self._on_drop = on_drop
        self._dirty: dict[str, UploadRecord] = {}
        self._slots: list[list[Event]] = []  # one-item lists, so a waiting progress can be replaced in place
        self._open_progress: dict[str, list[Event]] = {}
        self._releases: list[tuple[str, str]] = []
        self._carried = 0
        self.wakeup = asyncio.Event()
        self.urgent = asyncio.Event()  # an upload ended: flush within URGENT_GAP, not FLUSH_INTERVAL

    def record(self, record: UploadRecord) -> None:
        self._dirty[record.id] = record
        self.wakeup.set()
        if record.finished:
            self.urgent.set()

    def event(self, event: Event) -> None:
        if isinstance(event, Progress):
            slot = self._open_progress.get(event.upload_id)
            if slot is not None:
                slot[0] = event
                return
            slot = self._open_progress[event.upload_id] = [event]
        else:
            self._open_progress.pop(event.upload_id, None)
            slot = [event]
        self._slots.append(slot)
        self._trim()
        self.wakeup.set()

    def release(self, key: str, member: str) -> None:
        self._releases.append((key, member))
        self.wakeup.set()
        self.urgent.set()

    def take_releases(self, key: str) -> list[str]:
        """The members of `key` queued for release and not written yet, taken out of the queue (the caller
        removes them itself)."""
        taken = [member for held, member in self._releases if held == key]
        if taken:
            self._releases = [(held, member) for held, member in self._releases if held != key]
        return taken

    def take(self) -> Batch:
        batch = Batch(
            records=[(record, record_gen(record)) for record in self._dirty.values()],
            events=[slot[0] for slot in self._slots],
            releases=self._releases,
            carried=self._carried,
        )
        self._dirty, self._slots, self._open_progress, self._releases, self._carried = {}, [], {}, [], 0
        self.wakeup.clear()
        self.urgent.clear()
        return batch

    def give_back(self, batch: Batch) -> None:
        """A batch that could not be written: its records stay dirty (newer states win), its events other than
        progress go back to the front, its lease releases are retried."""
        for record, _ in batch.records:
            self._dirty.setdefault(record.id, record)
        kept: list[list[Event]] = [[event] for event in batch.events if not isinstance(event, Progress)]
        self._slots[:0] = kept
        self._releases[:0] = batch.releases
        self._carried = len(self._dirty) + len(kept)
        self._trim()
        self.wakeup.set()

    def _trim(self) -> None:
        excess = len(self._slots) - MAX_PENDING
        if excess > 0:
            for slot in self._slots[:excess]:
                if self._open_progress.get(slot[0].upload_id) is slot:
                    del self._open_progress[slot[0].upload_id]
            del self._slots[:excess]
            self._on_drop(excess)


class Flusher:
    """The one task that empties the queue into Redis."""

    def __init__(
        self,
        queue: WriteQueue,
        script: AsyncScript,
        link: Link,
        args: Callable[[Batch], list[str | int | float]],
        on_error: Callable[[int], None],
    ) -> None:
        self.queue = queue
        self.script = script
        self.link = link
        self.args = args
        self.on_error = on_error

    async def run(self) -> None:
        while True:
            await self.queue.wakeup.wait()
            if self.link.is_up:
                await self.flush_once()
                await self._pause()
            else:
                self.defer()
                await asyncio.sleep(FLUSH_INTERVAL)

    async def _pause(self) -> None:
        """FLUSH_INTERVAL before the next flush, or URGENT_GAP once an upload has ended meanwhile."""
        await asyncio.sleep(URGENT_GAP)
        if self.queue.urgent.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_INTERVAL - URGENT_GAP):
                await self.queue.urgent.wait()

    def defer(self) -> None:
        """Redis is down: count what cannot be written now, keep what must still be written once it is back."""
        batch = self.queue.take()
        self.on_error(batch.size - batch.carried)
        self.queue.give_back(batch)

    async def flush_once(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        batch = self.queue.take()
        if not batch.size and not batch.releases:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self.script(args=self.args(batch))
        except ResponseError as exc:
            # Redis answered, with an error (a key of another type under our prefix?): retrying the same batch
            # would fail the same way and hold up everything behind it, so it is counted and dropped.
            log.warning("relay-server: redis refused a write (%s); %d records and events dropped", exc, batch.size)
            self.on_error(batch.size - batch.carried)
            return False
        except ERRORS as exc:
            self.link.down(exc)
            self.on_error(batch.size - batch.carried)
            self.queue.give_back(batch)
            return False
        return True
